"""Checks of HBFPNet's constructor arguments and image batches: each failure is one ValueError that names the
argument (``x`` for the batch) and says what was expected; and the line for a constructor argument that a model
(any timm model) does not take."""
import difflib
import inspect
import numbers
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch

__all__ = ['check_choice', 'check_image_batch', 'check_lambdas', 'check_num_classes', 'check_probability',
           'check_subset', 'model_args_error']


def _constructor_arguments(model: str, class_name: str) -> Optional[List[str]]:
    """The keyword arguments of ``class_name``'s constructor, the class looked up in the module that registers the
    timm model ``model``; None where either cannot be found (a ``hf-hub:`` name, a class defined elsewhere)."""
    try:
        module = sys.modules.get(timm.models.model_entrypoint(model).__module__)
    except (RuntimeError, KeyError, ValueError):
        return None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, parameter in inspect.signature(cls.__init__).parameters.items()
            if name != 'self' and parameter.kind in kinds]


def model_args_error(model: str, error: TypeError, model_args: Dict[str, Any]) -> str:
    """The one line for a ``model_args`` key that the constructor of the timm model ``model`` does not take
    (``timm.create_model`` raised ``error``): that key, the arguments close to it, and those the constructor
    takes; for any other ``TypeError``, the error beside ``model_args``."""
    found = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(error))
    if found is None:
        return f'model_args: cannot build {model} with {model_args} ({error})'
    class_name, key = found.groups()
    names = _constructor_arguments(model, class_name)
    if names is None:
        return f'model_args: {model} takes no argument {key!r} ({error})'
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.75)
    hint = f' (did you mean {" or ".join(close)}?)' if close else ''
    return f'model_args: {model} takes no argument {key!r}{hint}; {class_name} takes {", ".join(names)}'


def check_subset(arg: str, values: Sequence[str], allowed: Tuple[str, ...], allow_empty: bool) -> Tuple[str, ...]:
    """``values`` (one name or several) as a subset of ``allowed``, in the canonical order of ``allowed``."""
    if isinstance(values, str):
        values = (values,)
    unknown = [v for v in values if v not in allowed]
    if unknown or (not values and not allow_empty):
        kind = 'subset' if allow_empty else 'non-empty subset'
        raise ValueError(f'{arg}: expected a {kind} of {allowed}, got {tuple(values)}')
    return tuple(v for v in allowed if v in values)


def check_choice(arg: str, value: str, allowed: Tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f'{arg}: expected one of {allowed}, got {value!r}')
    return value


def check_num_classes(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'num_classes: expected an integer >= 0, got {value!r}')
    return value


def check_probability(arg: str, value: float) -> float:
    """A drop rate: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f'{arg}: expected a probability in [0, 1), got {value!r}')
    return float(value)


def check_lambdas(arg: str, values: Sequence[float]) -> Tuple[float, ...]:
    """Generalized-pooling thresholds: a non-empty sequence of numbers in [0, 1] (a string is not one)."""
    if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)):
        raise ValueError(f'{arg}: expected a non-empty sequence of numbers in [0, 1] such as (0, 0.3, 0.5, 0.7, 1.0), '
                         f'got {values!r}')
    return tuple(float(v) for v in values)


def check_image_batch(x: torch.Tensor, in_chans: int, min_size: int, dtype: torch.dtype, min_batch: int) -> None:
    """The model's input: a (B, in_chans, H, W) floating-point batch of ``dtype`` (under autocast, any float type
    autocast casts, i.e. not float64) with at least ``min_batch`` images and sides of at least ``min_size``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'x: expected an image batch tensor (B, {in_chans}, H, W), got {type(x).__name__}')
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f'x: expected a (B, {in_chans}, H, W) image batch, got shape {tuple(x.shape)}')
    if x.shape[0] == 0:
        raise ValueError(f'x: empty batch {tuple(x.shape)}; expected at least one image')
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point image batch normalised with the model's pretrained_cfg "
                         f"mean/std (timm.data.create_transform does it), got dtype {x.dtype}")
    if x.dtype != dtype and (x.dtype == torch.float64 or not _autocast_enabled(x.device.type)):
        raise ValueError(f"x: expected dtype {dtype} (the model's parameters), got {x.dtype}; convert with "
                         f"x.to({dtype}) or run under torch.autocast")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f'x: input {x.shape[2]}x{x.shape[3]} is too small for the backbone cuts, which downsample '
                         f'by {min_size}; expected at least {min_size}x{min_size} (paper: 384x128)')
    if x.shape[0] < min_batch:
        raise ValueError(f'x: a training batch needs at least {min_batch} images (the BatchNorm neck normalises '
                         f'over the batch), got {x.shape[0]}; use model.eval() for single images')


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
