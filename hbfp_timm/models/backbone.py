"""Cut a timm CNN into the three levels HBFP-Net needs (docs/design.md, "Architecture").

HBFP-Net reads three maps from a backbone and re-enters two of its segments:

* ``stem``   -> the low map X: everything up to the first block of the penultimate stage
  (for ResNet: stem + layer1 + layer2 + layer3[0], the paper's ``res_conv4_1``);
* ``block3`` -> the middle map Y: the rest of the penultimate stage (ResNet ``layer3[1:]``);
* ``block4`` -> the high map Z: the last stage (ResNet ``layer4``).

The stage boundaries come from the model's own ``feature_info``. The last stride is removed so that
the three maps share one spatial size: for timm ResNets by setting the stride of ``layer4``'s first
block to 1 without dilation (as the paper and BoT do; its convolutions and its pooling or anti-aliasing
downsamplers alike); for every other family the way timm itself does it, ``output_stride=16`` (dilation in
the last stage), which a family that does not take it (ViT, Swin, MobileNetV3, DenseNet, VGG...) cannot give.

The cut also records where each of the backbone's own feature levels (its ``feature_info``) ends, with its
channels and real stride, for HBFP-Net's ``feature_info``; ``segments.py`` runs the cut.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.layers import BlurPool2d
from timm.models import adapt_input_conv

__all__ = [
    'BackboneCuts', 'BackboneModules', 'StageOutput', 'create_backbone', 'cut_backbone', 'load_backbone_weights',
    'run_modules',
]


@dataclass(frozen=True)
class StageOutput:
    """One entry of the backbone's ``feature_info`` as HBFP-Net runs the backbone: read after unit ``after``."""
    module: str  # the backbone's own feature module name ('layer1', 'stages.2')
    after: str  # the unit of the cut whose output it is
    channels: int
    reduction: int


@dataclass(frozen=True)
class BackboneCuts:
    """Where HBFP-Net cuts a backbone: module names (paths inside the backbone) run in order."""
    stem: Tuple[str, ...]
    block3: Tuple[str, ...]
    block4: Tuple[str, ...]
    channels: Tuple[int, int, int]  # (low, mid, high)
    reduction: int  # stride of the three maps w.r.t. the input
    stages: Tuple[StageOutput, ...] = ()  # the backbone's feature levels, in order


class BackboneModules(nn.Module):
    """The top-level modules of a timm backbone that HBFP-Net runs, under their timm names, so that the
    checkpoint keeps timm's key layout under ``backbone.``.

    It has no forward: HBFP-Net runs the modules through its segments. Leaving out the backbone's own forward and
    head (pooling, classifier, final norm or conv) means every parameter trains and TorchScript never compiles a
    forward whose head HBFP-Net dropped.

    Args:
        model: The timm backbone (from :func:`create_backbone`).
        used: Module paths HBFP-Net runs (``cuts.stem + cuts.block3 + cuts.block4``).
    """

    def __init__(self, model: nn.Module, used: Sequence[str]):
        super().__init__()
        roots = {name.split('.')[0] for name in used}
        for name, child in model.named_children():
            if name in roots:
                self.add_module(name, child)


def run_modules(root: nn.Module, names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    """Apply the named submodules of ``root`` to ``x`` one after another."""
    for name in names:
        x = root.get_submodule(name)(x)
    return x


def create_backbone(
        name: str,
        pretrained: bool = False,
        in_chans: int = 3,
        **kwargs,
) -> nn.Module:
    """Create a timm model with its last stride removed, ready for :func:`cut_backbone`.

    Args:
        name: Any timm model name with at least three feature levels (``resnet50``, ``convnext_tiny``...).
        pretrained: Load timm's ImageNet weights for this backbone (through timm's own hub path). A local
            weights file is loaded after the cut instead, by :func:`load_backbone_weights`.
        in_chans: Input channels.
        **kwargs: Further ``timm.create_model`` arguments (``drop_path_rate``...).
    """
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"backbone: unknown timm model name {name!r}; see timm.list_models() for valid names")
    if name.startswith('hbfp_'):
        raise ValueError(f'backbone: {name!r} is an HBFP model itself; pass a plain timm backbone such as resnet50')
    kwargs.update(pretrained=pretrained, in_chans=in_chans)
    is_resnet = issubclass(_model_class(name), timm.models.ResNet)
    if not is_resnet:
        kwargs['output_stride'] = 16
    try:
        model = timm.create_model(name, **kwargs)
    except (TypeError, AssertionError, NotImplementedError) as exc:
        extra = {k: v for k, v in kwargs.items() if k not in ('pretrained', 'in_chans')}
        detail = f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__
        other_argument = any(k in str(exc) for k in extra if k != 'output_stride')  # drop_path_rate, say
        needs = ("; HBFP-Net removes the last stride of a backbone other than a ResNet with timm's output_stride=16, "
                 'so it needs one that takes it, such as convnext_tiny, efficientnet_b0, mobilenetv2_100 or '
                 'regnety_008') if 'output_stride' in extra and not other_argument else ''
        raise ValueError(f'backbone: timm model {name!r} cannot be built with {extra} ({detail}){needs}') from exc
    if is_resnet:
        _remove_resnet_last_stride(model)
    return model


