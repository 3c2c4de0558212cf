"""Generalized pooling (GeP), HBFP-Net Eq. 6 and Table 3.

For one feature map each channel is min-max normalised over its H*W positions; for a threshold
lambda the positions whose normalised value is >= lambda are kept and their *raw* values averaged.
lambda = 0 keeps every position (average pooling), lambda = 1 keeps only the maxima (max pooling).
The layer evaluates a set of thresholds and combines the results, optionally with one learnable weight per
threshold ("trainable" GeP).

**(choice)** The combination is the *mean* over the thresholds by default. The paper (4.5) says "sum them as
the final representation"; the two differ by the constant factor K (number of thresholds), but that factor
scales the pooled feature the batch-hard triplet loss sees, so with the sum BoT's margin 0.3 acts like 0.3 / K
and Table 3's rows (1 to 5 thresholds) would be trained at different feature scales. With the mean, every
channel's output lies between its average and its maximum, at the scale of average pooling whatever K is.
``combine='sum'`` gives the paper's literal sum.

Exact implementations of the same arithmetic, chosen by device:

* ``'plain'``: one differentiable expression over the whole (positions x thresholds) keep-mask; the reference, and
  what ``torch.compile``, ``torch.export``, ONNX and TorchScript trace; the default where nothing faster has been
  measured (accelerators other than CUDA with Triton);
* CPU (``'chunked'``): the keep-mask is built in cache-sized chunks of channels into one reused buffer and
  multiplied with the values. On a 2-core CPU, hbfp_resnet50's 4096x24x8 GeP input at batch 8, it is 3.6x faster
  than ``'plain'`` in eval and 1.4x in forward + backward (``python -m benchmarks.speed --sections layers
  --img-size 384 128 --batch-sizes 8 --repeats 7``). A mask-free ``bucketize`` path, once the default off CPU,
  measured 1.3x / 1.2x there (and 0.8x / 1.0x on hbfp_mobilenetv2_100's 1280x8x4 maps at batch 32) against
  ``'chunked'``'s 3.7x / 1.4x and 1.5x / 1.2x; winning nowhere it was measured, it was removed;
* CUDA (``'triton'``, when Triton is installed): fused kernels that read the map once in forward and once in
  backward, in its own dtype, with every threshold's sum and count kept in registers (``_gep_triton.py``). Kept
  until the GPU check (``python -m benchmarks.gpu``) measures it. Before its first use on a device it is checked
  against ``'plain'`` on a small input, forward and backward; a failure (a Triton that cannot compile it, a
  mismatch) is reported once as a warning and ``'plain'`` is used instead.

Paper: Liu, Zhang, Yang, "Hierarchical Bi-Directional Feature Perception Network for Person
Re-Identification", ACM MM 2020, Section 3.3.
"""
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn as nn

__all__ = ['GeneralizedPooling', 'generalized_pool2d', 'default_implementation', 'GEP_COMBINES']

GEP_COMBINES = ('mean', 'sum')

# Elements of the (rows, N, K) keep-mask materialised at once by the eager path: about 4 MB of float32,
# so that the mask is written and read back from cache instead of memory (measured 3-6x faster than one
# whole-batch mask on a 2-core CPU; see benchmarks/speed.py).
_MASK_CHUNK_ELEMENTS = 1 << 20


