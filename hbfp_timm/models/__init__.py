"""HBFP-Net models; importing this package registers them with timm."""
from .backbone import BackboneCuts, create_backbone, cut_backbone
from ..layers import BatchNormNeck
from .hbfp import BranchOutputs, HBFPNet

__all__ = ['HBFPNet', 'BranchOutputs', 'BatchNormNeck', 'BackboneCuts', 'create_backbone', 'cut_backbone']
