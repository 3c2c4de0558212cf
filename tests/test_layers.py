"""BFP (Eq. 1-5) and generalized pooling (Eq. 6) against direct computations."""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from hbfp_timm.layers import BFP, GeneralizedPooling, generalized_pool2d
from hbfp_timm.layers import gep as gep_module

from conftest import DEVICES

torch.manual_seed(0)


# --- generalized pooling ------------------------------------------------------------------------

def _gep_reference(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 6 literally, one channel at a time: normalise, keep >= lambda, average the raw kept values."""
    out = torch.empty(x.shape[:2])
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            values = x[b, c].flatten()
            normalised = (values - values.min()) / (values.max() - values.min())
            out[b, c] = values[normalised >= lam].mean()
    return out


def test_gep_lambda_zero_is_average_pooling():
    x = torch.randn(3, 5, 6, 4)
    pooled = GeneralizedPooling(lambdas=(0.0,))(x)
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_gep_lambda_one_is_max_pooling():
    x = torch.randn(3, 5, 6, 4)
    pooled = GeneralizedPooling(lambdas=(1.0,))(x)
    torch.testing.assert_close(pooled, F.adaptive_max_pool2d(x, 1).flatten(1))


def test_gep_default_is_the_mean_of_the_five_thresholds():
    x = torch.randn(2, 7, 5, 3)
    expected = sum(_gep_reference(x, lam) for lam in (0.0, 0.3, 0.5, 0.7, 1.0)) / 5
    torch.testing.assert_close(GeneralizedPooling()(x), expected)


def test_gep_combine_sum_is_the_papers_literal_sum():
    x = torch.randn(2, 7, 5, 3)
    expected = sum(_gep_reference(x, lam) for lam in (0.0, 0.3, 0.5, 0.7, 1.0))
    torch.testing.assert_close(GeneralizedPooling(combine='sum')(x), expected)


def test_gep_default_lies_between_average_and_max_pooling_for_every_channel():
    x = torch.randn(4, 64, 12, 4) * torch.rand(1, 64, 1, 1) * 10 + torch.randn(1, 64, 1, 1)
    pooled = GeneralizedPooling()(x)
    average, maximum = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
    tol = 1e-5 * (1 + x.abs().amax())
    assert (pooled >= average - tol).all() and (pooled <= maximum + tol).all()
    assert (pooled > average + 1e-3).all() and (pooled < maximum - 1e-3).all()  # strictly inside on random maps


@pytest.mark.parametrize('implementation', ['chunked', 'plain'])
def test_gep_implementations_match_the_reference_in_values_and_gradients(implementation):
    # Unsorted and repeated thresholds, a constant channel, and ties at the maximum.
    lambdas = torch.tensor([0.7, 0.0, 1.0, 0.3, 0.5, 0.5])
    x = torch.randn(3, 6, 5, 4)
    x[1, 2] = 0.25
    x[2, 3, 0, :2] = x[2, 3].max()
    reference = torch.stack([_gep_reference_guarded(x, float(lam)) for lam in lambdas], dim=-1)
    x = x.requires_grad_()
    pooled = generalized_pool2d(x, lambdas, implementation=implementation)
    torch.testing.assert_close(pooled, reference)
    weights = torch.randn_like(pooled)
    (grad,) = torch.autograd.grad((pooled * weights).sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    expected_pooled = torch.stack([_gep_reference_guarded(x_ref, float(lam)) for lam in lambdas], dim=-1)
    (expected_grad,) = torch.autograd.grad((expected_pooled * weights).sum(), x_ref)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize('device', DEVICES)
def test_gep_default_implementation_of_each_device_matches_the_reference(device):
    """On CUDA this is the fused Triton path (or its fallback); on CPU the chunked one."""
    lambdas = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])
    x = torch.randn(4, 16, 24, 8)
    x[0, 3] = -2.0
    x_dev = x.to(device).requires_grad_()
    pooled = generalized_pool2d(x_dev, lambdas.to(device))
    weights = torch.randn(pooled.shape)
    (grad,) = torch.autograd.grad((pooled * weights.to(device)).sum(), x_dev)
    x_ref = x.clone().requires_grad_()
    expected = torch.stack([_gep_reference_guarded(x_ref, float(lam)) for lam in lambdas], dim=-1)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x_ref)
    torch.testing.assert_close(pooled.cpu(), expected)
    torch.testing.assert_close(grad.cpu(), expected_grad)


def test_gep_triton_kernels_match_the_reference_in_the_triton_interpreter():
    """The fused CUDA kernels, run by Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 must be set before
    the kernels are defined, hence a fresh process): float32 and bfloat16 input, values and gradients."""
    pytest.importorskip('triton', reason='the fused kernels are Triton code; without Triton they are never used')
    script = textwrap.dedent("""
        import torch
        from hbfp_timm.layers.gep import generalized_pool2d, _check_triton
        torch.manual_seed(0)
        lambdas = torch.tensor([0.7, 0.0, 1.0, 0.3, 0.5, 0.5])
        x = torch.randn(3, 6, 5, 4)
        x[1, 2] = 0.25
        x[2, 3, 0, :2] = x[2, 3].max()
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            xd = x.to(dtype).requires_grad_()
            pooled = generalized_pool2d(xd, lambdas, implementation='triton')
            xr = x.to(dtype).float().requires_grad_()
            expected = generalized_pool2d(xr, lambdas, implementation='chunked')
            assert pooled.dtype == dtype, pooled.dtype
            torch.testing.assert_close(pooled.float(), expected.to(dtype).float(), rtol=tol, atol=tol)
            weights = torch.randn(pooled.shape)
            (grad,) = torch.autograd.grad((pooled.float() * weights).sum(), xd)
            (expected_grad,) = torch.autograd.grad((expected * weights).sum(), xr)
            assert grad.dtype == dtype, grad.dtype
            torch.testing.assert_close(grad.float(), expected_grad, rtol=tol, atol=tol)
        assert _check_triton(torch.device('cpu'), 7)
        print('ok')
    """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=dict(os.environ, TRITON_INTERPRET='1'))
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-2000:]


def test_gep_triton_check_failure_warns_once_and_says_no(monkeypatch):
    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values, lambdas, eps):
            raise RuntimeError('cannot compile')

    monkeypatch.setattr(gep_module, '_triton_function', lambda: Broken)
    monkeypatch.setattr(gep_module, '_TRITON_CHECKED', {})
    with pytest.warns(RuntimeWarning, match="RuntimeError: cannot compile.*using the 'plain' implementation"):
        assert gep_module._check_triton(torch.device('cpu'), 12) is False
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # remembered: no second check, no second warning
        assert gep_module._check_triton(torch.device('cpu'), 12) is False


def _gep_reference_guarded(x: torch.Tensor, lam: float) -> torch.Tensor:
    """:func:`_gep_reference`, differentiable, with constant channels kept whole (the layer's eps guard)."""
    rows = []
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            values = x[b, c].flatten()
            span = values.max() - values.min()
            if span < 1e-6:
                rows.append(values.mean())
                continue
            rows.append(values[(values - values.min()) / span >= lam].mean())
    return torch.stack(rows).reshape(x.shape[:2])


def test_gep_half_precision_input_is_pooled_in_float32_and_returned_in_its_dtype():
    x = torch.randn(2, 5, 6, 4)
    pooled = GeneralizedPooling()(x.to(torch.bfloat16))
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled, GeneralizedPooling()(x.to(torch.bfloat16).float()).to(torch.bfloat16),
                               rtol=0, atol=0)


