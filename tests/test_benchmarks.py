"""The benchmark harness (benchmarks/): comparison tables, pictures, the data-root errors, the ablation row
mapping, and the whole pipeline end to end on a tiny synthetic set (in-process, on the CPU)."""
import hashlib
import json

import numpy as np
import pytest
import timm
from PIL import Image

import hbfp_timm  # noqa: F401  (registers the models)
from benchmarks import ablation, datasets, market, settings
from benchmarks.figures import MATCH_COLOUR, MISMATCH_COLOUR, draw_cmc_curves, draw_ranked_lists
from hbfp_timm.paper import PAPER_TABLE1
from benchmarks.report import comparison_table
from hbfp_timm.synthetic import generate_synthetic_dataset

TINY_PRESET = dict(settings.SYNTHETIC_PRESET, num_ids=12, num_cams=3, images_per_id=6, img_size=(64, 32),
                   image_size=(64, 32))
TINY_FLAGS = ['--epochs', '1', '--max-steps-per-epoch', '2', '--batch-size', '8', '--num-instances', '4',
              '--device', 'cpu', '--workers', '0']


def _results(synthetic, reranked=None):
    return {
        'synthetic': synthetic,
        'entries': [{
            'title': 'synthetic Market layout' if synthetic else 'Market-1501',
            'paper_title': 'Market-1501',
            'paper': {'rank1': 95.8, 'mAP': 89.8},
            'runs': [{'label': 'hbfp_resnet50, checkpoint',
                      'metrics': {'rank1': 93.25, 'rank5': 97.5, 'rank10': 98.04, 'mAP': 90.0},
                      'reranked': reranked}],
        }],
    }


def test_comparison_table_sets_ours_beside_the_paper_with_differences():
    table = comparison_table(_results(False, reranked={'rank1': 95.0, 'rank5': 97.0, 'rank10': 98.0, 'mAP': 93.1}))
    assert table == '\n'.join([
        '| Data set | Row | Rank-1 | Rank-5 | Rank-10 | mAP |',
        '|---|---|---:|---:|---:|---:|',
        '| Market-1501 | paper | 95.8 | – | – | 89.8 |',
        '| Market-1501 | ours: hbfp_resnet50, checkpoint | 93.2 | 97.5 | 98.0 | 90.0 |',
        '| Market-1501 | difference (ours - paper) | -2.6 | – | – | +0.2 |',
        '',
        'With k-reciprocal re-ranking (Zhong et al. 2017); the paper reports no re-ranked numbers, so these are '
        'not compared with it.',
        '',
        '| Data set | Row | Rank-1 | Rank-5 | Rank-10 | mAP |',
        '|---|---|---:|---:|---:|---:|',
        '| Market-1501 | ours + re-ranking: hbfp_resnet50, checkpoint | 95.0 | 97.0 | 98.0 | 93.1 |',
    ])


def test_comparison_table_on_synthetic_data_labels_rows_and_omits_differences():
    table = comparison_table(_results(True), first_column='Configuration')
    assert table == '\n'.join([
        '| Configuration | Row | Rank-1 | Rank-5 | Rank-10 | mAP |',
        '|---|---|---:|---:|---:|---:|',
        '| Market-1501 | paper (real data set) | 95.8 | – | – | 89.8 |',
        '| synthetic Market layout | ours: hbfp_resnet50, checkpoint (synthetic — not comparable with the paper) '
        '| 93.2 | 97.5 | 98.0 | 90.0 |',
    ])


def test_paper_table1_holds_the_published_numbers():
    assert PAPER_TABLE1 == {
        'market1501': {'rank1': 95.8, 'mAP': 89.8}, 'dukemtmc': {'rank1': 89.5, 'mAP': 80.2},
        'cuhk03_labeled': {'rank1': 81.3, 'mAP': 79.4}, 'cuhk03_detected': {'rank1': 80.0, 'mAP': 77.5}}


