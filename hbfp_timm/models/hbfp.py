""" HBFP-Net: Hierarchical Bi-directional Feature Perception Network for person re-identification

Paper: "Hierarchical Bi-Directional Feature Perception Network for Person Re-Identification",
Zhipu Liu, Lei Zhang, Yang Yang, ACM MM 2020 - https://doi.org/10.1145/3394171.3413689

The network (paper 3.1, Fig. 2; DESIGN.md section 2):

* a backbone cut into low (X), middle (Y) and high (Z) maps of one spatial size (``backbone.py``);
* two BFP modules, ``BFP(X, Y) -> (X~, Y~x)`` and ``BFP(Y, Z) -> (Y~z, Z~)`` (Eq. 1-5);
* augmented maps ``A_L = X + X~``, ``A_M = Y + Y~x + Y~z``, ``A_H = Z + Z~``;
* the hierarchical re-feed ``F_H = block4'(block3'(A_L) + A_M) + A_H`` through copies of the last two
  backbone segments;
* three branches ``F_L = A_L``, ``F_M = A_M``, ``F_H``, each with generalized pooling (Eq. 6), a BatchNorm
  neck and a bias-free classifier (BoT head). The test descriptor concatenates the three neck features.

Every **(choice)** of DESIGN.md is a constructor flag with the paper-faithful default, and the Table 2
ablations are configurations of the same class (``branches``, ``bfp_pairs``, ``hierarchical``,
``global_pool``).
"""
import copy
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import BFP, GeneralizedPooling
from .backbone import create_backbone, cut_backbone, load_backbone_weights, run_modules

__all__ = ['HBFPNet', 'BranchOutputs', 'BatchNormNeck']

BRANCHES = ('low', 'mid', 'high')
BFP_PAIRS = ('low_mid', 'mid_high')


