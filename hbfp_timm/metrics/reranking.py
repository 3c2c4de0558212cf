"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017), equal to the authors' release, in bounded memory.

The released code (zhunzhong07/person-re-ranking; torchreid's and fast-reid's ``re_ranking`` are copies of it)
defines the method as follows, over all N = num_query + num_gallery images and the full distance matrix D:

1. ``d(i, j) = D[j, i]^2 / max_r D[r, i]^2`` in float32 (each column of the squared matrix scaled by its
   maximum, then transposed; for a symmetric D, row i scaled by its own maximum);
2. ``N(i, k)``: the first k entries of row i sorted ascending (i itself first);
3. ``R(i) = [c in N(i, k1 + 1) : i in N(c, k1 + 1)]`` (Eq. 4), and ``R'(c)`` the same with
   ``round(k1 / 2) + 1`` neighbours;
4. the expansion (Eq. 6): ``R*(i) = R(i)`` united with every ``R'(c)``, c in R(i), that has **more than**
   2/3 of its members in R(i);
5. the encoding (Eq. 7): ``V[i, j] = exp(-d(i, j))`` on R*(i), normalised to sum 1;
6. local query expansion (Eq. 12, when k2 != 1): ``V[i] = mean of V[c]`` over the first k2 entries of N(i);
7. the Jaccard distance (Eq. 11) as the release computes it, ``1 - m / (2 - m)`` with
   ``m = sum_j min(V[q, j], V[g, j])`` (the encodings sum to 1, so ``2 - m`` is the sum of the maxima);
8. ``(1 - lambda) * Jaccard + lambda * d``, the query-to-gallery block.

The release holds four dense N x N arrays (about 6 GB at Market-1501 scale). Here nothing N x N is ever
held: step 2 needs only the first max(k1 + 1, k2) neighbours of each row, computed one block of rows at a
time; the encodings are sparse (a few dozen entries per row) and so is the Jaccard numerator, gathered
through an inverted index of the gallery encodings. The extra memory is the (num_query, num_gallery) result
plus O(N x k1^2) indices plus one block of rows.

