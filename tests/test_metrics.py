"""Tests of hbfp_timm.metrics: the Market-1501 protocol worked out by hand, parity with the reference loop,
distances, and evaluation from descriptors in blocks."""
import numpy as np
import pytest
import torch

from hbfp_timm.metrics import compute_distance_matrix, evaluate_features, evaluate_rank

from reference import evaluate_rank_loop


def _single_query(g_dists, g_pids, g_camids, q_pid=1, q_camid=0, max_rank=5):
    distmat = np.asarray([g_dists], dtype=np.float32)
    return evaluate_rank(distmat, np.array([q_pid]), np.array(g_pids), np.array([q_camid]),
                                  np.array(g_camids), max_rank=max_rank)


def test_same_identity_same_camera_is_removed_not_counted():
    # Ranked: [pid1 cam0 (removed), pid2 cam1, pid1 cam1] -> kept [negative, match].
    result = _single_query([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_camids=[0, 1, 1])
    np.testing.assert_allclose(result.cmc, [0, 1, 1, 1, 1])
    assert result.mAP == pytest.approx(1 / 2)


def test_same_camera_other_identity_stays_as_negative():
    result = _single_query([0.1, 0.2], g_pids=[2, 1], g_camids=[0, 1])
    np.testing.assert_allclose(result.cmc[:2], [0, 1])


def test_junk_gallery_images_are_ignored():
    result = _single_query([0.1, 0.2, 0.3], g_pids=[-1, 1, 2], g_camids=[1, 1, 1])
    np.testing.assert_allclose(result.cmc[:2], [1, 1])
    assert result.mAP == pytest.approx(1.0)


def test_distractors_count_as_negatives():
    result = _single_query([0.1, 0.2], g_pids=[0, 1], g_camids=[1, 2])
    np.testing.assert_allclose(result.cmc[:2], [0, 1])
    assert result.mAP == pytest.approx(1 / 2)


def test_average_precision_over_several_matches():
    # Kept ranking: match, negative, match, negative, match -> AP = (1/1 + 2/3 + 3/5) / 3.
    result = _single_query([0.1, 0.2, 0.3, 0.4, 0.5], g_pids=[1, 3, 1, 4, 1], g_camids=[1, 1, 2, 1, 3])
    assert result.mAP == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    np.testing.assert_allclose(result.cmc, [1, 1, 1, 1, 1])


def test_query_without_valid_match_is_skipped_and_counted():
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([1, 2, 3]), np.array([1, 0, 1])  # query 2's only match shares its camera
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    assert result.num_valid_queries == 1
    assert result.num_skipped == 1
    np.testing.assert_array_equal(result.valid_mask, [True, False])
    assert result.mAP == pytest.approx(1.0)
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    np.testing.assert_allclose(cmc, result.cmc)
    assert mAP == result.mAP


def test_no_valid_query_at_all_raises():
    with pytest.raises(ValueError, match='none of the 1 queries'):
        _single_query([0.1, 0.2], g_pids=[1, 2], g_camids=[0, 1])


def test_ties_are_broken_by_gallery_index():
    first_negative = _single_query([0.5, 0.5], g_pids=[2, 1], g_camids=[1, 1])
    first_match = _single_query([0.5, 0.5], g_pids=[1, 2], g_camids=[1, 1])
    assert first_negative.cmc[0] == 0 and first_negative.mAP == pytest.approx(0.5)
    assert first_match.cmc[0] == 1 and first_match.mAP == pytest.approx(1.0)


def test_negative_zero_ties_with_positive_zero():
    result = _single_query([0.0, -0.0], g_pids=[2, 1], g_camids=[1, 1])
    assert result.cmc[0] == 0  # like np.argsort, -0.0 and 0.0 are equal, so gallery order decides


def test_cmc_has_max_rank_entries_when_gallery_is_smaller():
    result = _single_query([0.2, 0.1, 0.3], g_pids=[1, 2, 3], g_camids=[1, 1, 1], max_rank=10)
    assert result.cmc.shape == (10,)
    np.testing.assert_allclose(result.cmc, [0] + [1] * 9)


def _random_protocol_case(rng, num_q, num_g, num_ids, num_cams, dtype, tie_levels=None):
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_pids[::5] = num_ids + 1  # an identity absent from the gallery: these queries must be skipped
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < 0.15] = 0
    g_pids[rng.random(num_g) < 0.1] = -1
    q_camids, g_camids = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    if tie_levels is None:
        distmat = rng.standard_normal((num_q, num_g)).astype(dtype)
    else:
        distmat = rng.integers(0, tie_levels, (num_q, num_g)).astype(dtype)
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('num_q, num_g, dtype, tie_levels, max_rank, chunk_size', [
    (50, 200, np.float32, None, 50, 256),
    (97, 300, np.float32, None, 20, 16),         # several chunks, the last one partial
    (40, 120, np.float32, 4, 10, 7),             # many ties
    (30, 12, np.float32, None, 50, 8),           # max_rank larger than the gallery
    (60, 150, np.float64, None, 30, 25),         # float64 not representable in float32: stable-argsort path
    (60, 150, np.float64, 6, 30, 25),            # float64 holding small integers: fast path
])
def test_vectorised_equals_reference_loop(num_q, num_g, dtype, tie_levels, max_rank, chunk_size):
    rng = np.random.default_rng(num_q * 1000 + num_g)
    case = _random_protocol_case(rng, num_q, num_g, num_ids=15, num_cams=4, dtype=dtype, tie_levels=tie_levels)
    fast = evaluate_rank(*case, max_rank=max_rank, chunk_size=chunk_size)
    reference = evaluate_rank_loop(*case, max_rank=max_rank)
    assert reference.num_skipped > 0  # the random case exercises skipping
    _assert_same_result(fast, reference)
    assert fast.cmc.shape == (max_rank,)


