"""Re-ID evaluation: CMC / mAP under the Market-1501 protocol, from a distance matrix or from descriptors.

Protocol (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015), per query:

* gallery images with the query's identity *and* camera are removed (they are trivially easy);
* gallery junk (identity -1) is removed;
* distractors (identity 0) stay, as negatives;
* a query with no remaining true match is skipped and counted.

Two entry points, one protocol and one set of checks: `evaluate_rank` from a distance matrix (torchreid's
signature; exact and fast: it only ranks each query's true matches, by binary searches in rows sorted by value
alone, and equals the plain per-query loop of the tests to floating-point rounding), and `evaluate_features` from
descriptors (the same result, the distances computed block by block instead of holding the whole matrix). Both
return a `RankResult`, which unpacks as torchreid's ``cmc, mAP``.

HBFP-Net's reported numbers (Table 1) are without re-ranking (:mod:`.reranking`).
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..utils.progress import progress
from .distance import distance_block, gallery_statistic, query_and_gallery

__all__ = ['RankResult', 'check_ids', 'evaluate_features', 'evaluate_rank']

ArrayLike = Union[np.ndarray, torch.Tensor]
# Default size of one block of query-to-gallery distances in evaluate_features (the extra memory it needs is a
# small multiple of this).
EVALUATION_BLOCK_BYTES = 256 * 2 ** 20


@dataclass
class RankResult:
    """CMC and mAP of an evaluation, with what they are made of; unpacks and indexes as torchreid's ``(cmc, mAP)``
    pair (``cmc, mAP = evaluate_rank(...)``, ``evaluate_rank(...)[1]``).

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

    def __iter__(self):
        return iter((self.cmc, self.mAP))

    def __getitem__(self, index):
        return (self.cmc, self.mAP)[index]

    def __len__(self) -> int:
        return 2


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


