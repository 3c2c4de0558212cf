"""Speed of ``hbfp_timm.metrics.evaluate_rank`` at Market-1501 test scale against the per-query loop over
argsorted rows that torchreid's ``evaluate_rank`` runs (the baseline)."""
import statistics
import time
from typing import Dict, Tuple

import numpy as np

from hbfp_timm.metrics import evaluate_rank

__all__ = ['MARKET_QUERIES', 'MARKET_GALLERY', 'market_like_ids', 'evaluation_speed']

# Market-1501 test split: 3,368 queries and 15,913 gallery images (junk removed) of 750 identities in 6
# cameras, 2,798 of the gallery images distractors (identity 0).
MARKET_QUERIES, MARKET_GALLERY, MARKET_IDS, MARKET_CAMS, MARKET_DISTRACTORS = 3368, 15913, 750, 6, 2798


def market_like_ids(seed: int = 0) -> Tuple[np.ndarray, ...]:
    """Random identities and cameras with the structure of the Market-1501 test split.

    Every identity has queries in distinct cameras and gallery images in random cameras; distractors
    (identity 0) fill the rest of the gallery.

    Returns:
        (q_pids, g_pids, q_camids, g_camids) int64 arrays of lengths 3,368 and 15,913.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(1, MARKET_IDS + 1)
    q_pids = np.concatenate([ids, rng.choice(ids, MARKET_QUERIES - MARKET_IDS)])
    q_camids = rng.integers(1, MARKET_CAMS + 1, MARKET_QUERIES)
    num_id_images = MARKET_GALLERY - MARKET_DISTRACTORS
    g_pids = np.concatenate([ids, rng.choice(ids, num_id_images - MARKET_IDS), np.zeros(MARKET_DISTRACTORS, int)])
    g_camids = rng.integers(1, MARKET_CAMS + 1, MARKET_GALLERY)
    # Every identity keeps at least one gallery image in a camera other than its first query's.
    g_camids[:MARKET_IDS] = q_camids[:MARKET_IDS] % MARKET_CAMS + 1
    return q_pids.astype(np.int64), g_pids.astype(np.int64), q_camids.astype(np.int64), g_camids.astype(np.int64)


def per_query_baseline(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                       g_camids: np.ndarray) -> Tuple[float, float]:
    """The usual way (torchreid's ``evaluate_rank``): argsort every row, then walk each query's ranked gallery.

    Returns:
        (rank-1, mAP) over the queries with a true match.
    """
    ranked = np.argsort(distmat, axis=1, kind='stable')
    first_hits, precisions = [], []
    for query, order in enumerate(ranked):
        kept = order[(g_pids[order] != -1) & ~((g_pids[order] == q_pids[query]) & (g_camids[order] == q_camids[query]))]
        hit_positions = np.flatnonzero(g_pids[kept] == q_pids[query])
        if len(hit_positions):
            first_hits.append(hit_positions[0] == 0)
            precisions.append(np.mean(np.arange(1, len(hit_positions) + 1) / (hit_positions + 1)))
    return float(np.mean(first_hits)), float(np.mean(precisions))


def evaluation_speed(repeats: int, reference_queries: int, seed: int = 0) -> Dict:
    """``evaluate_rank`` at Market-1501 scale against `per_query_baseline` (extrapolated from a subset)."""
    q_pids, g_pids, q_camids, g_camids = market_like_ids(seed)
    distmat = np.random.default_rng(seed + 1).random((MARKET_QUERIES, MARKET_GALLERY), dtype=np.float32)
    vectorised = []
    for _ in range(repeats):
        begin = time.perf_counter()
        cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
        vectorised.append(time.perf_counter() - begin)
    subset = min(reference_queries, MARKET_QUERIES)
    begin = time.perf_counter()
    reference_rank1, reference_mAP = per_query_baseline(distmat[:subset], q_pids[:subset], g_pids, q_camids[:subset],
                                                        g_camids)
    reference_subset_seconds = time.perf_counter() - begin
    subset_cmc, subset_mAP = evaluate_rank(distmat[:subset], q_pids[:subset], g_pids, q_camids[:subset], g_camids)
    reference_seconds = reference_subset_seconds * MARKET_QUERIES / subset
    median = statistics.median(vectorised)
    return {
        'shape': [MARKET_QUERIES, MARKET_GALLERY],
        'seconds': vectorised,
        'median_seconds': median,
        'rank1': float(cmc[0]),
        'mAP': mAP,
        'reference_queries_timed': subset,
        'reference_subset_seconds': reference_subset_seconds,
        'reference_seconds': reference_seconds,
        'reference_extrapolated': subset < MARKET_QUERIES,
        'reference_agrees_on_subset': bool(abs(reference_rank1 - subset_cmc[0]) < 1e-9
                                           and abs(reference_mAP - subset_mAP) < 1e-9),
        'speedup': reference_seconds / median,
    }
