"""hbfp-timm: HBFP-Net (ACM MM 2020) for person re-identification as a timm model-zoo extension.

``import hbfp_timm`` registers the ``hbfp_*`` models with timm, so that
``timm.create_model("hbfp_resnet50")`` works; it must come before any ``timm.create_model`` call
that names an HBFP model, ``hf-hub:`` names included (timm has no plugin entry points).
"""
from . import layers
from .models import BranchOutputs, HBFPNet

__version__ = '0.1.0'
__all__ = ['HBFPNet', 'BranchOutputs', 'FeatureExtractor', 'layers', '__version__']


def __getattr__(name: str):
    # Imported on first use: the extractor brings in the hub module, and importing it with the package would make
    # `python -m hbfp_timm.hub` warn that the module was already imported before it ran.
    if name == 'FeatureExtractor':
        from .inference.extractor import FeatureExtractor
        return FeatureExtractor
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
