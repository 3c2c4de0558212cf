"""Measuring steps of a model: interleaved timing, FLOPs, mixed precision. Used by ``benchmarks.speed``.

Timing is interleaved: every repetition runs one call of each step, in alternating order, so that a slow moment of a
shared machine hits all of them; a ratio is the median of the per-repetition ratios. On CUDA a call is timed with
CUDA events between two ``torch.cuda.synchronize()``.
"""
import statistics
import time
from contextlib import nullcontext
from typing import Callable, ContextManager, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['PRECISIONS', 'autocast', 'make_step', 'branches_loss', 'time_interleaved',
           'median_ratio', 'count_flops']

# 'fp32': no autocast; 'amp': torch.autocast with the run's AMP dtype (``hbfp_timm.inference.features.autocast_dtype``).
PRECISIONS = ('fp32', 'amp')


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` with ``amp_dtype``, or nothing when it is None (float32)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def make_step(model: nn.Module, mode: str, x: torch.Tensor,
              amp_dtype: Optional[torch.dtype] = None) -> Callable[[], None]:
    """One benchmark step: eval forward under ``no_grad``, or train forward + backward of a scalar loss (the mean
    square of the output, the same for every model)."""
    if mode == 'eval':
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast(x.device, amp_dtype):
                model(x)
    elif mode == 'train':
        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast(x.device, amp_dtype):
                loss = model(x).float().square().mean()
            loss.backward()
    else:
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    return step


def branches_loss(outputs) -> torch.Tensor:
    """The stand-in training loss of the benchmarks that time or measure ``forward_branches``: the sum of every
    branch's logits and of its squared pooled features (it reaches every branch, neck and classifier)."""
    return sum(logit.sum() for logit in outputs.logits) + sum(p.square().sum() for p in outputs.pooled)


def _time_once(step: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    step()
    return time.perf_counter() - begin


def time_interleaved(steps: Dict[str, Callable[[], None]], repeats: int, device: torch.device,
                     warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each step, the steps alternating within every repetition.

    Args:
        steps: Name -> zero-argument callable.
        repeats: Timed repetitions of each step.
        device: Where the steps run (CUDA steps are timed with events).
        warmup: Untimed calls of each step first (allocator, oneDNN / cuDNN kernel selection, compilation).

    Returns:
        Name -> list of ``repeats`` durations in seconds, in repetition order (so index r of two lists
        pairs calls made at nearly the same moment).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        # Alternate the order too, so that neither step always runs right after the other.
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_time_once(steps[name], device))
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the paired per-repetition ratios (robust to a slow moment that hits both)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def count_flops(model: nn.Module, mode: str, x: torch.Tensor) -> int:
    """FLOPs of one float32 step counted by ``FlopCounterMode`` (forward, plus backward in train mode).

    Matmul and convolution FLOPs, the arithmetic that dominates; element-wise operations are not counted. The count
    does not depend on the precision, so it is always taken in float32 (``x`` is cast if needed).
    """
    step = make_step(model, mode, x.float())
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()
