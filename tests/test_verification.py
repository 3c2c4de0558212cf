"""hbfp_timm.metrics.verification: "same person" thresholds from genuine and impostor pair distances."""
import json

import numpy as np
import pytest
import torch

from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.metrics.verification import (
    MIN_PAIRS, THRESHOLDS_FORMAT, calibrate, calibration_problems, check_threshold, pair_distances, read_thresholds,
    save_thresholds, select_threshold, stored_thresholds,
)


def _hand_built():
    """One query at 0 (identity 1, camera 0); 1-d gallery descriptors, so each distance is the value itself.

    genuine (identity 1, camera 1): 1, 3; left out: identity 1 in camera 0 (0.5) and junk (0.25);
    impostors (identity 2, any camera): 2, 4, 5, ..., 12 (ten).
    """
    values = [1.0, 3.0, 0.5, 0.25, 2.0] + [float(v) for v in range(4, 13)]
    pids = [1, 1, 1, -1] + [2] * 10
    cams = [1, 1, 0, 1] + [0, 1] * 5
    return (torch.zeros(1, 1), torch.tensor(values)[:, None], np.array([1]), np.array(pids), np.array([0]),
            np.array(cams))


def test_hand_built_thresholds_reach_their_false_match_rates():
    pairs = pair_distances(*_hand_built(), fmrs=(0.1, 0.05), at=[3.5])
    assert pairs.genuine.tolist() == [1.0, 3.0] and pairs.num_impostor == 10
    record = calibrate(pairs, fmrs=(0.1, 0.05))
    at_10, at_5 = record['thresholds']
    # FMR 0.1: one impostor of ten may be accepted, so the threshold is the 2nd smallest impostor distance, 4:
    # impostor 2 accepted (FMR 0.1), both genuine pairs (TMR 1).
    assert (at_10['fmr_target'], at_10['threshold'], at_10['fmr'], at_10['tmr']) == (0.1, 4.0, 0.1, 1.0)
    assert (at_10['impostors_accepted'], at_10['genuine_accepted']) == (1, 2)
    # FMR 0.05: no impostor may be accepted: threshold 2 (strictly below), genuine 1 accepted, 3 not.
    assert (at_5['threshold'], at_5['fmr'], at_5['tmr']) == (2.0, 0.0, 0.5)
    # Equal error: at threshold 1, FMR 0 and FNMR 1; at 3, FMR 0.1 and FNMR 0.5 (closer): rate 0.3.
    assert record['eer']['threshold'] == 3.0 and record['eer']['rate'] == pytest.approx(0.3)
    checked = check_threshold(pairs, 3.5)
    assert (checked['genuine_accepted'], checked['impostors_accepted']) == (2, 1)


def test_a_calibration_on_too_few_pairs_says_which_rates_rest_on_how_many():
    """Rule of 30: a threshold at FMR f rests on the floor(f * impostors) impostor pairs below it and needs 30 of
    them (30 / f impostor pairs); the true-match rates need 30 genuine pairs."""
    assert MIN_PAIRS == 30
    record = calibrate(pair_distances(*_hand_built(), fmrs=(0.1, 0.05)), fmrs=(0.1, 0.05))
    assert calibration_problems(record) == [
        'FMR 0.1 rests on 1 impostor pair below its threshold (10 impostor pairs; 300 put 30 below it)',
        'FMR 0.05 rests on 0 impostor pairs below its threshold (10 impostor pairs; 600 put 30 below it)',
        '2 genuine pairs (30 needed for the true-match rates)']
    q_pids, g_pids = np.repeat(np.arange(40), 2), np.repeat(np.arange(40), 40)
    q_cams, g_cams = np.zeros(len(q_pids), dtype=int), np.ones(len(g_pids), dtype=int)
    q, g = torch.randn(len(q_pids), 4), torch.randn(len(g_pids), 4)
    pairs = pair_distances(q, g, q_pids, g_pids, q_cams, g_cams, fmrs=(1e-2,))
    assert pairs.num_impostor == 80 * 39 * 40 and len(pairs.genuine) == 80 * 40  # 124,800 impostors, 3,200 genuine
    assert calibration_problems(calibrate(pairs, fmrs=(1e-2,))) == []


