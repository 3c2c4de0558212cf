"""Losses of HBFP-Net (paper 3.4): batch-hard triplet (Eq. 7) and label-smoothed ID loss (Eq. 8-9).

Both are applied to each learned feature (branch) and summed in :class:`HBFPLoss`.
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy

from ..models import BranchOutputs

__all__ = ['BatchHardTripletLoss', 'HBFPLoss', 'pairwise_euclidean']


def pairwise_euclidean(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between all rows of ``features`` (B, D) -> (B, B).

    The clamp keeps the square root differentiable where two features coincide (the diagonal).
    """
    squared = features.pow(2).sum(dim=1)
    dist2 = squared[:, None] + squared[None, :] - 2.0 * features @ features.t()
    return dist2.clamp_min(eps).sqrt()


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017; paper Eq. 7).

    For each anchor: the farthest same-identity sample and the nearest other-identity sample in the
    batch, ``[d_pos - d_neg + margin]_+``. Averaged over anchors (Eq. 7 sums; the mean only rescales it
    by 1/(P*K), the usual convention that keeps the loss independent of the batch size).

    Args:
        margin: m in Eq. 7 (0.3 in the paper).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if features.shape[0] != targets.shape[0]:
            raise ValueError(f'targets: expected {features.shape[0]} labels for the batch, got {targets.shape[0]}')
        dist = pairwise_euclidean(features.float())
        same = targets[:, None] == targets[None, :]
        if not (same.sum(dim=1) > 1).all() or same.all():
            raise ValueError('targets: batch-hard mining needs every identity at least twice and at least two '
                             'identities per batch (use P x K sampling)')
        hardest_positive = dist.masked_fill(~same, float('-inf')).amax(dim=1)
        hardest_negative = dist.masked_fill(same, float('inf')).amin(dim=1)
        return F.relu(hardest_positive - hardest_negative + self.margin).mean()


class HBFPLoss(nn.Module):
    """Sum over branches of the triplet loss (on pooled features) and the ID loss (on logits).

    Args:
        margin: Triplet margin (paper: 0.3).
        label_smoothing: epsilon of Eq. 9 (paper: 0.3); 0 gives plain cross-entropy.
        triplet_weight: Weight of the triplet term (0 disables it).
        id_weight: Weight of the ID term (0 disables it; the Table 2 "Baseline" is triplet only).
    """

    def __init__(
            self,
            margin: float = 0.3,
            label_smoothing: float = 0.3,
            triplet_weight: float = 1.0,
            id_weight: float = 1.0,
    ):
        super().__init__()
        self.triplet = BatchHardTripletLoss(margin)
        self.identity = LabelSmoothingCrossEntropy(smoothing=label_smoothing) if label_smoothing > 0 \
            else nn.CrossEntropyLoss()
        self.triplet_weight = triplet_weight
        self.id_weight = id_weight

    def forward(self, outputs: BranchOutputs, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Returns the total loss and its detached parts (for logging, without a device sync)."""
        parts: Dict[str, torch.Tensor] = {}
        if self.triplet_weight:
            parts['triplet'] = sum(self.triplet(f, targets) for f in outputs.pooled)
        if self.id_weight:
            if outputs.logits is None:
                raise ValueError('outputs: the ID loss needs logits; build the model with num_classes > 0')
            parts['id'] = sum(self.identity(logit.float(), targets) for logit in outputs.logits)
        if not parts:
            raise ValueError('HBFPLoss: triplet_weight and id_weight are both 0')
        total = self.triplet_weight * parts.get('triplet', 0.0) + self.id_weight * parts.get('id', 0.0)
        return total, {name: value.detach() for name, value in parts.items()}
