"""A device name a user gave (``--device``, ``FeatureExtractor(device=...)``), checked against this machine: one
place for the rule and its one-line messages; each command wraps the ``ValueError`` in its own error type."""
from typing import Optional, Union

import torch

__all__ = ['check_device', 'visible_gpus']


def visible_gpus() -> str:
    """``'1 CUDA device is visible'`` / ``'2 CUDA devices are visible'``."""
    count = torch.cuda.device_count()
    return f'{count} CUDA device{"" if count == 1 else "s"} {"is" if count == 1 else "are"} visible'


def check_device(name: Optional[Union[str, torch.device]], default_index: Optional[int] = None,
                 argument: str = 'device') -> torch.device:
    """The torch device ``name`` stands for on this machine.

    Args:
        name: ``'cpu'``, ``'cuda'``, ``'cuda:N'``, a ``torch.device``; ``'auto'`` or None: CUDA when available,
            else the CPU.
        default_index: The GPU a bare ``'cuda'`` means (a torchrun process's local rank); None leaves it bare
            (torch's current GPU).
        argument: The argument named in the error (``device``, ``--device``).

    Raises:
        ValueError: ``'<argument>: ...'``, one line: a name torch does not know, CUDA where there is none, or a GPU
            index that is not visible.
    """
    if name is None or name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{argument}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type != 'cuda':
        return device
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise ValueError(f'{argument}: {name} requested but CUDA is not available on this machine; use cpu')
    if device.index is None and default_index is not None:
        device = torch.device('cuda', default_index)
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        which = str(device) if str(device) == str(name) else f'{name} ({device} for this process)'
        raise ValueError(f'{argument}: {which} requested but {visible_gpus()} (check CUDA_VISIBLE_DEVICES); use '
                         f'cuda:N with N below {count}, or cpu')
    return device
