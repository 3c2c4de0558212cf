"""Generalized pooling (GeP), HBFP-Net Eq. 6 and Table 3.

For one feature map each channel is min-max normalised over its H*W positions; for a threshold
lambda the positions whose normalised value is >= lambda are kept and their *raw* values averaged.
lambda = 0 keeps every position (average pooling), lambda = 1 keeps only the maxima (max pooling).
The layer evaluates a set of thresholds and sums the results (paper 4.5, "sum them as the final
representation"), optionally with one learnable weight per threshold ("trainable" GeP).

Paper: Liu, Zhang, Yang, "Hierarchical Bi-Directional Feature Perception Network for Person
Re-Identification", ACM MM 2020, Section 3.3.
"""
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ['GeneralizedPooling', 'generalized_pool2d']


def generalized_pool2d(
        x: torch.Tensor,
        lambdas: torch.Tensor,
        eps: float = 1e-6,
) -> torch.Tensor:
    """Pool a (B, C, H, W) map once per threshold, all thresholds in one pass.

    Normalisation is monotonic within a channel, so sorting the raw values also sorts the normalised
    ones. For a threshold the kept positions are then a suffix of the sorted values: one sort, one
    cumulative sum and one ``searchsorted`` give every threshold's mean without a loop over lambdas
    and without materialising a (B, C, K, N) mask.

    Args:
        x: Feature map of shape (B, C, H, W).
        lambdas: 1-D tensor of K thresholds in [0, 1].
        eps: A channel whose max - min is below ``eps`` is constant; all its positions count as maxima
            (a numerical guard: min-max normalisation is undefined there, and every lambda gives the
            constant itself).

    Returns:
        Tensor of shape (B, C, K): the mean of the kept raw values for each threshold.
    """
    batch, channels = x.shape[:2]
    values = x.reshape(batch, channels, -1)
    num_positions = values.shape[-1]
    sorted_values, _ = values.sort(dim=-1)  # ascending, differentiable w.r.t. the values
    low = sorted_values[..., :1]
    value_range = sorted_values[..., -1:] - low
    constant = value_range < eps
    normalised = torch.where(
        constant,
        torch.ones_like(sorted_values),
        (sorted_values - low) / value_range.clamp_min(eps),
    )
    # Number of sorted positions strictly below each threshold: kept = the rest.
    thresholds = lambdas.to(normalised.dtype).expand(batch, channels, -1).contiguous()
    first_kept = torch.searchsorted(normalised.detach().contiguous(), thresholds)
    # Exclusive prefix sums: prefix[..., n] is the sum of the n smallest values.
    prefix = torch.nn.functional.pad(sorted_values.cumsum(dim=-1), (1, 0))
    kept_sum = prefix[..., -1:] - prefix.gather(-1, first_kept)
    kept_count = (num_positions - first_kept).to(x.dtype)
    return kept_sum / kept_count


class GeneralizedPooling(nn.Module):
    """Generalized pooling over several thresholds (Eq. 6), summed.

    Args:
        lambdas: Thresholds on the min-max normalised map; the paper's default set is
            (0, 0.3, 0.5, 0.7, 1.0) (Table 3).
        learnable: **(choice)** One weight per threshold, initialised to 1, trained with the network;
            the paper's default is the plain sum (``False``).
        flatten: Return (B, C) when True, else (B, C, 1, 1).
        eps: Guard for constant channels (see :func:`generalized_pool2d`).
    """

    def __init__(
            self,
            lambdas: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 1.0),
            learnable: bool = False,
            flatten: bool = True,
            eps: float = 1e-6,
    ):
        super().__init__()
        lambdas = tuple(float(v) for v in lambdas)
        if not lambdas or any(not 0.0 <= v <= 1.0 for v in lambdas):
            raise ValueError(f'lambdas: expected a non-empty sequence of values in [0, 1], got {lambdas}')
        self.register_buffer('lambdas', torch.tensor(lambdas), persistent=False)
        self.weight = nn.Parameter(torch.ones(len(lambdas))) if learnable else None
        self.flatten = flatten
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f'GeneralizedPooling: expected a (B, C, H, W) map, got shape {tuple(x.shape)}')
        pooled = generalized_pool2d(x, self.lambdas, self.eps)
        out = pooled @ self.weight.to(pooled.dtype) if self.weight is not None else pooled.sum(dim=-1)
        return out if self.flatten else out[..., None, None]

    def extra_repr(self) -> str:
        return f'lambdas={tuple(round(v, 4) for v in self.lambdas.tolist())}, learnable={self.weight is not None}'