def test_ranked_list_borders_show_right_and_wrong_identities_and_skip_same_camera_matches(tmp_path):
    paths = []
    for index, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]):
        paths.append(str(tmp_path / f'{index}.png'))
        Image.new('RGB', (16, 32), colour).save(paths[-1])
    query = [(paths[0], 1, 0)]
    # Nearest first: same identity and camera (removed by the protocol), a wrong identity, then the match.
    gallery = [(paths[1], 1, 0), (paths[2], 2, 1), (paths[3], 1, 1)]
    distmat = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    out = draw_ranked_lists(distmat, query, gallery, tmp_path / 'ranked.png', top_k=3, thumb_size=(16, 32))
    image = Image.open(out).convert('RGB')
    cell_w, gap, label_h = 16 + 8, 12, 16

    def border_pixel(rank):
        return image.getpixel(((cell_w + gap) * rank + gap + 1, label_h + 1))

    def centre_pixel(rank):
        return image.getpixel(((cell_w + gap) * rank + gap + cell_w // 2, label_h + 4 + 16))

    assert border_pixel(1) == MISMATCH_COLOUR and centre_pixel(1) == (0, 0, 200)
    assert border_pixel(2) == MATCH_COLOUR and centre_pixel(2) == (90, 90, 90)
    assert border_pixel(3) == (255, 255, 255)  # only two gallery images remain after the removal


def test_cmc_curve_is_drawn_higher_for_the_better_run(tmp_path):
    out = draw_cmc_curves({'good': [0.9] * 10, 'bad': [0.1] * 10}, tmp_path / 'cmc.png', 'CMC')
    pixels = np.asarray(Image.open(out).convert('RGB'))
    rows_of = {name: np.nonzero((pixels == colour).all(axis=2))[0]
               for name, colour in (('good', (40, 90, 200)), ('bad', (220, 120, 20)))}
    assert rows_of['good'].size and rows_of['bad'].size
    assert np.median(rows_of['good']) < np.median(rows_of['bad'])  # image rows grow downwards


def test_missing_data_root_is_one_line_error_with_nonzero_exit(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    code = market.main(['--data-root', str(missing), '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count('\n') == 1 and err.startswith(f'error: --data-root {missing}: ')
    assert 'bounding_box_train/' in err and 'Traceback' not in err


def test_malformed_data_root_names_the_offending_file(tmp_path, capsys):
    for folder in ('bounding_box_train', 'query', 'bounding_box_test'):
        (tmp_path / 'data' / folder).mkdir(parents=True)
    Image.new('RGB', (8, 16)).save(tmp_path / 'data' / 'bounding_box_train' / 'person7.jpg')
    code = market.main(['--data-root', str(tmp_path / 'data'), '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1
    assert 'person7.jpg' in err and '0002_c1s1_000451_03.jpg' in err


@pytest.fixture(scope='module')
def tiny_market(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_market')
    generate_synthetic_dataset(root, num_ids=12, num_cams=3, images_per_id=6, height=64, width=32, seed=3,
                               progress=False)
    return root


def test_pretrained_without_published_weights_fails_in_one_line(tiny_market, tmp_path, capsys):
    code = market.main(['--data-root', str(tiny_market), '--pretrained', '--model', 'hbfp_resnet18',
                        '--output', str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1
    assert err.startswith('error: --pretrained hbfp_resnet18: ') and 'no pretrained' in err.lower()


def test_embedded_default_trains_evaluates_and_writes_table_json_and_pictures(
        tiny_market, tmp_path, monkeypatch, capsys):
    """No --data-root and nothing under the default roots: the synthetic pipeline runs end to end; then the
    trained weights, evaluated through --checkpoint on a Market-layout root, give the same numbers."""
    monkeypatch.setenv(datasets.DATA_ROOT_ENV, str(tmp_path / 'empty'))
    monkeypatch.setattr(datasets, 'DEFAULT_DATA_ROOTS', ())
    monkeypatch.setattr(settings, 'SYNTHETIC_PRESET', TINY_PRESET)
    out = tmp_path / 'run'
    assert market.main(TINY_FLAGS + ['--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'No Market-1501 data set found' in printed and 'bounding_box_train/' in printed
    assert '| Market-1501 | paper (real data set) | 95.8 | – | – | 89.8 |' in printed
    assert 'hbfp_resnet18, untrained (synthetic — not comparable with the paper)' in printed
    assert 'hbfp_resnet18, trained 1 epochs (synthetic — not comparable with the paper)' in printed
    assert (out / 'market.md').read_text() in printed

    results = json.loads((out / 'results.json').read_text())
    assert results['synthetic'] is True and results['model'] == 'hbfp_resnet18'
    assert results['command'] == 'python -m benchmarks.market ' + ' '.join(TINY_FLAGS + ['--output', str(out)])
    assert set(results['versions']) >= {'python', 'torch', 'timm', 'hbfp_timm'}
    assert results['device'] == 'cpu' and results['wall_time_s'] > 0
    untrained, trained = results['entries'][0]['runs']
    weights = out / 'train_market_layout' / 'model.safetensors'
    assert trained['weights_sha256'] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert untrained['weights'] is None
    for run in (untrained, trained):
        assert 0 <= run['metrics']['rank1'] <= run['metrics']['rank5'] <= run['metrics']['rank10'] <= 100
        assert len(run['cmc']) == 50
        assert Image.open(run['ranked_list_image']).size[0] > 11 * 64
        assert Image.open(run['cmc_image']).size == (640, 440)

    # The same weights through --checkpoint on the same images score the same (deterministic evaluation).
    # The synthetic folder is in the Market-1501 layout, so the real reader takes it and differences appear.
    check_out = tmp_path / 'check'
    assert market.main(['--data-root', str(out / 'synthetic'), '--checkpoint', str(weights), '--model',
                        'hbfp_resnet18', '--img-size', '64', '32', '--workers', '0', '--device', 'cpu',
                        '--output', str(check_out)]) == 0
    checked = json.loads((check_out / 'results.json').read_text())
    assert checked['synthetic'] is False and checked['mode'] == 'checkpoint'
    assert checked['entries'][0]['runs'][0]['metrics'] == pytest.approx(trained['metrics'])
    assert checked['entries'][0]['runs'][0]['weights_sha256'] == trained['weights_sha256']
    assert '| Market-1501 | difference (ours - paper) |' in (check_out / 'market.md').read_text()


def test_ablation_rows_map_to_the_model_configurations_the_paper_describes():
    rows = {row.key: row for row in ablation.ABLATION_ROWS}
    assert [row.label for row in ablation.ABLATION_ROWS if row.table == 2] == list(ablation.PAPER_TABLE2)
    assert [row.label for row in ablation.ABLATION_ROWS if row.table == 3] == list(ablation.PAPER_TABLE3)
    expectations = {  # key: (branches, bfp modules present, hierarchical, pooling)
        'baseline': (('high',), (False, False), False, 'SelectAdaptivePool2d'),
        'mh_res': (('mid', 'high'), (False, False), False, 'SelectAdaptivePool2d'),
        'bfp_lm_h': (('low', 'mid', 'high'), (True, False), False, 'SelectAdaptivePool2d'),
        'l_bfp_mh': (('low', 'mid', 'high'), (False, True), False, 'SelectAdaptivePool2d'),
        'hbfp': (('low', 'mid', 'high'), (True, True), True, 'SelectAdaptivePool2d'),
        'gep035': (('low', 'mid', 'high'), (True, True), True, 'GeneralizedPooling'),
    }
    for key, (branches, bfp, hierarchical, pool) in expectations.items():
        model = timm.create_model('hbfp_resnet18', **rows[key].model_args)
        assert model.branches == branches
        assert (model.bfp_low_mid is not None, model.bfp_mid_high is not None) == bfp
        assert model.hierarchical is hierarchical and type(model.global_pool).__name__ == pool
    assert rows['gep035'].model_args['gep_lambdas'] == (0.0, 0.3, 0.5)
    assert rows['baseline'].train_overrides == {'id_weight': 0.0, 'cutout_prob': 0.0}
    assert rows['ls'].train_overrides == {'id_weight': 1.0, 'label_smoothing': 0.3, 'cutout_prob': 0.0}
    assert all(row.train_overrides == {'id_weight': 1.0, 'label_smoothing': 0.3, 'cutout_prob': 0.5}
               for row in ablation.ABLATION_ROWS[2:])
    assert [row.key for row in ablation.select_rows('table3,hbfp')] == ['hbfp', 'gep0', 'gep03', 'gep035',
                                                                         'gep0357', 'gep03571']


def test_ablation_unknown_row_is_one_line_error(capsys):
    assert ablation.main(['--rows', 'hbfp,nonsense']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown row 'nonsense'" in err


def test_ablation_runs_a_row_on_synthetic_data_beside_the_paper(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(datasets.DATA_ROOT_ENV, str(tmp_path / 'empty'))
    monkeypatch.setattr(datasets, 'DEFAULT_DATA_ROOTS', ())
    monkeypatch.setattr(settings, 'SYNTHETIC_PRESET', TINY_PRESET)
    assert ablation.main(['--rows', 'baseline'] + TINY_FLAGS + ['--output', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert '| T2 Baseline | paper (real data set) | 89.0 | 93.4 | – | 75.2 |' in printed
    results = json.loads((tmp_path / 'results.json').read_text())
    assert [entry['key'] for entry in results['entries']] == ['baseline']
    trainer = json.loads((tmp_path / 'train_baseline' / 'results.json').read_text())
    assert trainer['config']['id_weight'] == 0.0 and trainer['config']['cutout_prob'] == 0.0
    assert trainer['model_args']['branches'] == ['high'] and trainer['model_args']['global_pool'] == 'avg'
