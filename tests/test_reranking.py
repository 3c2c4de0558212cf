"""Tests of hbfp_timm.metrics.reranking: agreement with a plain dense loop of the original k-reciprocal algorithm, the
features path, and the method's known properties."""
import numpy as np
import pytest
import torch

from hbfp_timm.metrics import evaluate_rank, reranking
from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.metrics.reranking import re_ranking, re_ranking_features


def _reference_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value, boundary_cases=None):
    """The authors' released algorithm written as a plain loop over dense N x N arrays (no vectorisation).

    `boundary_cases`, when a list, receives one entry per candidate set whose overlap with R(i) is exactly
    2/3 of its size: the case where "more than" and "at least" differ.
    """
    num_q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    squared = (full.astype(np.float64) ** 2).astype(np.float32)
    n = len(squared)
    dist = np.empty_like(squared)
    for i in range(n):  # row i of d = column i of the squared matrix over its maximum
        dist[i] = squared[:, i] / squared[:, i].max()
    ranking = [np.argsort(dist[i], kind='stable') for i in range(n)]

    def reciprocal(i, k):
        return [c for c in ranking[i][:k] if i in ranking[c][:k]]

    half = int(np.around(k1 / 2.0)) + 1
    encoding = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = reciprocal(i, k1 + 1)
        expanded = set(members)
        for candidate in members:
            candidate_set = reciprocal(candidate, half)
            overlap = len(set(candidate_set) & set(members))
            if boundary_cases is not None and 3 * overlap == 2 * len(candidate_set):
                boundary_cases.append((i, candidate))
            if overlap > 2.0 / 3.0 * len(candidate_set):
                expanded.update(candidate_set)
        index = np.array(sorted(expanded))
        weights = np.exp(-dist[i, index])
        encoding[i, index] = weights / weights.sum()
    if k2 != 1:
        encoding = np.stack([encoding[ranking[i][:k2]].mean(axis=0) for i in range(n)])
    result = np.empty(q_g.shape, dtype=np.float32)
    for q in range(num_q):
        for g in range(q_g.shape[1]):
            shared = np.minimum(encoding[q], encoding[num_q + g]).sum()
            jaccard = 1.0 - shared / (2.0 - shared)
            result[q, g] = (1 - lambda_value) * jaccard + lambda_value * dist[q, num_q + g]
    return result


def _distances(num_q, num_g, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    query, gallery = torch.randn(num_q, dim, generator=generator), torch.randn(num_g, dim, generator=generator)
    return query, gallery, tuple(compute_distance_matrix(a, b) for a, b in
                                 ((query, gallery), (query, query), (gallery, gallery)))


@pytest.mark.parametrize('num_q, num_g, k1, k2, lambda_value, seed', [
    (6, 40, 20, 6, 0.3, 0),  # the paper's parameters
    (9, 31, 5, 3, 0.3, 1),  # k1 / 2 = 2.5 rounds to 2, as numpy's around does
    (4, 25, 7, 1, 0.5, 2),  # no query expansion
    (12, 60, 11, 4, 0.0, 3),  # Jaccard distance alone
    (3, 8, 20, 6, 0.3, 4),  # k1 larger than the data set
])
def test_equals_a_plain_loop_of_the_original_algorithm(num_q, num_g, k1, k2, lambda_value, seed):
    _, _, (q_g, q_q, g_g) = _distances(num_q, num_g, 6, seed)
    expected = _reference_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    result = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert result.dtype == np.float32 and result.shape == q_g.shape
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def test_overlap_of_exactly_two_thirds_does_not_expand():
    # Low-dimensional clustered points make candidate sets of 3 with 2 members inside R(i) common.
    rng = np.random.default_rng(0)
    points = (rng.standard_normal((8, 2))[rng.integers(0, 8, 70)] + 0.3 * rng.standard_normal((70, 2)))
    features = torch.as_tensor(points, dtype=torch.float32)
    query, gallery = features[:10], features[10:]
    q_g, q_q, g_g = (compute_distance_matrix(a, b) for a, b in ((query, gallery), (query, query), (gallery, gallery)))
    boundary = []
    expected = _reference_re_ranking(q_g, q_q, g_g, 5, 3, 0.3, boundary_cases=boundary)
    assert boundary, 'the data must contain candidate sets overlapping by exactly 2/3'
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=5, k2=3), expected, rtol=0, atol=1e-6)


