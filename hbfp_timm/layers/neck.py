"""BNNeck of BoT (Luo et al. 2019, "Bag of Tricks and A Strong Baseline for Deep Person Re-identification"):
BatchNorm between the pooled feature and the classifier, whose bias is fixed at zero."""
import torch
import torch.fx
import torch.nn as nn
from timm.layers import register_notrace_module

__all__ = ['BatchNormNeck']


# A torch.fx leaf for timm's feature extraction, as torch.nn's own BatchNorm is; plain torch.fx.symbolic_trace
# (which knows nothing of timm's leaves) traces through it, the rank check skipped for proxies.
@register_notrace_module
class BatchNormNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias is fixed at zero (BoT's BNNeck).

    The bias is a buffer rather than a frozen parameter, so every parameter of the model trains (timm's
    ``test_model_backward`` expects a gradient on each parameter) and optimizers need no filtering.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features)
        del self.bias
        self.register_buffer('bias', torch.zeros(num_features))

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            if isinstance(input, torch.fx.Proxy):  # symbolic tracing: the rank is not known yet
                return
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f'BatchNormNeck: expected a 2D or 3D input, got {input.dim()}D')
