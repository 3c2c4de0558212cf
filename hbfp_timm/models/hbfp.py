""" HBFP-Net: Hierarchical Bi-directional Feature Perception Network for person re-identification

Paper: "Hierarchical Bi-Directional Feature Perception Network for Person Re-Identification",
Zhipu Liu, Lei Zhang, Yang Yang, ACM MM 2020 - https://doi.org/10.1145/3394171.3413689

The network (paper 3.1, Fig. 2; docs/design.md, "Architecture"):

* a backbone cut into low (X), middle (Y) and high (Z) maps of one spatial size (``backbone.py``);
* two BFP modules, ``BFP(X, Y) -> (X~, Y~x)`` and ``BFP(Y, Z) -> (Y~z, Z~)`` (Eq. 1-5);
* augmented maps ``A_L = X + X~``, ``A_M = Y + Y~x + Y~z``, ``A_H = Z + Z~``;
* the hierarchical re-feed ``F_H = block4'(block3'(A_L) + A_M) + A_H`` through copies of the last two
  backbone segments;
* three branches ``F_L = A_L``, ``F_M = A_M``, ``F_H``, each with generalized pooling (Eq. 6), a BatchNorm
  neck and a bias-free classifier (BoT head). The test descriptor concatenates the three neck features.

Each **(choice)** of docs/design.md is marked in the code. The defaults are our choices; where the paper can be
read literally another way, a constructor flag selects that reading (``residual``, ``share_blocks``,
``descriptor``, ``gep_combine``...). The Table 2 ablations are configurations of the same class
(``branches``, ``bfp_pairs``, ``hierarchical``, ``global_pool``).
"""
import copy
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import group_parameters, register_notrace_module
from timm.models._features import feature_take_indices

from ..layers import BFP, BatchNormNeck, GeneralizedPooling
from ..layers.bfp import augment, check_positive_int
from ..layers.gep import GEP_COMBINES
from .backbone import BackboneCuts, BackboneModules, create_backbone, cut_backbone, load_backbone_weights
from .checks import check_choice, check_image_batch, check_lambdas, check_num_classes, check_probability, check_subset
from .segments import (
    FeatureTap, Segment, SharedSegment, checkpoint, prune_after, run_with_taps, segments_with_taps, tap_name,
)

__all__ = ['HBFPNet', 'BranchOutputs']

BRANCHES = ('low', 'mid', 'high')
BFP_PAIRS = ('low_mid', 'mid_high')
GLOBAL_POOLS = ('gep', 'avg', 'max', '')

