"""Cut any timm CNN into the three levels HBFP-Net needs (DESIGN.md section 2, "Any timm backbone").

HBFP-Net reads three maps from a backbone and re-enters two of its segments:

* ``stem``   -> the low map X: everything up to the first block of the penultimate stage
  (for ResNet: stem + layer1 + layer2 + layer3[0], the paper's ``res_conv4_1``);
* ``block3`` -> the middle map Y: the rest of the penultimate stage (ResNet ``layer3[1:]``);
* ``block4`` -> the high map Z: the last stage (ResNet ``layer4``).

The stage boundaries come from the model's own ``feature_info``. The last stride is removed so that
the three maps share one spatial size: for timm ResNets by setting the stride of ``layer4``'s first
block to 1 without dilation (as the paper and BoT do); for every other family the way timm itself
does it, ``output_stride=16`` (dilation in the last stage).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

__all__ = ['BackboneCuts', 'create_backbone', 'cut_backbone', 'run_modules']


@dataclass(frozen=True)
class BackboneCuts:
    """Where HBFP-Net cuts a backbone: module names (paths inside the backbone) run in order."""
    stem: Tuple[str, ...]
    block3: Tuple[str, ...]
    block4: Tuple[str, ...]
    channels: Tuple[int, int, int]  # (low, mid, high)
    reduction: int  # stride of the three maps w.r.t. the input


def run_modules(root: nn.Module, names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    """Apply the named submodules of ``root`` to ``x`` one after another."""
    for name in names:
        x = root.get_submodule(name)(x)
    return x


def create_backbone(
        name: str,
        pretrained: bool = False,
        weights_file: Optional[str] = None,
        in_chans: int = 3,
) -> nn.Module:
    """Create a timm model with its last stride removed, ready for :func:`cut_backbone`.

    Args:
        name: Any timm model name with at least three feature levels (``resnet50``, ``convnext_tiny``...).
        pretrained: Load timm's ImageNet weights for this backbone (through timm's own hub path).
        weights_file: A local weights file for offline machines; implies ``pretrained`` and is passed to
            timm as ``pretrained_cfg_overlay=dict(file=...)``.
        in_chans: Input channels.
    """
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"backbone: unknown timm model name {name!r}; see timm.list_models() for valid names")
    if name.startswith('hbfp_'):
        raise ValueError(f'backbone: {name!r} is an HBFP model itself; pass a plain timm backbone such as resnet50')
    kwargs: Dict = dict(pretrained=pretrained or weights_file is not None, in_chans=in_chans)
    if weights_file is not None:
        kwargs['pretrained_cfg_overlay'] = dict(file=str(weights_file))
    is_resnet = issubclass(_model_class(name), timm.models.ResNet)
    if not is_resnet:
        kwargs['output_stride'] = 16
    try:
        model = timm.create_model(name, **kwargs)
    except (TypeError, AssertionError, NotImplementedError) as exc:
        raise ValueError(f'backbone: timm model {name!r} cannot be built with output_stride=16 ({exc})') from exc
    if is_resnet:
        _remove_resnet_last_stride(model)
    return model


def _model_class(name: str) -> type:
    """Class of a timm model, found without building it (a meta-device build is cheap and exact)."""
    with torch.device('meta'):
        return type(timm.create_model(name, pretrained=False))


def _remove_resnet_last_stride(model: nn.Module) -> None:
    """Stride 1 in ``layer4``'s first block, no dilation (paper 3.1: "the last spatial down-sampling
    operation between res_conv4 and res_conv5 is removed")."""
    for module in model.layer4[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d) and module.stride in (2, (2, 2)):
            module.kernel_size, module.stride = 1, 1  # avg-down shortcut of the 'd' variants


def _flat_children(model: nn.Module, feature_modules: Sequence[str]) -> List[Tuple[str, nn.Module]]:
    """Top-level children in order, with containers expanded one level where ``feature_info`` names
    modules inside them (``blocks.4``, ``stages.2``)."""
    flat = []
    for name, child in model.named_children():
        if any(f.startswith(name + '.') for f in feature_modules):
            flat.extend((f'{name}.{sub}', grandchild) for sub, grandchild in child.named_children())
        else:
            flat.append((name, child))
    return flat


def _stage_units(name: str, module: nn.Module) -> List[Tuple[str, bool]]:
    """Split one stage into runnable units, as (path, is_block); ``is_block`` is False for a
    stage-level downsample that precedes the blocks (ConvNeXt)."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential) or type(module).__name__ == 'RegStage':
        return [(f'{name}.{sub}', True) for sub in children]
    if set(children) == {'downsample', 'blocks'} and isinstance(children['blocks'], nn.Sequential):
        blocks = [(f'{name}.blocks.{sub}', True) for sub, _ in children['blocks'].named_children()]
        return [(f'{name}.downsample', False)] + blocks
    if len(children) == 0:
        return [(name, True)]
    raise ValueError(
        f'backbone: cannot split stage {name!r} ({type(module).__name__}) into blocks; HBFP-Net supports '
        f'stages that are nn.Sequential, RegStage or (downsample, blocks) containers')


def cut_backbone(model: nn.Module, probe_size: Tuple[int, int] = (64, 64)) -> BackboneCuts:
    """Find the stem / block3 / block4 cut of a timm model prepared by :func:`create_backbone`.

    Args:
        model: The backbone.
        probe_size: Input size of a no-grad probe forward that reads the channel counts and checks that the
            three maps share one spatial size.
    """
    feature_info = getattr(model, 'feature_info', None)
    if not feature_info or len(feature_info) < 3:
        raise ValueError(f'backbone: {type(model).__name__} exposes fewer than 3 feature levels in feature_info')
    feature_modules = [f['module'] for f in feature_info]
    flat = _flat_children(model, feature_modules)
    names = [n for n, _ in flat]
    try:
        before, penultimate_end, last_end = (names.index(m) for m in feature_modules[-3:])
    except ValueError as exc:
        raise ValueError(f'backbone: feature_info modules {feature_modules[-3:]} not found among {names}') from exc
    units: List[Tuple[str, bool]] = []
    for name, module in flat[before + 1:penultimate_end + 1]:
        units.extend(_stage_units(name, module))
    first_block = next(i for i, (_, is_block) in enumerate(units) if is_block)
    if first_block == len(units) - 1:
        raise ValueError('backbone: the penultimate stage has a single block; HBFP-Net needs the low map inside it')
    stem = tuple(names[:before + 1]) + tuple(p for p, _ in units[:first_block + 1])
    block3 = tuple(p for p, _ in units[first_block + 1:])
    block4 = tuple(names[penultimate_end + 1:last_end + 1])

    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros(1, _in_chans(model), *probe_size)
        low = run_modules(model, stem, x)
        mid = run_modules(model, block3, low)
        high = run_modules(model, block4, mid)
    model.train(was_training)
    if not low.shape[2:] == mid.shape[2:] == high.shape[2:]:
        raise ValueError(
            f'backbone: maps differ in size after removing the last stride (low {tuple(low.shape[2:])}, '
            f'mid {tuple(mid.shape[2:])}, high {tuple(high.shape[2:])})')
    reduction = probe_size[0] // high.shape[2]
    return BackboneCuts(stem, block3, block4, (low.shape[1], mid.shape[1], high.shape[1]), reduction)


def _in_chans(model: nn.Module) -> int:
    first_conv = model.pretrained_cfg.get('first_conv') if hasattr(model, 'pretrained_cfg') else None
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    if first_conv:
        return model.get_submodule(first_conv).in_channels
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
