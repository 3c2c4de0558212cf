"""Re-ID evaluation: distance matrices, CMC / mAP under the Market-1501 protocol, k-reciprocal re-ranking.

Protocol (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015), per query:

* gallery images with the query's identity *and* camera are removed (they are trivially easy);
* gallery junk (identity -1) is removed;
* distractors (identity 0) stay, as negatives;
* a query with no remaining true match is skipped and counted.

`evaluate_rank` keeps the signature torchreid users know, but is vectorised (queries in chunks, one sort per
chunk) and exact: it equals the plain per-query loop `evaluate_rank_reference` to floating-point rounding.

Re-ranking: Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017.
HBFP-Net's reported numbers (Table 1) are without it.
"""
from dataclasses import dataclass
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    'RankResult', 'compute_distance_matrix', 'evaluate_rank', 'evaluate_rank_detailed',
    'evaluate_rank_reference', 're_ranking',
]

ArrayLike = Union[np.ndarray, torch.Tensor]

# Codes stored in the low bits of the sort keys of `evaluate_rank_detailed`.
_NEGATIVE, _MATCH, _REMOVED = 0, 1, 2


@dataclass
class RankResult:
    """Detailed evaluation result.

    Attributes:
        cmc: (max_rank,) fraction of valid queries whose first true match is within the top k+1.
        mAP: mean of `all_AP`, in [0, 1].
        all_AP: (num_valid_queries,) average precision of each valid query, in query order.
        valid_mask: (num_query,) True for the queries that had at least one true match and were scored.
        num_valid_queries: number of scored queries.
        num_skipped: number of queries skipped because no true match remained in the gallery.
    """
    cmc: np.ndarray
    mAP: float
    all_AP: np.ndarray
    valid_mask: np.ndarray
    num_valid_queries: int
    num_skipped: int


def _as_ids(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if array.ndim != 1:
        raise ValueError(f'{name} must be a 1-D array of integer ids, got shape {array.shape}')
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f'{name} must hold integer ids, got dtype {array.dtype}')
    return array.astype(np.int64)


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    distmat = np.asarray(distmat.cpu() if isinstance(distmat, torch.Tensor) else distmat)
    if distmat.ndim != 2:
        raise ValueError(f'distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}')
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    num_q, num_g = distmat.shape
    q_pids, q_camids = _as_ids(q_pids, 'q_pids'), _as_ids(q_camids, 'q_camids')
    g_pids, g_camids = _as_ids(g_pids, 'g_pids'), _as_ids(g_camids, 'g_camids')
    for name, array, expected in (('q_pids', q_pids, num_q), ('q_camids', q_camids, num_q),
                                  ('g_pids', g_pids, num_g), ('g_camids', g_camids, num_g)):
        if len(array) != expected:
            raise ValueError(f'{name} has length {len(array)} but distmat has shape {distmat.shape}')
    if num_q == 0:
        raise ValueError('distmat has no queries (shape {})'.format(distmat.shape))
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f'max_rank must be a positive integer, got {max_rank!r}')
    if np.isnan(distmat).any():
        raise ValueError('distmat contains NaN; distances must be comparable numbers')
    return distmat, q_pids, g_pids, q_camids, g_camids


def _orderable_uint32(values: np.ndarray) -> np.ndarray:
    """Map float32 to uint32 so that unsigned integer order equals float order (-inf < ... < +inf)."""
    # Adding +0.0 turns -0.0 into +0.0, so that both zeros tie, as they do for np.argsort.
    bits = (values + np.float32(0.0)).view(np.uint32)
    sign = bits >> np.uint32(31)
    return np.where(sign == 1, ~bits, bits | np.uint32(0x80000000))


def _first_match_ranks_and_ap(codes_sorted: np.ndarray, max_rank: int):
    """CMC counts and AP for rows of per-gallery codes already in ranked order.

    Args:
        codes_sorted: (B, G) codes `_NEGATIVE` / `_MATCH` / `_REMOVED`, each row in ranked order.
        max_rank: length of the CMC curve.

    Returns:
        (valid, ap, cmc_hits): (B,) bool, (B,) float64 AP (0 where invalid), (max_rank,) int64 number of valid
        rows whose first match is at rank k (not yet accumulated).
    """
    kept = codes_sorted != _REMOVED
    is_match = codes_sorted == _MATCH
    num_rel = is_match.sum(axis=1)
    valid = num_rel > 0
    # Position of each gallery entry among the kept entries (1-based); removed entries do not count.
    kept_position = np.cumsum(kept, axis=1, dtype=np.int64)
    rows, cols = np.nonzero(is_match)            # row-major, so matches come grouped by row in rank order
    match_position = kept_position[rows, cols]
    row_start = np.cumsum(num_rel) - num_rel     # index into rows/cols of each row's first match
    match_ordinal = np.arange(len(rows)) - row_start[rows] + 1
    precision = match_ordinal / match_position
    # astype: with no match at all, bincount returns integers.
    ap = np.bincount(rows, weights=precision, minlength=len(codes_sorted)).astype(np.float64)
    ap[valid] /= num_rel[valid]
    first_rank = match_position[row_start[valid]] - 1
    cmc_hits = np.bincount(np.minimum(first_rank, max_rank), minlength=max_rank + 1)[:max_rank]
    return valid, ap, cmc_hits


