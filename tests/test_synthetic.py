"""Tests of the synthetic Market-layout generator (hbfp_timm.data.synthetic)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hbfp_timm.data import market_layout
from hbfp_timm.data.synthetic import generate_synthetic_dataset, main, read_synthetic_marker
from hbfp_timm.metrics import compute_distance_matrix, evaluate_rank

REPO_ROOT = Path(__file__).resolve().parents[1]


def _all_files(root: Path):
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob('*.jpg'))}


def test_cli_writes_market_layout_that_the_market_reader_parses(tmp_path):
    out = tmp_path / 'synthetic'
    completed = subprocess.run(
        [sys.executable, '-m', 'hbfp_timm.data.synthetic', str(out), '--num-ids', '8', '--num-cams', '3',
         '--seed', '5', '--images-per-id', '4', '--height', '32', '--width', '16', '--quiet'],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert 'num_train_ids=4' in completed.stdout
    for folder in ('bounding_box_train', 'query', 'bounding_box_test'):
        assert any((out / folder).glob('*.jpg'))
    dataset = market_layout(out)
    assert dataset.num_train_pids == 4
    with Image.open(dataset.query[0][0]) as image:
        assert image.size == (16, 32)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(num_ids=6, num_cams=3, images_per_id=4, height=32, width=16, progress=False)
    generate_synthetic_dataset(tmp_path / 'a', seed=1, **kwargs)
    generate_synthetic_dataset(tmp_path / 'b', seed=1, **kwargs)
    generate_synthetic_dataset(tmp_path / 'c', seed=2, **kwargs)
    first = _all_files(tmp_path / 'a')
    assert first == _all_files(tmp_path / 'b')
    assert first != _all_files(tmp_path / 'c')


def test_splits_follow_the_market_protocol(tmp_path):
    summary = main([str(tmp_path), '--num-ids', '20', '--num-cams', '4', '--seed', '0', '--images-per-id', '6',
                    '--height', '32', '--width', '16', '--num-distractors', '7', '--num-junk', '3', '--quiet'])
    train_files = list((tmp_path / 'bounding_box_train').glob('*.jpg'))
    gallery_names = [p.name for p in (tmp_path / 'bounding_box_test').glob('*.jpg')]
    query_names = [p.name for p in (tmp_path / 'query').glob('*.jpg')]
    train_ids = {p.name.split('_')[0] for p in train_files}
    test_ids = {name.split('_')[0] for name in query_names + gallery_names} - {'0000', '-1'}
    assert len(train_ids) == len(test_ids) == 10 and not train_ids & test_ids
    assert sum(name.startswith('0000_') for name in gallery_names) == 7 == summary['num_distractors']
    assert sum(name.startswith('-1_') for name in gallery_names) == 3 == summary['num_junk']
    assert len(train_files) == summary['num_train_images'] == 10 * 6

    dataset = market_layout(tmp_path)
    # Every query has a match under another camera, and at most one query per identity and camera.
    pairs = [(pid, camid) for _, pid, camid in dataset.query]
    assert len(pairs) == len(set(pairs))
    distmat = np.random.default_rng(0).random((len(dataset.query), len(dataset.gallery)), dtype=np.float32)
    assert evaluate_rank(distmat, *_protocol_ids(dataset)).num_skipped == 0


def _protocol_ids(dataset):
    """(q_pids, g_pids, q_camids, g_camids) in the order evaluate_rank takes them."""
    pids = [np.array([pid for _, pid, _ in items]) for items in (dataset.query, dataset.gallery)]
    camids = [np.array([camid for _, _, camid in items]) for items in (dataset.query, dataset.gallery)]
    return (*pids, *camids)


def test_refuses_to_write_into_a_filled_folder_unless_overwrite(tmp_path):
    kwargs = dict(num_ids=4, num_cams=2, images_per_id=2, height=32, width=16, progress=False)
    generate_synthetic_dataset(tmp_path, seed=0, **kwargs)
    with pytest.raises(FileExistsError, match='bounding_box_train is not empty'):
        generate_synthetic_dataset(tmp_path, seed=1, **kwargs)
    generate_synthetic_dataset(tmp_path, seed=1, overwrite=True, **kwargs)
    assert len(list((tmp_path / 'bounding_box_train').glob('*.jpg'))) == 2 * 2


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_ids=1), 'num_ids must be in'),
    (dict(num_cams=1), 'num_cams must be >= 2'),
    (dict(images_per_id=1), 'images_per_id must be >= 2'),
])
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_dataset(tmp_path, **{'num_ids': 4, 'num_cams': 2, 'progress': False, **kwargs})


@pytest.mark.parametrize('argv, message', [
    (['--num-cams', '1'], 'num_cams must be >= 2'),
    (['--num-ids', '0'], 'num_ids must be in'),
])
def test_cli_reports_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path), '--quiet', *argv])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and '\n' not in err
    assert err.startswith('python -m hbfp_timm.data.synthetic: error: ') and message in err


def test_the_folder_is_marked_synthetic_with_the_generator_settings(tmp_path):
    summary = generate_synthetic_dataset(tmp_path, num_ids=4, num_cams=2, images_per_id=2, height=32, width=16,
                                         seed=7, progress=False)
    marker = read_synthetic_marker(tmp_path)
    assert marker['seed'] == 7 and marker['num_ids'] == 4
    assert marker['generator'] == 'python -m hbfp_timm.data.synthetic'
    assert marker['num_train_images'] == summary['num_train_images']
    assert read_synthetic_marker(tmp_path / 'bounding_box_train') is None  # not a generated data set root


def _colour_histogram_features(items):
    """A hand-made descriptor: grey-world corrected colour histograms of horizontal stripes of the centre."""
    features = []
    for path, _, _ in items:
        pixels = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32)
        pixels = np.clip(pixels / pixels.reshape(-1, 3).mean(0) * 110, 0, 255)  # cancels the camera colour cast
        centre = pixels[:, pixels.shape[1] // 4: 3 * pixels.shape[1] // 4]
        stripes = []
        for stripe in np.array_split(centre, 4, axis=0):
            bins = np.minimum(stripe * 4 / 256, 3).astype(int).reshape(-1, 3) @ np.array([16, 4, 1])
            histogram = np.bincount(bins, minlength=64).astype(np.float32)
            stripes.append(np.sqrt(histogram / histogram.sum()))
        features.append(np.concatenate(stripes))
    return np.stack(features)


def test_learnable_but_not_trivial(tmp_path):
    generate_synthetic_dataset(tmp_path, num_ids=80, num_cams=4, seed=0, images_per_id=8, progress=False)
    dataset = market_layout(tmp_path)
    distmat = compute_distance_matrix(_colour_histogram_features(dataset.query),
                                      _colour_histogram_features(dataset.gallery))
    args = _protocol_ids(dataset)
    baseline = evaluate_rank(distmat, *args)
    chance = evaluate_rank(np.random.default_rng(0).random(distmat.shape, dtype=np.float32), *args)
    # A colour histogram finds far more than chance, yet the set is far from solved by colour alone.
    assert baseline.cmc[0] > 4 * max(chance.cmc[0], 0.02)
    assert baseline.cmc[0] < 0.9 and baseline.mAP < 0.7
