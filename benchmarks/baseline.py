"""The models the speed benchmark compares: the BoT baseline and any timm model (``hbfp_resnet50``)."""
from typing import Tuple

import timm
import torch
import torch.nn as nn

from hbfp_timm.models import BatchNormNeck, create_backbone

__all__ = ['BoTBaseline', 'create_benchmark_model', 'prepare']


class BoTBaseline(nn.Module):
    """BoT baseline (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification",
    2019): ResNet-50 with last stride 1, global average pooling, BatchNorm neck; the descriptor is the neck
    output, as for HBFP-Net."""

    def __init__(self, backbone: str = 'resnet50'):
        super().__init__()
        self.backbone = create_backbone(backbone)
        self.backbone.reset_classifier(0, global_pool='avg')
        self.neck = BatchNormNeck(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))


def create_benchmark_model(name: str) -> nn.Module:
    """``'bot_resnet50'`` (the baseline) or any timm model name (``'hbfp_resnet50'``)."""
    if name == 'bot_resnet50':
        return BoTBaseline('resnet50')
    return timm.create_model(name)


def prepare(name: str, batch_size: int, img_size: Tuple[int, int], device: torch.device,
             channels_last: bool) -> Tuple[nn.Module, torch.Tensor]:
    """A benchmark model and a random input batch on ``device``, both channels-last when asked."""
    model = create_benchmark_model(name).to(device)
    x = torch.randn(batch_size, 3, *img_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x