def evaluate_rank_detailed(
        distmat: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        max_rank: int = 50,
        chunk_size: int = 256,
) -> RankResult:
    """CMC and mAP under the Market-1501 protocol, vectorised over chunks of queries.

    Ties in distance are broken by gallery index (the earlier gallery entry ranks first), exactly like a stable
    argsort of each row. Each chunk is ranked with one sort of 64-bit keys
    `(order-preserving distance bits, gallery index, protocol code)`, which is several times faster than a
    stable argsort and needs no gather afterwards. Memory is O(chunk_size * num_gallery).

    Unlike torchreid, the CMC always has `max_rank` entries: when `max_rank` exceeds the gallery, the curve
    stays at its final value (every valid query has found its match by then).

    Args:
        distmat: (num_query, num_gallery) distances, smaller is more similar.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 is junk (ignored), 0 a distractor (a negative).
        q_camids: (num_query,) query cameras.
        g_camids: (num_gallery,) gallery cameras.
        max_rank: length of the CMC curve.
        chunk_size: number of queries ranked at once (bounds memory).

    Returns:
        A `RankResult`.

    Raises:
        ValueError: on inconsistent shapes, NaN distances, or when no query has a true match.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    num_q, num_g = distmat.shape
    if num_g >= 2 ** 30:
        raise ValueError(f'gallery of {num_g} entries is too large for 30-bit gallery indices')

    if distmat.dtype != np.float32:
        # The fast keys hold 32-bit distances; float64 input is ranked exactly by them only when every value
        # is representable in float32. Otherwise fall back to a stable argsort (same result, slower).
        as_float32 = distmat.astype(np.float32)
        exact = np.array_equal(as_float32.astype(distmat.dtype), distmat)
        distmat = as_float32 if exact else distmat
    use_keys = distmat.dtype == np.float32

    gallery_index_bits = (np.arange(num_g, dtype=np.uint64) << np.uint64(2))
    g_junk = g_pids == -1
    valid_mask = np.zeros(num_q, dtype=bool)
    all_ap = np.zeros(num_q, dtype=np.float64)
    cmc_hits = np.zeros(max_rank, dtype=np.int64)
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        same_pid = g_pids[None, :] == q_pids[start:stop, None]
        same_cam = g_camids[None, :] == q_camids[start:stop, None]
        removed = (same_pid & same_cam) | g_junk[None, :]
        codes = np.where(removed, _REMOVED, np.where(same_pid, _MATCH, _NEGATIVE)).astype(np.uint8)
        if use_keys:
            keys = _orderable_uint32(distmat[start:stop]).astype(np.uint64) << np.uint64(32)
            keys |= gallery_index_bits
            keys |= codes
            keys.sort(axis=1)
            codes_sorted = (keys & np.uint64(3)).astype(np.uint8)
        else:
            order = np.argsort(distmat[start:stop], axis=1, kind='stable')
            codes_sorted = np.take_along_axis(codes, order, axis=1)
        valid, ap, hits = _first_match_ranks_and_ap(codes_sorted, max_rank)
        valid_mask[start:stop] = valid
        all_ap[start:stop] = ap
        cmc_hits += hits

    num_valid = int(valid_mask.sum())
    if num_valid == 0:
        raise ValueError(
            f'none of the {num_q} queries has a true match in the gallery (same identity, other camera); '
            'check that query and gallery come from the same data set split')
    valid_ap = all_ap[valid_mask]
    return RankResult(
        cmc=np.cumsum(cmc_hits) / num_valid,
        mAP=float(valid_ap.mean()),
        all_AP=valid_ap,
        valid_mask=valid_mask,
        num_valid_queries=num_valid,
        num_skipped=num_q - num_valid,
    )


def evaluate_rank(
        distmat: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        max_rank: int = 50,
) -> Tuple[np.ndarray, float]:
    """CMC and mAP under the Market-1501 protocol (torchreid's signature).

    See `evaluate_rank_detailed` for the protocol, tie-breaking and the number of skipped queries.

    Args:
        distmat: (num_query, num_gallery) distances, smaller is more similar.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 is junk, 0 a distractor.
        q_camids: (num_query,) query cameras.
        g_camids: (num_gallery,) gallery cameras.
        max_rank: length of the CMC curve.

    Returns:
        (cmc, mAP): cmc a (max_rank,) float array (cmc[0] is rank-1), mAP a float in [0, 1].
    """
    result = evaluate_rank_detailed(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return result.cmc, result.mAP


def evaluate_rank_reference(
        distmat: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        max_rank: int = 50,
) -> RankResult:
    """Plain per-query loop of the same protocol, kept as the readable definition for tests and benchmarks.

    Args:
        distmat: (num_query, num_gallery) distances, smaller is more similar.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 is junk, 0 a distractor.
        q_camids: (num_query,) query cameras.
        g_camids: (num_gallery,) gallery cameras.
        max_rank: length of the CMC curve.

    Returns:
        A `RankResult`, equal to `evaluate_rank_detailed`'s up to floating-point rounding.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
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


@torch.no_grad()
def compute_distance_matrix(
        query_features: ArrayLike,
        gallery_features: ArrayLike,
        metric: str = 'euclidean',
        chunk_size: int = 4096,
) -> np.ndarray:
    """Pairwise distances between query and gallery descriptors.

    Args:
        query_features: (num_query, dim) tensor or array.
        gallery_features: (num_gallery, dim) tensor or array, same dim.
        metric: 'euclidean' (the L2 distance, not squared) or 'cosine' (1 - cosine similarity, in [0, 2]).
        chunk_size: number of query rows multiplied at once (bounds memory).

    Returns:
        (num_query, num_gallery) float32 numpy array.
    """
    if metric not in ('euclidean', 'cosine'):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    query = torch.as_tensor(query_features).float()
    gallery = torch.as_tensor(gallery_features).float().to(query.device)
    for name, features in (('query_features', query), ('gallery_features', gallery)):
        if features.ndim != 2:
            raise ValueError(f'{name} must be 2-D (num_items, dim), got shape {tuple(features.shape)}')
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f'query_features dim {query.shape[1]} differs from gallery_features dim {gallery.shape[1]}')

    if metric == 'cosine':
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    else:
        gallery_sq_norm = gallery.pow(2).sum(dim=1)
    out = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    for start in range(0, query.shape[0], chunk_size):
        block = query[start:start + chunk_size]
        similarity = block @ gallery.t()
        if metric == 'cosine':
            distance = 1.0 - similarity
        else:
            # |q - g|^2 = |q|^2 + |g|^2 - 2 q.g; rounding can make it slightly negative for near-equal vectors.
            sq = block.pow(2).sum(dim=1, keepdim=True) + gallery_sq_norm[None, :] - 2.0 * similarity
            distance = sq.clamp_(min=0).sqrt_()
        out[start:start + len(block)] = distance.cpu().numpy()
    return out


