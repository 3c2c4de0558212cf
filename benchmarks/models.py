"""The models the benchmarks evaluate: created from their timm name, with Hub weights or a checkpoint file."""
import dataclasses
from pathlib import Path
from typing import Optional, Tuple

import timm
import torch
import torch.nn as nn

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm.hub import load_checkpoint
from hbfp_timm.commands import one_line

from .cli import BenchmarkError
from .settings import Settings

__all__ = ['create_model', 'outline_model', 'state_bytes', 'load_weights', 'hub_weights_file']


def create_model(settings: Settings, pretrained: bool = False) -> nn.Module:
    """The descriptor model (``num_classes=0``) of the settings, randomly initialised or with Hub weights.

    Args:
        settings: Run settings.
        pretrained: Load the Hub weights of ``settings.model``.

    Returns:
        The model on ``settings.device``, in eval mode.
    """
    try:
        model = timm.create_model(settings.model, pretrained=pretrained, num_classes=0, **settings.model_args)
    except (RuntimeError, OSError, ValueError, TypeError) as error:
        flag = '--pretrained' if pretrained else '--model'
        model_args = ''.join(f' --model-arg {key}={value!r}' for key, value in settings.model_args.items())
        raise BenchmarkError(f'{flag} {settings.model}{model_args}: {one_line(error)}') from error
    return model.to(settings.device).eval()


def outline_model(settings: Settings) -> nn.Module:
    """The model of the settings built on the meta device: no memory and no initialisation, so it checks the model
    name and the ``--model-arg`` values, and gives the model's size, in a fraction of the time of a real build.

    Args:
        settings: Run settings.

    Returns:
        The model, its tensors without data.
    """
    with torch.device('meta'):
        return create_model(dataclasses.replace(settings, device='meta'))


def state_bytes(model: nn.Module) -> Tuple[int, int]:
    """Bytes of a model's parameters and of its buffers, as a state dict on disk holds them.

    Args:
        model: The model.

    Returns:
        ``(parameter_bytes, buffer_bytes)``.
    """
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return parameters, buffers


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint into ``model`` with ``hbfp_timm.hub.load_checkpoint`` (strict; safetensors or .pt).

    Args:
        model: The model.
        path: The checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f'--checkpoint {path}: no such file (expected a .safetensors state dict)')
    try:
        load_checkpoint(model, path)
    except Exception as error:  # the readers (safetensors, unpickling) raise many types; all mean "not loadable"
        raise BenchmarkError(f'--checkpoint {path}: cannot load it ({type(error).__name__}: {one_line(error)})') \
            from error


def hub_weights_file(model: nn.Module) -> Optional[Path]:
    """The cached Hub file the pretrained weights came from, for its checksum (None if it cannot be found)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = (getattr(model, 'pretrained_cfg', None) or {}).get('hf_hub_id')
    if not repo_id:
        return None
    for filename in ('model.safetensors', 'pytorch_model.bin'):
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None