Differences from the release, all outside ties-free, non-degenerate inputs: equal distances are ordered by
index (the release's ``np.argsort`` leaves their order to the sort); a row whose distances are all zero is
left unscaled (the release divides by zero); sums are accumulated in another order, so values agree to
float32 rounding (about 1e-7), not bit for bit.
"""
from typing import Tuple, Union

import numpy as np
import torch

from .distance import as_features, check_metric, distance_block, gallery_statistic

__all__ = ['re_ranking', 're_ranking_features']

ArrayLike = Union[np.ndarray, torch.Tensor]
# One block of rows of d (float32 values plus the int64 indices of the partial sort) stays under this.
BLOCK_BYTES = 128 * 2 ** 20
# Entries of one batch of (query, gallery, shared column) triples in the Jaccard numerator, and the size of
# the batch's float64 accumulator.
JACCARD_BATCH = 2 ** 22
JACCARD_BLOCK_BYTES = 64 * 2 ** 20
# Values of d kept per row from the first pass, in units of k1 + 1 (see _re_rank).
KEPT_PER_NEIGHBOURHOOD = 4


class _MatrixSource:
    """Rows and entries of ``D[j, i]^2`` from the three given distance matrices (no copy of them)."""

    def __init__(self, q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray):
        self.q_g, self.q_q, self.g_g = q_g_dist, q_q_dist, g_g_dist
        self.num_query = q_g_dist.shape[0]
        self.num_all = self.num_query + q_g_dist.shape[1]

    @staticmethod
    def _squared(values: np.ndarray) -> np.ndarray:
        # Squared in the input's precision, then rounded to float32, as the release does.
        return np.square(values).astype(np.float32, copy=False)

    def squared_rows(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, N) float32: row i holds column i of D squared."""
        nq = self.num_query
        out = np.empty((stop - start, self.num_all), dtype=np.float32)
        q_stop = min(stop, nq)
        if start < q_stop:  # query columns of D: [q_q[:, i]; q_g[i, :]]
            out[:q_stop - start, :nq] = self._squared(self.q_q[:, start:q_stop].T)
            out[:q_stop - start, nq:] = self._squared(self.q_g[start:q_stop])
        g_start = max(start, nq)
        if g_start < stop:  # gallery columns of D: [q_g[:, g]; g_g[:, g]]
            rows = slice(g_start - start, stop - start)
            out[rows, :nq] = self._squared(self.q_g[:, g_start - nq:stop - nq].T)
            out[rows, nq:] = self._squared(self.g_g[:, g_start - nq:stop - nq].T)
        return out

    def squared_entries(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """float32 ``D[columns, rows]^2``, entry by entry."""
        nq = self.num_query
        out = np.empty(len(rows), dtype=np.float32)
        row_is_q, column_is_q = rows < nq, columns < nq
        for mask, matrix, first, second in (
                (row_is_q & column_is_q, self.q_q, columns, rows),
                (row_is_q & ~column_is_q, self.q_g, rows, columns - nq),
                (~row_is_q & column_is_q, self.q_g, columns, rows - nq),
                (~row_is_q & ~column_is_q, self.g_g, columns - nq, rows - nq)):
            out[mask] = self._squared(matrix[first[mask], second[mask]])
        return out


class _FeatureSource:
    """Rows and entries of the squared distances computed from descriptors, block by block."""

    def __init__(self, features: torch.Tensor, num_query: int, metric: str):
        self.features, self.metric = features, metric
        self.stat = gallery_statistic(features, metric)
        self.num_query, self.num_all = num_query, len(features)

    @torch.no_grad()
    def squared_rows(self, start: int, stop: int) -> np.ndarray:
        rows = distance_block(self.features[start:stop], self.features, self.metric, self.stat)
        return rows.square_().cpu().numpy()

    @torch.no_grad()
    def squared_entries(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.float32)
        step = max(1, 2 ** 24 // self.features.shape[1])
        for start in range(0, len(rows), step):
            row_index = torch.as_tensor(rows[start:start + step], device=self.features.device)
            column_index = torch.as_tensor(columns[start:start + step], device=self.features.device)
            first, second = self.features[row_index], self.features[column_index]
            dot = (first * second).sum(dim=1)
            if self.metric == 'euclidean':  # the formula of distance_block, entry by entry
                squared = (self.stat[column_index] - 2.0 * dot + first.pow(2).sum(dim=1)).clamp_(min=0)
                distance = squared.sqrt_()
            else:
                inverse_norm = first.pow(2).sum(dim=1).sqrt_().clamp_(min=1e-12).reciprocal_()
                distance = 1.0 - dot * inverse_norm * self.stat[column_index]
            out[start:start + len(distance)] = distance.square_().cpu().numpy()
        return out


def _nearest(scaled_rows: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` smallest entries of each row, ascending, equal values by index."""
    if count < scaled_rows.shape[1]:
        candidates = np.sort(np.argpartition(scaled_rows, count - 1, axis=1)[:, :count], axis=1)
    else:
        candidates = np.broadcast_to(np.arange(scaled_rows.shape[1]), scaled_rows.shape)
    values = np.take_along_axis(scaled_rows, candidates, axis=1)
    return np.take_along_axis(candidates, np.argsort(values, axis=1, kind='stable'), axis=1)


def _neighbours_and_scales(source, num_kept: int):
    """The `num_kept` nearest entries of every row of d (indices and values), each row's scale, and d's
    query-to-gallery block."""
    nq, n = source.num_query, source.num_all
    kept_indices = np.empty((n, num_kept), dtype=np.int64)
    kept_values = np.empty((n, num_kept), dtype=np.float32)
    scales = np.empty(n, dtype=np.float32)
    query_gallery = np.empty((nq, n - nq), dtype=np.float32)
    block = max(1, BLOCK_BYTES // (12 * n))
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = source.squared_rows(start, stop)
        row_max = rows.max(axis=1)
        scales[start:stop] = np.where(row_max > 0, row_max, np.float32(1))  # guard: all-zero row
        rows /= scales[start:stop, None]
        kept_indices[start:stop] = _nearest(rows, num_kept)
        kept_values[start:stop] = np.take_along_axis(rows, kept_indices[start:stop], axis=1)
        if start < nq:
            query_gallery[start:min(stop, nq)] = rows[:min(stop, nq) - start, nq:]
    return kept_indices, kept_values, scales, query_gallery


def _entries(source, rows: np.ndarray, columns: np.ndarray, kept_indices: np.ndarray, kept_values: np.ndarray,
             scales: np.ndarray) -> np.ndarray:
    """d at (row, column) pairs sorted by row then column: from the values kept in the first pass where it
    has them (most pairs, the same numbers), else computed again."""
    n = source.num_all
    order = np.argsort(kept_indices, axis=1)
    kept_keys = (np.arange(n)[:, None] * n + np.take_along_axis(kept_indices, order, axis=1)).ravel()
    kept_sorted = np.take_along_axis(kept_values, order, axis=1).ravel()
    keys = rows * n + columns
    found = np.minimum(np.searchsorted(kept_keys, keys), len(kept_keys) - 1)
    hit = kept_keys[found] == keys
    out = np.empty(len(keys), dtype=np.float32)
    out[hit] = kept_sorted[found[hit]]
    missing = ~hit
    out[missing] = source.squared_entries(rows[missing], columns[missing]) / scales[rows[missing]]
    return out


def _reciprocal(neighbours: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``R(i)`` with k neighbours for every i: an (N, k) array of indices in neighbour order, padded with -1."""
    forward = neighbours[:, :k]
    out = np.full(forward.shape, -1, dtype=np.int64)
    block = max(1, 2 ** 24 // (forward.shape[1] ** 2))
    for start in range(0, len(forward), block):
        rows = forward[start:start + block]
        own = np.arange(start, start + len(rows))[:, None, None]
        is_reciprocal = (forward[rows] == own).any(axis=2)
        # Stable sort of "not reciprocal" moves the members to the front in neighbour order.
        order = np.argsort(~is_reciprocal, axis=1, kind='stable')
        out[start:start + len(rows)] = np.where(np.take_along_axis(is_reciprocal, order, axis=1),
                                                np.take_along_axis(rows, order, axis=1), -1)
    return out, (out >= 0).sum(axis=1)


def _expanded_sets(neighbours: np.ndarray, k1: int) -> Tuple[np.ndarray, np.ndarray]:
    """``R*(i)`` of step 4 for every i, as (row, column) pairs sorted by row, then column."""
    members, _ = _reciprocal(neighbours, k1 + 1)
    half, half_sizes = _reciprocal(neighbours, int(np.around(k1 / 2.0)) + 1)
    n, width = members.shape
    pair_rows, pair_columns = [np.repeat(np.arange(n), width)], [members.ravel()]
    block = max(1, 2 ** 24 // (width * width * half.shape[1]))
    for start in range(0, n, block):
        own = members[start:start + block]  # (B, width)
        candidate_sets = half[np.maximum(own, 0)]  # (B, width, half_width); rows of -1 candidates unused
        in_own = ((candidate_sets[..., None] == own[:, None, None, :]) & (candidate_sets[..., None] >= 0)).any(-1)
        overlap = in_own.sum(axis=2)
        size = half_sizes[np.maximum(own, 0)]
        accepted = (own >= 0) & (3 * overlap > 2 * size)  # "more than 2/3", as in the release
        rows_of = np.broadcast_to(np.arange(start, start + len(own))[:, None, None], candidate_sets.shape)
        chosen = accepted[..., None] & (candidate_sets >= 0)
        pair_rows.append(rows_of[chosen])
        pair_columns.append(candidate_sets[chosen])
    rows, columns = np.concatenate(pair_rows), np.concatenate(pair_columns)
    keep = columns >= 0
    keys = np.unique(rows[keep] * n + columns[keep])
    return keys // n, keys % n


def _encode(source, kept_indices: np.ndarray, kept_values: np.ndarray, scales: np.ndarray, k1: int):
    """Step 5: the sparse encodings V as CSR arrays (row starts, columns, float32 values)."""
    rows, columns = _expanded_sets(kept_indices, k1)
    distances = _entries(source, rows, columns, kept_indices, kept_values, scales)
    weights = np.exp(-distances)
    starts = np.searchsorted(rows, np.arange(source.num_all + 1))
    values = np.empty_like(weights)
    for row in range(source.num_all):  # np.sum per row: the release's (pairwise) float32 summation
        segment = weights[starts[row]:starts[row + 1]]
        values[starts[row]:starts[row + 1]] = segment / segment.sum()
    return starts, columns, values


def _query_expansion(starts, columns, values, neighbours: np.ndarray, k2: int, n: int):
    """Step 6: each encoding replaced by the mean of those of its first k2 neighbours (CSR in, CSR out)."""
    expansion = neighbours[:, :k2]
    sizes = np.diff(starts)
    counts = sizes[expansion]  # (N, k2) entries contributed by each neighbour
    owner = np.repeat(np.arange(n), counts.sum(axis=1))
    source_row = np.repeat(expansion.ravel(), counts.ravel())
    offset = np.arange(len(source_row)) - np.repeat(np.cumsum(counts.ravel()) - counts.ravel(), counts.ravel())
    entry = starts[source_row] + offset
    # Sorted by (row, column), stably, so each sum runs over the neighbours in order, as the release's mean.
    order = np.argsort(owner * n + columns[entry], kind='stable')
    keys = owner[order] * n + columns[entry][order]
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sums = np.add.reduceat(values[entry][order], first) if len(first) else values[:0]
    new_rows = keys[first] // n
    return np.searchsorted(new_rows, np.arange(n + 1)), keys[first] % n, (sums / np.float32(k2)).astype(np.float32)


def _jaccard(starts, columns, values, num_query: int) -> np.ndarray:
    """Step 7 for every query and gallery image, through an inverted index of the gallery encodings."""
    n = len(starts) - 1
    num_gallery = n - num_query
    g_first = starts[num_query]
    g_rows = np.repeat(np.arange(num_gallery), np.diff(starts[num_query:]))
    g_columns, g_values = columns[g_first:], values[g_first:]
    order = np.argsort(g_columns, kind='stable')
    inv_rows, inv_values = g_rows[order], g_values[order]
    inv_starts = np.searchsorted(g_columns[order], np.arange(n + 1))
    inv_counts = np.diff(inv_starts)

    jaccard = np.empty((num_query, num_gallery), dtype=np.float32)
    triples = inv_counts[columns[:starts[num_query]]]  # gallery entries met by each query entry
    entry_query = np.repeat(np.arange(num_query), np.diff(starts[:num_query + 1]))
    work = np.bincount(entry_query, weights=triples, minlength=num_query)
    for q_start, q_stop in _batches(work, JACCARD_BATCH, max(1, JACCARD_BLOCK_BYTES // (8 * num_gallery))):
        first, last = starts[q_start], starts[q_stop]
        q_rows = np.repeat(np.arange(q_stop - q_start), np.diff(starts[q_start:q_stop + 1]))
        counts = triples[first:last]
        owner = np.repeat(q_rows, counts)
        q_value = np.repeat(values[first:last], counts)
        offset = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        inverted = np.repeat(inv_starts[columns[first:last]], counts) + offset
        shared = np.minimum(q_value, inv_values[inverted])
        numerator = np.bincount(owner * num_gallery + inv_rows[inverted], weights=shared,
                                minlength=(q_stop - q_start) * num_gallery)
        numerator = numerator.reshape(q_stop - q_start, num_gallery).astype(np.float32)
        jaccard[q_start:q_stop] = 1 - numerator / (2.0 - numerator)
    return jaccard


def _batches(work: np.ndarray, max_work: float, max_rows: int):
    """Consecutive (start, stop) ranges of rows, each with at most `max_rows` rows and, unless one row alone
    exceeds it, at most `max_work` summed work."""
    start, total = 0, 0.0
    for row, amount in enumerate(work):
        if row > start and (total + amount > max_work or row - start >= max_rows):
            yield start, row
            start, total = row, 0.0
        total += amount
    if start < len(work):
        yield start, len(work)


def _re_rank(source, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    if isinstance(k1, bool) or isinstance(k2, bool) or k1 < 1 or k2 < 1:
        raise ValueError(f'k1 and k2 must be positive integers, got k1={k1}, k2={k2}')
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f'lambda_value must be in [0, 1], got {lambda_value}')
    n = source.num_all
    # Expanded sets lie in the two-step neighbourhood; keeping a few times k1 + 1 values per row from the first
    # pass covers most of their entries, so few distances are computed twice.
    kept_indices, kept_values, scales, original = _neighbours_and_scales(
        source, min(max(KEPT_PER_NEIGHBOURHOOD * (k1 + 1), k2), n))
    starts, columns, values = _encode(source, kept_indices, kept_values, scales, k1)
    if k2 != 1:
        starts, columns, values = _query_expansion(starts, columns, values, kept_indices, k2, n)
    del kept_indices, kept_values
    jaccard = _jaccard(starts, columns, values, source.num_query)
    jaccard *= np.float32(1 - lambda_value)
    original *= np.float32(lambda_value)
    jaccard += original
    return jaccard


def _as_distance_matrix(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if array.ndim != 2:
        raise ValueError(f'{name} must be 2-D, got shape {array.shape}')
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array


def re_ranking(
        q_g_dist: ArrayLike,
        q_q_dist: ArrayLike,
        g_g_dist: ArrayLike,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking of query-to-gallery distances, equal to the authors' release (module doc).

    Args:
        q_g_dist: (num_query, num_gallery) distances (e.g. Euclidean, from `compute_distance_matrix`).
        q_q_dist: (num_query, num_query) distances.
        g_g_dist: (num_gallery, num_gallery) distances.
        k1: neighbourhood size of the k-reciprocal sets (20 in the paper).
        k2: neighbourhood size of the local query expansion (6 in the paper; 1 disables it).
        lambda_value: weight of the original distance (0.3 in the paper).

    Returns:
        (num_query, num_gallery) float32 re-ranked distances.
    """
    q_g = _as_distance_matrix(q_g_dist, 'q_g_dist')
    q_q = _as_distance_matrix(q_q_dist, 'q_q_dist')
    g_g = _as_distance_matrix(g_g_dist, 'g_g_dist')
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q):
        raise ValueError(f'q_q_dist must have shape {(num_q, num_q)}, got {q_q.shape}')
    if g_g.shape != (num_g, num_g):
        raise ValueError(f'g_g_dist must have shape {(num_g, num_g)}, got {g_g.shape}')
    if num_q == 0 or num_g == 0:
        raise ValueError(f'q_g_dist must have at least one query and one gallery item, got shape {q_g.shape}')
    return _re_rank(_MatrixSource(q_g, q_q, g_g), k1, k2, lambda_value)


def re_ranking_features(
        q_feats: ArrayLike,
        g_feats: ArrayLike,
        metric: str = 'euclidean',
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
) -> np.ndarray:
    """`re_ranking` of the distances between descriptors, without any of the three distance matrices.

    Equal to ``re_ranking(*(compute_distance_matrix(a, b, metric) for a, b in ((q, g), (q, q), (g, g))))`` up
    to float32 rounding: distances are computed one block of rows at a time and dropped.

    Args:
        q_feats: (num_query, dim) query descriptors (tensor on any device, or array).
        g_feats: (num_gallery, dim) gallery descriptors.
        metric: 'euclidean' or 'cosine'.
        k1: neighbourhood size of the k-reciprocal sets.
        k2: neighbourhood size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance.

    Returns:
        (num_query, num_gallery) float32 re-ranked distances.
    """
    check_metric(metric)
    query = as_features(q_feats, 'q_feats')
    gallery = as_features(g_feats, 'g_feats').to(query.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f'q_feats dim {query.shape[1]} differs from g_feats dim {gallery.shape[1]}')
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError(f'need at least one query and one gallery descriptor, got {len(query)} and {len(gallery)}')
    return _re_rank(_FeatureSource(torch.cat([query, gallery]), len(query), metric), k1, k2, lambda_value)
