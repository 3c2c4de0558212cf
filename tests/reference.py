"""Test oracles: plain, obviously correct definitions that the fast library code is checked against."""
import numpy as np

from hbfp_timm.metrics import RankResult


def evaluate_rank_loop(
        distmat: np.ndarray,
        q_pids: np.ndarray,
        g_pids: np.ndarray,
        q_camids: np.ndarray,
        g_camids: np.ndarray,
        max_rank: int = 50,
) -> RankResult:
    """The Market-1501 protocol as a plain per-query loop over stable-sorted rows: the readable definition that
    `hbfp_timm.metrics.evaluate_rank` is tested against.

    Args:
        distmat: (num_query, num_gallery) distances, smaller is more similar.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 is junk, 0 a distractor.
        q_camids: (num_query,) query cameras.
        g_camids: (num_gallery,) gallery cameras.
        max_rank: length of the CMC curve.

    Returns:
        A `RankResult`, which `evaluate_rank` must equal up to floating-point rounding.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = (np.asarray(a) for a in (distmat, q_pids, g_pids, q_camids,
                                                                            g_camids))
    num_q = distmat.shape[0]
    valid_mask = np.zeros(num_q, dtype=bool)
    cmc_rows, ap_values = [], []
    for q in range(num_q):
        order = np.argsort(distmat[q], kind='stable')
        pids, cams = g_pids[order], g_camids[order]
        removed = ((pids == q_pids[q]) & (cams == q_camids[q])) | (pids == -1)
        matches = (pids[~removed] == q_pids[q]).astype(np.float64)
        if not matches.any():
            continue
        valid_mask[q] = True
        first_rank = int(np.flatnonzero(matches)[0])
        cmc_rows.append((np.arange(max_rank) >= first_rank).astype(np.float64))
        precision_at_k = np.cumsum(matches) / np.arange(1, len(matches) + 1)
        ap_values.append(float((precision_at_k * matches).sum() / matches.sum()))
    if not ap_values:
        raise ValueError(f'none of the {num_q} queries has a true match in the gallery')
    all_ap = np.asarray(ap_values)
    return RankResult(
        cmc=np.mean(cmc_rows, axis=0),
        mAP=float(all_ap.mean()),
        all_AP=all_ap,
        valid_mask=valid_mask,
        num_valid_queries=len(ap_values),
        num_skipped=num_q - len(ap_values),
    )