def test_gep_scripts_with_torchscript_and_matches_eager():
    x = torch.randn(2, 7, 5, 3)
    for pool in (GeneralizedPooling(), GeneralizedPooling(combine='sum', learnable=True, flatten=False)):
        torch.testing.assert_close(torch.jit.script(pool)(x), pool(x))


def test_gep_matches_hand_computed_channel():
    # Values 0, 1, 2, 3, 4 on one channel: normalised 0, .25, .5, .75, 1.
    x = torch.arange(5.0).reshape(1, 1, 5, 1)
    per_lambda = generalized_pool2d(x, torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0]))
    # lambda 0 -> mean(0..4) = 2; 0.3 -> mean(2,3,4) = 3; 0.5 -> mean(2,3,4) = 3; 0.7 -> mean(3,4) = 3.5; 1 -> 4
    torch.testing.assert_close(per_lambda[0, 0], torch.tensor([2.0, 3.0, 3.0, 3.5, 4.0]))


def test_gep_constant_channel_gives_the_constant_for_every_lambda():
    x = torch.full((1, 2, 3, 3), 1.5)
    torch.testing.assert_close(generalized_pool2d(x, torch.tensor([0.0, 0.5, 1.0])), torch.full((1, 2, 3), 1.5))
    torch.testing.assert_close(GeneralizedPooling()(x), torch.full((1, 2), 1.5))


def test_gep_gradients_flow_to_the_kept_values_only():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 5, 1).requires_grad_()
    GeneralizedPooling(lambdas=(0.7,))(x).sum().backward()
    # Kept: 3 and 4 (normalised .75 and 1), each with weight 1/2.
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5]))


