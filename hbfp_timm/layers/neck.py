"""BNNeck of BoT (Luo et al. 2019, "Bag of Tricks and A Strong Baseline for Deep Person Re-identification"):
BatchNorm between the pooled feature and the classifier, whose bias is fixed at zero."""
import torch
import torch.nn as nn
from timm.layers import register_notrace_module

__all__ = ['BatchNormNeck']


# A torch.fx leaf, as torch.nn's own BatchNorm is: BatchNorm1d checks the input rank in Python, which symbolic
# tracing cannot follow.
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
