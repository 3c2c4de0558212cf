"""Descriptors of image batches and of whole data loaders, with test-time flip and mixed precision.

:func:`describe` asks a timm-style model for its test descriptor whether or not it carries an ID classifier;
:func:`extract_features` runs it over a loader of ``(images, pids, camids)`` batches (what
:mod:`hbfp_timm.metrics.evaluation` scores, and what :class:`.extractor.FeatureExtractor` builds on).
"""
from typing import Iterable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..utils.progress import progress

__all__ = ['autocast_dtype', 'describe', 'describe_batch', 'extract_features', 'unwrap_model']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def describe(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Test descriptors of an image batch, whether or not the model has an ID classifier.

    timm models give the descriptor through ``forward_head(..., pre_logits=True)``; that is what
    ``model(x)`` returns for a model built with ``num_classes=0``, and what a training model (which
    returns logits from ``forward``) must be asked for explicitly.

    Args:
        model: A timm-style model (``forward_features`` / ``forward_head``) or any module returning (B, D).
        images: (B, C, H, W) batch.

    Returns:
        (B, D) descriptors.
    """
    model = unwrap_model(model)
    if hasattr(model, 'forward_features') and hasattr(model, 'forward_head'):
        return model.forward_head(model.forward_features(images), pre_logits=True)
    return model(images)


def _native_bfloat16(device: torch.device) -> bool:
    if device.type != 'cuda':
        return True
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bfloat16 speeds nothing up
    except TypeError:  # torch before 2.4 does not emulate it
        return torch.cuda.is_bf16_supported()


def autocast_dtype(device: Union[str, torch.device], amp_dtype: Optional[torch.dtype] = None) -> torch.dtype:
    """The project's one rule for mixed precision (evaluation, trainer and benchmarks): ``amp_dtype`` when given,
    else bfloat16 where the device computes it natively (CPU; CUDA from Ampere on), else float16.

    Args:
        device: The device (or its type) autocast runs on.
        amp_dtype: torch.float16 or torch.bfloat16; None for the default.

    Raises:
        ValueError: ``amp_dtype`` is not a half-precision type, or is bfloat16 on a GPU without it.
    """
    device = torch.device(device)
    if amp_dtype is None:
        return torch.bfloat16 if _native_bfloat16(device) else torch.float16
    if amp_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f'amp_dtype: expected torch.float16 or torch.bfloat16, got {amp_dtype}')
    if amp_dtype == torch.bfloat16 and not _native_bfloat16(device):
        raise ValueError(f'amp_dtype: {torch.cuda.get_device_name(device)} has no native bfloat16')
    return amp_dtype


@torch.no_grad()
def describe_batch(
        model: nn.Module,
        images: torch.Tensor,
        flip: bool = False,
        amp: bool = False,
        amp_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Float32 descriptors of a batch already on the model's device, optionally flip-averaged, under autocast.

    Args:
        model: The Re-ID model (see :func:`describe`), in the mode the caller wants (eval for test descriptors).
        images: (B, C, H, W) batch.
        flip: Average each descriptor with that of the horizontally mirrored image.
        amp: Run the forward under ``torch.autocast``.
        amp_dtype: Its dtype (the one the model was trained under, for instance); None: `autocast_dtype`'s
            default (bfloat16 where native, else float16).

    Returns:
        (B, D) float32 descriptors on the batch's device.
    """
    device_type = images.device.type
    dtype = autocast_dtype(images.device, amp_dtype)
    with torch.autocast(device_type=device_type, dtype=dtype, enabled=amp):
        descriptor = describe(model, images).float()
        if flip:
            descriptor = (descriptor + describe(model, images.flip(dims=[3])).float()) / 2
    return descriptor


@torch.no_grad()
def extract_features(
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        flip: bool = False,
        amp: bool = False,
        desc: str = 'features',
        amp_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Descriptors of every image of a loader, in loader order.

    The model is put in eval mode for the pass and returned to its previous mode afterwards.

    Args:
        model: The Re-ID model (see :func:`describe`).
        loader: Yields ``(images, pids, camids, ...)`` batches, as :class:`hbfp_timm.data.ImageDataset` does.
        device: Device to run the model on.
        flip: Average the descriptors of each image and its horizontal mirror.
        amp: Run the forward under ``torch.autocast``.
        desc: Label of the progress bar (a bar on a terminal, a line a minute in logs).
        amp_dtype: Autocast dtype; None: `autocast_dtype`'s default (bfloat16 where native, else float16).

    Returns:
        ``(features, pids, camids)``: a (N, D) float32 CPU tensor and two (N,) int64 arrays.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    features, pids, camids = [], [], []
    try:
        for batch in progress(loader, desc=desc, leave=False):
            if len(batch) < 3:
                raise ValueError(f'loader: expected (images, pids, camids, ...) batches, got {len(batch)} items')
            images = batch[0].to(device, non_blocking=True)
            features.append(describe_batch(model, images, flip=flip, amp=amp, amp_dtype=amp_dtype).cpu())
            pids.append(torch.as_tensor(batch[1]).reshape(-1))
            camids.append(torch.as_tensor(batch[2]).reshape(-1))
    finally:
        model.train(was_training)
    if not features:
        raise ValueError(f'loader: {desc} loader yielded no batches')
    return (torch.cat(features), torch.cat(pids).numpy().astype(np.int64),
            torch.cat(camids).numpy().astype(np.int64))
