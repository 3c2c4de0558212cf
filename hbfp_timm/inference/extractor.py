"""Descriptors of a user's own images: `FeatureExtractor`.

::

    extractor = hbfp_timm.FeatureExtractor("runs/mine")            # a trainer run directory
    features = extractor(["a.jpg", "b.jpg"])                       # (2, D) float32 descriptors
    features = extractor(pil_image)                                # one PIL image, an HxWx3 uint8 array,
                                                                   # or a preprocessed (N, 3, H, W) tensor

Images are preprocessed exactly as the evaluation does (`hbfp_timm.data.build_test_transform`): converted to
RGB, resized (stretched, no aspect-preserving crop) to the model's input size, normalised with its mean and
std. Those come from the model's ``pretrained_cfg`` or, for a run directory, from the size it was trained at.
"""
import contextlib
import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import timm
import torch
import torch.nn as nn
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader

from ..data.datasets import ImageDataset
from ..data.transforms import build_test_transform
from ..hub.weights import BACKBONE_WEIGHT_ARGS, load_checkpoint, load_run
from ..models.checks import model_args_error
from ..models.pretrained import WeightsNotFoundError, offline_if_hub_unreachable, trained_input_size
from ..utils.devices import check_device
from ..utils.files import RESULTS_NAME
from ..utils.progress import progress
from .features import describe_batch, unwrap_model

__all__ = ['FeatureExtractor', 'load_model']

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Image.Image, np.ndarray]
Images = Union[ImageLike, Sequence[ImageLike], torch.Tensor]
HUB_PREFIXES = ('hf-hub:', 'local-dir:')


def load_model(
        model: Union[nn.Module, PathLike],
        checkpoint: Optional[PathLike] = None,
        model_args: Optional[Dict[str, Any]] = None,
        pretrained: bool = True,
) -> Tuple[nn.Module, Optional[Tuple[int, int]]]:
    """Resolve what a user names as "the model" into a module in eval mode.

    Args:
        model: a module; a trainer run directory (``results.json`` + ``model.safetensors``, or the
            ``.safetensors`` file in it); a Hub layout folder (``config.json``, as ``hub save`` writes);
            an ``hf-hub:ORG/NAME`` or ``local-dir:PATH`` name; or a registered timm name such as
            ``hbfp_resnet50`` (with its published Re-ID weights, or with `checkpoint`).
        checkpoint: a local weights file loaded into the model (``.safetensors``, or ``.pt``/``.pth`` read
            with ``weights_only=True``); not with a run directory, which brings its own.
        model_args: constructor arguments for a registered name, e.g. the ones the checkpoint was trained with.
        pretrained: False builds a registered name without any trained weights (random HBFP layers, no ImageNet
            backbone either), to check a pipeline; not with a checkpoint, a run or a Hub source.

    Returns:
        ``(model, img_size)``: img_size the (height, width) the weights were trained at when a run or the
        checkpoint file says so, else None (the model's ``pretrained_cfg`` says).
    """
    if isinstance(model, nn.Module):
        if model_args:
            raise ValueError('model_args: only for a model given by name, not for a module')
        module = unwrap_model(model)
        if checkpoint is not None:
            load_checkpoint(module, checkpoint)
        return module.eval(), None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f'model: expected a module, a name or a path, got {type(model).__name__}')
    name = str(model)
    path = Path(name).expanduser()
    if not name.startswith(HUB_PREFIXES) and path.is_file() and path.suffix != '.safetensors':
        load_run(path)  # raises: says what the file is (the trainer's checkpoint.pt) and what to give instead
    if not name.startswith(HUB_PREFIXES) and (path.suffix == '.safetensors' or (path / RESULTS_NAME).is_file()):
        if checkpoint is not None or model_args:
            raise ValueError(f'model: {name} is a trainer run, which brings its own weights and arguments; '
                             'drop checkpoint / model_args')
        if not pretrained:
            raise ValueError(f'model: {name} is a trainer run, which brings its own trained weights; an untrained '
                             'model is built from a registered name only (e.g. hbfp_resnet50)')
        module, results = load_run(path)
        return module, tuple(results['img_size']) if results.get('img_size') else None
    if not name.startswith(HUB_PREFIXES) and (path / 'config.json').is_file():
        name = f'local-dir:{path}'
    if not name.startswith(HUB_PREFIXES) and not timm.is_model(name):
        names = dict.fromkeys(timm.list_models('hbfp_*') + timm.list_pretrained('hbfp_*') + timm.list_models())
        close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ''
        raise ValueError(
            f'model: {name!r} is neither a registered timm model (e.g. hbfp_resnet50), a trainer run directory, '
            f'a folder with config.json, nor an hf-hub:/local-dir: name{hint}')
    kwargs = dict(model_args or {}, num_classes=0)
    if not pretrained:
        if checkpoint is not None or name.startswith(HUB_PREFIXES):
            raise ValueError(f'model: an untrained model is built from a registered name only, not with a '
                             f'checkpoint or a Hub source ({name})')
        if name.startswith('hbfp_'):
            kwargs.update(BACKBONE_WEIGHT_ARGS)
        return _create_model(name, False, kwargs, model_args).eval(), None
    if checkpoint is None:
        module = _create_model(name, True, kwargs, model_args)
        return module.eval(), None
    # The checkpoint holds every weight: no ImageNet backbone weights are fetched first.
    if timm.is_model(name) and name.startswith('hbfp_'):
        kwargs.update(BACKBONE_WEIGHT_ARGS)
    module = load_checkpoint(_create_model(name, False, kwargs, model_args), checkpoint)
    return module.eval(), trained_input_size(checkpoint)