def _assert_same_result(fast, reference):
    np.testing.assert_array_equal(fast.valid_mask, reference.valid_mask)
    np.testing.assert_allclose(fast.cmc, reference.cmc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.all_AP, reference.all_AP, rtol=0, atol=1e-9)
    assert fast.mAP == pytest.approx(reference.mAP, abs=1e-9)


def test_ties_with_negatives_on_both_sides_of_the_match():
    # All at the same distance: the gallery index decides. Kept order: neg(0), match(1), removed, neg(3), match(4).
    result = _single_query([0.5] * 5, g_pids=[2, 1, 1, 3, 1], g_camids=[1, 1, 0, 1, 2])
    assert result.cmc[0] == 0 and result.cmc[1] == 1
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_tie_between_match_and_removed_entry_does_not_count_the_removed_one():
    result = _single_query([0.3, 0.3, 0.3, 0.1], g_pids=[1, 1, 2, 3], g_camids=[0, 1, 1, 1])
    # Ranked: pid3 (0.1), removed (0.3, idx 0), match (0.3, idx 1), pid2 -> match at kept rank 2.
    np.testing.assert_allclose(result.cmc[:2], [0, 1])
    assert result.mAP == pytest.approx(1 / 2)


def test_query_whose_only_matches_share_its_camera_is_skipped_among_valid_ones():
    distmat = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([2, 2, 1, -1]), np.array([0, 0, 1, 1])  # both images of pid 2 in camera 0
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    np.testing.assert_array_equal(result.valid_mask, [True, False])
    assert result.num_skipped == 1
    np.testing.assert_allclose(result.cmc, [0, 0, 1])  # pid 2 entries are negatives for query 1; junk ignored
    assert result.mAP == pytest.approx(1 / 3)


@pytest.mark.parametrize('tie_levels', [None, 3])
def test_many_matches_per_query_and_uneven_match_counts_equal_reference(tie_levels):
    rng = np.random.default_rng(7)
    num_q, num_g = 12, 400
    q_pids = np.array([1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 0, 9])  # pid 0: a distractor used as query
    g_pids = np.concatenate([np.ones(150, int), np.full(60, 2), np.full(3, 3), rng.integers(4, 9, 87),
                             np.zeros(80, int), np.full(20, -1)])
    rng.shuffle(g_pids)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    if tie_levels is None:
        distmat = rng.random((num_q, num_g), dtype=np.float32)
    else:
        distmat = rng.integers(0, tie_levels, (num_q, num_g)).astype(np.float32)
    fast = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, chunk_size=5)
    _assert_same_result(fast, evaluate_rank_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20))
    assert fast.num_skipped == 1  # pid 9 has no gallery image


