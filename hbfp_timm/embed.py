"""Embed a folder or a list of images: ``python -m hbfp_timm.embed DIR_OR_LIST --model M --output feats.safetensors``.

The input is a folder (every ``.jpg``/``.jpeg``/``.png``/``.bmp`` under it, recursively, in sorted order), a
list file (``.csv`` / ``.txt`` of ``path[,pid[,camid]]``, see `hbfp_timm.data.lists`) or one image. The output
is a safetensors file holding

* ``features``: (N, D) descriptors (float32, or float16 with ``--half``);
* ``paths``: the N image paths, UTF-8, one per line, as a uint8 tensor (no header size limit for large galleries);
* ``pids`` / ``camids``: (N,) int64 identities and cameras, when the list file gives them or every file name
  follows a data set's naming scheme (Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17);

and, as metadata, the model and input size. :func:`load_embeddings` reads it back; ``python -m
hbfp_timm.search`` takes it as ``--query`` or ``--gallery``.
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .commands import USER_ERRORS, add_model_arguments, exit_code, extractor_from_args, one_line, run_command
from .data.checks import find_unreadable_images
from .data.datasets import IMAGE_EXTENSIONS
from .data.lists import LIST_SUFFIXES, ImageList, identities_from_names, read_image_list
from .inference.extractor import FeatureExtractor

__all__ = ['Embeddings', 'collect_images', 'skip_unreadable', 'embed', 'save_embeddings', 'load_embeddings', 'main']

PathLike = Union[str, os.PathLike]
FORMAT = 'hbfp_timm.embeddings/1'


class Embeddings(NamedTuple):
    """Descriptors with the images they describe.

    Attributes:
        features: (N, D) tensor.
        paths: the N image paths.
        pids: (N,) int64 identities, or None when unknown.
        camids: (N,) int64 cameras, or None when unknown.
        metadata: what the file says about how it was made (model, img_size, ...).
    """
    features: torch.Tensor
    paths: List[str]
    pids: Optional[torch.Tensor] = None
    camids: Optional[torch.Tensor] = None
    metadata: Optional[Dict[str, str]] = None


def collect_images(source: PathLike) -> ImageList:
    """The images a user points at: a folder (recursively), a list file, or one image file.

    Identities and cameras come from the list file, else from the file names when they all follow one data
    set's naming scheme (see `hbfp_timm.data.identities_from_names`), else they are unknown (None).

    Args:
        source: folder, ``.csv`` / ``.txt`` list, or image.

    Returns:
        An `ImageList`.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        paths = sorted(str(p) for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ValueError(f'{path}: no images ({", ".join(IMAGE_EXTENSIONS)}) in this folder or below')
        listing = ImageList(paths, None, None, path)
    elif path.suffix.lower() in LIST_SUFFIXES:
        listing = read_image_list(path, require_pids=False)
    elif path.is_file():
        listing = ImageList([str(path)], None, None, path)
    else:
        raise FileNotFoundError(f'{path}: not found; expected a folder of images, a .csv/.txt list or an image')
    if listing.pids is None:
        named = identities_from_names(listing.paths)
        if named is not None:
            listing = listing._replace(pids=named[0], camids=named[1])
    return listing


def save_embeddings(path: PathLike, embeddings: Embeddings) -> Path:
    """Write embeddings as a safetensors file (module doc)."""
    for item in embeddings.paths:
        if '\n' in item:
            raise ValueError(f'paths: {item!r} contains a line break, which the paths field cannot store')
    tensors = {
        'features': embeddings.features.contiguous(),
        'paths': torch.from_numpy(np.frombuffer('\n'.join(embeddings.paths).encode('utf-8'), dtype=np.uint8).copy()),
    }
    for name in ('pids', 'camids'):
        if getattr(embeddings, name) is not None:
            tensors[name] = torch.as_tensor(getattr(embeddings, name), dtype=torch.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={'format': FORMAT, **(embeddings.metadata or {})})
    return path


def load_embeddings(path: PathLike) -> Embeddings:
    """Read a file written by `save_embeddings` (``python -m hbfp_timm.embed``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: embeddings file not found')
    with safe_open(str(path), framework='pt') as handle:
        metadata = handle.metadata() or {}
    if metadata.get('format') != FORMAT:
        raise ValueError(f'{path}: not an embeddings file of python -m hbfp_timm.embed (format {metadata.get("format")!r})')
    tensors = load_file(str(path))
    text = bytes(tensors['paths'].numpy()).decode('utf-8')
    paths = text.split('\n') if text else []
    if len(paths) != len(tensors['features']):
        raise ValueError(f'{path}: {len(paths)} paths for {len(tensors["features"])} descriptors')
    return Embeddings(tensors['features'], paths, tensors.get('pids'), tensors.get('camids'), metadata)


def skip_unreadable(listing: ImageList, report=None) -> ImageList:
    """`listing` without the images that cannot be decoded; each one skipped is reported with its reason.

    Args:
        listing: images (with their identities and cameras, when known).
        report: called with one line per skipped image, then a line with the count (default: print to stderr).

    Returns:
        The readable images, in order; a ValueError when none is left.
    """
    report = report or (lambda line: print(line, file=sys.stderr))
    bad = dict(find_unreadable_images(listing.paths, full=True))
    if not bad:
        return listing
    for path, reason in bad.items():
        report(f'skipped unreadable image {path}: {reason}')
    keep = [i for i, path in enumerate(listing.paths) if path not in bad]
    report(f'skipped {len(bad)} of {len(listing.paths)} images of {listing.source} (--skip-bad-images)')
    if not keep:
        raise ValueError(f'{listing.source}: none of its {len(listing.paths)} images can be read')
    pick = (lambda values: [values[i] for i in keep] if values is not None else None)
    return ImageList(pick(listing.paths), pick(listing.pids), pick(listing.camids), listing.source)


def embed(source: PathLike, extractor: FeatureExtractor, half: bool = False,
          model_name: str = '', skip_bad_images: bool = False) -> Tuple[Embeddings, float]:
    """Describe the images of `source` (see `collect_images`); returns the embeddings and the seconds taken.

    With `skip_bad_images`, images that cannot be decoded are left out and listed (`skip_unreadable`);
    otherwise the first one stops the run with an error naming it.
    """
    listing = collect_images(source)
    if skip_bad_images:
        listing = skip_unreadable(listing)
    start = time.perf_counter()
    features = extractor(listing.paths)
    seconds = time.perf_counter() - start
    metadata = {'model': model_name, 'img_size': f'{extractor.img_size[0]}x{extractor.img_size[1]}',
                'flip': str(extractor.flip), 'source': str(listing.source)}
    as_ids = (lambda ids: torch.as_tensor(ids, dtype=torch.int64) if ids is not None else None)
    return Embeddings(features.half() if half else features, listing.paths, as_ids(listing.pids),
                      as_ids(listing.camids), metadata), seconds


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.embed``; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.embed',
        description='Describe every image of a folder, a list file or one image with a Re-ID model, and write the '
                    'descriptors with their paths (and identities when known) to a safetensors file.')
    parser.add_argument('input', help='folder of images (recursive), .csv/.txt list of path[,pid[,camid]], or an image')
    parser.add_argument('--output', required=True, metavar='FILE', help='embeddings file to write (.safetensors)')
    parser.add_argument('--half', action='store_true', help='store the descriptors as float16 (half the size)')
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        extractor = extractor_from_args(args)
        embeddings, seconds = embed(args.input, extractor, half=args.half, model_name=str(args.model),
                                    skip_bad_images=args.skip_bad_images)
        output = save_embeddings(args.output, embeddings)
    except USER_ERRORS as error:
        print(f'{parser.prog}: error: {one_line(error)}', file=sys.stderr)
        return exit_code(error)
    count, dim = embeddings.features.shape
    print(f'{count} images -> {dim}-d descriptors in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} images/s, '
          f'{extractor.device}, batch {extractor.batch_size}); identities '
          f'{"known" if embeddings.pids is not None else "unknown"}; wrote {output}')
    return 0


if __name__ == '__main__':
    run_command(main)