def test_gep_learnable_weights_scale_each_threshold_and_train():
    x = torch.randn(2, 3, 4, 4)
    pool = GeneralizedPooling(lambdas=(0.0, 1.0), learnable=True)
    torch.testing.assert_close(pool(x), (x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))) / 2)  # starts at the mean
    with torch.no_grad():
        pool.weight.copy_(torch.tensor([2.0, -1.0]))
    expected = 2 * x.mean(dim=(2, 3)) - x.amax(dim=(2, 3))
    out = pool(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert pool.weight.grad is not None and pool.weight.grad.abs().sum() > 0


def test_gep_rejects_bad_lambdas_and_shapes():
    with pytest.raises(ValueError, match='lambdas'):
        GeneralizedPooling(lambdas=(0.0, 1.5))
    with pytest.raises(ValueError, match='^lambdas:'):
        GeneralizedPooling(lambdas='abc')
    with pytest.raises(ValueError, match='^combine:'):
        GeneralizedPooling(combine='max')
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        GeneralizedPooling()(torch.randn(2, 3))
    with pytest.raises(ValueError, match='^GeneralizedPooling: x must be a floating-point map, got torch.int64$'):
        GeneralizedPooling()(torch.tensor([[[[0, 1], [2, 9]]]]))  # integers would be averaged and truncated
    with pytest.raises(ValueError, match="^input_fmt: expected 'NCHW' or 'NHWC', got 'NCL'$"):
        GeneralizedPooling(input_fmt='NCL')


def test_gep_names_x_for_a_list_of_maps_or_a_map_without_positions():
    """A features_only backbone returns a list of maps; a map may have no position left. Each is one ValueError
    naming x, not an AttributeError or IndexError from inside the pooling."""
    maps = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    with pytest.raises(ValueError, match=r'^GeneralizedPooling: x must be a \(B, C, H, W\) tensor, got list \(a '
                                         r'features_only model returns a list of maps'):
        GeneralizedPooling()(maps)
    with pytest.raises(ValueError, match=r'^GeneralizedPooling: x must be a \(B, C, H, W\) map with at least one '
                                         r'position to pool, got shape \[2, 3, 0, 4\]$'):
        GeneralizedPooling()(torch.randn(2, 3, 0, 4))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\) \(input_fmt='NHWC'\) map with at least one position"):
        GeneralizedPooling(input_fmt='NHWC')(torch.randn(2, 4, 0, 3))
    with pytest.raises(ValueError, match=r'^lambdas: expected a 1-D tensor of thresholds in \[0, 1\]'):
        generalized_pool2d(maps[0], (0.0, 1.0))


@pytest.mark.parametrize('kwargs', [{}, dict(learnable=True), dict(flatten=False)])
def test_gep_of_an_empty_batch_is_empty_as_average_pooling(kwargs):
    x = torch.randn(0, 5, 3, 4, requires_grad=True)
    pool = GeneralizedPooling(**kwargs)
    expected = F.adaptive_avg_pool2d(x, 1)
    for pooled in (pool(x), torch.jit.script(pool)(x)):
        assert pooled.shape == (expected.shape if not pool.flatten else expected.shape[:2])
    pool(x).sum().backward()
    assert x.grad.shape == x.shape


def test_gep_pools_channels_last_maps_as_their_channels_first_twin():
    """timm's Swin-like feature extractors give (B, H, W, C) maps: input_fmt='NHWC' pools over H and W, as timm's
    own pooling layers do."""
    x = torch.randn(2, 5, 4, 3)  # B, C, H, W
    for learnable in (False, True):
        nchw, nhwc = GeneralizedPooling(learnable=learnable), GeneralizedPooling(learnable=learnable, input_fmt='NHWC')
        torch.testing.assert_close(nhwc(x.permute(0, 2, 3, 1)), nchw(x), rtol=0, atol=0)
    assert "input_fmt='NHWC'" in repr(GeneralizedPooling(input_fmt='NHWC'))
    scripted = torch.jit.script(GeneralizedPooling(input_fmt='NHWC'))
    torch.testing.assert_close(scripted(x.permute(0, 2, 3, 1)), GeneralizedPooling()(x))


