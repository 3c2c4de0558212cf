"""Cross-domain evaluation in the trainer (--eval-data-root): train on one synthetic set, score on another."""
import json
import shutil

import pytest
from torch.utils.data import DataLoader

from hbfp_timm.data import ImageDataset, build_dataset, build_test_transform
from hbfp_timm.data.synthetic import generate_synthetic_dataset
from hbfp_timm.hub import load_run, render_model_card
from hbfp_timm.metrics.evaluation import evaluate
from hbfp_timm.train import main, train

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def other_root(tmp_path_factory):
    """Another synthetic data set: other identities, other colours (seed 5), four cameras; test-only (query and
    gallery, no training split), as data kept for evaluation often is."""
    root = tmp_path_factory.mktemp('other')
    generate_synthetic_dataset(root, num_ids=8, num_cams=4, seed=5, images_per_id=6, height=64, width=32,
                               progress=False)
    shutil.rmtree(root / 'bounding_box_train')
    return root


def test_other_data_are_scored_at_each_evaluation_as_evaluate_scores_the_saved_model(make_config, other_root,
                                                                                      tmp_path, capsys):
    run = tmp_path / 'run'
    results = train(make_config(run, epochs=1, max_steps_per_epoch=2, eval_data_roots=(str(other_root),)))
    written = json.loads((run / 'results.json').read_text())
    assert written['cross_domain'] == results['cross_domain'] == written['evaluations'][-1]['cross_domain']
    row, = written['cross_domain']
    assert row['data_root'] == str(other_root) and row['dataset'] == 'market_layout'
    assert f"other data: {other_root.name} rank-1 {row['rank1']:.2%} mAP {row['mAP']:.2%}" in capsys.readouterr().out
    # The same numbers from the saved model, scored on its own by the evaluation engine.
    model, saved = load_run(run)
    dataset = build_dataset('market_layout', other_root, with_train=False)
    transform = build_test_transform(tuple(saved['img_size']))
    query, gallery = (DataLoader(ImageDataset(items, transform), batch_size=32) for items in (dataset.query,
                                                                                              dataset.gallery))
    expected = evaluate(model, query, gallery, 'cpu')
    assert row['num_query'] == expected['num_query'] and row['num_gallery'] == expected['num_gallery']
    for key in ('rank1', 'rank5', 'rank10', 'mAP'):
        assert row[key] == pytest.approx(expected[key], abs=1e-6)
    card = render_model_card(model, saved)
    assert '### Cross-domain evaluation' in card and f'| {other_root} | market_layout |' in card


def test_a_missing_eval_data_root_stops_before_training_in_one_line(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--dataset', 'market_layout', '--data-root', str(data_root), '--model', 'hbfp_mobilenetv2_100',
              '--no-pretrained-backbone', '--device', 'cpu', '--epochs', '1', '--output', str(tmp_path / 'run'),
              '--eval-data-root', str(tmp_path / 'nowhere')])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count('\n') == 1
    assert captured.err.startswith('python -m hbfp_timm.train: error: --eval-data-root')
    assert str(tmp_path / 'nowhere') in captured.err and 'epoch 1/1' not in captured.out