# A torch.fx leaf (timm's idiom): GeP checks the input rank in Python, which symbolic tracing cannot follow.
register_notrace_module(GeneralizedPooling)


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

    Besides timm's basic contract it follows timm's conventions for CNNs: ``feature_info`` (the backbone's
    stages, then the three learned maps), ``forward_intermediates`` / ``prune_intermediate_layers`` (so
    ``features_only=True`` works with timm's getter, hook and fx feature classes), ``set_grad_checkpointing``,
    ``group_matcher`` / ``no_weight_decay`` (layer-wise lr decay in ``timm.optim``), ``drop_rate`` and
    ``drop_path_rate``. The eval model scripts with TorchScript and traces with torch.fx; input checks run in
    eager mode only.

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
        drop_rate: Dropout on the neck features before the classifier (training only; the descriptor is
            never dropped).
        drop_path_rate: Stochastic depth of the backbone's blocks, passed to the timm backbone (the re-fed
            copies inherit it).
        pretrained_backbone: Initialise the backbone with timm's ImageNet weights.
        backbone_weights: Local ImageNet weights file for the backbone (offline machines); implies
            ``pretrained_backbone``.
    """
    __jit_unused_properties__ = ['cuts']  # a Python-side description of the backbone, not part of forward

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
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            pretrained_backbone: bool = False,
            backbone_weights: Optional[str] = None,
    ):
        super().__init__()
        check_choice('global_pool', global_pool, GLOBAL_POOLS)
        self.branches = check_subset('branches', branches, BRANCHES, allow_empty=False)
        self.bfp_pairs = check_subset('bfp_pairs', bfp_pairs, BFP_PAIRS, allow_empty=True)
        for name, value in (('in_chans', in_chans), ('correlation_dim', correlation_dim),
                            ('perception_dim', perception_dim)):
            check_positive_int(name, value)
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = in_chans
        self.hierarchical = hierarchical
        self.share_blocks = share_blocks
        self.residual = residual
        self.descriptor = check_choice('descriptor', descriptor, ('neck', 'pooled'))
        self.drop_rate = check_probability('drop_rate', drop_rate)
        self.gep_lambdas = check_lambdas('gep_lambdas', gep_lambdas)
        self.gep_combine = check_choice('gep_combine', gep_combine, GEP_COMBINES)
        self.gep_learnable = gep_learnable
        self.grad_checkpointing = False
        self.stages_only = False  # set by prune_intermediate_layers when only backbone stages are kept

        # A local weights file is loaded after the cut, so that a headless file fits (load_backbone_weights).
        drop_path_rate = check_probability('drop_path_rate', drop_path_rate)
        backbone_args = dict(drop_path_rate=drop_path_rate) if drop_path_rate else {}
        timm_backbone = create_backbone(
            backbone, pretrained_backbone and backbone_weights is None, in_chans, **backbone_args)
        cuts = cut_backbone(timm_backbone)
        self._cuts = cuts
        self.reduction = cuts.reduction
        used = cuts.stem + cuts.block3 + cuts.block4
        if backbone_weights is not None:
            load_backbone_weights(timm_backbone, backbone_weights, used)
        # The backbone's own layer groups, for group_matcher (its regexes name its parameters as they are here).
        matcher = getattr(timm_backbone, 'group_matcher', None)
        self._backbone_group_matchers = {coarse: matcher(coarse) for coarse in (False, True)} if matcher else {}
        self.backbone = BackboneModules(timm_backbone, used)
        # The first pass runs the backbone's own modules (shared, not copied), with taps at its stage ends.
        self.stem, self.block3, self.block4 = segments_with_taps(self.backbone, cuts)
        low_chs, mid_chs, high_chs = cuts.channels

        bfp_args = dict(correlation_dim=correlation_dim, perception_dim=perception_dim, residual=residual)
        self.bfp_low_mid = BFP(low_chs, mid_chs, **bfp_args) if 'low_mid' in self.bfp_pairs else None
        self.bfp_mid_high = BFP(mid_chs, high_chs, **bfp_args) if 'mid_high' in self.bfp_pairs else None
        if hierarchical and share_blocks:
            self.refeed_block3 = SharedSegment(*[self.backbone.get_submodule(n) for n in cuts.block3])
            self.refeed_block4 = SharedSegment(*[self.backbone.get_submodule(n) for n in cuts.block4])
        elif hierarchical:
            # Copies made after the backbone weights are loaded: same ImageNet start, trained separately.
            self.refeed_block3 = Segment(*[copy.deepcopy(self.backbone.get_submodule(n)) for n in cuts.block3])
            self.refeed_block4 = Segment(*[copy.deepcopy(self.backbone.get_submodule(n)) for n in cuts.block4])
        else:
            self.refeed_block3 = self.refeed_block4 = None
        # Taps of the three learned maps, in the order of feature_info.
        self.low_map, self.mid_map, self.high_map = FeatureTap(), FeatureTap(), FeatureTap()

        channels = dict(low=low_chs, mid=mid_chs, high=high_chs)
        self.branch_channels = tuple(channels[b] for b in self.branches)
        self.branch_index = [BRANCHES.index(b) for b in self.branches]
        self.num_features = self.head_hidden_size = sum(self.branch_channels)
        segment_of = {unit: segment for segment in ('stem', 'block3', 'block4') for unit in getattr(cuts, segment)}
        self.feature_info = [
            dict(num_chs=s.channels, reduction=s.reduction, module=f'{segment_of[s.after]}.{tap_name(s)}')
            for s in cuts.stages
        ] + [dict(num_chs=channels[b], reduction=cuts.reduction, module=f'{b}_map') for b in BRANCHES]
        self.num_stages = len(cuts.stages)
        self.global_pool, self.unpooled = self._create_pool(global_pool)
        self.neck = BatchNormNeck(self.num_features)
        self.classifier = self._create_classifier(num_classes)

    # --- construction helpers -------------------------------------------------------------------
    def _create_pool(self, global_pool: str) -> Tuple[nn.Module, bool]:
        """The pooling layer and whether it leaves the map unpooled (``global_pool=''``)."""
        if global_pool == 'gep':
            return GeneralizedPooling(self.gep_lambdas, combine=self.gep_combine, learnable=self.gep_learnable), False
        check_choice('global_pool', global_pool, GLOBAL_POOLS)
        return SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool)), not global_pool

    def _create_classifier(self, num_classes: int) -> nn.Module:
        if check_num_classes(num_classes) == 0:
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
        self.classifier = self._create_classifier(num_classes)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool, self.unpooled = self._create_pool(global_pool)

    @property
    def cuts(self) -> BackboneCuts:
        """Where the backbone is cut (`hbfp_timm.models.backbone`): the module names of the stem (up to X), block3
        (X to Y) and block4 (Y to Z), and of each stage; for probes that run the levels one by one."""
        return self._cuts

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of keeping them: the backbone and the re-fed blocks block
        by block, both BFP modules as one unit. Gradients and BatchNorm statistics are the same as without."""
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, Segment):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], Tuple[float, ...]]:
        """Parameter groups from the input to the head, for layer-wise lr decay (``timm.optim``).

        The backbone keeps its own timm groups (for ResNet: the stem, then each block, or each stage when
        ``coarse``); a re-fed copy joins the group of the block it copies; the BFP modules, the pooling, the
        neck and the classifier are new layers and form the last group, with the head.

        Returns:
            A matcher for ``timm.models.group_parameters``: parameter name -> group ordinal.
        """
        matcher = self._backbone_group_matchers.get(coarse)
        groups = group_parameters(self.backbone, matcher, reverse=True) if matcher else {}
        copied = {f'refeed_block{k}.{i}.': name + '.' for k, names in ((3, self._cuts.block3), (4, self._cuts.block4))
                  for i, name in enumerate(names)}  # 'refeed_block3.0.' -> 'layer3.1.': what each copy was made from
        head = float(max(groups.values(), default=-1) + 1)

        def group_of(name: str) -> Tuple[float, ...]:
            if name.startswith('backbone.'):
                return (float(groups.get(name[len('backbone.'):], 0)),)
            for prefix, original in copied.items():
                if name.startswith(prefix):
                    return (float(groups.get(original + name[len(prefix):], 0)),)
            return (head,)

        return group_of

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Parameters that weight decay must not shrink: the bilinear weights p of Eq. 2 and GeP's threshold
        weights, which set scales rather than filters (1-D, so timm excludes them by default anyway)."""
        names = {f'{bfp}.bilinear_weight' for bfp in ('bfp_low_mid', 'bfp_mid_high') if getattr(self, bfp) is not None}
        if isinstance(self.global_pool, GeneralizedPooling) and self.global_pool.weight is not None:
            names.add('global_pool.weight')
        return names

    # --- forward --------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, neck: bool = False) -> None:
        """Eager-mode checks of the image batch (:func:`check_image_batch`); ``neck``: the batch goes on through the
        BatchNorm neck, which needs two images in training (the maps alone, e.g. ``forward_features``, take one)."""
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: shapes are not known yet
            return
        batch_norm_neck = neck and self.training and not self.unpooled and isinstance(self.neck, nn.BatchNorm1d)
        check_image_batch(x, self.in_chans, self.reduction, next(self.backbone.parameters()).dtype,
                          min_batch=2 if batch_norm_neck else 1)

    def _perceive(self, low: torch.Tensor, mid: torch.Tensor, high: torch.Tensor) -> List[torch.Tensor]:
        """The BFP-augmented maps ``[A_L, A_M, A_H]``; a level no BFP module touches stays as it is."""
        low_aug, mid_aug, high_aug = low, mid, high
        mid_perceived: Optional[torch.Tensor] = None
        if self.bfp_low_mid is not None:
            low_tilde, mid_from_low = self.bfp_low_mid.perceive(low, mid)
            low_aug = augment(low, low_tilde, self.residual)
            mid_perceived = mid_from_low
        if self.bfp_mid_high is not None:
            mid_from_high, high_tilde = self.bfp_mid_high.perceive(mid, high)
            high_aug = augment(high, high_tilde, self.residual)
            # Paper 3.1: the middle map is perceived from both sides and the two augmentations summed.
            mid_perceived = mid_from_high if mid_perceived is None else mid_perceived + mid_from_high
        if mid_perceived is not None:
            mid_aug = augment(mid, mid_perceived, self.residual)
        return [low_aug, mid_aug, high_aug]

    def _learned_maps(self, low: torch.Tensor, mid: torch.Tensor, high: torch.Tensor) -> List[torch.Tensor]:
        """``[F_L, F_M, F_H]`` from the backbone's X, Y, Z: BFP, then the hierarchical re-feed."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            low_aug, mid_aug, high_aug = checkpoint(
                self._perceive, low, mid, high, modules=(self.bfp_low_mid, self.bfp_mid_high))
        else:
            low_aug, mid_aug, high_aug = self._perceive(low, mid, high)
        if self.refeed_block3 is not None and self.refeed_block4 is not None:
            # Paper 3.1: M2 = block3(A_L), I = block4(M2 + A_M), F_H = I + A_H.
            high_aug = self.refeed_block4(self.refeed_block3(low_aug) + mid_aug) + high_aug
        return [self.low_map(low_aug), self.mid_map(mid_aug), self.high_map(high_aug)]

    def forward_levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The learned feature maps of the active branches, in ('low', 'mid', 'high') order."""
        if not torch.jit.is_scripting():
            self._check_input(x)
        low = self.stem(x)  # X, res_conv4_1
        mid = self.block3(low)  # Y, res_conv4
        high = self.block4(mid)  # Z, res_conv5
        maps = self._learned_maps(low, mid, high)
        return [maps[i] for i in self.branch_index]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The learned maps concatenated along channels, (B, num_features, H/16, W/16).

        Generalized pooling and the BatchNorm neck act per channel, so pooling this one map equals
        pooling each branch and concatenating. After ``prune_intermediate_layers`` kept only backbone stages,
        the last kept stage's map.
        """
        if self.stages_only:
            if not torch.jit.is_scripting():
                self._check_input(x)
            return self.block4(self.block3(self.stem(x)))
        return torch.cat(self.forward_levels(x), dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.unpooled:  # global_pool='': the map passes through
            return x
        pooled = x
        x = self.neck(pooled)
        if pre_logits or self.num_classes == 0:
            return pooled if self.descriptor == 'pooled' else x
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x, neck=True)
        return self.forward_head(self.forward_features(x))

    # --- intermediate features ------------------------------------------------------------------
    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features and the feature maps listed in ``feature_info``.

        ``feature_info`` lists the backbone's stages as HBFP-Net runs them (last stride removed) and then the
        three learned maps ``F_L``, ``F_M``, ``F_H`` (after BFP and the re-feed), whatever ``branches`` says.

        Args:
            x: Image batch (B, in_chans, H, W).
            indices: Take the last n maps if an int, all if None, the listed ones if a sequence (negative
                indices count from the end).
            norm: Accepted for timm's interface; HBFP-Net has no norm after its maps, so it changes nothing.
            stop_early: Stop after the last backbone stage requested (when no learned map is requested).
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return the maps only.

        Returns:
            The maps (``intermediates_only``), else ``(features, maps)`` where ``features`` is what
            ``forward_features`` returns (the last map computed when stopping early).
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt: HBFP-Net feature maps are 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        stop = stop_early and max_index < self.num_stages
        levels, maps = run_with_taps((self.stem, self.block3, self.block4), x, max_index if stop else None)
        features = maps[-1]
        if len(levels) == 3 and not self.stages_only:
            maps += self._learned_maps(*levels)
            features = torch.cat([maps[self.num_stages + i] for i in self.branch_index], dim=1)
        intermediates = [maps[i] for i in take_indices]
        return intermediates if intermediates_only else (features, intermediates)

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Remove what the requested ``feature_info`` maps do not need (timm's interface).

        For backbone stages only, the backbone after the last of them, the BFP modules, the re-fed blocks and
        the head go, and ``forward_features`` returns that stage's map; a learned map needs the whole body.

        Args:
            indices: Maps to keep, as in :meth:`forward_intermediates`.
            prune_norm: Accepted for timm's interface (HBFP-Net has no final norm).
            prune_head: Remove the pooling, neck and classifier.

        Returns:
            The absolute indices kept.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index < self.num_stages:
            last_unit = self._cuts.stages[max_index].after
            self.stem, self.block3, self.block4 = prune_after(self.backbone, self._cuts, last_unit)
            self.bfp_low_mid = self.bfp_mid_high = None
            self.refeed_block3 = self.refeed_block4 = None
            self.stages_only = True
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.set_grad_checkpointing(self.grad_checkpointing)  # the new segments follow the model's setting
        if prune_head or self.stages_only:
            self.reset_classifier(0, '')
            self.neck = nn.Identity()
        return take_indices

    # --- training -------------------------------------------------------------------------------
    def forward_branches(self, x: torch.Tensor) -> BranchOutputs:
        """Per-branch pooled features, neck features and logits from one forward (the training path).

        Args:
            x: Image batch (B, in_chans, H, W).

        Returns:
            :class:`BranchOutputs`, one entry per active branch in ('low', 'mid', 'high') order.
        """
        if self.unpooled:
            raise ValueError("global_pool: forward_branches needs a pooling layer, not global_pool=''")
        self._check_input(x, neck=True)
        pooled = self.global_pool(self.forward_features(x))
        neck = self.neck(pooled)
        pooled_split = list(pooled.split(self.branch_channels, dim=1))
        neck_split = list(neck.split(self.branch_channels, dim=1))
        logits = None
        if self.num_classes > 0:
            dropped = F.dropout(neck, p=self.drop_rate, training=self.training)
            weights = self.classifier.weight.split(self.branch_channels, dim=1)
            logits = [F.linear(feat, w) for feat, w in zip(dropped.split(self.branch_channels, dim=1), weights)]
        return BranchOutputs(pooled_split, neck_split, logits)
