"""Running a cut backbone (``backbone.py``): segments, feature taps and activation checkpointing.

HBFP-Net runs its backbone in three segments cut inside a stage (stem, block3, block4) and re-feeds copies of
the last two. Each runs as a :class:`Segment`, an ``nn.Sequential`` that can checkpoint its units. The first
pass goes through :class:`SharedSegment` views of the backbone's own modules: the checkpoint keeps timm's key
layout under ``backbone.``, and TorchScript, which cannot look modules up by name, still sees a plain
sequence. :class:`FeatureTap` markers in the views are where the backbone's stage outputs are read (by
``forward_intermediates``, by timm's hook-based feature extraction and by torch.fx).
"""
import contextlib
from collections import OrderedDict
from dataclasses import replace
from functools import partial
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import register_notrace_module

from .backbone import BackboneCuts, StageOutput

__all__ = [
    'FeatureTap', 'Segment', 'SharedSegment', 'checkpoint', 'checkpoint_unit', 'prune_after', 'run_with_taps',
    'segments_with_taps', 'tap_name',
]


@register_notrace_module  # a torch.fx leaf, so that it stays a named node for FX feature extraction
class FeatureTap(nn.Identity):
    """Identity that marks where a feature map is read: the target of timm's ``FeatureHookNet`` hooks and of
    torch.fx feature extraction."""


class Segment(nn.Sequential):
    """``nn.Sequential`` of backbone units that can checkpoint them (``grad_checkpointing``).

    Checkpointing recomputes each unit in backward instead of keeping its activations: per block inside
    ``nn.Sequential`` stages, per unit otherwise (see :func:`checkpoint`). Taps and in-place units (a stem's
    ``ReLU(inplace=True)``) run as they are: there is nothing to save in them, and an in-place unit on its own
    would modify the tensor that checkpointing keeps for the recomputation.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for unit in self:
                x = checkpoint_unit(unit, x)
            return x
        for unit in self:
            x = unit(x)
        return x


class SharedSegment(Segment):
    """A :class:`Segment` over modules that another container owns (shared objects, not copies).

    It holds no state of its own: it is left out of ``state_dict``, and when a state dict is loaded it gives its
    members their current values (the owner loads the checkpoint's), so it neither needs nor reports keys.
    """

    def __repr__(self) -> str:  # its members are printed where they belong
        return f'{type(self).__name__}({", ".join(self._modules)})'

    def state_dict(self, *args, destination=None, prefix: str = '', keep_vars: bool = False):
        return destination if destination is not None else OrderedDict()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, value in nn.Module.state_dict(self, keep_vars=True).items():
            state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@contextlib.contextmanager
def _frozen_running_stats(modules: Sequence[Optional[nn.Module]]) -> Iterator[None]:
    """BatchNorm layers in ``modules`` run exactly as in training (batch statistics, same saved tensors) but
    leave their running statistics and batch count as they were."""
    norms = [m for module in modules if module is not None for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)


def _recompute_context(modules: Sequence[Optional[nn.Module]]):
    return contextlib.nullcontext(), _frozen_running_stats(modules)


def checkpoint(function: Callable, *args: torch.Tensor, modules: Sequence[Optional[nn.Module]]):
    """``torch.utils.checkpoint`` (non-reentrant) of ``function(*args)``, which runs ``modules`` (None skipped).

    The recomputation in backward repeats the forward exactly (same batch statistics, same dropout and
    drop-path masks) but does not update BatchNorm running statistics a second time, so a step with
    checkpointing leaves the model in the same state as one without.
    """
    return torch.utils.checkpoint.checkpoint(
        function, *args, use_reentrant=False, context_fn=partial(_recompute_context, modules))


def checkpoint_unit(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run one unit of a :class:`Segment` with activation checkpointing, block by block for an
    ``nn.Sequential`` stage."""
    for block in (unit if type(unit) is nn.Sequential else (unit,)):
        if isinstance(block, FeatureTap) or getattr(block, 'inplace', False) is True:
            x = block(x)
        else:
            x = checkpoint(block, x, modules=(block,))
    return x


def run_with_taps(segments: Sequence[Segment], x: torch.Tensor, stop_after: Optional[int] = None
                  ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Run ``segments`` one after another (each checkpointing as it is set to) and read every tap.

    Args:
        segments: The segments, in order.
        x: Their input.
        stop_after: Stop right after the tap of this index.

    Returns:
        The output of each segment run to its end, and the map of each tap passed, in order.
    """
    outputs, taps = [], []
    for segment in segments:
        for unit in segment:
            x = checkpoint_unit(unit, x) if segment.grad_checkpointing else unit(x)
            if isinstance(unit, FeatureTap):
                taps.append(x)
                if stop_after is not None and len(taps) > stop_after:
                    return outputs, taps
        outputs.append(x)
    return outputs, taps


def tap_name(stage: StageOutput) -> str:
    """Name of the :class:`FeatureTap` of a backbone feature level inside its segment (``out_layer1``)."""
    return 'out_' + stage.module.replace('.', '_')


def segments_with_taps(model: nn.Module, cuts: BackboneCuts) -> Tuple[SharedSegment, SharedSegment, SharedSegment]:
    """The stem, block3 and block4 segments over the backbone's own modules, a :class:`FeatureTap` after each
    unit that ends a feature level.

    Returns:
        Three :class:`SharedSegment`; their units are named by path (``layer3_0``), their taps by :func:`tap_name`.
    """
    ends = {stage.after: stage for stage in cuts.stages}

    def segment(names: Sequence[str]) -> SharedSegment:
        members = OrderedDict()
        for name in names:
            members[name.replace('.', '_')] = model.get_submodule(name)
            if name in ends:
                members[tap_name(ends[name])] = FeatureTap()
        return SharedSegment(members)

    return segment(cuts.stem), segment(cuts.block3), segment(cuts.block4)


def prune_after(model: nn.Module, cuts: BackboneCuts, last_unit: str
                ) -> Tuple[SharedSegment, SharedSegment, SharedSegment]:
    """Drop every unit of the cut after ``last_unit`` from the backbone (replaced by Identity, so its parameters
    go) and return the segments of what is left (a segment left with no unit is empty, an identity).
    """
    units = cuts.stem + cuts.block3 + cuts.block4
    kept = set(units[:units.index(last_unit) + 1])
    for name in units:
        if name not in kept:
            parent, _, child = name.rpartition('.')
            setattr(model.get_submodule(parent), child, nn.Identity())
    return segments_with_taps(model, replace(
        cuts, stem=tuple(u for u in cuts.stem if u in kept), block3=tuple(u for u in cuts.block3 if u in kept),
        block4=tuple(u for u in cuts.block4 if u in kept)))
