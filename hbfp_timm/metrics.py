"""Re-ID evaluation: distance matrices, CMC / mAP under the Market-1501 protocol, k-reciprocal re-ranking.

Protocol (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015), per query:

* gallery images with the query's identity *and* camera are removed (they are trivially easy);
* gallery junk (identity -1) is removed;
* distractors (identity 0) stay, as negatives;
* a query with no remaining true match is skipped and counted.

`evaluate_rank` keeps the signature torchreid users know, but is exact and fast: it only ranks each query's
true matches (binary searches in rows sorted by value alone) and equals the plain per-query loop
`evaluate_rank_reference` to floating-point rounding.

Re-ranking: Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017.
HBFP-Net's reported numbers (Table 1) are without it.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    'RankResult', 'compute_distance_matrix', 'evaluate_rank', 'evaluate_rank_detailed',
    'evaluate_rank_reference', 're_ranking',
]

ArrayLike = Union[np.ndarray, torch.Tensor]

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


def _raise_if_nan(distances: np.ndarray) -> None:
    if np.isnan(distances).any():
        raise ValueError('distmat contains NaN; distances must be comparable numbers')


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, check_nan=True):
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
    if check_nan:
        _raise_if_nan(distmat)
    return distmat, q_pids, g_pids, q_camids, g_camids


def _same_identity_pairs(q_pids: np.ndarray, g_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every (query, gallery) pair with the same identity, in query order, then gallery order.

    Costs O(num_gallery log num_gallery + number of pairs) instead of comparing every query with every gallery
    entry.
    """
    order = np.argsort(g_pids, kind='stable')  # stable: within one identity the gallery indices stay ascending
    sorted_pids = g_pids[order]
    first = np.searchsorted(sorted_pids, q_pids, side='left')
    counts = np.searchsorted(sorted_pids, q_pids, side='right') - first
    queries = np.repeat(np.arange(len(q_pids)), counts)
    offset_in_query = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return queries, order[np.repeat(first, counts) + offset_in_query]