def _create_model(name: str, pretrained: bool, kwargs: Dict[str, Any],
                  model_args: Optional[Dict[str, Any]]) -> nn.Module:
    """``timm.create_model`` with its failures said in one line: constructor arguments the model does not take
    (`model_args`), and what the Hub cannot give: the pretrained weights of a timm model of another family (an
    ImageNet ``resnet50``), the repository of an ``hf-hub:`` name; after one short probe of the Hub rather than
    huggingface_hub's retries of about 50 s. The HBFP models say their own
    (`hbfp_timm.models.pretrained.explain_pretrained_errors`)."""
    other_family = pretrained and not name.startswith(('hbfp_',) + HUB_PREFIXES)
    from_hub = other_family or name.startswith('hf-hub:')
    try:
        with offline_if_hub_unreachable() if from_hub else contextlib.nullcontext():
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as error:
        if not model_args:
            raise
        raise ValueError(model_args_error(name, error, model_args)) from None
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as error:
        if not from_hub:
            raise
        why = ('they are not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE=1 or no '
               'network)' if isinstance(error, (OfflineModeIsEnabled, FileNotFoundError))
               else f'the Hub answered {type(error).__name__}')
        if not other_family:
            raise WeightsNotFoundError(
                f'model: {name}: the config and weights of this Hub repository cannot be loaded: {why}; load them '
                'once with a network, or give a local copy (a run folder, or local-dir:PATH of a Hub folder)') from None
        raise WeightsNotFoundError(
            f"model: {name}: timm's pretrained weights of this model cannot be loaded: {why}; load them once with a "
            'network, give a local weights file (checkpoint, --checkpoint in the commands), or build it untrained '
            '(pretrained=False, --untrained)') from None


def _check_array(array: np.ndarray, where: str) -> None:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f'{where}: expected an HxWx3 uint8 RGB array, got shape {array.shape} dtype {array.dtype}')