@pytest.mark.parametrize('input_fmt', ['NCHW', 'NHWC'])
@pytest.mark.parametrize('flatten', [True, False])
def test_gep_at_lambda_0_and_1_is_timms_average_and_max_pooling_in_its_layout(input_fmt, flatten):
    """Unflattened, the pooled map keeps the input's layout as timm's SelectAdaptivePool2d does: (B, 1, 1, C) for
    channels-last maps, which a channels-last head (a LayerNorm over the last dimension) then reads as channels."""
    from timm.layers import SelectAdaptivePool2d
    x = torch.randn(2, 4, 3, 5)
    for lam, pool_type in ((0.0, 'avg'), (1.0, 'max')):
        gep = GeneralizedPooling((lam,), flatten=flatten, input_fmt=input_fmt)
        expected = SelectAdaptivePool2d(pool_type=pool_type, flatten=flatten, input_fmt=input_fmt)(x)
        torch.testing.assert_close(gep(x), expected)
        torch.testing.assert_close(torch.jit.script(gep)(x), expected)


def test_gep_traces_with_plain_torch_fx_to_the_eager_result():
    pool, x = GeneralizedPooling(), torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(torch.fx.symbolic_trace(pool)(x), pool(x), rtol=0, atol=0)


# --- BFP ----------------------------------------------------------------------------------------