def _exclusive_cumsum_per_group(flags: np.ndarray, group_starts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements of its (contiguous) group have `flags` set."""
    before = np.cumsum(flags, dtype=np.int64) - flags
    return before - before[group_starts[groups]]


def _positions_in_rows(distmat: np.ndarray, kept_columns: Optional[np.ndarray], rows: np.ndarray,
                       columns: np.ndarray, values: np.ndarray, chunk_size: int) -> np.ndarray:
    """0-based position of each entry in a stable ascending sort of its row, restricted to `kept_columns`.

    That is the number of entries of the row with a smaller distance, plus those with the same distance in an
    earlier column. The first term is a binary search in the row sorted by value alone (`np.sort`, which NumPy
    vectorises with SIMD sorting networks: several times cheaper than a stable or index-carrying sort). Only
    entries whose distance occurs again in their row need the second term, counted on the row itself.

    Args:
        distmat: (num_rows, num_gallery) distances.
        kept_columns: the gallery columns that make up a row, ascending; None for all of them.
        rows: (N,) row of each entry, non-decreasing.
        columns: (N,) column of each entry, an index into `kept_columns`.
        values: (N,) distance of each entry.
        chunk_size: number of rows sorted at once (bounds memory).

    Returns:
        (N,) int64 positions.

    Raises:
        ValueError: if one of the rows (junk columns included) holds a NaN.
    """
    def gallery_rows(selected_rows, out=None):
        if kept_columns is None:
            return np.take(distmat, selected_rows, axis=0, out=out)
        full_rows = np.take(distmat, selected_rows, axis=0)
        _raise_if_nan(full_rows)  # the sort below sees the kept columns only
        return np.take(full_rows, kept_columns, axis=1, out=out)

    num_columns = distmat.shape[1] if kept_columns is None else len(kept_columns)
    unique_rows, row_first = np.unique(rows, return_index=True)
    row_bounds = np.append(row_first, len(rows))
    positions = np.empty(len(rows), dtype=np.int64)
    has_equal = np.empty(len(rows), dtype=bool)

    def rank_chunks(chunk_starts):
        buffer = np.empty((min(chunk_size, len(unique_rows)), num_columns), dtype=distmat.dtype)
        for chunk_start in chunk_starts:
            chunk_rows = unique_rows[chunk_start:chunk_start + chunk_size]
            sorted_rows = gallery_rows(chunk_rows, out=buffer[:len(chunk_rows)])
            bounds = row_bounds[chunk_start:chunk_start + len(chunk_rows) + 1]
            for sorted_row, first, stop in zip(sorted_rows, bounds[:-1], bounds[1:]):
                sorted_row.sort()  # row by row, so that the search below finds it in cache
                positions[first:stop] = sorted_row.searchsorted(values[first:stop], side='left')
            _raise_if_nan(sorted_rows[:, -1])  # np.sort puts NaN last
            # An entry sits in its sorted row at `positions`; the same value right after it is a tie.
            entries = slice(bounds[0], bounds[-1])
            local_rows = np.repeat(np.arange(len(chunk_rows)), np.diff(bounds))
            following = np.minimum(positions[entries] + 1, num_columns - 1)
            has_equal[entries] = ((positions[entries] + 1 < num_columns)
                                  & (sorted_rows[local_rows, following] == values[entries]))

    # NumPy releases the GIL while sorting, so chunks are shared among torch's number of CPU threads (which
    # follows OMP_NUM_THREADS); each worker reuses one buffer, and workers write disjoint entries.
    chunk_starts = list(range(0, len(unique_rows), chunk_size))
    num_workers = max(1, min(torch.get_num_threads(), len(chunk_starts)))
    if num_workers == 1:
        rank_chunks(chunk_starts)
    else:
        with ThreadPoolExecutor(num_workers) as pool:
            list(pool.map(rank_chunks, [chunk_starts[w::num_workers] for w in range(num_workers)]))

    tied = np.flatnonzero(has_equal)
    column_index = np.arange(num_columns)
    block = max(1, 2 ** 22 // num_columns)  # bounds the (tied entries, num_columns) comparisons in memory
    for start in range(0, len(tied), block):
        entries = tied[start:start + block]
        earlier_equal = ((gallery_rows(rows[entries]) == values[entries, None])
                         & (column_index < columns[entries, None]))
        positions[entries] += earlier_equal.sum(axis=1)
    return positions


def evaluate_rank_detailed(
        distmat: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        max_rank: int = 50,
        chunk_size: int = 32,
) -> RankResult:
    """CMC and mAP under the Market-1501 protocol, exact and without sorting gallery indices.

    Ties in distance are broken by gallery index (the earlier gallery entry ranks first), exactly like a stable
    argsort of each row. Only the ranks of a query's true matches enter CMC and AP, so they are computed
    directly instead of ranking the whole row:

    1. the (query, gallery) pairs with the same identity come from grouping the gallery by identity, without
       comparing every query with every gallery entry; those in the query's camera are the removed ones, the
       others the true matches;
    2. for the queries with at least one match, each pair's position in its stable-sorted row is the number of
       gallery entries with a smaller distance (a binary search in the row sorted by value alone, see
       `_positions_in_rows`) plus the entries with an equal distance and a smaller index; junk (identity -1)
       is left out of the rows beforehand;
    3. ordering a query's pairs by position gives each match its ordinal j (0-based) among the matches and
       the number of removed entries ranked before it, so its 1-based rank among the kept entries is
       `position - removed_before + 1`; then AP = mean_j (j + 1) / rank_j and the first match is at rank_0.

    The work is one value sort per ranked row (NumPy's SIMD sort, spread over torch's CPU thread count) plus
    O(number of same-identity pairs), instead of an index-carrying sort of every row; rows of queries without
    a true match are never sorted. Memory is O(num_threads * chunk_size * num_gallery + number of
    same-identity pairs).

    Unlike torchreid, the CMC always has `max_rank` entries: when `max_rank` exceeds the gallery, the curve
    stays at its final value (every valid query has found its match by then).

    Args:
        distmat: (num_query, num_gallery) distances, smaller is more similar.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 is junk (ignored), 0 a distractor (a negative).
        q_camids: (num_query,) query cameras.
        g_camids: (num_gallery,) gallery cameras.
        max_rank: length of the CMC curve.
        chunk_size: number of query rows sorted at once (bounds memory).

    Returns:
        A `RankResult`.

    Raises:
        ValueError: on inconsistent shapes, NaN distances, or when no query has a true match.
    """
    # NaN is checked on the rows as they are sorted, instead of in one more pass over the whole matrix.
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, check_nan=False)
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    num_q = distmat.shape[0]

    junk = g_pids == -1
    kept_columns = np.flatnonzero(~junk) if junk.any() else None
    if kept_columns is not None:
        g_pids, g_camids = g_pids[kept_columns], g_camids[kept_columns]
    queries, columns = _same_identity_pairs(q_pids, g_pids)
    removed = g_camids[columns] == q_camids[queries]
    num_matches = np.bincount(queries[~removed], minlength=num_q)
    valid_mask = num_matches > 0
    num_valid = int(valid_mask.sum())
    _raise_if_nan(distmat[~valid_mask])  # the rows of valid queries are checked as they are sorted
    if num_valid == 0:
        raise ValueError(
            f'none of the {num_q} queries has a true match in the gallery (same identity, other camera); '
            'check that query and gallery come from the same data set split')

    ranked = valid_mask[queries]
    queries, columns, removed = queries[ranked], columns[ranked], removed[ranked]
    values = distmat[queries, columns if kept_columns is None else kept_columns[columns]]
    positions = _positions_in_rows(distmat, kept_columns, queries, columns, values, chunk_size)
    # Each query's pairs in ranked order; positions within a row are distinct, so the key is unique.
    order = np.argsort(queries * len(g_pids) + positions)
    queries, positions, removed = queries[order], positions[order], removed[order]
    query_starts = np.searchsorted(queries, np.arange(num_q))
    is_match = ~removed
    removed_before = _exclusive_cumsum_per_group(removed, query_starts, queries)[is_match]
    match_ordinal = _exclusive_cumsum_per_group(is_match, query_starts, queries)[is_match]
    match_queries = queries[is_match]
    rank = positions[is_match] - removed_before + 1  # 1-based, among the kept gallery entries

    precision_sum = np.bincount(match_queries, weights=(match_ordinal + 1) / rank, minlength=num_q)
    valid_ap = precision_sum[valid_mask] / num_matches[valid_mask]
    first_rank = rank[match_ordinal == 0] - 1
    cmc_hits = np.bincount(np.minimum(first_rank, max_rank), minlength=max_rank + 1)[:max_rank]
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
