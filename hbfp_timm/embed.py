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
import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .data.checks import find_unreadable_images
from .data.datasets import IMAGE_EXTENSIONS
from .data.lists import LIST_SUFFIXES, ImageList, identities_from_names, read_image_list
from .extractor import FeatureExtractor
from .hub import CheckpointMismatchError, WeightsNotFoundError
from .model_args import parse_model_arg
from .models.registry import DEFAULT_REID_MODEL

__all__ = ['Embeddings', 'collect_images', 'skip_unreadable', 'embed', 'save_embeddings', 'load_embeddings',
           'add_model_arguments', 'extractor_from_args', 'exit_code', 'one_line', 'run_command', 'main']

PathLike = Union[str, os.PathLike]
FORMAT = 'hbfp_timm.embeddings/1'
# What the commands report as one line instead of a traceback.
USER_ERRORS = (FileNotFoundError, ValueError, OSError, TypeError, ImportError, WeightsNotFoundError,
               CheckpointMismatchError, SafetensorError)


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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming the model and how it runs, shared by the embed and search commands."""
    model = parser.add_argument_group('model')
    model.add_argument('--model', metavar='MODEL',
                       help='trainer run directory, Hub folder (config.json), hf-hub:ORG/NAME, local-dir:PATH, or a '
                            'registered name such as hbfp_resnet50 (with --checkpoint, or its published weights) '
                            f'(default: {DEFAULT_REID_MODEL}, whose weights ship with the package)')
    model.add_argument('--checkpoint', metavar='FILE', help='weights file (.safetensors) to load into --model')
    model.add_argument('--untrained', action='store_true',
                       help='run a registered --model without any trained weights (to check a pipeline)')
    model.add_argument('--model-arg', action='append', type=parse_model_arg, default=[], metavar='KEY=VALUE',
                       help='constructor argument of a registered --model, value parsed as a Python literal '
                            '(repeatable), e.g. --model-arg correlation_dim=8')
    model.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                       help="input size (default: the run's training size or the model's pretrained_cfg)")
    model.add_argument('--batch-size', type=int, default=32, help='images per forward pass (%(default)s)')
    model.add_argument('--device', default=None, help='cpu, cuda, cuda:1, ... (default: cuda when available)')
    model.add_argument('--amp', action='store_true', help='mixed precision (float16 on CUDA, bfloat16 on CPU)')
    model.add_argument('--flip', action='store_true', help='average with the mirrored image')
    model.add_argument('--workers', type=int, default=2, help='image decoding processes (%(default)s)')
    model.add_argument('--skip-bad-images', action='store_true',
                       help='leave out images that cannot be decoded, listing each one and the count (default: '
                            'the first one is an error)')


def extractor_from_args(args: argparse.Namespace) -> FeatureExtractor:
    """A `FeatureExtractor` from the options of `add_model_arguments`."""
    if not args.model and (args.checkpoint or args.untrained):
        flag = '--checkpoint' if args.checkpoint else '--untrained'
        raise ValueError(f'{flag}: needs --model naming the architecture (e.g. --model hbfp_resnet50)')
    args.model = args.model or DEFAULT_REID_MODEL
    return FeatureExtractor(args.model, checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size,
                            amp=args.amp, flip=args.flip, img_size=tuple(args.img_size) if args.img_size else None,
                            workers=args.workers, model_args=dict(args.model_arg) or None,
                            progress=sys.stderr.isatty(), pretrained=not args.untrained)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A command's warnings as one ``warning:`` line, without the source location meant for programmers."""
    return f'warning: {message}\n'


def run_command(main) -> None:
    """``python -m hbfp_timm.<command>``: warnings shown as one line each, then the command's exit status."""
    warnings.formatwarning = _warning_line
    sys.exit(main())


def exit_code(error: BaseException) -> int:
    """The exit status of a command that stopped on `error`: 1 when the machine failed the work (a file that
    cannot be read or written, a disk that is full), 2 when what the command was asked cannot be done (a missing
    file, an unknown model, weights that do not fit, a bad value), as argparse does for usage errors."""
    return 1 if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) else 2


def one_line(error: BaseException) -> str:
    """The message of an error on one line (for a DataLoader worker's error, its original last line)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if 'Original Traceback' in str(error) else lines[0]


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
