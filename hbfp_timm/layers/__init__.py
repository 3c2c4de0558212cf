"""Layers of HBFP-Net that work on any feature maps: BFP (Eq. 1-5), generalized pooling (Eq. 6) and BoT's
BatchNorm neck."""
from .bfp import BFP, SelfAwareness
from .gep import GeneralizedPooling, generalized_pool2d
from .neck import BatchNormNeck

__all__ = ['BFP', 'SelfAwareness', 'GeneralizedPooling', 'generalized_pool2d', 'BatchNormNeck']