class FeatureExtractor:
    """Turns images into Re-ID descriptors with a model's own preprocessing.

    Args:
        model: the model, as :func:`load_model` accepts it (module, run directory, Hub folder, ``hf-hub:`` /
            ``local-dir:`` name, registered name).
        checkpoint: weights file to load into the model (see :func:`load_model`).
        device: where the model runs (``'cpu'``, ``'cuda'``, ``'cuda:N'``); ``'auto'`` or None: CUDA when available,
            else the CPU. One that this machine does not have is a ValueError naming ``device``.
        batch_size: images per forward pass.
        amp: run the forward under autocast (bfloat16 where the device has it natively, else float16).
        flip: average each descriptor with that of the mirrored image.
        img_size: (height, width) overriding the model's input size (needed for a module without
            ``pretrained_cfg``).
        workers: processes decoding image files (0: in this process).
        model_args: constructor arguments for a registered name.
        progress: show a progress bar.
        pretrained: False: a registered name without trained weights (see :func:`load_model`).
    """

    def __init__(
            self,
            model: Union[nn.Module, PathLike],
            checkpoint: Optional[PathLike] = None,
            device: Optional[Union[str, torch.device]] = None,
            batch_size: int = 32,
            amp: bool = False,
            flip: bool = False,
            img_size: Optional[Tuple[int, int]] = None,
            workers: int = 0,
            model_args: Optional[Dict[str, Any]] = None,
            progress: bool = False,
            pretrained: bool = True,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size: expected a positive integer, got {batch_size!r}')
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f'workers: expected a non-negative integer, got {workers!r}')
        self.device = check_device(device)
        self.model, run_img_size = load_model(model, checkpoint, model_args, pretrained=pretrained)
        self.model.to(self.device)
        cfg = getattr(self.model, 'pretrained_cfg', None) or {}
        cfg_size = tuple(cfg['input_size'][1:]) if cfg.get('input_size') else None
        size = img_size or run_img_size or cfg_size
        if size is None:
            raise ValueError('img_size: the model has no pretrained_cfg input_size; pass img_size=(height, width)')
        if len(size) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in size):
            raise ValueError(f'img_size: expected (height, width) positive integers, got {size!r}')
        self.img_size: Tuple[int, int] = (int(size[0]), int(size[1]))
        least = getattr(unwrap_model(self.model), 'reduction', None)  # an HBFP model's smallest input side
        if isinstance(least, int) and min(self.img_size) < least:
            raise ValueError(f'img_size: {self.img_size[0]}x{self.img_size[1]} is too small for this model, whose '
                             f'backbone downsamples by {least}; expected at least {least}x{least}')
        # The size the weights were trained at, when known: a run's, a checkpoint's (when its file or run folder
        # says), or that of weights loaded by name (their pretrained_cfg); a module passed in, a bare checkpoint
        # or an untrained model says nothing.
        by_name = pretrained and checkpoint is None and not isinstance(model, nn.Module)
        trained = run_img_size or (cfg_size if by_name else None)
        if trained is not None and tuple(trained) != self.img_size:
            swapped = ' (height and width swapped?)' if tuple(trained) == self.img_size[::-1] else ''
            warnings.warn(f'img_size {self.img_size[0]}x{self.img_size[1]} differs from the {trained[0]}x'
                          f'{trained[1]} these weights were trained at{swapped}; descriptors are usually worse',
                          UserWarning, stacklevel=2)
        self.mean = tuple(cfg.get('mean', IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get('std', IMAGENET_DEFAULT_STD))
        self.transform = build_test_transform(self.img_size, self.mean, self.std)
        self.batch_size, self.amp, self.flip = batch_size, amp, flip
        self.workers, self.progress = workers, progress

    @property
    def num_features(self) -> Optional[int]:
        """Descriptor length, when the model states it."""
        return getattr(self.model, 'num_features', None)

    def _items(self, images: Images) -> List[ImageLike]:
        """The inputs as a list of single images, each checked (paths exist, arrays are HxWx3 uint8)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items = list(images)
        elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            items = [images]
        elif isinstance(images, (list, tuple)):
            items = list(images)
        else:
            raise TypeError(f'images: expected a path, a PIL image, an HxWx3 uint8 array, a list of those, or a '
                            f'preprocessed (N, 3, H, W) tensor, got {type(images).__name__}')
        if not items:
            raise ValueError('images: nothing to describe (empty list)')
        for index, item in enumerate(items):
            where = f'images[{index}]' if len(items) > 1 else 'images'
            if isinstance(item, np.ndarray):
                _check_array(item, where)
            elif isinstance(item, (str, os.PathLike)):
                if not os.path.isfile(item):
                    raise FileNotFoundError(f'{where}: image file {item} not found')
            elif not isinstance(item, Image.Image):
                raise TypeError(f'{where}: expected a path, a PIL image or an HxWx3 uint8 array, '
                                f'got {type(item).__name__}')
        return items

    def preprocess(self, images: Images) -> torch.Tensor:
        """The (N, 3, H, W) network input of the images, as the evaluation's test transform makes it."""
        return torch.cat(list(self._batches(self._items(images))))

    def _batches(self, items: List[ImageLike]) -> Iterable[torch.Tensor]:
        dataset = ImageDataset([(item, -1, -1) for item in items], self.transform)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                            pin_memory=self.device.type == 'cuda')
        return (images for images, *_ in progress(loader, desc='images', unit='batch', disable=not self.progress))

    def _describe(self, batch: torch.Tensor) -> torch.Tensor:
        descriptor = describe_batch(self.model, batch.to(self.device, non_blocking=True), self.flip, self.amp)
        if descriptor.ndim != 2:
            raise ValueError(f'model: expected (B, D) descriptors, got shape {tuple(descriptor.shape)}')
        return descriptor.cpu()

    def __call__(self, images: Images) -> torch.Tensor:
        """Descriptors of the images.

        Args:
            images: an image path, a PIL image, an HxWx3 uint8 RGB array, a list of those (mixed is fine), an
                NxHxWx3 uint8 array, or an already preprocessed float tensor (3, H, W) / (N, 3, H, W).

        Returns:
            (N, D) float32 CPU tensor, in input order.
        """
        if isinstance(images, torch.Tensor):
            if not images.is_floating_point() or images.ndim not in (3, 4) or images.shape[-3] != 3:
                raise ValueError(f'images: a tensor is taken as preprocessed, (N, 3, H, W) or (3, H, W) float; got '
                                 f'shape {tuple(images.shape)} dtype {images.dtype} (pass uint8 pictures as '
                                 'HxWx3 numpy arrays or PIL images)')
            batch = images if images.ndim == 4 else images[None]
            chunks = batch.split(self.batch_size)
        else:
            chunks = self._batches(self._items(images))
        was_training = self.model.training
        self.model.eval()
        try:
            return torch.cat([self._describe(chunk) for chunk in chunks])
        finally:
            self.model.train(was_training)