def test_non_symmetric_input_uses_columns_as_the_original_does():
    rng = np.random.default_rng(5)
    q_g = rng.uniform(0.5, 2.0, (4, 12)).astype(np.float32)
    q_q = rng.uniform(0.5, 2.0, (4, 4)).astype(np.float32)
    g_g = rng.uniform(0.5, 2.0, (12, 12)).astype(np.float32)
    np.fill_diagonal(q_q, 0)
    np.fill_diagonal(g_g, 0)
    expected = _reference_re_ranking(q_g, q_q, g_g, 4, 2, 0.3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=4, k2=2), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('features', [False, True])
def test_distances_not_kept_from_the_first_pass_are_computed_again_equally(monkeypatch, features):
    monkeypatch.setattr(reranking, 'KEPT_PER_NEIGHBOURHOOD', 1)  # keep only the k1 + 1 nearest per row
    query, gallery, (q_g, q_q, g_g) = _distances(8, 50, 3, 9)
    expected = _reference_re_ranking(q_g, q_q, g_g, 10, 4, 0.3)
    result = re_ranking_features(query, gallery, k1=10, k2=4) if features else re_ranking(q_g, q_q, g_g, k1=10, k2=4)
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_features_path_equals_the_matrices_path(metric):
    generator = torch.Generator().manual_seed(7)
    query, gallery = torch.randn(7, 16, generator=generator), torch.randn(45, 16, generator=generator)
    matrices = [compute_distance_matrix(a, b, metric=metric) for a, b in
                ((query, gallery), (query, query), (gallery, gallery))]
    np.testing.assert_allclose(re_ranking_features(query, gallery, metric=metric, k1=8, k2=3),
                               re_ranking(*matrices, k1=8, k2=3), rtol=0, atol=1e-5)


def test_float64_inputs_are_squared_before_rounding_like_the_original():
    _, _, (q_g, q_q, g_g) = _distances(5, 30, 4, 8)
    q_g, q_q, g_g = (m.astype(np.float64) * 1.000001 for m in (q_g, q_q, g_g))
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, k1=6, k2=3),
                               _reference_re_ranking(q_g, q_q, g_g, 6, 3, 0.3), rtol=0, atol=1e-6)


def test_lambda_one_keeps_the_original_ranking():
    _, _, (q_g, q_q, g_g) = _distances(5, 30, 8, 0)
    reranked = re_ranking(q_g, q_q, g_g, k1=6, k2=3, lambda_value=1.0)
    np.testing.assert_array_equal(np.argsort(reranked, axis=1, kind='stable'), np.argsort(q_g, axis=1, kind='stable'))


def test_an_exact_duplicate_ends_at_distance_zero():
    generator = torch.Generator().manual_seed(1)
    query, gallery = torch.randn(4, 8, generator=generator), torch.randn(25, 8, generator=generator)
    gallery[7] = query[2]
    reranked = re_ranking_features(query, gallery, k1=5, k2=3, lambda_value=0.3)
    # Duplicates have identical neighbourhoods, hence identical encodings: Jaccard distance 0.
    assert reranked[2, 7] == pytest.approx(0.0, abs=1e-6)
    assert reranked[2].argmin() == 7
    assert (reranked >= -1e-6).all() and (reranked <= 1 + 1e-6).all()


def test_does_not_hurt_a_clustered_toy_case():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((12, 16))
    pids = np.repeat(np.arange(1, 13), 8)
    features = torch.as_tensor(centres[pids - 1] + 0.9 * rng.standard_normal((len(pids), 16)), dtype=torch.float32)
    is_query = np.zeros(len(pids), dtype=bool)
    is_query[::8] = True
    camids = np.where(is_query, 0, 1)
    query, gallery = features[is_query], features[~is_query]
    args = (pids[is_query], pids[~is_query], camids[is_query], camids[~is_query])
    _, map_before = evaluate_rank(compute_distance_matrix(query, gallery), *args, max_rank=5)
    _, map_after = evaluate_rank(re_ranking_features(query, gallery, k1=7, k2=3), *args, max_rank=5)
    assert map_before < 0.999  # the toy case is not already perfect
    assert map_after >= map_before


@pytest.mark.parametrize('call, message', [
    (lambda: re_ranking(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((3, 3))), 'q_q_dist must have shape'),
    (lambda: re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2))), 'g_g_dist must have shape'),
    (lambda: re_ranking(np.zeros(3), np.zeros((1, 1)), np.zeros((3, 3))), 'q_g_dist must be 2-D'),
    (lambda: re_ranking(np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3)), k1=0), 'k1 and k2'),
    (lambda: re_ranking(np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3)), lambda_value=2), 'lambda_value'),
    (lambda: re_ranking_features(torch.zeros(2, 3), torch.zeros(4, 5)), 'dim 3 differs'),
    (lambda: re_ranking_features(torch.zeros(2, 3), torch.zeros(4, 3), metric='l1'), 'metric'),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
