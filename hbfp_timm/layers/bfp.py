"""Bi-directional Feature Perception (BFP), HBFP-Net Section 3.2, Eq. 1-5.

A BFP module takes a pair of feature maps (P, Q) of one batch, e.g. low/middle or middle/high
levels of a backbone, and returns each map augmented by what it perceives of the other:

1. Self-awareness (Eq. 1): ``P' = sigmoid(BN(conv1x1(P)))  * P`` (one-channel spatial mask).
2. Low-rank bilinear correlation (Eq. 2-3): ``A = relu(BN(U P'))``, ``B = relu(BN(V Q'))`` with L
   channels; ``C = A^T diag(p) B`` is an (N_P x N_Q) matrix, ``C[i, j] = p . (A[:, i] * B[:, j])``.
   Softmax over each column of C and of C^T (Fig. 3).
3. Perception (Eq. 4): ``A' = relu(BN(U' P'))``, ``B' = relu(BN(V' Q'))`` with L' channels; each P
   position gathers Q through its row of C, each Q position gathers P through its column.
4. Projection (Eq. 5): ``P~ = BN(P_x P_q)``, ``Q~ = BN(P_y Q_p)``, back to the input channel counts.

Every linear map (U, V, U', V', P_x, P_y) is a 1x1 convolution "regularised by Batch Normalization"
(paper 4.2). The layer knows nothing of the backbone: plain (B, C, H, W) tensors in and out; the two
maps may differ in channels and in spatial size. It scripts with TorchScript and traces with torch.fx (its
input checks run in eager mode only).
"""
import math
from typing import Tuple

import torch
import torch.fx
import torch.nn as nn
from timm.layers import ConvNormAct

__all__ = ['SelfAwareness', 'BFP', 'augment', 'check_positive_int']


def check_positive_int(name: str, value: int) -> None:
    """Raise a ValueError naming the argument unless ``value`` is an integer >= 1 (a layer size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}: expected a positive integer, got {value!r}')


def _check_map(name: str, x: torch.Tensor, channels: int) -> None:
    """One BFP input: a floating-point (B, channels, H, W) tensor with at least one position."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'BFP: {name} must be a (B, {channels}, H, W) tensor, got {type(x).__name__}')
    if x.ndim != 4 or x.shape[1] != channels:
        # timm's Swin-like feature extractors give (B, H, W, C) maps.
        nhwc = f'; it looks channels-last (B, H, W, C): pass {name}.permute(0, 3, 1, 2)' \
            if x.ndim == 4 and x.shape[3] == channels else ''
        raise ValueError(f'BFP: {name} must be (B, {channels}, H, W), got shape {tuple(x.shape)}{nhwc}')
    if not x.is_floating_point():
        raise ValueError(f'BFP: {name} must be a floating-point map, got {x.dtype}')
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f'BFP: {name} must have at least one position, got shape {tuple(x.shape)}')


class SelfAwareness(nn.Module):
    """Spatial self-awareness mask of Eq. 1, ``x * sigmoid(BN(conv1x1(x -> 1)))``.

    **(choice)** A sigmoid over one output channel, as in the authors' released code; the paper only
    says "a 1x1 convolutional layer is utilized to learn 2-dimensional masks".
    """

    def __init__(self, channels: int):
        super().__init__()
        self.mask = ConvNormAct(channels, 1, kernel_size=1, act_layer='sigmoid')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


