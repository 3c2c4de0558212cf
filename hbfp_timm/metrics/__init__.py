"""Comparing re-id descriptors: distances (:mod:`.distance`), CMC / mAP under the Market-1501 protocol
(:mod:`.rank`), k-reciprocal re-ranking (:mod:`.reranking`), exact top-k search in bounded memory
(:mod:`.retrieval`) and "same person" thresholds calibrated at fixed false-match rates (:mod:`.verification`)."""
from .distance import compute_distance_matrix
from .rank import RankResult, evaluate_features, evaluate_rank
from .reranking import re_ranking, re_ranking_features
from .retrieval import topk

__all__ = [
    'RankResult', 'compute_distance_matrix', 'evaluate_features', 'evaluate_rank', 're_ranking', 're_ranking_features',
    'topk',
]
