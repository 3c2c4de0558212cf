"""HBFP-Net models; importing this package registers them with timm."""
from ..layers import BatchNormNeck
from . import registry  # noqa: F401  (registers the hbfp_* models with timm)
from .backbone import BackboneCuts, create_backbone, cut_backbone
from .hbfp import BranchOutputs, HBFPNet
from .registry import BOT_ARGS

__all__ = ['HBFPNet', 'BranchOutputs', 'BatchNormNeck', 'BackboneCuts', 'BOT_ARGS', 'create_backbone', 'cut_backbone']
