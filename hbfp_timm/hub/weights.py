"""Trained weights into a model: a local checkpoint file (:func:`load_checkpoint`) and a trainer's run folder
(:func:`load_run`).

Files are read the safe way, through timm's loader: safetensors, or ``torch.load(weights_only=True)``, never an
arbitrary pickle; a checkpoint that does not fit the model is refused with its mismatched keys. The trainer's
resumable ``checkpoint.pt`` (model with its ID classifier, optimizer, epoch, ...) is no weights file: it is refused
with the run folder and its ``model.safetensors`` named instead.
"""
import json
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict

from ..models.pretrained import check_state_dict, file_metadata
from ..utils.files import MODEL_NAME, RESULTS_NAME
from .model_card import check_results

__all__ = ['BACKBONE_WEIGHT_ARGS', 'CHECKPOINT_SUFFIXES', 'load_checkpoint', 'load_run']

CHECKPOINT_SUFFIXES = ('.safetensors', '.pt', '.pth', '.bin')
# Constructor arguments that fetch ImageNet weights for the backbone. An export already holds the trained
# backbone, so they are written as "off": otherwise loading it would first download (or, offline, fail to find)
# ImageNet weights that the checkpoint then overwrites.
BACKBONE_WEIGHT_ARGS = {'pretrained_backbone': False, 'backbone_weights': None}


# What a trainer's resumable checkpoint.pt holds beside the model (hbfp_timm.training.checkpoint).
TRAINING_STATE_KEYS = frozenset({'model', 'optimizer', 'epoch'})


def _is_training_state(path: Path) -> bool:
    """Whether `path` holds a trainer's resumable training state rather than weights (read memory-mapped, safely)."""
    if path.suffix == '.safetensors' or not path.is_file():
        return False
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # unpickling reports many error types; all mean "not a training state" (timm says more)
        return False
    return isinstance(checkpoint, dict) and TRAINING_STATE_KEYS <= set(checkpoint)


def _training_state_error(path: Path) -> ValueError:
    return ValueError(f"{path}: the trainer's resumable training state (for --resume), not a weights file; give its "
                      f"run folder {path.parent} or the weights file {path.parent / MODEL_NAME} instead")


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a local checkpoint into ``model`` safely and strictly.

    Args:
        model: The model, built with the architecture and constructor arguments the checkpoint was saved from.
        path: A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` file read with ``torch.load(weights_only=True)``
            (a plain state dict, or one under a ``state_dict``/``model`` key).

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` has an unsupported suffix, or is the trainer's resumable ``checkpoint.pt``.
        CheckpointMismatchError: keys or shapes differ from the model's, listed.
    """
    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{path}: expected a checkpoint file ending in {', '.join(CHECKPOINT_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint file not found')
    if _is_training_state(path):
        raise _training_state_error(path)
    # timm's loader: safetensors, or torch.load(weights_only=True) with the usual wrapper keys unwrapped.
    state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    check_state_dict(model, state_dict, str(path), holds=file_metadata(path).get('architecture'))
    model.load_state_dict(state_dict, strict=True)
    return model


def load_run(run: Union[str, Path]) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the trained model of a trainer run directory, in eval mode.

    Args:
        run: The run directory (``results.json`` + ``model.safetensors``), or a ``.safetensors`` file inside one.

    Returns:
        ``(model, results)``.

    Raises:
        FileNotFoundError: the directory, ``results.json`` or the weights file is missing.
        ValueError: ``results.json`` is not valid JSON or lacks what the model card needs; `run` is another file
            (the trainer's ``checkpoint.pt`` among them).
    """
    run = Path(run)
    if run.is_file() and run.suffix != '.safetensors':
        if _is_training_state(run):
            raise _training_state_error(run)
        raise ValueError(f"{run}: not a run folder; expected the trainer's --output folder or the {MODEL_NAME} in it")
    weights = run if run.suffix == '.safetensors' else run / MODEL_NAME
    results_path = weights.parent / RESULTS_NAME
    if not weights.parent.is_dir():
        raise FileNotFoundError(f'{weights.parent}: run directory not found; expected the trainer\'s --output folder')
    if not results_path.is_file():
        raise FileNotFoundError(
            f'{results_path}: not found; expected the trainer\'s results.json (model, model_args, dataset, img_size, '
            f'metrics) in the run directory')
    try:
        results = json.loads(results_path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{results_path}: not valid JSON ({exc})') from None
    arch = results.get('model') if isinstance(results, dict) else None
    if not isinstance(arch, str) or not arch.startswith('hbfp_') or not timm.is_model(arch):
        raise ValueError(f"{results_path}: 'model' must name a registered HBFP model such as 'hbfp_resnet50', "
                         f'got {arch!r}')
    check_results(results, arch, source=str(results_path))
    if not weights.is_file():
        raise FileNotFoundError(f'{weights}: weights not found; '
                                f'expected the trainer\'s {MODEL_NAME} next to {RESULTS_NAME}')
    # The checkpoint holds every weight, so no ImageNet backbone weights are fetched first.
    model_args = dict(results.get('model_args', {}), num_classes=0, **BACKBONE_WEIGHT_ARGS)
    model = timm.create_model(arch, pretrained=False, **model_args)
    load_checkpoint(model, weights)
    return model.eval(), results

