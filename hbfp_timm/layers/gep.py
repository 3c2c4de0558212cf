"""Generalized pooling (GeP), HBFP-Net Eq. 6 and Table 3.

For one feature map each channel is min-max normalised over its H*W positions; for a threshold
lambda the positions whose normalised value is >= lambda are kept and their *raw* values averaged.
lambda = 0 keeps every position (average pooling), lambda = 1 keeps only the maxima (max pooling).
The layer evaluates a set of thresholds and sums the results (paper 4.5, "sum them as the final
representation"), optionally with one learnable weight per threshold ("trainable" GeP).

Paper: Liu, Zhang, Yang, "Hierarchical Bi-Directional Feature Perception Network for Person
Re-Identification", ACM MM 2020, Section 3.3.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['GeneralizedPooling', 'generalized_pool2d']

# Elements of the (rows, N, K) keep-mask materialised at once by the eager path: about 4 MB of float32,
# so that the mask is written and read back from cache instead of memory (measured 3-6x faster than one
# whole-batch mask on a 2-core CPU; see benchmarks/speed.py).
_MASK_CHUNK_ELEMENTS = 1 << 20


def _normalisation(values: torch.Tensor, lambdas: torch.Tensor, eps: float) -> Tuple[torch.Tensor, ...]:
    """Per-row minimum, guarded range and thresholds for rows of ``values`` (R, N).

    A row whose max - min is below ``eps`` is constant: every position counts as a maximum, which a
    threshold of -inf expresses without touching the (R, N) values.
    """
    # Two reductions, not torch.aminmax: measured 8x faster on CPU for rows of a few hundred positions.
    low = values.amin(dim=-1, keepdim=True)
    value_range = values.amax(dim=-1, keepdim=True) - low
    thresholds = torch.where(value_range < eps, float('-inf'), lambdas.to(values.dtype))  # (R, K)
    return low, value_range.clamp_min(eps), thresholds


def _keep_mask(values: torch.Tensor, low: torch.Tensor, value_range: torch.Tensor,
               thresholds: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(R, N, K) float mask, 1 where the min-max normalised value reaches the threshold (Eq. 6).

    ``out`` (no autograd) receives the comparison directly as floats, saving a pass over a bool mask.
    """
    normalised = (values - low) / value_range
    if out is not None:
        return torch.ge(normalised.unsqueeze(-1), thresholds.unsqueeze(-2), out=out)
    return (normalised.unsqueeze(-1) >= thresholds.unsqueeze(-2)).to(values.dtype)


def _row_chunks(values: torch.Tensor, num_lambdas: int):
    rows_per_chunk = max(1, _MASK_CHUNK_ELEMENTS // max(1, values.shape[-1] * num_lambdas))
    return range(0, values.shape[0], rows_per_chunk), rows_per_chunk


class _GeneralizedPoolFunction(torch.autograd.Function):
    """Eager GeP over rows (R, N): the keep-mask is built in cache-sized chunks into one reused buffer and
    rebuilt in backward, so neither pass keeps an (R, N, K) tensor alive (training memory stays O(R * N))."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, lambdas: torch.Tensor, eps: float) -> torch.Tensor:
        low, value_range, thresholds = _normalisation(values, lambdas, eps)
        starts, size = _row_chunks(values, lambdas.numel())
        mask = values.new_empty(min(size, values.shape[0]), values.shape[1], lambdas.numel())
        kept_sum = values.new_empty(values.shape[0], lambdas.numel())
        kept_count = torch.empty_like(kept_sum)
        for s in starts:
            rows = slice(s, s + size)
            chunk_mask = _keep_mask(values[rows], low[rows], value_range[rows], thresholds[rows],
                                    out=mask[:len(kept_sum[rows])])
            torch.bmm(values[rows].unsqueeze(1), chunk_mask, out=kept_sum[rows].unsqueeze(1))
            torch.sum(chunk_mask, dim=1, out=kept_count[rows])
        ctx.save_for_backward(values, low, value_range, thresholds, kept_count)
        return kept_sum / kept_count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        values, low, value_range, thresholds, kept_count = ctx.saved_tensors
        # d mean_k / d value_n = mask[n, k] / count_k: the gradient reaches the kept values only.
        weights = (grad_output / kept_count).unsqueeze(-1)  # (R, K, 1)
        starts, size = _row_chunks(values, thresholds.shape[-1])
        mask = values.new_empty(min(size, values.shape[0]), values.shape[1], thresholds.shape[-1])
        grad_values = torch.empty_like(values)
        for s in starts:
            rows = slice(s, s + size)
            chunk_mask = _keep_mask(values[rows], low[rows], value_range[rows], thresholds[rows],
                                    out=mask[:len(grad_values[rows])])
            torch.bmm(chunk_mask, weights[rows], out=grad_values[rows].unsqueeze(-1))
        return grad_values, None, None


def generalized_pool2d(
        x: torch.Tensor,
        lambdas: torch.Tensor,
        eps: float = 1e-6,
) -> torch.Tensor:
    """Pool a (B, C, H, W) map once per threshold, all thresholds in one pass.

    A min and a max reduction give every channel's normalisation; one comparison of the normalised map with
    all K thresholds gives a (positions x K) keep-mask; a batched matmul of the values with that mask gives
    every threshold's kept sum, and a sum of the mask over positions its count. No sort, no loop over
    lambdas. In eager mode the mask is built in cache-sized chunks of channels and rebuilt in backward
    instead of being stored; under ``torch.compile``, ``torch.export`` and ONNX export the same arithmetic
    runs as one plain differentiable expression (comparison, MatMul, ReduceSum, Div), which all can trace.

    Args:
        x: Feature map of shape (B, C, H, W).
        lambdas: 1-D tensor of K thresholds in [0, 1].
        eps: A channel whose max - min is below ``eps`` is constant; all its positions count as maxima
            (a numerical guard: min-max normalisation is undefined there, and every lambda gives the
            constant itself).

    Returns:
        Tensor of shape (B, C, K) and the dtype of ``x``: the mean of the kept raw values per threshold.
    """
    batch, channels = x.shape[:2]
    values = x.reshape(batch * channels, -1)
    # Sums of up to H*W values: half-precision inputs (AMP) are pooled in float32.
    compute_dtype = torch.promote_types(values.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        values = values.to(compute_dtype)
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            low, value_range, thresholds = _normalisation(values, lambdas, eps)
            mask = _keep_mask(values, low, value_range, thresholds)
            pooled = torch.bmm(values.unsqueeze(1), mask).squeeze(1) / mask.sum(dim=1)
        else:
            pooled = _GeneralizedPoolFunction.apply(values, lambdas, eps)
    return pooled.to(x.dtype).reshape(batch, channels, -1)


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
