"""timm registration of the HBFP-Net variants: their pretrained configs, the Hub tags of Re-ID weights and the
``hbfp_*`` model functions (importing :mod:`hbfp_timm` runs this module).
"""
import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg

from ..utils.files import MODEL_NAME
from .hbfp import HBFPNet

__all__ = ['HUB_NAMESPACE', 'PROJECT_NAMESPACE', 'REID_DATASETS', 'DEFAULT_REID_MODEL', 'BUNDLED_WEIGHTS',
           'WEIGHTS_DIR', 'BOT_ARGS', 'bundled_weights_overlay']


def _create_hbfp(variant: str, pretrained: bool = False, **kwargs) -> HBFPNet:
    # features_only=True: the model is not a plain sequence of children, so timm's feature wrapper goes through
    # forward_intermediates ('getter'; 'hook' and 'fx' work too); by default it returns the three learned maps.
    kwargs['feature_cfg'] = {'feature_cls': 'getter', 'out_indices': 3, **(kwargs.get('feature_cfg') or {})}
    if not pretrained:
        return build_model_with_cfg(HBFPNet, variant, pretrained, **kwargs)
    # Imported here because pretrained.py builds on this module; it is only needed when weights are loaded.
    from .pretrained import (
        check_pretrained_state_dict, explain_pretrained_errors, offline_if_hub_unreachable, trained_input_size,
    )
    overlay = bundled_weights_overlay(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if overlay is not None:
        kwargs['pretrained_cfg_overlay'] = overlay
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if overlay.get('file') and 'input_size' not in overlay:
        # Weights bring the size they were trained at, so timm's data config (and our extractor) match them.
        size = trained_input_size(overlay['file'])
        if size is not None:
            kwargs['pretrained_cfg_overlay'] = dict(overlay, input_size=(3, *size))
    # A missing Hub repository becomes one clear error naming the way out, and a checkpoint that does not
    # fit the model is refused with its mismatched keys listed, before any weights are copied in. Without a
    # network, one short probe replaces huggingface_hub's retries (the cache still answers).
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    from_hub = not (cfg.file or cfg.state_dict) and cfg.source != 'local-dir'
    with explain_pretrained_errors(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')), \
            (offline_if_hub_unreachable() if from_hub else contextlib.nullcontext()):
        return build_model_with_cfg(
            HBFPNet, variant, pretrained, pretrained_filter_fn=check_pretrained_state_dict, **kwargs)


# Re-ID weights are looked up on the Hugging Face Hub as ``<namespace>/<model>.<dataset>``. A team that trained
# and pushed its own (``python -m hbfp_timm.hub push``) points ``pretrained=True`` at them with the environment
# variable HBFP_TIMM_HUB_NAMESPACE (read once, at import; it also registers the paper model's data-set tags) or
# with ``pretrained_cfg_overlay=dict(hf_hub_id=...)``.
_NAMESPACE_FROM_ENV = os.environ.get('HBFP_TIMM_HUB_NAMESPACE', '').strip().strip('/')
PROJECT_NAMESPACE = 'hbfp-timm'  # the project's own Hub namespace: the shipped weights are named there, always
HUB_NAMESPACE = _NAMESPACE_FROM_ENV or PROJECT_NAMESPACE
REID_DATASETS = ('market1501', 'dukemtmc', 'cuhk03_labeled', 'cuhk03_detected')

# Weights that ship inside the package, found before the Hub cache and the Hub (no network at all).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / 'weights'
DEFAULT_REID_MODEL = 'hbfp_mobilenetv2_100.cuhk03'  # what embed / search use when no --model is given
# The BoT baseline (Luo et al. 2019; the paper's "Baseline" rows) as an HBFP configuration: the backbone's last map
# only (last stride 1), no BFP, average pooling, the BatchNorm neck. timm.create_model('hbfp_resnet50', **BOT_ARGS)
# is BoT's ResNet-50, parameter for parameter; the speed benchmark and the ablations compare against it.
BOT_ARGS = dict(branches=('high',), bfp_pairs=(), hierarchical=False, global_pool='avg')
BUNDLED_WEIGHTS = {DEFAULT_REID_MODEL: WEIGHTS_DIR / f'{DEFAULT_REID_MODEL}.safetensors'}


def _cfg(first_conv: str = 'backbone.conv1', **kwargs) -> dict:
    return {
        'url': '',
        # Hub weights are read from safetensors only, never from a pickle.
        'hf_hub_filename': MODEL_NAME,
        'num_classes': 0,
        'input_size': (3, 384, 128),
        'pool_size': (24, 8),
        # The model sees whole person crops stretched to 384x128 (hbfp_timm.data.build_test_transform); 'squash'
        # makes timm's own pipeline (resolve_model_data_config + create_transform) do exactly that.
        'crop_pct': 1.0,
        'crop_mode': 'squash',
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': first_conv,
        'classifier': 'classifier',
        'license': 'apache-2.0',
        'paper_ids': 'doi:10.1145/3394171.3413689',
        'paper_name': 'Hierarchical Bi-Directional Feature Perception Network for Person Re-Identification',
        **kwargs,
    }


def _reid_cfgs(model_name: str, **kwargs) -> dict:
    """One pretrained tag per Re-ID data set, ``<model_name>.<dataset>``, each in its own Hub repository.

    Registered only under a namespace the user names (HBFP_TIMM_HUB_NAMESPACE): no such weights are published
    under the project's own namespace, and timm would otherwise advertise tags that lead nowhere. The first tag
    (Market-1501) is the default of ``pretrained=True`` on the untagged name.
    """
    if not _NAMESPACE_FROM_ENV:
        return {model_name: _cfg(**kwargs)}
    return {
        f'{model_name}.{dataset}': _cfg(
            hf_hub_id=f'{HUB_NAMESPACE}/{model_name}.{dataset}',
            description=f'HBFP-Net trained for person re-identification on {dataset}',
            **kwargs,
        )
        for dataset in REID_DATASETS
    }


def _bundled_cfg(name: str, input_size, **kwargs) -> dict:
    """A tag whose weights ship in the package (``file``) and are also named on the Hub (``hf_hub_id``)."""
    height, width = input_size
    return {name: _cfg(file=str(BUNDLED_WEIGHTS[name]), hf_hub_id=f'{PROJECT_NAMESPACE}/{name}',
                       input_size=(3, height, width), pool_size=(height // 16, width // 16), **kwargs)}


def bundled_weights_overlay(variant: str, pretrained_cfg: Any = None,
                            overlay: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """Where ``pretrained=True`` reads a tag with bundled weights: the package file, else the Hub cache, else the Hub.

    timm reads a cfg's ``file`` before its ``hf_hub_id``. When the bundled file is there, timm reads it (no
    network). When it is missing (a slim install), the file from the local Hugging Face cache is
    used if it is there, still without a request; otherwise ``file`` is cleared so that timm downloads from the
    Hub. A caller's own ``file`` or ``hf_hub_id`` in ``overlay`` is left alone.

    Returns:
        The overlay to pass to timm instead of ``overlay``, or None to keep it.
    """
    if isinstance(pretrained_cfg, dict) or (overlay or {}).get('file'):
        return None
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, overlay)
    bundled = BUNDLED_WEIGHTS.get(f'{variant}.{cfg.tag}')
    if bundled is None or cfg.source in ('hf-hub', 'local-dir'):
        return None
    if cfg.hf_hub_id != f'{PROJECT_NAMESPACE}/{variant}.{cfg.tag}':  # the caller points at other Hub weights
        return dict(overlay or {}, file=None)
    if bundled.is_file():
        return dict(overlay or {}, file=str(bundled))
    from huggingface_hub import try_to_load_from_cache
    cached = try_to_load_from_cache(cfg.hf_hub_id, cfg.hf_hub_filename or MODEL_NAME)
    return dict(overlay or {}, file=cached if isinstance(cached, str) else None)


default_cfgs = generate_default_cfgs({
    **_reid_cfgs('hbfp_resnet50'),
    'hbfp_resnet101': _cfg(),
    'hbfp_resnet18': _cfg(),
    'hbfp_convnext_tiny': _cfg(first_conv='backbone.stem.0'),
    'hbfp_efficientnet_b0': _cfg(first_conv='backbone.conv_stem'),
    **_bundled_cfg(
        DEFAULT_REID_MODEL, input_size=(128, 64), first_conv='backbone.conv_stem', license='other',
        description='HBFP-Net on MobileNetV2, trained here for person re-identification on the CUHK03 (labeled) '
                    'development split, 128x64; see hbfp_timm/weights/hbfp_mobilenetv2_100.cuhk03.md',
        notes=('CUHK03 is for non-commercial research use; the ImageNet MobileNetV2 starting weights are MIT',)),
})


@register_model
def hbfp_resnet50(pretrained: bool = False, **kwargs) -> HBFPNet:
    """HBFP-Net on ResNet-50, as in the paper (L=512, L'=2048, 4096-d descriptor)."""
    model_args = dict(backbone='resnet50', correlation_dim=512, perception_dim=2048)
    return _create_hbfp('hbfp_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def hbfp_resnet101(pretrained: bool = False, **kwargs) -> HBFPNet:
    """HBFP-Net on ResNet-101 (paper's layer sizes)."""
    model_args = dict(backbone='resnet101', correlation_dim=512, perception_dim=2048)
    return _create_hbfp('hbfp_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def hbfp_resnet18(pretrained: bool = False, **kwargs) -> HBFPNet:
    """HBFP-Net on ResNet-18, a small model for CPU demos (L=128, L'=512, 1024-d descriptor)."""
    model_args = dict(backbone='resnet18', correlation_dim=128, perception_dim=512)
    return _create_hbfp('hbfp_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def hbfp_convnext_tiny(pretrained: bool = False, **kwargs) -> HBFPNet:
    """HBFP-Net on ConvNeXt-Tiny (output stride 16; L=256, L'=1024)."""
    model_args = dict(backbone='convnext_tiny', correlation_dim=256, perception_dim=1024)
    return _create_hbfp('hbfp_convnext_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def hbfp_efficientnet_b0(pretrained: bool = False, **kwargs) -> HBFPNet:
    """HBFP-Net on EfficientNet-B0 (output stride 16; L=128, L'=512)."""
    model_args = dict(backbone='efficientnet_b0', correlation_dim=128, perception_dim=512)
    return _create_hbfp('hbfp_efficientnet_b0', pretrained, **dict(model_args, **kwargs))


@register_model
def hbfp_mobilenetv2_100(pretrained: bool = False, **kwargs) -> HBFPNet:
    """HBFP-Net on MobileNetV2-1.0 (output stride 16; L=128, L'=512)."""
    model_args = dict(backbone='mobilenetv2_100', correlation_dim=128, perception_dim=512)
    return _create_hbfp('hbfp_mobilenetv2_100', pretrained, **dict(model_args, **kwargs))