def load_backbone_weights(model: nn.Module, path: str, used: Sequence[str]) -> None:
    """Load a local weights file into a backbone whose unused modules :func:`cut_backbone` made redundant.

    Keys of modules HBFP-Net never runs (the ImageNet classifier, a head convolution, final norm) may be
    missing from the file or present in it: many feature-extractor checkpoints are saved headless. Every other
    missing, unexpected or mis-shaped key is an error naming the file. A first convolution saved for 3 input
    channels is adapted to the model's own, the way timm adapts its pretrained weights.

    Args:
        model: The backbone (from :func:`create_backbone`).
        path: A safetensors or PyTorch weights file of the backbone in timm's key layout.
        used: The module paths HBFP-Net runs (``cuts.stem + cuts.block3 + cuts.block4``).
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f'backbone_weights: file {path} does not exist (expected a local weights file of '
                                f'the backbone, safetensors or .pth)')
    try:
        state = timm.models.load_state_dict(path, use_ema=False, weights_only=True)
    except Exception as exc:  # safetensors, zipfile and unpickling report many error types
        raise ValueError(f'backbone_weights: cannot read {path} as a weights file ({type(exc).__name__}: '
                         f'{str(exc).splitlines()[0] if str(exc) else "no detail"})') from None
    first_conv = model.pretrained_cfg.get('first_conv') if hasattr(model, 'pretrained_cfg') else None
    first_conv = first_conv[0] if isinstance(first_conv, (list, tuple)) else first_conv
    expected = model.state_dict()
    if first_conv and f'{first_conv}.weight' in state and f'{first_conv}.weight' in expected:
        in_chans = expected[f'{first_conv}.weight'].shape[1]
        if state[f'{first_conv}.weight'].shape[1] != in_chans:
            state[f'{first_conv}.weight'] = adapt_input_conv(in_chans, state[f'{first_conv}.weight'])

    def is_used(key: str) -> bool:
        return any(key.startswith(name + '.') for name in used)

    state = {key: value for key, value in state.items() if is_used(key)}
    needed = {key for key in expected if is_used(key)}
    missing = sorted(needed - set(state))
    unexpected = sorted(set(state) - needed)
    mismatched = sorted(key for key in needed & set(state) if state[key].shape != expected[key].shape)
    if missing or unexpected or mismatched:
        details = '; '.join(f'{what}: {_listing(keys)}' for what, keys in (
            ('missing', missing), ('unexpected', unexpected), ('shape differs', mismatched)) if keys)
        raise ValueError(f'backbone_weights: {path} does not fit backbone {type(model).__name__} ({details})')
    model.load_state_dict(state, strict=False)


def _listing(keys: Sequence[str], limit: int = 5) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


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
            if module.padding in (0, (0, 0)):
                module.kernel_size, module.stride = 1, 1  # avg-down shortcut of the 'd' variants
            else:
                module.stride = 1  # a padded window (Res2Net's first split, ResNeSt's avd) keeps the size at stride 1
        elif isinstance(module, BlurPool2d) and module.stride in (2, (2, 2)):
            module.stride = 1  # anti-aliased downsampling (resnetblur): its padding keeps the size at stride 1


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

    units = stem + block3 + block4
    # Each feature level ends with the last unit inside its module (the penultimate stage is split into units).
    stage_ends = {}
    for module in feature_modules:
        inside = [u for u in units if u == module or u.startswith(module + '.')]
        if inside:
            stage_ends[inside[-1]] = module

    was_training = model.training
    model.eval()
    outputs = {}
    unit = units[0]
    try:
        with torch.no_grad():
            x = torch.zeros(1, _in_chans(model), *probe_size)
            for unit in units:
                x = outputs[unit] = model.get_submodule(unit)(x)
    except RuntimeError as exc:  # a downsampling layer the stride removal does not know, a shape it cannot take
        first_line = str(exc).splitlines()[0] if str(exc) else 'no detail'
        raise ValueError(f'backbone: {type(model).__name__} fails in {unit!r} on a {probe_size[0]}x{probe_size[1]} '
                         f'probe input once its last stride is removed (RuntimeError: {first_line})') from exc
    finally:
        model.train(was_training)
    low, mid, high = outputs[stem[-1]], outputs[block3[-1]], outputs[block4[-1]]
    if not low.shape[2:] == mid.shape[2:] == high.shape[2:]:
        raise ValueError(
            f'backbone: maps differ in size after removing the last stride (low {tuple(low.shape[2:])}, '
            f'mid {tuple(mid.shape[2:])}, high {tuple(high.shape[2:])})')
    stages = tuple(StageOutput(module, unit, outputs[unit].shape[1], probe_size[0] // outputs[unit].shape[2])
                   for unit, module in stage_ends.items())
    reduction = probe_size[0] // high.shape[2]
    return BackboneCuts(stem, block3, block4, (low.shape[1], mid.shape[1], high.shape[1]), reduction, stages)


def _in_chans(model: nn.Module) -> int:
    first_conv = model.pretrained_cfg.get('first_conv') if hasattr(model, 'pretrained_cfg') else None
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    if first_conv:
        return model.get_submodule(first_conv).in_channels
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