def _nearest_neighbours(dist: np.ndarray, k: int, chunk_size: int = 1024) -> np.ndarray:
    """Indices of the k nearest columns of each row (including the row itself), ties by index."""
    k = min(k, dist.shape[1])
    out = np.empty((dist.shape[0], k), dtype=np.int64)
    for start in range(0, dist.shape[0], chunk_size):
        out[start:start + chunk_size] = np.argsort(dist[start:start + chunk_size], axis=1, kind='stable')[:, :k]
    return out


def _reciprocal_sets(neighbours: np.ndarray) -> list:
    """R(p, k) = {g in N(p, k) : p in N(g, k)} for every p, as arrays of indices in neighbour order."""
    own_index = np.arange(len(neighbours))[:, None, None]
    is_reciprocal = (neighbours[neighbours] == own_index).any(axis=2)
    return [row[mask] for row, mask in zip(neighbours, is_reciprocal)]


def re_ranking(
        q_g_dist: np.ndarray,
        q_q_dist: np.ndarray,
        g_g_dist: np.ndarray,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), written from the paper.

    Steps, over all N = num_query + num_gallery images:

    1. d(p, g): the input distance squared (the paper's Mahalanobis form (x_p - x_g)^T M (x_p - x_g) with
       M = I for Euclidean inputs), each row scaled by its maximum so that exp(-d) is comparable across rows
       (as in the authors' release).
    2. k-reciprocal neighbours R(p, k1) = {g in N(p, k1) : p in N(g, k1)} (Eq. 4; N includes p itself).
    3. Expansion (Eq. 6): R*(p) = R(p, k1) united with every R(q, k1/2), q in R(p, k1), that shares at least
       2/3 of its members with R(p, k1).
    4. Encoding (Eq. 7): V_p[g] = exp(-d(p, g)) on R*(p), 0 elsewhere; **(choice)** each V_p is normalised to
       sum 1, as in the authors' release.
    5. Local query expansion (Eq. 12): V_p = mean of V_g over the k2 nearest neighbours g of p (p included).
    6. Jaccard distance (Eq. 11): d_J(p, g) = 1 - sum min(V_p, V_g) / sum max(V_p, V_g).
    7. Final distance (Eq. 13): d* = (1 - lambda) d_J + lambda d.

    Memory is O(N^2) (the full distance matrix and the encodings), as in the method itself.

    Args:
        q_g_dist: (num_query, num_gallery) distances (e.g. Euclidean from `compute_distance_matrix`).
        q_q_dist: (num_query, num_query) distances.
        g_g_dist: (num_gallery, num_gallery) distances.
        k1: neighbourhood size of the k-reciprocal sets.
        k2: neighbourhood size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance; 1 returns the (scaled) original distance.

    Returns:
        (num_query, num_gallery) float32 re-ranked distances.
    """
    q_g_dist, q_q_dist, g_g_dist = (np.asarray(d, dtype=np.float32) for d in (q_g_dist, q_q_dist, g_g_dist))
    if q_g_dist.ndim != 2:
        raise ValueError(f'q_g_dist must be 2-D (num_query, num_gallery), got shape {q_g_dist.shape}')
    num_q, num_g = q_g_dist.shape
    if q_q_dist.shape != (num_q, num_q):
        raise ValueError(f'q_q_dist must have shape {(num_q, num_q)}, got {q_q_dist.shape}')
    if g_g_dist.shape != (num_g, num_g):
        raise ValueError(f'g_g_dist must have shape {(num_g, num_g)}, got {g_g_dist.shape}')
    if k1 < 1 or k2 < 1:
        raise ValueError(f'k1 and k2 must be >= 1, got k1={k1}, k2={k2}')
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f'lambda_value must be in [0, 1], got {lambda_value}')

    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]) ** 2
    row_max = dist.max(axis=1, keepdims=True)
    dist /= np.where(row_max > 0, row_max, 1.0)  # guard: a row of zeros (all images identical)
    num_all = len(dist)

    neighbours = _nearest_neighbours(dist, k1 + 1)
    reciprocal = _reciprocal_sets(neighbours)
    half_reciprocal = _reciprocal_sets(neighbours[:, :int(round(k1 / 2)) + 1])

    encoding = np.zeros_like(dist)
    for p in range(num_all):
        members = set(reciprocal[p].tolist())
        expanded = set(members)
        for candidate in reciprocal[p]:
            candidate_set = half_reciprocal[candidate]
            if 3 * len(members.intersection(candidate_set.tolist())) >= 2 * len(candidate_set):
                expanded.update(candidate_set.tolist())
        expanded = np.fromiter(expanded, dtype=np.int64)
        weights = np.exp(-dist[p, expanded])
        encoding[p, expanded] = weights / weights.sum()

    if k2 > 1:
        expansion = neighbours[:, :min(k2, neighbours.shape[1])]
        expanded_encoding = np.empty_like(encoding)
        for start in range(0, num_all, 256):
            expanded_encoding[start:start + 256] = encoding[expansion[start:start + 256]].mean(axis=1)
        encoding = expanded_encoding

    # Gallery encodings transposed so that gathering one query's support is a contiguous row gather.
    gallery_encoding_t = np.ascontiguousarray(encoding[num_q:].T)
    gallery_mass = encoding[num_q:].sum(axis=1)
    jaccard = np.empty((num_q, num_g), dtype=np.float32)
    for q in range(num_q):
        support = np.flatnonzero(encoding[q])
        min_sum = np.minimum(gallery_encoding_t[support], encoding[q, support, None]).sum(axis=0)
        max_sum = encoding[q].sum() + gallery_mass - min_sum  # sum max(a, b) = sum a + sum b - sum min(a, b)
        jaccard[q] = 1.0 - min_sum / max_sum

    return ((1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]).astype(np.float32)