def check_ids(q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike, num_q: int, num_g: int,
              sizes: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four id arrays of a query/gallery split as int64, checked against the number of queries and gallery
    items (`sizes` says where those come from, for the error)."""
    q_pids, q_camids = _as_ids(q_pids, 'q_pids'), _as_ids(q_camids, 'q_camids')
    g_pids, g_camids = _as_ids(g_pids, 'g_pids'), _as_ids(g_camids, 'g_camids')
    for name, array, expected in (('q_pids', q_pids, num_q), ('q_camids', q_camids, num_q),
                                  ('g_pids', g_pids, num_g), ('g_camids', g_camids, num_g)):
        if len(array) != expected:
            raise ValueError(f'{name} has length {len(array)} but {sizes}')
    if num_q == 0:
        raise ValueError(f'no queries: {sizes}')
    return q_pids, g_pids, q_camids, g_camids


def _check_max_rank(max_rank) -> None:
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f'max_rank must be a positive integer, got {max_rank!r}')


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, check_nan=True):
    distmat = np.asarray(distmat.cpu() if isinstance(distmat, torch.Tensor) else distmat)
    if distmat.ndim != 2:
        raise ValueError(f'distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}')
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    q_pids, g_pids, q_camids, g_camids = check_ids(
        q_pids, g_pids, q_camids, g_camids, *distmat.shape, sizes=f'distmat has shape {distmat.shape}')
    _check_max_rank(max_rank)
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


def evaluate_rank(
        distmat: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        max_rank: int = 50,
        chunk_size: int = 32,
) -> RankResult:
    """CMC and mAP under the Market-1501 protocol (torchreid's signature), exact and without sorting gallery indices.

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
        A `RankResult`; ``cmc, mAP = evaluate_rank(...)`` unpacks it as torchreid's (cmc[0] is rank-1).

    Raises:
        ValueError: on inconsistent shapes, NaN distances, or when no query has a true match.
    """
    # NaN is checked on the rows as they are sorted, instead of in one more pass over the whole matrix.
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, check_nan=False)
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    return _combine([_rank_queries(distmat, q_pids, g_pids, q_camids, g_camids, chunk_size)], max_rank)


@dataclass
class _QueryRanks:
    """What CMC and mAP are made of, for one block of queries.

    Attributes:
        first_rank: (num_valid,) 0-based rank of each valid query's first true match, in query order.
        average_precision: (num_valid,) average precision of each valid query, in query order.
        valid_mask: (num_query,) True for the queries with at least one true match.
    """
    first_rank: np.ndarray
    average_precision: np.ndarray
    valid_mask: np.ndarray


def _rank_queries(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                  g_camids: np.ndarray, chunk_size: int) -> _QueryRanks:
    """Steps 1-3 of `evaluate_rank` on checked inputs; a block without valid queries is no error."""
    num_q = distmat.shape[0]
    junk = g_pids == -1
    kept_columns = np.flatnonzero(~junk) if junk.any() else None
    if kept_columns is not None:
        g_pids, g_camids = g_pids[kept_columns], g_camids[kept_columns]
    queries, columns = _same_identity_pairs(q_pids, g_pids)
    removed = g_camids[columns] == q_camids[queries]
    num_matches = np.bincount(queries[~removed], minlength=num_q)
    valid_mask = num_matches > 0
    _raise_if_nan(distmat[~valid_mask])  # the rows of valid queries are checked as they are sorted
    if not valid_mask.any():
        return _QueryRanks(np.zeros(0, dtype=np.int64), np.zeros(0), valid_mask)

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
    return _QueryRanks(first_rank=rank[match_ordinal == 0] - 1,
                       average_precision=precision_sum[valid_mask] / num_matches[valid_mask],
                       valid_mask=valid_mask)


def _combine(parts: Sequence[_QueryRanks], max_rank: int) -> RankResult:
    """One `RankResult` from the blocks of queries, in query order."""
    valid_mask = np.concatenate([part.valid_mask for part in parts])
    num_q, num_valid = len(valid_mask), int(valid_mask.sum())
    if num_valid == 0:
        raise ValueError(
            f'none of the {num_q} queries has a true match in the gallery (same identity, other camera); '
            'check that query and gallery come from the same data set split')
    first_rank = np.concatenate([part.first_rank for part in parts])
    valid_ap = np.concatenate([part.average_precision for part in parts])
    cmc_hits = np.bincount(np.minimum(first_rank, max_rank), minlength=max_rank + 1)[:max_rank]
    return RankResult(
        cmc=np.cumsum(cmc_hits) / num_valid,
        mAP=float(valid_ap.mean()),
        all_AP=valid_ap,
        valid_mask=valid_mask,
        num_valid_queries=num_valid,
        num_skipped=num_q - num_valid,
    )


@torch.no_grad()
def evaluate_features(
        q_feats: ArrayLike,
        g_feats: ArrayLike,
        q_pids: ArrayLike,
        g_pids: ArrayLike,
        q_camids: ArrayLike,
        g_camids: ArrayLike,
        metric: str = 'euclidean',
        max_rank: int = 50,
        block_bytes: int = EVALUATION_BLOCK_BYTES,
        show_progress: bool = False,
) -> RankResult:
    """`evaluate_rank(compute_distance_matrix(q_feats, g_feats, metric), ...)` without the whole matrix.

    Queries are taken in blocks; each block's distances to the whole gallery are computed (by the same code as
    `compute_distance_matrix`), ranked and dropped. The result is the same as through the whole matrix; the
    extra memory is O(block_bytes) instead of 4 x num_query x num_gallery bytes (plus a float32 copy of
    descriptors given in another dtype).

    Args:
        q_feats: (num_query, dim) query descriptors (tensor on any device, or array).
        g_feats: (num_gallery, dim) gallery descriptors.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 is junk, 0 a distractor.
        q_camids: (num_query,) query cameras.
        g_camids: (num_gallery,) gallery cameras.
        metric: 'euclidean' or 'cosine'.
        max_rank: length of the CMC curve.
        block_bytes: size of one block of float32 distances (at least one query row).
        show_progress: show the progress on stderr (`hbfp_timm.utils.progress`: a bar on a terminal, a line a
            minute in a log).

    Returns:
        A `RankResult`.

    Raises:
        ValueError: on inconsistent shapes, NaN descriptors, or when no query has a true match.
    """
    query, gallery = query_and_gallery(q_feats, g_feats, metric)
    num_q, num_g = len(query), len(gallery)
    q_pids, g_pids, q_camids, g_camids = check_ids(
        q_pids, g_pids, q_camids, g_camids, num_q, num_g, sizes=f'q_feats has {num_q} rows and g_feats {num_g}')
    _check_max_rank(max_rank)
    for name, features in (('q_feats', query), ('g_feats', gallery)):
        if not torch.isfinite(features).all():
            raise ValueError(f'{name} contains NaN or infinite values; descriptors must be finite numbers')
    stat = gallery_statistic(gallery, metric)
    block_rows = max(1, int(block_bytes) // (4 * max(num_g, 1)))
    buffer = torch.empty((min(block_rows, num_q), num_g), dtype=torch.float32)
    parts = []
    bar = progress(total=num_q, desc='scoring', unit='query', disable=not show_progress, leave=False)
    for start in range(0, num_q, block_rows):
        stop = min(start + block_rows, num_q)
        if query.device.type == 'cpu':
            distances = distance_block(query[start:stop], gallery, metric, stat, out=buffer[:stop - start])
        else:
            distances = buffer[:stop - start].copy_(distance_block(query[start:stop], gallery, metric, stat))
        parts.append(_rank_queries(distances.numpy(), q_pids[start:stop], g_pids, q_camids[start:stop],
                                   g_camids, chunk_size=32))
        bar.update(stop - start)
    bar.close()
    return _combine(parts, max_rank)