def _normalisation(values: torch.Tensor, lambdas: torch.Tensor,
                   eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _plain_pool(values: torch.Tensor, lambdas: torch.Tensor, eps: float) -> torch.Tensor:
    """The same arithmetic as one differentiable expression over the whole (R, N, K) mask, for tracers
    (``torch.compile`` fuses it into one reduction; ``torch.export`` and ONNX see comparison, MatMul, ReduceSum,
    Div) and for TorchScript."""
    low, value_range, thresholds = _normalisation(values, lambdas, eps)
    mask = _keep_mask(values, low, value_range, thresholds)
    return torch.bmm(values.unsqueeze(1), mask).squeeze(1) / mask.sum(dim=1)


# Devices on which the Triton kernels passed (True) or failed (False) their first-use check.
_TRITON_CHECKED: Dict[torch.device, bool] = {}


def _triton_function():
    """The fused Triton autograd function, or None where Triton is not installed."""
    try:
        from ._gep_triton import TritonPoolFunction
    except ImportError:
        return None
    return TritonPoolFunction


def _check_triton(device: torch.device, positions: int) -> bool:
    """Compare the Triton kernels with the plain path once per device, forward and backward, on a small input with
    ties, a constant row and unsorted thresholds; warn once and say no if they fail or differ."""
    if device not in _TRITON_CHECKED:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(16, positions, generator=generator)
        probe[3] = 0.5
        probe[5, :2] = probe[5].max()
        probe = probe.to(device).requires_grad_()
        lambdas = torch.tensor([0.7, 0.0, 1.0, 0.3, 0.5], device=device)
        weights = torch.randn(16, 5, generator=generator).to(device)
        try:
            fused = _triton_function().apply(probe, lambdas, 1e-6)
            (fused_grad,) = torch.autograd.grad((fused * weights).sum(), probe)
            expected = _plain_pool(probe, lambdas, 1e-6)
            (expected_grad,) = torch.autograd.grad((expected * weights).sum(), probe)
            ok = torch.allclose(fused, expected, rtol=1e-5, atol=1e-5) and \
                torch.allclose(fused_grad, expected_grad, rtol=1e-5, atol=1e-6)
            problem = 'its results differ from the reference'
        except Exception as exc:  # a Triton or driver that cannot build the kernels: any error type
            ok, problem = False, f'{type(exc).__name__}: {exc}'.splitlines()[0]
        if not ok:
            warnings.warn(f'generalized pooling: the fused Triton kernels failed their check on {device} ({problem}); '
                          f"using the 'plain' implementation there instead", RuntimeWarning, stacklevel=4)
        _TRITON_CHECKED[device] = ok
    return _TRITON_CHECKED[device]


def default_implementation(values: torch.Tensor) -> str:
    """The implementation :func:`generalized_pool2d` picks for ``values`` (rows of a map) when none is given."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return 'plain'
    if values.numel() == 0:  # an empty batch: nothing to pool, no kernel to launch
        return 'plain'
    if values.device.type == 'cpu':
        return 'chunked'
    half_or_single = values.dtype in (torch.float32, torch.float16, torch.bfloat16)  # the kernels add in float32
    if values.device.type == 'cuda' and half_or_single and _triton_function() is not None:
        from ._gep_triton import MAX_POSITIONS
        if values.shape[1] <= MAX_POSITIONS and _check_triton(values.device, values.shape[1]):
            return 'triton'
    return 'plain'


@torch.jit.unused
def _dispatch(values: torch.Tensor, lambdas: torch.Tensor, eps: float, implementation: Optional[str]) -> torch.Tensor:
    """Eager and traced paths over rows (R, N) of any float dtype (TorchScript takes :func:`_plain_pool` directly)."""
    implementation = implementation or default_implementation(values)
    if implementation == 'triton':
        function = _triton_function()
        if function is None:
            raise ValueError("implementation: 'triton' needs the triton package")
        with torch.autocast(device_type=values.device.type, enabled=False):
            return function.apply(values, lambdas, eps)  # reads half-precision input itself, returns float32
    functions = {'plain': _plain_pool, 'chunked': _GeneralizedPoolFunction.apply}
    if implementation not in functions:
        raise ValueError(f"implementation: expected 'chunked', 'triton', 'plain' or None, got {implementation!r}")
    # Sums of up to H*W values: half-precision inputs (AMP) are pooled in float32.
    values = values.to(torch.promote_types(values.dtype, torch.float32))
    with torch.autocast(device_type=values.device.type, enabled=False):
        return functions[implementation](values, lambdas, eps)


def _pool_float(x: torch.Tensor, lambdas: torch.Tensor, eps: float, implementation: Optional[str]) -> torch.Tensor:
    """:func:`generalized_pool2d` in float32 (or float64 for float64 input), before the cast back."""
    batch, channels = x.shape[0], x.shape[1]
    positions = x.flatten(2)
    values = positions.reshape(batch * channels, positions.shape[2])  # not -1: an empty batch has no rows to infer
    if torch.jit.is_scripting():
        pooled = _plain_pool(values.to(torch.promote_types(values.dtype, torch.float32)), lambdas, eps)
    else:
        pooled = _dispatch(values, lambdas, eps, implementation)
    return pooled.reshape(batch, channels, pooled.shape[-1])


# Under plain torch.fx.symbolic_trace the pooling is one call in the graph (its path is picked from the input's
# device and dtype, which tracing cannot see); timm's own fx feature extraction keeps GeneralizedPooling a leaf.
torch.fx.wrap('_pool_float')


def generalized_pool2d(
        x: torch.Tensor,
        lambdas: torch.Tensor,
        eps: float = 1e-6,
        implementation: Optional[str] = None,
) -> torch.Tensor:
    """Pool a (B, C, H, W) map once per threshold, all thresholds in one pass.

    A min and a max reduction give every channel's normalisation; every value is compared with all K
    thresholds at once, and each threshold's kept sum and count follow without a sort and without a loop over
    thresholds (see the module docstring for the implementations). Under ``torch.compile``,
    ``torch.export``, ONNX export and TorchScript the same arithmetic runs as one plain differentiable
    expression, which all of them can trace.

    Args:
        x: Feature map of shape (B, C, H, W).
        lambdas: 1-D tensor of K thresholds in [0, 1].
        eps: A channel whose max - min is below ``eps`` is constant; all its positions count as maxima
            (a numerical guard: min-max normalisation is undefined there, and every lambda gives the
            constant itself).
        implementation: ``'chunked'`` (the CPU default), ``'triton'`` (the CUDA default where Triton is installed
            and passes its check) or ``'plain'`` (elsewhere); None picks by ``x.device``. All give the same values
            and gradients, to float32 rounding.

    Returns:
        Tensor of shape (B, C, K) and the dtype of ``x``: the mean of the kept raw values per threshold.
    """
    if not isinstance(lambdas, torch.Tensor):
        raise ValueError(f'lambdas: expected a 1-D tensor of thresholds in [0, 1] such as torch.tensor((0, 0.3, 0.5, '
                         f'0.7, 1.0)), got {type(lambdas).__name__} (GeneralizedPooling takes a sequence)')
    return _pool_float(x, lambdas, eps, implementation).to(x.dtype)


class GeneralizedPooling(nn.Module):
    """Generalized pooling over several thresholds (Eq. 6), combined by their mean (default) or sum.

    Args:
        lambdas: Thresholds on the min-max normalised map; the paper's default set is
            (0, 0.3, 0.5, 0.7, 1.0) (Table 3).
        combine: **(choice)** ``'mean'`` (default): the mean over the thresholds, so every channel's output lies
            between its average and its maximum and keeps the scale of average pooling whatever the number of
            thresholds. ``'sum'``: the paper's literal sum, K times larger.
        learnable: **(choice)** One weight per threshold, trained with the network ("trainable" GeP),
            initialised to the fixed combination (1/K each for ``'mean'``, 1 for ``'sum'``).
        flatten: Return (B, C) when True, else the input's layout with 1x1 positions: (B, C, 1, 1), or
            (B, 1, 1, C) for ``input_fmt='NHWC'`` (as timm's ``SelectAdaptivePool2d``).
        eps: Guard for constant channels (see :func:`generalized_pool2d`).
        input_fmt: Layout of the input map: ``'NCHW'`` (default; CNN features) or ``'NHWC'`` (the channels-last
            maps of timm's Swin and other transformer feature extractors), as in timm's pooling layers.
    """

    def __init__(
            self,
            lambdas: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 1.0),
            combine: str = 'mean',
            learnable: bool = False,
            flatten: bool = True,
            eps: float = 1e-6,
            input_fmt: str = 'NCHW',
    ):
        super().__init__()
        if input_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"input_fmt: expected 'NCHW' or 'NHWC', got {input_fmt!r}")
        try:
            lambdas = tuple(float(v) for v in lambdas)
        except (TypeError, ValueError):
            raise ValueError(f'lambdas: expected a sequence of numbers in [0, 1], got {lambdas!r}') from None
        if not lambdas or len(lambdas) > 254 or any(not 0.0 <= v <= 1.0 for v in lambdas):
            raise ValueError(f'lambdas: expected 1 to 254 values in [0, 1], got {lambdas}')
        if combine not in GEP_COMBINES:
            raise ValueError(f'combine: expected one of {GEP_COMBINES}, got {combine!r}')
        self.register_buffer('lambdas', torch.tensor(lambdas), persistent=False)
        self.combine = combine
        initial = 1.0 / len(lambdas) if combine == 'mean' else 1.0
        self.weight = nn.Parameter(torch.full((len(lambdas),), initial)) if learnable else None
        self.flatten = flatten
        self.eps = eps
        self.input_fmt = input_fmt

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: shape and dtype are not known yet
            return
        layout = '(B, C, H, W)' if self.input_fmt == 'NCHW' else "(B, H, W, C) (input_fmt='NHWC')"
        if not isinstance(x, torch.Tensor):
            listed = ' (a features_only model returns a list of maps: pool each one)' if isinstance(x, (list, tuple)) \
                else ''
            raise ValueError(f'GeneralizedPooling: x must be a {layout} tensor, got {type(x).__name__}{listed}')
        if x.ndim != 4:
            raise ValueError(f'GeneralizedPooling: x must be a {layout} map, got shape {list(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'GeneralizedPooling: x must be a floating-point map, got {x.dtype}')
        height, width = x.shape[1:3] if self.input_fmt == 'NHWC' else x.shape[2:]
        if height * width == 0:
            raise ValueError(f'GeneralizedPooling: x must be a {layout} map with at least one position to pool, got '
                             f'shape {list(x.shape)}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check_input(x)
        if self.input_fmt == 'NHWC':
            x = x.permute(0, 3, 1, 2)
        pooled = _pool_float(x, self.lambdas, self.eps, None)  # combined in float32, cast once
        weight = self.weight
        if weight is not None:
            out = pooled @ weight.to(pooled.dtype)
        elif self.combine == 'mean':
            out = pooled.mean(dim=-1)
        else:
            out = pooled.sum(dim=-1)
        out = out.to(x.dtype)
        if self.flatten:
            return out
        return out[:, None, None, :] if self.input_fmt == 'NHWC' else out[..., None, None]

    def extra_repr(self) -> str:
        lambdas = tuple(round(v, 4) for v in self.lambdas.tolist())
        fmt = '' if self.input_fmt == 'NCHW' else f', input_fmt={self.input_fmt!r}'
        return f'lambdas={lambdas}, combine={self.combine!r}, learnable={self.weight is not None}{fmt}'
