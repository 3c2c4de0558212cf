"""The numbers HBFP-Net reports, in percent, single query, without re-ranking.

Source: Zhipu Liu, Lei Zhang, Yang Yang, "Hierarchical Bi-Directional Feature Perception Network for Person
Re-Identification", ACM MM 2020, https://doi.org/10.1145/3394171.3413689 (ResNet-50 backbone, 384x128 input).
Only the metrics the paper prints are present; a missing key means "not reported".
"""
from typing import Dict

__all__ = ['PAPER_CITATION', 'PAPER_TABLE1', 'PAPER_TABLE2', 'PAPER_TABLE3', 'DATASET_TITLES']

PAPER_CITATION = 'Liu, Zhang, Yang, HBFP-Net, ACM MM 2020, doi:10.1145/3394171.3413689'

# Table 1: HBFP-Net (ResNet-50) row, by data set reader name of ``hbfp_timm.data.build_dataset``.
PAPER_TABLE1: Dict[str, Dict[str, float]] = {
    'market1501': {'rank1': 95.8, 'mAP': 89.8},
    'dukemtmc': {'rank1': 89.5, 'mAP': 80.2},
    'cuhk03_labeled': {'rank1': 81.3, 'mAP': 79.4},
    'cuhk03_detected': {'rank1': 80.0, 'mAP': 77.5},
}

DATASET_TITLES: Dict[str, str] = {
    'market1501': 'Market-1501',
    'dukemtmc': 'DukeMTMC-reID',
    'cuhk03_labeled': 'CUHK03-NP labeled',
    'cuhk03_detected': 'CUHK03-NP detected',
}

# Table 2: ablations on Market-1501, by row label as printed in the paper.
PAPER_TABLE2: Dict[str, Dict[str, float]] = {
    'Baseline': {'mAP': 75.2, 'rank1': 89.0, 'rank5': 93.4},
    'Baseline(+LS)': {'mAP': 81.2, 'rank1': 91.3, 'rank5': 96.5},
    'Baseline(+LS+Cutout)': {'mAP': 83.0, 'rank1': 92.8, 'rank5': 97.2},
    'Middle+High(Res)': {'mAP': 85.2, 'rank1': 93.1, 'rank5': 98.2},
    'Low+Middle+High(Res)': {'mAP': 77.2, 'rank1': 91.8, 'rank5': 96.7},
    'BFP(Low&Middle)+High': {'mAP': 86.5, 'rank1': 94.1, 'rank5': 98.2},
    'BFP(Middle&High)': {'mAP': 87.2, 'rank1': 94.2, 'rank5': 98.3},
    'Low+BFP(Middle&High)': {'mAP': 84.2, 'rank1': 93.1, 'rank5': 97.0},
    'BFP(Low&Middle&High)': {'mAP': 88.0, 'rank1': 94.8, 'rank5': 98.5},
    'HBFP': {'mAP': 88.7, 'rank1': 95.0, 'rank5': 98.5},
    'HBFP+GeP': {'mAP': 89.8, 'rank1': 95.8, 'rank5': 98.9},
}

# Table 3: generalized pooling with growing lambda sets on Market-1501, by the set of lambdas.
PAPER_TABLE3: Dict[str, Dict[str, float]] = {
    'GeP{0}': {'mAP': 88.7, 'rank1': 95.0, 'rank5': 98.5},
    'GeP{0,.3}': {'mAP': 89.0, 'rank1': 95.2, 'rank5': 98.6},
    'GeP{0,.3,.5}': {'mAP': 89.5, 'rank1': 95.5, 'rank5': 98.8},
    'GeP{0,.3,.5,.7}': {'mAP': 89.6, 'rank1': 95.6, 'rank5': 98.7},
    'GeP{0,.3,.5,.7,1}': {'mAP': 89.8, 'rank1': 95.8, 'rank5': 98.9},
}
