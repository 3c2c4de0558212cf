"""python -m hbfp_timm.evaluate: a model on labelled data sets, one row each, the protocol's scores."""
import json

import numpy as np
import pytest

from hbfp_timm import FeatureExtractor
from hbfp_timm.data import market_layout
from hbfp_timm.evaluate import main
from hbfp_timm.metrics import evaluate_features
from tiny_models import single_thread, tiny_model, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')


def test_scores_equal_the_protocol_on_the_models_descriptors_one_row_per_data_root(data_root, tmp_path, capsys):
    run = write_run(tmp_path / 'run', tiny_model(seed=3))
    out = tmp_path / 'out'
    assert main(['--data-root', str(data_root), '--data-root', str(data_root), '--model', str(run),
                 '--device', 'cpu', '--workers', '0', '--output', str(out)]) == 0
    record = json.loads((out / 'evaluation.json').read_text())
    assert len(record['results']) == 2 and record['img_size'] == [64, 32]
    dataset = market_layout(data_root)
    extractor = FeatureExtractor(run, device='cpu')
    q = extractor([p for p, _, _ in dataset.query])
    g = extractor([p for p, _, _ in dataset.gallery])
    ids = [np.array([item[k] for item in items]) for k in (1, 2) for items in (dataset.query, dataset.gallery)]
    cmc, mAP = evaluate_features(q, g, ids[0], ids[1], ids[2], ids[3])
    for row in record['results']:
        assert row['mAP'] == pytest.approx(mAP, abs=1e-6) and row['rank1'] == pytest.approx(cmc[0], abs=1e-6)
        assert row['num_query'] == len(dataset.query) and row['num_gallery'] == len(dataset.gallery)
    printed = capsys.readouterr().out
    assert printed.count(f'| {data_root} |') == 2 and f'{100 * mAP:.1f} |' in printed
    assert (out / 'evaluation.md').read_text().split('\n\n', 1)[1].strip() in printed  # the same table


def test_a_missing_data_root_is_one_line_and_exit_2(tmp_path, capsys):
    run = write_run(tmp_path / 'run', tiny_model())
    assert main(['--data-root', str(tmp_path / 'nowhere'), '--model', str(run), '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('python -m hbfp_timm.evaluate: error: ')