class BFP(nn.Module):
    """Bi-directional Feature Perception between two feature maps (Eq. 1-5).

    Args:
        p_channels: Channels of the first map P (D_1 in the paper).
        q_channels: Channels of the second map Q (D_2).
        correlation_dim: L, the low-rank bilinear pooling dimension (512 in the paper).
        perception_dim: L', the perception space dimension (2048 in the paper).
        residual: **(choice)** When True, ``forward`` returns ``(P + P~, Q + Q~)`` and the weight of the
            last BatchNorm of each projection is zero-initialised, so the module is the identity at
            initialisation and an ImageNet backbone stays intact at step 0 (the authors' code gates its
            re-fed map the same way). When False, ``forward`` returns the literal ``(P~, Q~)``.
    """

    def __init__(
            self,
            p_channels: int,
            q_channels: int,
            correlation_dim: int = 512,
            perception_dim: int = 2048,
            residual: bool = True,
    ):
        super().__init__()
        for name, value in (('p_channels', p_channels), ('q_channels', q_channels),
                            ('correlation_dim', correlation_dim), ('perception_dim', perception_dim)):
            check_positive_int(name, value)
        self.p_channels = p_channels
        self.q_channels = q_channels
        self.residual = residual
        self.p_mask = SelfAwareness(p_channels)  # Eq. 1, M_x
        self.q_mask = SelfAwareness(q_channels)  # Eq. 1, M_y
        self.p_correlation = ConvNormAct(p_channels, correlation_dim, 1)  # Eq. 2, U
        self.q_correlation = ConvNormAct(q_channels, correlation_dim, 1)  # Eq. 2, V
        # Eq. 2, p. (choice) Initialised to 1/sqrt(L) so that C starts at the scale of a scaled dot
        # product and the column softmax is not saturated at step 0; the paper gives no init.
        self.bilinear_weight = nn.Parameter(torch.full((correlation_dim,), 1.0 / math.sqrt(correlation_dim)))
        self.p_perception = ConvNormAct(p_channels, perception_dim, 1)  # Eq. 4, U'
        self.q_perception = ConvNormAct(q_channels, perception_dim, 1)  # Eq. 4, V'
        self.p_projection = ConvNormAct(perception_dim, p_channels, 1, apply_act=False)  # Eq. 5, P_x
        self.q_projection = ConvNormAct(perception_dim, q_channels, 1, apply_act=False)  # Eq. 5, P_y
        if residual:
            nn.init.zeros_(self.p_projection.bn.weight)
            nn.init.zeros_(self.q_projection.bn.weight)

    def correlation(self, p_masked: torch.Tensor, q_masked: torch.Tensor) -> torch.Tensor:
        """Correlation map C of Eq. 2-3 between masked maps, shape (B, N_P, N_Q)."""
        a = self.p_correlation(p_masked).flatten(2)  # (B, L, N_P)
        b = self.q_correlation(q_masked).flatten(2)  # (B, L, N_Q)
        return torch.bmm((a * self.bilinear_weight[:, None]).transpose(1, 2), b)

    def _check_inputs(self, p: torch.Tensor, q: torch.Tensor) -> None:
        if isinstance(p, torch.fx.Proxy):  # symbolic tracing: shapes are not known yet
            return
        _check_map('p', p, self.p_channels)
        _check_map('q', q, self.q_channels)
        if p.shape[0] != q.shape[0]:
            raise ValueError(f'BFP: p and q must hold the same batch, got {p.shape[0]} and {q.shape[0]} maps')

    def perceive(self, p: torch.Tensor, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The bi-directional perception maps ``(P~, Q~)`` of Eq. 5, without the residual."""
        if not torch.jit.is_scripting():
            self._check_inputs(p, q)
        p_masked = self.p_mask(p)
        q_masked = self.q_mask(q)
        corr = self.correlation(p_masked, q_masked)
        # Fig. 3: softmax over each column of C (over P positions) and of C^T (over Q positions).
        attend_p = corr.softmax(dim=1)  # (N_P, N_Q): column j weights the P positions for Q position j
        attend_q = corr.transpose(1, 2).softmax(dim=1)  # (N_Q, N_P): column i weights the Q positions
        p_space = self.p_perception(p_masked).flatten(2)  # A' (B, L', N_P)
        q_space = self.q_perception(q_masked).flatten(2)  # B' (B, L', N_Q)
        p_from_q = p_space * torch.bmm(q_space, attend_q)  # Eq. 4, X_y
        q_from_p = torch.bmm(p_space, attend_p) * q_space  # Eq. 4, Y_x
        p_tilde = self.p_projection(p_from_q.unflatten(2, (p.shape[2], p.shape[3])))  # Eq. 5
        q_tilde = self.q_projection(q_from_p.unflatten(2, (q.shape[2], q.shape[3])))
        return p_tilde, q_tilde

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Augmented pair: ``(P + P~, Q + Q~)`` when ``residual`` else ``(P~, Q~)`` (see :func:`augment`)."""
        p_tilde, q_tilde = self.perceive(p, q)
        return augment(p, p_tilde, self.residual), augment(q, q_tilde, self.residual)


def augment(original: torch.Tensor, perceived: torch.Tensor, residual: bool) -> torch.Tensor:
    """aug(P) of Eq. 5: ``P + P~`` (residual, the default **(choice)**) or the literal ``P~``. HBFP-Net augments its
    middle map once, with what both BFP modules perceive of it summed."""
    return original + perceived if residual else perceived