def _conv_bn(module, x):
    """Apply a ConvNormAct (eval mode) to a (C, N) matrix of positions, as a matrix product."""
    weight = module.conv.weight.flatten(1)
    bn = module.bn
    y = weight @ x
    y = (y - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
    y = y * bn.weight[:, None] + bn.bias[:, None]
    return bn.act(y)


def _bfp_reference(bfp: BFP, p: torch.Tensor, q: torch.Tensor):
    """Eq. 1-5 for one sample, position by position (loops over i, j), from the module's weights."""
    p_flat, q_flat = p.flatten(1), q.flatten(1)  # (D, N)
    p_masked = p_flat * _conv_bn(bfp.p_mask.mask, p_flat)  # Eq. 1
    q_masked = q_flat * _conv_bn(bfp.q_mask.mask, q_flat)
    a = torch.relu(_conv_bn(bfp.p_correlation, p_masked))  # sigma(X'U)
    b = torch.relu(_conv_bn(bfp.q_correlation, q_masked))  # sigma(Y'V)
    n_p, n_q = p_flat.shape[1], q_flat.shape[1]
    corr = torch.empty(n_p, n_q)
    for i in range(n_p):  # Eq. 2: C_ij = p^T (sigma(x'_i U) * sigma(y'_j V))
        for j in range(n_q):
            corr[i, j] = (bfp.bilinear_weight * a[:, i] * b[:, j]).sum()
    a_space = _conv_bn(bfp.p_perception, p_masked)  # sigma(X'U'), (L', N_P)
    b_space = _conv_bn(bfp.q_perception, q_masked)
    p_from_q = torch.empty(a_space.shape[0], n_p)
    for i in range(n_p):  # each P position gathers Q through softmax over j of row i
        weights = torch.softmax(corr[i, :], dim=0)
        p_from_q[:, i] = a_space[:, i] * (b_space * weights).sum(dim=1)
    q_from_p = torch.empty(b_space.shape[0], n_q)
    for j in range(n_q):  # each Q position gathers P through softmax over i of column j
        weights = torch.softmax(corr[:, j], dim=0)
        q_from_p[:, j] = (a_space * weights).sum(dim=1) * b_space[:, j]
    p_tilde = _conv_bn(bfp.p_projection, p_from_q).reshape(p.shape)  # Eq. 5
    q_tilde = _conv_bn(bfp.q_projection, q_from_p).reshape(q.shape)
    return corr, p_tilde, q_tilde


def _randomise_bn(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def test_bfp_matches_a_loop_over_positions_of_eq_2_to_5():
    bfp = BFP(p_channels=6, q_channels=5, correlation_dim=4, perception_dim=7, residual=False).eval()
    _randomise_bn(bfp)
    with torch.no_grad():
        bfp.bilinear_weight.copy_(torch.randn(4))
    p, q = torch.randn(2, 6, 3, 2), torch.randn(2, 5, 2, 2)  # maps may differ in channels and size
    with torch.no_grad():
        p_tilde, q_tilde = bfp(p, q)
        corr = bfp.correlation(bfp.p_mask(p), bfp.q_mask(q))
        for sample in range(2):
            ref_corr, ref_p, ref_q = _bfp_reference(bfp, p[sample], q[sample])
            torch.testing.assert_close(corr[sample], ref_corr, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(p_tilde[sample], ref_p, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(q_tilde[sample], ref_q, rtol=1e-5, atol=1e-5)


def test_bfp_residual_is_identity_at_initialisation():
    bfp = BFP(8, 16, correlation_dim=4, perception_dim=8, residual=True).train()
    p, q = torch.randn(3, 8, 4, 2), torch.randn(3, 16, 4, 2)
    p_aug, q_aug = bfp(p, q)
    assert torch.equal(p_aug, p) and torch.equal(q_aug, q)
    # ... yet it can learn: the zero-initialised BN weights receive a gradient.
    (p_aug.sum() + q_aug.pow(2).sum()).backward()
    assert bfp.p_projection.bn.weight.grad.abs().sum() > 0
    assert bfp.q_projection.bn.weight.grad.abs().sum() > 0


def test_bfp_literal_reading_returns_the_perception_maps():
    bfp = BFP(4, 6, correlation_dim=3, perception_dim=5, residual=False).eval()
    _randomise_bn(bfp)
    p, q = torch.randn(1, 4, 2, 2), torch.randn(1, 6, 2, 2)
    with torch.no_grad():
        p_aug, q_aug = bfp(p, q)
        p_tilde, q_tilde = bfp.perceive(p, q)
    assert torch.equal(p_aug, p_tilde) and torch.equal(q_aug, q_tilde)
    assert not torch.allclose(p_aug, p)


def test_bfp_rejects_wrong_channel_count():
    bfp = BFP(4, 6, correlation_dim=3, perception_dim=5)
    with pytest.raises(ValueError, match=r'q must be \(B, 6, H, W\)'):
        bfp(torch.randn(1, 4, 2, 2), torch.randn(1, 5, 2, 2))


@pytest.mark.parametrize('kwargs, arg', [
    (dict(correlation_dim=-5), 'correlation_dim'),
    (dict(perception_dim=0), 'perception_dim'),
    (dict(correlation_dim=2.5), 'correlation_dim'),
    (dict(p_channels=True), 'p_channels'),
])
def test_bfp_bad_sizes_name_the_argument(kwargs, arg):
    args = dict(p_channels=4, q_channels=6, correlation_dim=3, perception_dim=5)
    with pytest.raises(ValueError, match=f'^{arg}: expected a positive integer, got {kwargs[arg]!r}$'):
        BFP(**dict(args, **kwargs))


def test_bfp_names_the_argument_of_a_list_an_integer_map_an_empty_map_and_a_channels_last_map():
    bfp = BFP(4, 6, correlation_dim=3, perception_dim=5)
    q = torch.randn(2, 6, 2, 2)
    with pytest.raises(ValueError, match=r'^BFP: p must be a \(B, 4, H, W\) tensor, got list$'):
        bfp([torch.randn(2, 4, 3, 2)], q)
    with pytest.raises(ValueError, match='^BFP: p must be a floating-point map, got torch.int64$'):
        bfp(torch.ones(2, 4, 3, 2, dtype=torch.long), q)
    with pytest.raises(ValueError, match=r'^BFP: q must have at least one position, got shape \(2, 6, 0, 2\)$'):
        bfp(torch.randn(2, 4, 3, 2), torch.randn(2, 6, 0, 2))
    # timm's Swin-like feature extractors give (B, H, W, C) maps: the message says how to turn them.
    with pytest.raises(ValueError, match=r'^BFP: q must be \(B, 6, H, W\), got shape \(2, 2, 2, 6\); it looks '
                                         r'channels-last \(B, H, W, C\): pass q.permute\(0, 3, 1, 2\)$'):
        bfp(torch.randn(2, 4, 3, 2), q.permute(0, 2, 3, 1))
    p_aug, q_aug = bfp(torch.randn(2, 4, 3, 2), q.permute(0, 2, 3, 1).permute(0, 3, 1, 2))
    assert p_aug.shape == (2, 4, 3, 2) and q_aug.shape == q.shape


def test_bfp_refuses_maps_of_two_batches():
    bfp = BFP(4, 6, correlation_dim=3, perception_dim=5)
    with pytest.raises(ValueError, match='^BFP: p and q must hold the same batch, got 1 and 2 maps$'):
        bfp(torch.randn(1, 4, 3, 2), torch.randn(2, 6, 2, 2))


def test_bfp_scripts_and_traces_to_the_eager_result():
    bfp = BFP(4, 6, correlation_dim=3, perception_dim=5, residual=False).eval()
    _randomise_bn(bfp)
    p, q = torch.randn(2, 4, 3, 2), torch.randn(2, 6, 2, 2)
    with torch.no_grad():
        expected = bfp(p, q)
        for compiled in (torch.jit.script(bfp), torch.fx.symbolic_trace(bfp)):
            for got, want in zip(compiled(p, q), expected):
                torch.testing.assert_close(got, want)
