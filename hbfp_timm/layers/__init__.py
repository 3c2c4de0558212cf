"""Layers of HBFP-Net that work on any feature maps: BFP (Eq. 1-5) and generalized pooling (Eq. 6)."""
from .bfp import BFP, SelfAwareness
from .gep import GeneralizedPooling, generalized_pool2d

__all__ = ['BFP', 'SelfAwareness', 'GeneralizedPooling', 'generalized_pool2d']
