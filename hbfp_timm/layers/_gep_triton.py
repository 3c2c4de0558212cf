"""Fused Triton kernels of generalized pooling (Eq. 6) for CUDA: one read of the map in forward, one read and one
write in backward, whatever the number of thresholds.

Each program takes a block of rows (channels) of ``BLOCK_N`` >= N positions: it loads the row once (any float dtype,
computed in float32), reduces its min and max, normalises with a correctly rounded division (the same float32
arithmetic as the reference, so a value sits on the same side of every threshold and the row's maximum normalises
to exactly 1), and accumulates every threshold's kept sum and count in registers. Backward recomputes the keep
decisions instead of storing a mask. Imported only on first use on a CUDA tensor (``hbfp_timm.layers.gep``);
``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors, which is how the tests check them on machines
without a GPU.
"""
import torch
import triton
import triton.language as tl

__all__ = ['MAX_POSITIONS', 'TritonPoolFunction']

# Rows longer than this do not fit one program's registers; the caller uses another implementation.
MAX_POSITIONS = 4096
_ELEMENTS_PER_PROGRAM = 4096


@triton.jit
def _load_normalised(x_ptr, row_ids, rows, positions, eps, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.arange(0, BLOCK_N)
    row_mask = row_ids < rows
    mask = row_mask[:, None] & (cols[None, :] < positions)
    offsets = row_ids[:, None].to(tl.int64) * positions + cols[None, :]
    values = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    low = tl.min(tl.where(mask, values, float('inf')), axis=1)
    span = tl.max(tl.where(mask, values, float('-inf')), axis=1) - low
    constant = span < eps  # every position of a constant row counts as a maximum
    normalised = tl.math.div_rn(values - low[:, None], tl.maximum(span, eps)[:, None])
    return values, normalised, constant, mask, offsets


@triton.jit
def _forward_kernel(x_ptr, lambdas_ptr, mean_ptr, count_ptr, rows, positions, eps,
                    K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    row_ids = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    values, normalised, constant, mask, offsets = _load_normalised(
        x_ptr, row_ids, rows, positions, eps, BLOCK_R, BLOCK_N)
    row_mask = row_ids < rows
    for k in tl.static_range(K):
        keep = ((normalised >= tl.load(lambdas_ptr + k)) | constant[:, None]) & mask
        kept_sum = tl.sum(tl.where(keep, values, 0.0), axis=1)
        kept_count = tl.sum(keep.to(tl.float32), axis=1)
        tl.store(mean_ptr + row_ids * K + k, tl.math.div_rn(kept_sum, kept_count), mask=row_mask)
        tl.store(count_ptr + row_ids * K + k, kept_count, mask=row_mask)


@triton.jit
def _backward_kernel(x_ptr, lambdas_ptr, grad_mean_ptr, count_ptr, grad_x_ptr, rows, positions, eps,
                     K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    row_ids = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    values, normalised, constant, mask, offsets = _load_normalised(
        x_ptr, row_ids, rows, positions, eps, BLOCK_R, BLOCK_N)
    row_mask = row_ids < rows
    grad = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for k in tl.static_range(K):
        keep = ((normalised >= tl.load(lambdas_ptr + k)) | constant[:, None]) & mask
        # d mean_k / d value = 1 / count_k for the kept values, 0 elsewhere.
        weight = (tl.load(grad_mean_ptr + row_ids * K + k, mask=row_mask, other=0.0)
                  / tl.load(count_ptr + row_ids * K + k, mask=row_mask, other=1.0))
        grad += tl.where(keep, weight[:, None], 0.0)
    tl.store(grad_x_ptr + offsets, grad.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _launch_shape(rows: int, positions: int):
    block_n = triton.next_power_of_2(positions)
    block_r = max(1, _ELEMENTS_PER_PROGRAM // block_n)
    return (triton.cdiv(rows, block_r),), block_r, block_n


class TritonPoolFunction(torch.autograd.Function):
    """GeP over contiguous rows (R, N) of any float dtype -> float32 (R, K) means; gradients in the input dtype."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, lambdas: torch.Tensor, eps: float) -> torch.Tensor:
        values = values.contiguous()
        lambdas = lambdas.to(device=values.device, dtype=torch.float32).contiguous()
        rows, positions = values.shape
        num_lambdas = lambdas.numel()
        means = values.new_empty(rows, num_lambdas, dtype=torch.float32)
        counts = torch.empty_like(means)
        grid, block_r, block_n = _launch_shape(rows, positions)
        _forward_kernel[grid](values, lambdas, means, counts, rows, positions, eps,
                              K=num_lambdas, BLOCK_R=block_r, BLOCK_N=block_n)
        ctx.save_for_backward(values, lambdas, counts)
        ctx.eps = eps
        return means

    @staticmethod
    def backward(ctx, grad_means: torch.Tensor):
        values, lambdas, counts = ctx.saved_tensors
        rows, positions = values.shape
        grad_values = torch.empty_like(values)
        grid, block_r, block_n = _launch_shape(rows, positions)
        _backward_kernel[grid](values, lambdas, grad_means.float().contiguous(), counts, grad_values, rows,
                               positions, ctx.eps, K=lambdas.numel(), BLOCK_R=block_r, BLOCK_N=block_n)
        return grad_values, None, None
