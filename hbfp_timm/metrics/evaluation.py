"""A model scored on a query/gallery split: the numbers of Table 1 (named ranks, mAP, CMC, re-ranked scores).

The protocol itself (same-camera removal, junk, distractors, skipped queries) lives in :mod:`.rank`; the
descriptors come from :func:`hbfp_timm.inference.features.extract_features`.
"""
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from ..inference.features import extract_features
from .distance import compute_distance_matrix
from .rank import RankResult, evaluate_features, evaluate_rank
from .reranking import re_ranking_features
from .retrieval import topk

__all__ = ['REPORTED_RANKS', 'evaluate', 'score_features']

# CMC ranks reported by name in every result.
REPORTED_RANKS = (1, 5, 10)


def _scores(result: RankResult, max_rank: int) -> Dict[str, Any]:
    """Named ranks, mAP and the CMC curve (fractions in [0, 1]) of one evaluation."""
    scores = {f'rank{k}': float(result.cmc[k - 1]) for k in REPORTED_RANKS}
    scores['mAP'] = float(result.mAP)
    scores['cmc'] = [float(v) for v in result.cmc[:max_rank]]
    scores['num_skipped_queries'] = int(result.num_skipped)
    return scores


def evaluate(
        model: nn.Module,
        query_loader: Iterable,
        gallery_loader: Iterable,
        device: torch.device,
        metric: str = 'euclidean',
        rerank: bool = False,
        flip: bool = False,
        max_rank: int = 50,
        amp: bool = False,
        keep_distmat: bool = False,
        keep_topk: int = 0,
        amp_dtype: Optional[torch.dtype] = None,
) -> Dict[str, Any]:
    """Rank-1/5/10, mAP and CMC of a model on a query/gallery split (Market-1501 protocol, single query).

    Scores come from the descriptors block by block (:func:`hbfp_timm.metrics.evaluate_features`), so the
    (num_query, num_gallery) distance matrix is only built when ``keep_distmat`` asks for it.

    Args:
        model: The Re-ID model; its test descriptor is taken with or without an ID classifier (see
            :func:`hbfp_timm.inference.features.describe`).
        query_loader: Query images, yielding ``(images, pids, camids, ...)``.
        gallery_loader: Gallery images, same format.
        device: Device to extract features on.
        metric: ``'euclidean'`` or ``'cosine'`` distance between descriptors.
        rerank: Also score k-reciprocal re-ranked distances (Zhong et al. 2017). The paper's numbers are
            without it, so the re-ranked scores go under their own key and never replace the plain ones.
        flip: Average each descriptor with that of the mirrored image.
        max_rank: Length of the returned CMC curve.
        amp: Extract features under autocast.
        keep_distmat: Also return the (num_query, num_gallery) distances under ``'distmat'`` (for ranked-list
            pictures).
        keep_topk: Also return each query's ``keep_topk`` nearest gallery items, (num_query, keep_topk) arrays
            under ``'topk_indices'`` and ``'topk_distances'``, without the whole matrix (0: not returned). These
            are plain nearest neighbours: the protocol's removals (same identity and camera, junk) are not
            applied to them.
        amp_dtype: Autocast dtype of the extraction; None: the default of
            ``hbfp_timm.inference.features.autocast_dtype``.

    Returns:
        ``{'rank1', 'rank5', 'rank10', 'mAP'}`` (fractions), ``'cmc'`` (list of max_rank fractions),
        ``'num_query'``, ``'num_gallery'``, ``'num_skipped_queries'``, ``'metric'``, ``'flip'``; with
        ``rerank=True`` also ``'reranked'``: a dict with the same score keys for the re-ranked distances.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f'max_rank: expected a positive integer, got {max_rank!r}')
    if isinstance(keep_topk, bool) or not isinstance(keep_topk, int) or keep_topk < 0:
        raise ValueError(f'keep_topk: expected a non-negative integer, got {keep_topk!r}')
    q_feats, q_pids, q_camids = extract_features(model, query_loader, device, flip=flip, amp=amp,
                                                 amp_dtype=amp_dtype, desc='query')
    g_feats, g_pids, g_camids = extract_features(model, gallery_loader, device, flip=flip, amp=amp,
                                                 amp_dtype=amp_dtype, desc='gallery')
    results = score_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric=metric, rerank=rerank,
                             max_rank=max_rank, keep_distmat=keep_distmat)
    results['flip'] = flip
    if keep_topk:
        distances, indices = topk(q_feats, g_feats, k=keep_topk, metric=metric)
        results['topk_distances'], results['topk_indices'] = distances.numpy(), indices.numpy()
    return results


def score_features(
        q_feats: torch.Tensor,
        g_feats: torch.Tensor,
        q_pids: np.ndarray,
        g_pids: np.ndarray,
        q_camids: np.ndarray,
        g_camids: np.ndarray,
        metric: str = 'euclidean',
        rerank: bool = False,
        max_rank: int = 50,
        keep_distmat: bool = False,
        show_progress: bool = False,
) -> Dict[str, Any]:
    """The scores of :func:`evaluate` from descriptors already extracted (its arguments of the same names);
    `show_progress` shows the progress of scoring the queries (`evaluate_features`).

    Returns:
        ``{'rank1', 'rank5', 'rank10', 'mAP', 'cmc', 'num_query', 'num_gallery', 'num_skipped_queries',
        'metric'}``, ``'reranked'`` with ``rerank=True``, ``'distmat'`` with ``keep_distmat=True``.
    """
    # Rank-10 is always reported, so the curve is computed at least that long and cut to max_rank after.
    curve_length = max(max_rank, max(REPORTED_RANKS))
    ids = (q_pids, g_pids, q_camids, g_camids)
    if keep_distmat:
        distmat = compute_distance_matrix(q_feats, g_feats, metric=metric)
        result = evaluate_rank(distmat, *ids, max_rank=curve_length)
    else:
        result = evaluate_features(q_feats, g_feats, *ids, metric=metric, max_rank=curve_length,
                                   show_progress=show_progress)
    results: Dict[str, Any] = _scores(result, max_rank)
    results.update(num_query=len(q_pids), num_gallery=len(g_pids), metric=metric)
    if keep_distmat:
        results['distmat'] = distmat
    if rerank:
        reranked = re_ranking_features(q_feats, g_feats, metric=metric)
        results['reranked'] = _scores(evaluate_rank(reranked, *ids, max_rank=curve_length), max_rank)
    return results