def _random_split(seed=0, num_ids=12, num_cams=3, dim=8):
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(num_ids, dim))
    q_pids = np.repeat(np.arange(num_ids), 2)
    g_pids = np.concatenate([np.repeat(np.arange(num_ids), 5), [0, 0, -1]])
    q_feats = centres[q_pids] + 0.8 * generator.normal(size=(len(q_pids), dim))
    g_feats = centres[np.clip(g_pids, 0, None)] + 0.8 * generator.normal(size=(len(g_pids), dim))
    q_cams = generator.integers(0, num_cams, len(q_pids))
    g_cams = generator.integers(0, num_cams, len(g_pids))
    return (torch.tensor(q_feats, dtype=torch.float32), torch.tensor(g_feats, dtype=torch.float32), q_pids, g_pids,
            q_cams, g_cams)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_pairs_and_rates_equal_a_direct_loop_over_the_distance_matrix(metric):
    split = _random_split()
    q_feats, g_feats, q_pids, g_pids, q_cams, g_cams = split
    distmat = compute_distance_matrix(q_feats, g_feats, metric)
    genuine, impostor = [], []
    for i in range(len(q_pids)):
        for j in range(len(g_pids)):
            if g_pids[j] == -1:
                continue
            if g_pids[j] != q_pids[i]:
                impostor.append(distmat[i, j])
            elif g_cams[j] != q_cams[i]:
                genuine.append(distmat[i, j])
    pairs = pair_distances(*split, metric=metric, fmrs=(0.05, 0.01))
    assert np.array_equal(pairs.genuine, np.sort(genuine)) and pairs.num_impostor == len(impostor)
    # Blocks of one query row, two passes: the same pairs (to the rounding of a matrix-vector product).
    streamed = pair_distances(*split, metric=metric, fmrs=(0.05, 0.01), block_bytes=1)
    assert np.allclose(streamed.genuine, pairs.genuine, atol=1e-5) and streamed.num_impostor == pairs.num_impostor
    assert np.abs(streamed.impostors_below - pairs.impostors_below).max() <= 1
    impostor = np.sort(impostor)
    for entry in calibrate(pairs, fmrs=(0.05, 0.01))['thresholds']:
        t = entry['threshold']
        assert entry['fmr'] == np.mean(impostor < t) <= entry['fmr_target']
        assert entry['tmr'] == np.mean(np.array(genuine) < t)
        # The largest threshold with FMR <= target: one impostor more would pass the target.
        assert (np.sum(impostor <= t) + 0) / len(impostor) > entry['fmr_target']


def test_no_genuine_pair_is_one_clear_error():
    q_feats, g_feats, _, _, _, _ = _hand_built()
    with pytest.raises(ValueError, match='no genuine pair'):
        pair_distances(q_feats, g_feats[:1], np.array([1]), np.array([1]), np.array([0]), np.array([0]))


def _record(threshold=4.0):
    return {'metric': 'euclidean', 'flip': False, 'calibrated_on': {'data_root': 'val'},
            'thresholds': [{'fmr_target': 0.01, 'threshold': threshold, 'fmr': 0.01, 'tmr': 0.5}]}


def test_thresholds_round_trip_and_are_found_beside_the_weights(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    save_thresholds(run / 'thresholds.json', _record())
    assert read_thresholds(run / 'thresholds.json')['format'] == THRESHOLDS_FORMAT
    assert stored_thresholds(str(run))['thresholds'][0]['threshold'] == 4.0
    assert stored_thresholds(str(run / 'model.safetensors'))['thresholds'][0]['threshold'] == 4.0
    hub = tmp_path / 'hub'
    hub.mkdir()
    (hub / 'config.json').write_text(json.dumps({'architecture': 'x', 'reid_thresholds': {
        'format': THRESHOLDS_FORMAT, **_record(5.0)}}))
    assert stored_thresholds(f'local-dir:{hub}')['thresholds'][0]['threshold'] == 5.0
    assert stored_thresholds(str(hub))['thresholds'][0]['threshold'] == 5.0
    (hub / 'config.json').write_text(json.dumps({'architecture': 'x'}))
    assert stored_thresholds(str(hub)) is None and stored_thresholds('hbfp_resnet50') is None
    assert select_threshold(_record(), 0.01)['threshold'] == 4.0
    with pytest.raises(ValueError, match='calibrated at: 0.01'):
        select_threshold(_record(), 0.001)


def test_hf_hub_thresholds_come_from_the_local_cache(tmp_path, monkeypatch):
    """The config.json that loading an hf-hub: model put in the Hugging Face cache, read without the network."""
    cache = tmp_path / 'cache'
    snapshot = cache / 'models--org--reid' / 'snapshots' / ('0' * 40)
    snapshot.mkdir(parents=True)
    (snapshot / 'config.json').write_text(json.dumps({'reid_thresholds': {'format': THRESHOLDS_FORMAT,
                                                                          **_record(6.0)}}))
    (cache / 'models--org--reid' / 'refs').mkdir()
    (cache / 'models--org--reid' / 'refs' / 'main').write_text('0' * 40)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    assert stored_thresholds('hf-hub:org/reid')['thresholds'][0]['threshold'] == 6.0
    assert stored_thresholds('hf-hub:org/other') is None


def test_a_file_that_is_not_a_thresholds_record_is_refused(tmp_path):
    path = tmp_path / 'thresholds.json'
    path.write_text('{"thresholds": []}')
    with pytest.raises(ValueError, match='not a thresholds file'):
        read_thresholds(path)
    with pytest.raises(FileNotFoundError, match='thresholds file not found'):
        read_thresholds(tmp_path / 'missing.json')


def test_the_shipped_model_carries_thresholds_for_its_own_input_and_metric():
    import timm
    record = stored_thresholds('hbfp_mobilenetv2_100.cuhk03')
    cfg = timm.models.get_pretrained_cfg('hbfp_mobilenetv2_100.cuhk03')
    assert record['model'] == 'hbfp_mobilenetv2_100.cuhk03' and record['metric'] == 'euclidean'
    assert tuple(record['img_size']) == tuple(cfg.input_size[1:]) and record['flip'] is False
    entries = {entry['fmr_target']: entry for entry in record['thresholds']}
    assert set(entries) == {1e-2, 1e-3} and entries[1e-3]['threshold'] < entries[1e-2]['threshold']
    assert all(entry['fmr'] <= entry['fmr_target'] for entry in entries.values())