class BatchNormNeck(nn.BatchNorm1d):
    """BNNeck of BoT (Luo et al. 2019): BatchNorm1d whose bias is fixed at zero.

    The bias is a buffer rather than a frozen parameter, so every parameter of the model trains (timm's
    ``test_model_backward`` expects a gradient on each parameter) and optimizers need no filtering.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features)
        del self.bias
        self.register_buffer('bias', torch.zeros(num_features))


@dataclass
class BranchOutputs:
    """What training needs from one forward, per branch (low, mid, high order, active branches only).

    Attributes:
        pooled: Pooled features before the neck (the triplet loss input), each (B, C_k).
        neck: Features after the BatchNorm neck, each (B, C_k).
        logits: Per-branch logits (the ID loss input), each (B, num_classes); None when num_classes == 0.
    """
    pooled: List[torch.Tensor]
    neck: List[torch.Tensor]
    logits: Optional[List[torch.Tensor]]


class HBFPNet(nn.Module):
    """HBFP-Net on any timm CNN backbone.

    Args:
        backbone: timm model name of the backbone (``resnet50`` in the paper).
        num_classes: Identities of the ID classifier; 0 (default) gives the descriptor from ``forward``.
        in_chans: Input channels.
        global_pool: ``'gep'`` (generalized pooling, Eq. 6), ``'avg'``, ``'max'`` or ``''`` (no pooling).
        gep_lambdas: Thresholds of generalized pooling (Table 3).
        gep_combine: **(choice)** How the thresholds' poolings are combined: ``'mean'`` (default; keeps the
            scale of average pooling, so the triplet margin means the same for any number of thresholds) or
            ``'sum'`` (the paper's literal wording, K times larger).
        gep_learnable: **(choice)** One learnable weight per threshold (the "trainable" GeP).
        branches: Which learned features are trained and concatenated, subset of ('low', 'mid', 'high').
        bfp_pairs: Which BFP modules exist, subset of ('low_mid', 'mid_high') (Table 2 ablations).
        hierarchical: Re-feed ``A_L`` and ``A_M`` through block3/block4 into the high branch (paper 3.1).
        share_blocks: **(choice)** Re-feed through the first-pass block3/block4 instead of copies of them.
        residual: **(choice)** ``aug(P) = P + P~`` with zero-initialised last BN (True), or the literal
            ``aug(P) = P~`` (False).
        correlation_dim: L of the low-rank bilinear correlation (512 in the paper).
        perception_dim: L' of the perception space (2048 in the paper).
        descriptor: **(choice)** ``'neck'`` (post-BN features, default) or ``'pooled'`` (pre-neck) as the
            test descriptor returned by ``forward`` when ``num_classes == 0``.
        pretrained_backbone: Initialise the backbone with timm's ImageNet weights.
        backbone_weights: Local ImageNet weights file for the backbone (offline machines); implies
            ``pretrained_backbone``.
    """

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 0,
            in_chans: int = 3,
            global_pool: str = 'gep',
            gep_lambdas: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 1.0),
            gep_combine: str = 'mean',
            gep_learnable: bool = False,
            branches: Sequence[str] = BRANCHES,
            bfp_pairs: Sequence[str] = BFP_PAIRS,
            hierarchical: bool = True,
            share_blocks: bool = False,
            residual: bool = True,
            correlation_dim: int = 512,
            perception_dim: int = 2048,
            descriptor: str = 'neck',
            pretrained_backbone: bool = False,
            backbone_weights: Optional[str] = None,
    ):
        super().__init__()
        self.branches = _check_subset('branches', branches, BRANCHES, allow_empty=False)
        self.bfp_pairs = _check_subset('bfp_pairs', bfp_pairs, BFP_PAIRS, allow_empty=True)
        if descriptor not in ('neck', 'pooled'):
            raise ValueError(f"descriptor: expected 'neck' or 'pooled', got {descriptor!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.hierarchical = hierarchical
        self.share_blocks = share_blocks
        self.residual = residual
        self.descriptor = descriptor
        self.gep_lambdas = tuple(gep_lambdas)
        self.gep_combine = gep_combine
        self.gep_learnable = gep_learnable

        # A local weights file is loaded after the cut, so that a headless file fits (load_backbone_weights).
        self.backbone = create_backbone(backbone, pretrained_backbone and backbone_weights is None, in_chans)
        cuts = cut_backbone(self.backbone)
        self._cuts = cuts
        self.reduction = cuts.reduction
        _strip_unused(self.backbone, cuts.stem + cuts.block3 + cuts.block4)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights, cuts.stem + cuts.block3 + cuts.block4)
        low_chs, mid_chs, high_chs = cuts.channels

        bfp_args = dict(correlation_dim=correlation_dim, perception_dim=perception_dim, residual=residual)
        self.bfp_low_mid = BFP(low_chs, mid_chs, **bfp_args) if 'low_mid' in self.bfp_pairs else None
        self.bfp_mid_high = BFP(mid_chs, high_chs, **bfp_args) if 'mid_high' in self.bfp_pairs else None
        if hierarchical and not share_blocks:
            # Copies made after the backbone weights are loaded: same ImageNet start, trained separately.
            self.refeed_block3 = nn.Sequential(*[copy.deepcopy(self.backbone.get_submodule(n)) for n in cuts.block3])
            self.refeed_block4 = nn.Sequential(*[copy.deepcopy(self.backbone.get_submodule(n)) for n in cuts.block4])
        else:
            self.refeed_block3 = self.refeed_block4 = None

        channels = dict(low=low_chs, mid=mid_chs, high=high_chs)
        self.branch_channels = tuple(channels[b] for b in self.branches)
        self.num_features = self.head_hidden_size = sum(self.branch_channels)
        self.global_pool = self._create_pool(global_pool)
        self.neck = BatchNormNeck(self.num_features)
        self.classifier = self._create_classifier(num_classes)

    # --- construction helpers -------------------------------------------------------------------
    def _create_pool(self, global_pool: str) -> nn.Module:
        if global_pool == 'gep':
            return GeneralizedPooling(self.gep_lambdas, combine=self.gep_combine, learnable=self.gep_learnable)
        if global_pool in ('avg', 'max', ''):
            return SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        raise ValueError(f"global_pool: expected 'gep', 'avg', 'max' or '', got {global_pool!r}")

    def _create_classifier(self, num_classes: int) -> nn.Module:
        if num_classes < 0:
            raise ValueError(f'num_classes: expected >= 0, got {num_classes}')
        if num_classes == 0:
            return nn.Identity()
        # One bias-free linear map over the concatenated neck features. Its column blocks are the three
        # branch classifiers, so per-branch logits are slices (forward_branches) and the model's logits
        # are their sum.
        classifier = nn.Linear(self.num_features, num_classes, bias=False)
        nn.init.normal_(classifier.weight, std=0.001)  # BoT's classifier init
        return classifier

    # --- timm model contract --------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._create_pool(global_pool)
        self.classifier = self._create_classifier(num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f'x: expected a (B, {self.in_chans}, H, W) image batch, got shape {tuple(x.shape)}')
        if x.shape[2] < self.reduction or x.shape[3] < self.reduction:
            raise ValueError(
                f'x: input {x.shape[2]}x{x.shape[3]} is too small for the backbone cuts, which downsample by '
                f'{self.reduction}; expected at least {self.reduction}x{self.reduction} (paper: 384x128)')

    def forward_levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The learned feature maps of the active branches, in ('low', 'mid', 'high') order."""
        self._check_input(x)
        low = run_modules(self.backbone, self._cuts.stem, x)  # X, res_conv4_1
        mid = run_modules(self.backbone, self._cuts.block3, low)  # Y, res_conv4
        high = run_modules(self.backbone, self._cuts.block4, mid)  # Z, res_conv5

        low_tilde = mid_from_low = mid_from_high = high_tilde = None
        if self.bfp_low_mid is not None:
            low_tilde, mid_from_low = self.bfp_low_mid.perceive(low, mid)
        if self.bfp_mid_high is not None:
            mid_from_high, high_tilde = self.bfp_mid_high.perceive(mid, high)
        low_aug = self._augment(low, low_tilde)
        # Paper 3.1: the middle map is perceived from both sides and the two augmentations summed.
        mid_aug = self._augment(mid, mid_from_low, mid_from_high)
        high_aug = self._augment(high, high_tilde)

        if self.hierarchical:
            # Paper 3.1: M2 = block3(A_L), I = block4(M2 + A_M), F_H = I + A_H.
            if self.share_blocks:
                refed = run_modules(self.backbone, self._cuts.block3, low_aug)
                integrated = run_modules(self.backbone, self._cuts.block4, refed + mid_aug)
            else:
                integrated = self.refeed_block4(self.refeed_block3(low_aug) + mid_aug)
            high_aug = integrated + high_aug
        levels = dict(low=low_aug, mid=mid_aug, high=high_aug)
        return [levels[b] for b in self.branches]

    def _augment(self, original: torch.Tensor, *perceived: Optional[torch.Tensor]) -> torch.Tensor:
        """``original + sum(perceived)`` (residual) or ``sum(perceived)`` (literal); a level that no BFP
        module touches stays as the backbone gave it."""
        present = [p for p in perceived if p is not None]
        if not present:
            return original
        total = sum(present[1:], present[0])
        return original + total if self.residual else total

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The learned maps concatenated along channels, (B, num_features, H/16, W/16).

        Generalized pooling and the BatchNorm neck act per channel, so pooling this one map equals
        pooling each branch and concatenating.
        """
        return torch.cat(self.forward_levels(x), dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if x.ndim == 4:  # global_pool='': the unpooled map passes through
            return x
        pooled = x
        x = self.neck(pooled)
        if pre_logits or self.num_classes == 0:
            return pooled if self.descriptor == 'pooled' else x
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- training -------------------------------------------------------------------------------
    def forward_branches(self, x: torch.Tensor) -> BranchOutputs:
        """Per-branch pooled features, neck features and logits from one forward (the training path).

        Args:
            x: Image batch (B, in_chans, H, W).

        Returns:
            :class:`BranchOutputs`, one entry per active branch in ('low', 'mid', 'high') order.
        """
        maps = self.forward_features(x)
        pooled = self.global_pool(maps)
        if pooled.ndim != 2:
            raise ValueError("global_pool: forward_branches needs a pooling layer, not global_pool=''")
        neck = self.neck(pooled)
        pooled_split = list(pooled.split(self.branch_channels, dim=1))
        neck_split = list(neck.split(self.branch_channels, dim=1))
        logits = None
        if self.num_classes > 0:
            weights = self.classifier.weight.split(self.branch_channels, dim=1)
            logits = [F.linear(feat, w) for feat, w in zip(neck_split, weights)]
        return BranchOutputs(pooled_split, neck_split, logits)


def _check_subset(arg: str, values: Sequence[str], allowed: Tuple[str, ...], allow_empty: bool) -> Tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    unknown = [v for v in values if v not in allowed]
    if unknown or (not values and not allow_empty):
        raise ValueError(f'{arg}: expected a {"" if allow_empty else "non-empty "}subset of {allowed}, got {tuple(values)}')
    return tuple(v for v in allowed if v in values)  # canonical order


def _strip_unused(backbone: nn.Module, used: Sequence[str]) -> None:
    """Replace the backbone's top-level children that no cut runs (its classifier head, final conv,
    pooling) by Identity, so that every remaining parameter receives a gradient."""
    used_roots = {name.split('.')[0] for name in used}
    for name, _ in list(backbone.named_children()):
        if name not in used_roots:
            setattr(backbone, name, nn.Identity())


def _create_hbfp(variant: str, pretrained: bool = False, **kwargs) -> HBFPNet:
    if not pretrained:
        return build_model_with_cfg(HBFPNet, variant, pretrained, **kwargs)
    # Imported here because hub.py builds on this module; it is only needed when weights are loaded.
    from ..hub import check_pretrained_state_dict, explain_pretrained_errors
    # A missing Hub repository becomes one clear error naming the way out, and a checkpoint that does not
    # fit the model is refused with its mismatched keys listed, before any weights are copied in.
    with explain_pretrained_errors(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')):
        return build_model_with_cfg(
            HBFPNet, variant, pretrained, pretrained_filter_fn=check_pretrained_state_dict, **kwargs)


# Re-ID weights are looked up on the Hugging Face Hub as ``<namespace>/<model>.<dataset>``. A team that trained
# and pushed its own (``python -m hbfp_timm.hub push``) points ``pretrained=True`` at them with the environment
# variable HBFP_TIMM_HUB_NAMESPACE (read once, at import) or with ``pretrained_cfg_overlay=dict(hf_hub_id=...)``.
HUB_NAMESPACE = os.environ.get('HBFP_TIMM_HUB_NAMESPACE', '').strip().strip('/') or 'hbfp-timm'
REID_DATASETS = ('market1501', 'dukemtmc', 'cuhk03_labeled', 'cuhk03_detected')


def _cfg(first_conv: str = 'backbone.conv1', **kwargs) -> dict:
    return {
        'url': '',
        # Hub weights are read from safetensors only, never from a pickle.
        'hf_hub_filename': 'model.safetensors',
        'num_classes': 0,
        'input_size': (3, 384, 128),
        'pool_size': (24, 8),
        'crop_pct': 1.0,
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

    The first tag (Market-1501) is the default of ``pretrained=True`` on the untagged name.
    """
    return {
        f'{model_name}.{dataset}': _cfg(
            hf_hub_id=f'{HUB_NAMESPACE}/{model_name}.{dataset}',
            description=f'HBFP-Net trained for person re-identification on {dataset}',
            **kwargs,
        )
        for dataset in REID_DATASETS
    }


default_cfgs = generate_default_cfgs({
    **_reid_cfgs('hbfp_resnet50'),
    'hbfp_resnet101': _cfg(),
    'hbfp_resnet18': _cfg(),
    'hbfp_convnext_tiny': _cfg(first_conv='backbone.stem.0'),
    'hbfp_efficientnet_b0': _cfg(first_conv='backbone.conv_stem'),
    'hbfp_mobilenetv2_100': _cfg(first_conv='backbone.conv_stem'),
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
