"""Descriptors of a user's images with the images they describe: :func:`embed` (a folder, a list file or one
image through a :class:`.extractor.FeatureExtractor`), and the embeddings file of ``python -m hbfp_timm.embed``
(:func:`save_embeddings`, :func:`load_embeddings`), which ``python -m hbfp_timm.search`` reads.

The file is safetensors, holding

* ``features``: (N, D) descriptors (float32, or float16 with ``half``);
* ``paths``: the N image paths (absolute, so that the file is searched from any working folder and a query's
  own file is told apart however its folder was spelt), UTF-8, one per line, as a uint8 tensor (no header size
  limit for large galleries);
* ``pids`` / ``camids``: (N,) int64 identities and cameras, when the list file gives them or every file name
  follows a data set's naming scheme (Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17);

and, as metadata (strings), how they were made:

* ``model``: the model as named (``--model``), ``img_size``: ``HxW``, ``flip``: ``True`` / ``False``, and
  ``source``: the folder, list or image described;
* ``cameras``, when there are ``camids``: how they are numbered, ``file names`` (the scheme's camera, 0-based:
  ``c1`` is 0) or ``list file`` (the ``camid`` column as written); cameras numbered otherwise do not compare;
* ``checkpoint``: the weights file loaded into the model (``--checkpoint``), as an absolute, resolved path, with
  ``checkpoint_sha256``, the SHA-256 of its content; an empty ``checkpoint`` when none was (the model's own
  weights);
* ``untrained``: ``True`` when the model was built without trained weights (``--untrained``: random weights,
  drawn anew on each run), else ``False``;
* ``model_args``: the constructor arguments given for a registered name (``--model-arg KEY=VALUE``), as a Python
  literal dict with sorted keys (``{'correlation_dim': 8}``); empty when none were;
* ``weights_sha256``: the SHA-256 of the weights the descriptors were made with, as loaded into the model
  (`weights_sha256`: every tensor of its ``state_dict`` with its name, dtype and shape); it tells apart two
  ``--untrained`` runs, and weights that changed under the same name (a run folder trained again, another Hub
  revision).

Files written before a key was recorded do not have it: they do not say (``checkpoint`` came first, the last three
later).
"""
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..data.lists import collect_images, identities_from_names, skip_unreadable
from ..utils.files import atomic_write, sha256_file
from .extractor import FeatureExtractor

__all__ = ['Embeddings', 'embed', 'checkpoint_metadata', 'model_args_metadata', 'weights_sha256', 'save_embeddings',
           'load_embeddings']

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


def checkpoint_metadata(checkpoint: Optional[PathLike]) -> Dict[str, str]:
    """What the metadata say of the weights file loaded into the model (module doc): its absolute, resolved path
    and the SHA-256 of its content; ``{'checkpoint': ''}`` when there is none."""
    if checkpoint is None:
        return {'checkpoint': ''}
    path = Path(checkpoint).expanduser().resolve()
    return {'checkpoint': str(path), 'checkpoint_sha256': sha256_file(path)}


def model_args_metadata(model_args: Optional[Dict[str, Any]]) -> str:
    """What the metadata say of the constructor arguments of a registered name (module doc): a Python literal dict
    with sorted keys, so that the same arguments in another order read the same; empty when there are none."""
    return repr(dict(sorted(model_args.items()))) if model_args else ''


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights as loaded: every tensor of its ``state_dict``, in order, with its name, dtype
    and shape, read as bytes on the CPU (the same weights give the same digest whatever device holds them; 0.16 s
    for the 68 million values of hbfp_resnet50 on a 2-core CPU)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name} {tensor.dtype} {tuple(tensor.shape)}\n'.encode('utf-8'))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def embed(source: PathLike, extractor: FeatureExtractor, half: bool = False, model_name: str = '',
          skip_bad_images: bool = False, checkpoint: Optional[PathLike] = None, untrained: bool = False,
          model_args: Optional[Dict[str, Any]] = None) -> Tuple[Embeddings, float]:
    """Describe the images of `source` (see `collect_images`); returns the embeddings and the seconds taken.

    `model_name`, `checkpoint`, `untrained` and `model_args` are what the extractor was built from (its model as
    named, the weights file loaded into it, whether it was built without trained weights, the constructor
    arguments of a registered name), recorded in the metadata; without any of them, the metadata do not say which
    weights made them, only the digest of the weights the extractor holds (`weights_sha256`). The paths are made
    absolute (not resolved: a link keeps its name).
    With `skip_bad_images`, images that cannot be decoded are left out and listed (`skip_unreadable`);
    otherwise the first one stops the run with an error naming it.
    """
    listing = collect_images(source)
    if skip_bad_images:
        listing = skip_unreadable(listing)
    weights = weights_sha256(extractor.model)
    start = time.perf_counter()
    features = extractor(listing.paths)
    seconds = time.perf_counter() - start
    metadata = {'model': model_name, 'img_size': f'{extractor.img_size[0]}x{extractor.img_size[1]}',
                'flip': str(extractor.flip), 'source': str(listing.source)}
    if listing.camids is not None:
        named = identities_from_names(listing.paths)
        metadata['cameras'] = 'file names' if named is not None and list(named[1]) == list(listing.camids) \
            else 'list file'
    if model_name or checkpoint is not None or untrained or model_args:
        metadata.update(checkpoint_metadata(checkpoint), untrained=str(bool(untrained)),
                        model_args=model_args_metadata(model_args))
    metadata['weights_sha256'] = weights
    as_ids = (lambda ids: torch.as_tensor(ids, dtype=torch.int64) if ids is not None else None)
    paths = [os.path.abspath(path) for path in listing.paths]
    return Embeddings(features.half() if half else features, paths, as_ids(listing.pids),
                      as_ids(listing.camids), metadata), seconds


def save_embeddings(path: PathLike, embeddings: Embeddings) -> Path:
    """Write embeddings as a safetensors file (module doc), atomically (`atomic_write`: an interrupted write
    leaves the previous file, never a torn one)."""
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
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={'format': FORMAT, **(embeddings.metadata or {})}))
    return path


def load_embeddings(path: PathLike) -> Embeddings:
    """Read a file written by `save_embeddings` (``python -m hbfp_timm.embed``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: embeddings file not found')
    try:
        with safe_open(str(path), framework='pt') as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
        if metadata.get('format') != FORMAT:
            raise ValueError(f'{path}: not an embeddings file of python -m hbfp_timm.embed '
                             f'(format {metadata.get("format")!r})')
        missing = sorted({'features', 'paths'} - names)
        if missing:
            raise ValueError(f'{path}: an embeddings file without its {" and ".join(missing)}; write it again with '
                             'python -m hbfp_timm.embed')
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f'{path}: cannot read this safetensors file, cut short or damaged ({error}); write it again '
                         'with python -m hbfp_timm.embed') from None
    if tensors['features'].ndim != 2:
        raise ValueError(f'{path}: features of shape {tuple(tensors["features"].shape)}; expected (images, dimensions)')
    text = bytes(tensors['paths'].numpy()).decode('utf-8')
    paths = text.split('\n') if text else []
    if len(paths) != len(tensors['features']):
        raise ValueError(f'{path}: {len(paths)} paths for {len(tensors["features"])} descriptors')
    return Embeddings(tensors['features'], paths, tensors.get('pids'), tensors.get('camids'), metadata)