def test_rows_of_only_distractors_and_junk_are_skipped():
    distmat = np.array([[0.2, 0.1, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    result = evaluate_rank(distmat, np.array([1, 2]), np.array([0, -1, 1]), np.array([0, 0]),
                                    np.array([1, 1, 1]), max_rank=3)
    np.testing.assert_array_equal(result.valid_mask, [True, False])
    np.testing.assert_allclose(result.cmc, [0, 1, 1])  # junk at 0.1 ignored, distractor at 0.2 ranks first


@pytest.mark.parametrize('dtype', [np.float16, np.float64, np.longdouble])
def test_other_float_dtypes_equal_reference(dtype):
    rng = np.random.default_rng(11)
    case = _random_protocol_case(rng, 30, 90, num_ids=8, num_cams=3, dtype=dtype)
    _assert_same_result(evaluate_rank(*case, max_rank=10, chunk_size=4),
                        evaluate_rank_loop(*case, max_rank=10))


def test_infinite_distances_and_signed_zeros_rank_like_a_stable_argsort():
    rng = np.random.default_rng(5)
    case = list(_random_protocol_case(rng, 25, 80, num_ids=6, num_cams=3, dtype=np.float32))
    choices = np.array([np.inf, -np.inf, 0.0, -0.0, 1.0], dtype=np.float32)
    case[0] = choices[rng.integers(0, len(choices), case[0].shape)]
    _assert_same_result(evaluate_rank(*case, max_rank=10, chunk_size=3),
                        evaluate_rank_loop(*case, max_rank=10))


def test_result_does_not_depend_on_thread_count():
    rng = np.random.default_rng(9)
    case = _random_protocol_case(rng, 70, 150, num_ids=10, num_cams=3, dtype=np.float32, tie_levels=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = evaluate_rank(*case, chunk_size=4)
        torch.set_num_threads(2)
        several = evaluate_rank(*case, chunk_size=4)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(single.all_AP, several.all_AP)
    np.testing.assert_array_equal(single.cmc, several.cmc)


@pytest.mark.parametrize('nan_at', ['ranked row', 'junk column', 'skipped row'])
def test_nan_anywhere_is_an_error(nan_at):
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    row, column = {'ranked row': (0, 1), 'junk column': (0, 2), 'skipped row': (1, 0)}[nan_at]
    distmat[row, column] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        evaluate_rank(distmat, np.array([1, 5]), np.array([1, 2, -1]), np.array([0, 0]),
                               np.array([1, 1, 1]))


def test_accepts_torch_tensors():
    rng = np.random.default_rng(3)
    case = _random_protocol_case(rng, 20, 60, num_ids=6, num_cams=3, dtype=np.float32)
    cmc, mAP = evaluate_rank(*(torch.as_tensor(a) for a in case), max_rank=5)
    expected_cmc, expected_mAP = evaluate_rank(*case, max_rank=5)
    np.testing.assert_allclose(cmc, expected_cmc)
    assert mAP == expected_mAP


@pytest.mark.parametrize('bad, message', [
    (dict(g_camids=np.zeros(3, dtype=int)), 'g_camids has length 3'),
    (dict(q_pids=np.zeros((2, 1), dtype=int)), 'q_pids must be a 1-D array'),
    (dict(q_pids=np.array([1.5, 2.0])), 'q_pids must hold integer ids'),
    (dict(distmat=np.zeros(4, dtype=np.float32)), 'distmat must be 2-D'),
    (dict(distmat=np.full((2, 4), np.nan, dtype=np.float32)), 'NaN'),
    (dict(max_rank=0), 'max_rank must be a positive integer'),
])
def test_bad_input_is_a_clear_error(bad, message):
    args = dict(distmat=np.zeros((2, 4), dtype=np.float32), q_pids=np.array([1, 2]), g_pids=np.array([1, 2, 1, 2]),
                q_camids=np.array([0, 0]), g_camids=np.array([1, 1, 1, 1]), max_rank=3)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        evaluate_rank(**args)


def test_euclidean_distance_by_hand():
    query = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    gallery = torch.tensor([[0.0, 0.0], [6.0, 8.0], [3.0, 0.0]])
    distmat = compute_distance_matrix(query, gallery, metric='euclidean', chunk_size=1)
    assert distmat.dtype == np.float32 and isinstance(distmat, np.ndarray)
    np.testing.assert_allclose(distmat, [[0, 10, 3], [5, 5, 4]], atol=1e-5)


def test_cosine_distance_by_hand():
    query = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    gallery = torch.tensor([[0.0, 2.0], [3.0, 0.0], [-1.0, 0.0]])
    distmat = compute_distance_matrix(query, gallery, metric='cosine')
    half_sqrt2 = 1 - np.sqrt(0.5)
    np.testing.assert_allclose(distmat, [[1, 0, 2], [half_sqrt2, half_sqrt2, 1 + np.sqrt(0.5)]], atol=1e-6)


def test_distance_errors():
    with pytest.raises(ValueError, match="metric must be 'euclidean' or 'cosine'"):
        compute_distance_matrix(torch.zeros(2, 3), torch.zeros(2, 3), metric='manhattan')
    with pytest.raises(ValueError, match='dim 3 differs from gallery_features dim 4'):
        compute_distance_matrix(torch.zeros(2, 3), torch.zeros(2, 4))


def _random_split(seed, num_q=40, num_g=300, dim=8):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, 15, num_q), rng.integers(-1, 15, num_g)  # with junk (-1) and distractors (0)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q_feats = torch.as_tensor(rng.standard_normal((num_q, dim)), dtype=torch.float32)
    g_feats = torch.as_tensor(rng.standard_normal((num_g, dim)), dtype=torch.float32)
    return q_feats, g_feats, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
@pytest.mark.parametrize('block_bytes', [1, 4 * 300 * 7, 2 ** 30])  # one query per block, 7 per block, all at once
def test_evaluate_features_equals_evaluate_rank_of_the_whole_matrix(metric, block_bytes):
    q_feats, g_feats, q_pids, g_pids, q_camids, g_camids = _random_split(seed=3)
    q_pids[5:12] = 99  # a run of queries without any match: whole blocks with nothing to score
    expected = evaluate_rank(compute_distance_matrix(q_feats, g_feats, metric=metric),
                                      q_pids, g_pids, q_camids, g_camids, max_rank=20)
    result = evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric=metric,
                                        max_rank=20, block_bytes=block_bytes)
    np.testing.assert_array_equal(result.cmc, expected.cmc)
    np.testing.assert_array_equal(result.all_AP, expected.all_AP)
    np.testing.assert_array_equal(result.valid_mask, expected.valid_mask)
    assert result.mAP == expected.mAP and result.num_skipped == expected.num_skipped >= 7
    cmc, mAP = evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric=metric, max_rank=20)
    np.testing.assert_array_equal(cmc, expected.cmc)
    assert mAP == expected.mAP


def test_the_result_unpacks_and_indexes_as_torchreids_cmc_map_pair():
    q_feats, g_feats, *ids = _random_split(seed=4)
    result = evaluate_features(q_feats, g_feats, *ids, max_rank=5)
    cmc, mAP = result
    assert cmc is result.cmc and mAP == result.mAP and result[0] is result.cmc and result[-1] == result.mAP
    assert len(result) == 2 and 0 < result.mAP < 1 and result.cmc.shape == (5,)


def test_evaluate_features_accepts_numpy_and_half_precision_descriptors():
    q_feats, g_feats, *ids = _random_split(seed=4)
    expected = evaluate_features(q_feats.half().float(), g_feats.half().float(), *ids, max_rank=5)
    result = evaluate_features(q_feats.half().numpy(), g_feats.half(), *ids, max_rank=5)
    np.testing.assert_array_equal(result[0], expected[0])
    assert result[1] == expected[1]


@pytest.mark.parametrize('change, message', [
    (dict(q_pids=np.array([1, 2])), 'q_pids has length 2 but q_feats has 40 rows and g_feats 300'),
    (dict(g_feats=torch.zeros(300, 5)), 'q_feats dim 8 differs from g_feats dim 5'),
    (dict(q_feats=torch.zeros(40)), 'q_feats must be 2-D'),
    (dict(metric='l2'), "metric must be 'euclidean' or 'cosine'"),
    (dict(max_rank=0), 'max_rank must be a positive integer'),
    (dict(q_pids=np.full(40, 99)), 'none of the 40 queries has a true match'),
])
def test_evaluate_features_bad_input_is_a_clear_error(change, message):
    q_feats, g_feats, q_pids, g_pids, q_camids, g_camids = _random_split(seed=5)
    args = dict(q_feats=q_feats, g_feats=g_feats, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                g_camids=g_camids)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_features(**args)


def test_evaluate_features_refuses_nan_descriptors():
    q_feats, g_feats, *ids = _random_split(seed=6)
    g_feats[17, 2] = float('nan')
    with pytest.raises(ValueError, match='g_feats contains NaN'):
        evaluate_features(q_feats, g_feats, *ids)
