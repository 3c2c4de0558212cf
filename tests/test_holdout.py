"""python -m hbfp_timm.data.holdout: a validation split held out of the training identities."""
import json
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from hbfp_timm.data import market_layout
from hbfp_timm.data.holdout import holdout_split, main


def _market(root: Path, cameras_of_pid) -> Path:
    """bounding_box_train/ with 3 images per (pid, camera); query/ and bounding_box_test/ with one other person."""
    for folder in ('bounding_box_train', 'query', 'bounding_box_test'):
        (root / folder).mkdir(parents=True)
    frame = 0
    for pid, cameras in cameras_of_pid.items():
        for camera in cameras:
            for _ in range(3):
                frame += 1
                name = f'{pid:04d}_c{camera}s1_{frame:06d}_01.jpg'
                Image.new('RGB', (8, 16)).save(root / 'bounding_box_train' / name)
    for folder in ('query', 'bounding_box_test'):
        Image.new('RGB', (8, 16)).save(root / folder / f'0999_c{1 if folder == "query" else 2}s1_000001_01.jpg')
    return root


def test_held_out_identities_leave_training_and_form_a_cross_camera_query_gallery_split(tmp_path):
    cameras = {pid: (1, 2) for pid in range(1, 11)}
    cameras.update({11: (1,), 12: (2,)})  # seen by one camera: never held out, they could not be queried
    data = _market(tmp_path / 'data', cameras)
    summary = holdout_split(data, tmp_path / 'val', num_ids=4, seed=3)
    val = market_layout(tmp_path / 'val')
    held = set(summary['held_out_ids'])
    assert len(held) == 4 and not held & {11, 12}
    train_pids = {int(Path(p).name[:4]) for p, _, _ in val.train}
    assert train_pids == set(cameras) - held and len(val.train) == 3 * sum(len(c) for c in cameras.values()) - 24
    assert {pid for _, pid, _ in val.query} == held == {pid for _, pid, _ in val.gallery}
    # One query per (identity, camera): its first image; the other two of that camera are gallery images.
    queries = defaultdict(list)
    for path, pid, camid in val.query:
        queries[(pid, camid)].append(Path(path).name)
    assert all(len(names) == 1 for names in queries.values()) and len(queries) == 8
    for (pid, camid), (name,) in queries.items():
        same = sorted(Path(p).name for p, q, c in val.gallery if (q, c) == (pid, camid))
        assert len(same) == 2 and name < same[0]
    # Nothing of the data set's own query or gallery (the test split) is used.
    assert all('0999' not in Path(p).name for p, _, _ in val.query + val.gallery + val.train)
    assert json.loads((tmp_path / 'val' / 'holdout.json').read_text())['held_out_ids'] == sorted(held)
    # The same seed gives the same split; another seed another one.
    assert holdout_split(data, tmp_path / 'again', num_ids=4, seed=3)['held_out_ids'] == summary['held_out_ids']
    assert holdout_split(data, tmp_path / 'other', num_ids=4, seed=4)['held_out_ids'] != summary['held_out_ids']


def test_bad_requests_are_one_line(tmp_path, capsys):
    data = _market(tmp_path / 'data', {1: (1, 2), 2: (1, 2), 3: (1,)})
    with pytest.raises(ValueError, match='exceeds the 2 identities'):
        holdout_split(data, tmp_path / 'a', num_ids=3)
    with pytest.raises(ValueError, match='num_ids must be at least 1'):
        holdout_split(data, tmp_path / 'b', num_ids=0)
    holdout_split(data, tmp_path / 'c', num_ids=1)
    assert main(['--data-root', str(data), '--num-ids', '1', '--output', str(tmp_path / 'c')]) == 2
    assert capsys.readouterr().err.strip().endswith('exists and is not an empty folder; give a new --output')
