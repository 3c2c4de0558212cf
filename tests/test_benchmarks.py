"""The benchmark harness (benchmarks/): comparison tables, pictures, the data-root errors, the ablation row
mapping, and the whole pipeline end to end on a tiny synthetic set (in-process, on the CPU)."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import hbfp_timm  # noqa: F401  (registers the models)
from benchmarks import ablation, harness, market, report, settings
from benchmarks.report import comparison_table
from hbfp_timm.data.synthetic import generate_synthetic_dataset
from hbfp_timm.inference.visualize import MATCH_COLOUR, MISMATCH_COLOUR, draw_cmc_curves, draw_ranked_lists
from hbfp_timm.utils.files import format_size

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


def test_the_command_shows_a_data_warning_as_one_line_without_python_source(tmp_path):
    generate_synthetic_dataset(tmp_path / 'data', num_ids=4, num_cams=2, images_per_id=4, height=64, width=32,
                               progress=False)
    image = next((tmp_path / 'data' / 'query').iterdir())
    (tmp_path / 'data' / 'query' / 'later').mkdir()
    shutil.copy(image, tmp_path / 'data' / 'query' / 'later' / image.name)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-m', 'benchmarks.market', '--data-root', str(tmp_path / 'data'),
                           '--pretrained', '--model', 'hbfp_resnet18', '--output', str(tmp_path / 'out')],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and 'UserWarning' not in done.stderr, done.stderr
    assert lines[0].startswith(f'warning: {tmp_path / "data" / "query"}: skipped 1 image in subfolders (later/);')
    assert lines[-1].startswith('error: --pretrained hbfp_resnet18: ')


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
    assert err.startswith('error: --pretrained hbfp_resnet18: ') and 'no trained re-id weights exist' in err.lower()


def test_embedded_default_trains_evaluates_and_writes_table_json_and_pictures(
        tiny_market, tmp_path, monkeypatch, capsys):
    """No --data-root and nothing under the default roots: the synthetic pipeline runs end to end; then the
    trained weights, evaluated through --checkpoint on a Market-layout root, give the same numbers."""
    monkeypatch.setenv(harness.DATA_ROOT_ENV, str(tmp_path / 'empty'))
    monkeypatch.setattr(harness, 'DEFAULT_DATA_ROOTS', ())
    monkeypatch.setattr(settings, 'SYNTHETIC_PRESET', TINY_PRESET)
    out = tmp_path / 'run'
    assert market.main(TINY_FLAGS + ['--output', str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert (captured.out + captured.err).count('split       ids') == 1  # the data-set table, once
    assert 'No Market-1501 data set found' in printed and 'bounding_box_train/' in printed
    assert '| Market-1501 | paper (real data set) | 95.8 | – | – | 89.8 |' in printed
    assert 'hbfp_resnet18, untrained (synthetic — not comparable with the paper)' in printed
    assert 'hbfp_resnet18, trained 1 epoch (synthetic — not comparable with the paper)' in printed
    assert (out / 'market.md').read_text() in printed

    results = json.loads((out / 'results.json').read_text())
    assert results['synthetic'] is True and results['model'] == 'hbfp_resnet18'
    assert results['command'] == 'python -m benchmarks.market ' + ' '.join(TINY_FLAGS + ['--output', str(out)])
    assert set(results['versions']) >= {'python', 'torch', 'timm', 'hbfp_timm'}
    assert results['device'] == 'cpu' and results['wall_time_s'] > 0
    untrained, trained = results['entries'][0]['runs']
    # The trainer evaluated once, after the last epoch: its best evaluation is the harness's final one.
    assert trained['best'] == pytest.approx({'epoch': 1, **trained['metrics']}) and untrained['best'] is None
    assert '| synthetic Market layout | hbfp_resnet18, trained 1 epoch | 1 | ' in printed
    weights = out / 'train_market_layout' / 'model.safetensors'
    assert trained['weights_sha256'] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert untrained['weights'] is None
    for run in (untrained, trained):
        assert 0 <= run['metrics']['rank1'] <= run['metrics']['rank5'] <= run['metrics']['rank10'] <= 100
        assert len(run['cmc']) == 50
        assert Image.open(run['ranked_list_image']).size[0] > 11 * 64
        assert Image.open(run['cmc_image']).size == (640, 440)

    # The same weights through --checkpoint on the same images score the same (deterministic evaluation).
    # The synthetic folder is in the Market-1501 layout, so the real reader takes it; its identity counts are not
    # Market-1501's, so it is reported as the user's own data, under its folder name and without differences.
    check_out = tmp_path / 'check'
    assert market.main(['--data-root', str(out / 'synthetic'), '--checkpoint', str(weights), '--model',
                        'hbfp_resnet18', '--img-size', '64', '32', '--workers', '0', '--device', 'cpu',
                        '--output', str(check_out)]) == 0
    checked = json.loads((check_out / 'results.json').read_text())
    assert checked['synthetic'] is False and checked['mode'] == 'checkpoint'
    assert checked['entries'][0]['runs'][0]['metrics'] == pytest.approx(trained['metrics'])
    assert checked['entries'][0]['runs'][0]['weights_sha256'] == trained['weights_sha256']
    report = (check_out / 'market.md').read_text()
    assert '| Market-1501 | paper (its data set, not this one) | 95.8 | – | – | 89.8 |' in report
    assert '| synthetic | ours: hbfp_resnet18, checkpoint model.safetensors |' in report
    assert 'difference (ours' not in report and '6 training and 6 query identities, not the 751 and 750' in report


def test_ablation_rows_map_to_the_model_configurations_the_paper_describes():
    rows = {row.key: row for row in ablation.ABLATION_ROWS}
    assert [row.label for row in ablation.ABLATION_ROWS if row.table == 2] == list(ablation.PAPER_TABLE2)
    assert [row.paper_label or row.label for row in ablation.ABLATION_ROWS if row.table == 3] == \
        list(ablation.PAPER_TABLE3) + ['GeP{0,.3,.5,.7,1}']
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
    assert rows['baseline'].train_overrides(0.1, 0.2) == {'id_weight': 0.0, 'cutout_prob': 0.0}
    assert rows['ls'].train_overrides(0.1, 0.2) == {'id_weight': 1.0, 'label_smoothing': 0.1, 'cutout_prob': 0.0}
    assert all(row.train_overrides(0.1, 0.2) == {'id_weight': 1.0, 'label_smoothing': 0.1, 'cutout_prob': 0.2}
               for row in ablation.ABLATION_ROWS[2:])
    assert [row.key for row in ablation.select_rows('table3,hbfp')] == ['hbfp', 'gep0', 'gep03', 'gep035',
                                                                         'gep0357', 'gep03571', 'gep03571_sum']


def test_gep_rows_combine_by_mean_and_the_literal_sum_row_by_sum_beside_the_same_paper_row():
    rows = {row.key: row for row in ablation.ABLATION_ROWS}
    gep_rows = [row for row in ablation.ABLATION_ROWS if row.model_args['global_pool'] == 'gep']
    assert [row.key for row in gep_rows] == ['hbfp_gep', 'gep0', 'gep03', 'gep035', 'gep0357', 'gep03571',
                                             'gep03571_sum']
    for row in gep_rows:
        pool = timm.create_model('hbfp_resnet18', correlation_dim=8, perception_dim=16, **row.model_args).global_pool
        assert pool.combine == ('sum' if row.key == 'gep03571_sum' else 'mean')
        assert torch.as_tensor(pool.lambdas).tolist() == pytest.approx(row.model_args['gep_lambdas'])
    literal = rows['gep03571_sum']
    assert literal.paper == ablation.PAPER_TABLE3['GeP{0,.3,.5,.7,1}'] == rows['gep03571'].paper
    assert literal.label == 'GeP{0,.3,.5,.7,1}, literal sum'
    assert {key: value for key, value in literal.model_args.items() if key != 'gep_combine'} == \
        {key: value for key, value in rows['gep03571'].model_args.items() if key != 'gep_combine'}


def test_ablation_unknown_row_is_one_line_error(capsys):
    assert ablation.main(['--rows', 'hbfp,nonsense']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown row 'nonsense'" in err


def test_ablation_runs_a_row_on_synthetic_data_beside_the_paper(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(harness.DATA_ROOT_ENV, str(tmp_path / 'empty'))
    monkeypatch.setattr(harness, 'DEFAULT_DATA_ROOTS', ())
    monkeypatch.setattr(settings, 'SYNTHETIC_PRESET', TINY_PRESET)
    assert ablation.main(['--rows', 'baseline'] + TINY_FLAGS + ['--output', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert '| T2 Baseline | paper (real data set) | 89.0 | 93.4 | – | 75.2 |' in printed
    results = json.loads((tmp_path / 'results.json').read_text())
    assert [entry['key'] for entry in results['entries']] == ['baseline']
    trainer = json.loads((tmp_path / 'train_baseline' / 'results.json').read_text())
    assert trainer['config']['id_weight'] == 0.0 and trainer['config']['cutout_prob'] == 0.0
    assert trainer['model_args']['branches'] == ['high'] and trainer['model_args']['global_pool'] == 'avg'


# --- several seeds, recipe flags, the user's own data -------------------------------------------------------------
def _seeded_run(label, seed, rank1, map_, best=None):
    metrics = {'rank1': rank1, 'rank5': rank1 + 10, 'rank10': rank1 + 20, 'mAP': map_}
    return {'label': label, 'seed': seed, 'metrics': metrics, 'reranked': None,
            'best': None if best is None else {'epoch': 3, 'rank1': best[0], 'rank5': 0.0, 'rank10': 0.0,
                                               'mAP': best[1]}}


def test_rows_over_several_seeds_show_their_mean_and_the_spread_of_final_and_best_evaluations():
    results = {'synthetic': False, 'entries': [{
        'title': 'T2 HBFP', 'paper': {'rank1': 95.0, 'mAP': 88.7},
        'runs': [_seeded_run('hbfp', 0, 50.0, 30.0, best=(56.0, 33.0)),
                 _seeded_run('hbfp', 1, 54.0, 31.0, best=(58.0, 36.0)),
                 _seeded_run('avg', 0, 40.0, 20.0)]}]}
    # Hand-computed: sample standard deviation of two values a, b is |a - b| / sqrt(2).
    assert report.summarize_seeds(results['entries'][0]['runs'])[0] == {
        'label': 'hbfp', 'n': 2, 'seeds': [0, 1],
        'final': {'rank1': {'mean': 52.0, 'std': pytest.approx(4 / 2 ** 0.5)},
                  'rank5': {'mean': 62.0, 'std': pytest.approx(4 / 2 ** 0.5)},
                  'rank10': {'mean': 72.0, 'std': pytest.approx(4 / 2 ** 0.5)},
                  'mAP': {'mean': 30.5, 'std': pytest.approx(1 / 2 ** 0.5)}},
        'best': {'rank1': {'mean': 57.0, 'std': pytest.approx(2 / 2 ** 0.5)},
                 'mAP': {'mean': 34.5, 'std': pytest.approx(3 / 2 ** 0.5)}}}
    assert report.comparison_table(results, 'Configuration').splitlines()[2:] == [
        '| T2 HBFP | paper | 95.0 | – | – | 88.7 |',
        '| T2 HBFP | ours: hbfp, mean of 2 seeds | 52.0 | 62.0 | 72.0 | 30.5 |',
        '| T2 HBFP | difference (ours - paper) | -43.0 | – | – | -58.2 |',
        '| T2 HBFP | ours: avg | 40.0 | 50.0 | 60.0 | 20.0 |',
        '| T2 HBFP | difference (ours - paper) | -55.0 | – | – | -68.7 |',
    ]
    assert report.seed_table(results, 'Configuration').splitlines()[2:] == [
        '| Configuration | Row | n | Rank-1 final | mAP final | Rank-1 best | mAP best |',
        '|---|---|---:|---:|---:|---:|---:|',
        '| T2 HBFP | hbfp | 2 | 52.0 ± 2.8 | 30.5 ± 0.7 | 57.0 ± 1.4 | 34.5 ± 2.1 |',
        '| T2 HBFP | avg | 1 | 40.0 | 20.0 | – | – |',
    ]


def test_seed_table_is_left_out_when_nothing_was_trained_or_repeated():
    assert report.seed_table(_results(False)) == ''


MOBILENET_FLAGS = ['--model', 'hbfp_mobilenetv2_100', '--model-arg', 'correlation_dim=8', '--model-arg',
                   'perception_dim=16', '--img-size', '64', '32', '--no-pretrained-backbone'] + TINY_FLAGS


def test_ablation_on_own_market_layout_data_applies_the_recipe_flags_and_summarises_two_seeds(
        tiny_market, tmp_path, capsys):
    out = tmp_path / 'abl'
    flags = ['--data-root', str(tiny_market), '--rows', 'gep03571_sum', '--seeds', '0', '1', '--epochs', '2',
             '--max-steps-per-epoch', '1', '--lr', '5e-4', '--lr-constant-epochs', '1', '--margin', '0.6',
             '--label-smoothing', '0.1', '--eval-every', '1', '--weight-decay', '1e-4', '--cutout-prob', '0.2',
             '--channels-last', '--output', str(out)]
    assert ablation.main(MOBILENET_FLAGS + flags) == 0
    printed = capsys.readouterr().out

    for seed in (0, 1):
        trainer = json.loads((out / f'train_gep03571_sum_seed{seed}' / 'results.json').read_text())
        config = trainer['config']
        assert (config['seed'], config['lr'], config['lr_constant_epochs'], config['margin']) == (seed, 5e-4, 1, 0.6)
        assert (config['label_smoothing'], config['eval_every'], config['weight_decay']) == (0.1, 1, 1e-4)
        assert (config['cutout_prob'], config['id_weight'], config['dataset']) == (0.2, 1.0, 'market_layout')
        assert config['channels_last'] is True
        assert trainer['model_args']['gep_combine'] == 'sum' and trainer['model_args']['correlation_dim'] == 8
        assert len(trainer['evaluations']) == 2

    results = json.loads((out / 'results.json').read_text())
    assert results['seeds'] == [0, 1]
    (entry,) = results['entries']
    assert entry['comparable'] is False and [run['seed'] for run in entry['runs']] == [0, 1]
    for run in entry['runs']:
        trainer = json.loads((out / f'train_gep03571_sum_seed{run["seed"]}' / 'results.json').read_text())
        assert run['best'] == pytest.approx({'epoch': trainer['best']['epoch'],
                                             **{key: 100 * trainer['best'][key] for key in run['metrics']}})
    (summary,) = entry['seeds']
    for key in ('rank1', 'mAP'):
        finals = [run['metrics'][key] for run in entry['runs']]
        assert summary['final'][key]['mean'] == pytest.approx(sum(finals) / 2)
        assert summary['final'][key]['std'] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)

    title = tiny_market.name
    assert f'HBFP-Net ablations (Tables 2 and 3, your data set {title})' in printed
    assert '| T3 GeP{0,.3,.5,.7,1}, literal sum | paper (its data set, not this one) | 95.8 | 98.9 | – | 89.8 |' \
        in printed
    assert 'ours: hbfp_mobilenetv2_100, 2 epochs, mean of 2 seeds' in printed and 'difference (ours' not in printed
    assert '| T3 GeP{0,.3,.5,.7,1}, literal sum | hbfp_mobilenetv2_100, 2 epochs | 2 | ' in printed

    # Disk use: announced before the first row trains, and what was written said at the end, to the byte count.
    announced = printed.index('The 2 training runs will write about ')
    assert announced < printed.index('[1/1] Table 3')
    written = sum(path.stat().st_size for path in out.glob('train_*/*'))
    checkpoints = sum(path.stat().st_size for path in out.glob('train_*/checkpoint.pt'))
    assert (f'the 2 training runs wrote {format_size(written)} under {out}/train_*, of which '
            f'{format_size(checkpoints)} are checkpoint.pt files') in printed
    estimate = 2 * report.training_footprint(timm.create_model(
        'hbfp_mobilenetv2_100', correlation_dim=8, perception_dim=16, global_pool='gep'))
    assert 0.8 < estimate / written < 1.25


# --- bad input: one line, non-zero exit, nothing done -------------------------------------------------------------
@pytest.mark.parametrize('flags, named', [
    (['--lr', 'inf'], '--lr'), (['--lr', '0'], '--lr'), (['--label-smoothing', '1.5'], '--label-smoothing'),
    (['--cutout-prob', '-1'], '--cutout-prob'), (['--random-erasing-prob', '2'], '--random-erasing-prob'),
    (['--eval-every', '0'], '--eval-every'), (['--margin', 'nan'], '--margin'), (['--workers', '-1'], '--workers'),
    (['--model-arg', 'correlation_dim'], '--model-arg'), (['--seed', '1', '--seeds', '2'], '--seeds'),
])
def test_bad_flag_values_are_one_line_errors_naming_the_flag(flags, named, capsys):
    for command in (market.main, ablation.main):
        with pytest.raises(SystemExit) as exit_info:
            command(flags)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count('\n') == 1 and named in err and 'usage' not in err


def test_repeated_seeds_and_training_flags_without_training_are_one_line_errors(tiny_market, tmp_path, capsys):
    assert market.main(['--seeds', '0', '1', '0', '--output', str(tmp_path / 'a')]) == 2
    assert capsys.readouterr().err == 'error: --seeds: expected distinct seeds, got 0 1 0 (0 repeated)\n'
    assert market.main(['--data-root', str(tiny_market), '--checkpoint', str(tmp_path / 'w.safetensors'),
                        '--lr', '1e-3', '--seeds', '0', '1', '--output', str(tmp_path / 'b')]) == 2
    assert capsys.readouterr().err == ('error: --lr, --seeds: training flags, but this run only evaluates '
                                       '(--checkpoint); add --train to train\n')
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_model_arg_the_model_refuses_fails_before_any_training(tiny_market, tmp_path, capsys):
    cases = (('correlation_dim=-5', 'correlation_dim: expected a positive integer, got -5'), ('nonsense=1', 'nonsense'))
    for model_arg, expected in cases:
        code = market.main(['--data-root', str(tiny_market), '--train', '--model-arg', model_arg,
                            '--output', str(tmp_path)] + MOBILENET_FLAGS[:2] + TINY_FLAGS)
        captured = capsys.readouterr()
        assert code == 2 and captured.err.count('\n') == 1 and expected in captured.err
        assert captured.err.startswith(f'error: --model hbfp_mobilenetv2_100 --model-arg {model_arg}')
        assert not list(tmp_path.glob('train_*'))
    assert ablation.main(['--data-root', str(tiny_market), '--rows', 'hbfp', '--model-arg', 'correlation_dim=-5',
                          '--output', str(tmp_path)] + MOBILENET_FLAGS[:2] + TINY_FLAGS) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: row hbfp: --model hbfp_mobilenetv2_100 --model-arg ') and err.count('\n') == 1
    assert '--model-arg hierarchical=True' in err and '--model-arg correlation_dim=-5: ' in err


def test_truncated_checkpoint_is_one_line_naming_the_file_before_any_evaluation(tiny_market, tmp_path, capsys):
    from safetensors.torch import save_file

    model = timm.create_model('hbfp_mobilenetv2_100', correlation_dim=8, perception_dim=16)
    whole, truncated = tmp_path / 'whole.safetensors', tmp_path / 'truncated.safetensors'
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(whole))
    truncated.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    code = market.main(['--data-root', str(tiny_market), '--checkpoint', str(truncated), '--model',
                        'hbfp_mobilenetv2_100', '--model-arg', 'correlation_dim=8', '--model-arg', 'perception_dim=16',
                        '--img-size', '64', '32', '--device', 'cpu', '--workers', '0', '--output', str(tmp_path / 'o')])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count('\n') == 1
    assert captured.err.startswith(f'error: --checkpoint {truncated}: cannot load it (SafetensorError: ')
    assert 'evaluating' not in captured.out and not (tmp_path / 'o').exists()


@pytest.mark.parametrize('command', [market.main, ablation.main])
def test_output_that_is_a_file_or_cannot_be_created_fails_before_any_work(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(harness.DATA_ROOT_ENV, str(tmp_path / 'empty'))
    monkeypatch.setattr(harness, 'DEFAULT_DATA_ROOTS', ())
    monkeypatch.setattr(settings, 'SYNTHETIC_PRESET', TINY_PRESET)
    a_file = tmp_path / 'results.txt'
    a_file.write_text('keep me')
    for output, expected in ((a_file, 'is a file; expected a folder'), (a_file / 'sub', 'cannot write there')):
        extra = ['--rows', 'baseline'] if command is ablation.main else []
        assert command(extra + TINY_FLAGS + ['--output', str(output)]) == 2
        captured = capsys.readouterr()
        assert captured.err.count('\n') == 1 and captured.err.startswith(f'error: --output {output}: {expected}')
        assert 'evaluating' not in captured.out and 'synthetic' not in captured.out
    assert a_file.read_text() == 'keep me' and sorted(p.name for p in tmp_path.iterdir()) == ['results.txt']


@pytest.mark.parametrize('command', [market.main, ablation.main])
def test_help_states_every_default_without_none(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command(['--help'])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0 and 'None' not in text
    for flag in ('--lr', '--lr-constant-epochs', '--margin', '--eval-every', '--label-smoothing', '--model-arg',
                 '--seeds', '--weight-decay', '--cutout-prob', '--random-erasing-prob'):
        assert flag in text


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
    def interrupted():
        raise KeyboardInterrupt
    assert settings.guarded(interrupted) == 130
    assert capsys.readouterr().err.count('\n') == 1


def test_sigterm_is_one_line_naming_the_resumable_checkpoints_and_exit_code_143(capsys):
    handler = signal.getsignal(signal.SIGTERM)

    def terminated():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert settings.guarded(terminated) == 143
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('interrupted (SIGTERM); no report written;')
    assert 'python -m hbfp_timm.train --resume FOLDER' in err
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back


def test_an_os_error_such_as_a_full_disk_is_one_line_naming_the_file(capsys):
    def disk_full():
        raise OSError(28, 'No space left on device', '/out/results.json')
    assert settings.guarded(disk_full) == 1
    assert capsys.readouterr().err == "error: [Errno 28] No space left on device: '/out/results.json'\n"


def test_the_table1_harness_passes_eval_data_root_to_the_trainer(data_root, tmp_path, monkeypatch, capsys):
    preset = dict(settings.SYNTHETIC_PRESET, num_ids=12, num_cams=3, images_per_id=6, img_size=(64, 32),
                  image_size=(64, 32))
    monkeypatch.setenv(harness.DATA_ROOT_ENV, str(tmp_path / 'empty'))
    monkeypatch.setattr(harness, 'DEFAULT_DATA_ROOTS', ())
    monkeypatch.setattr(settings, 'SYNTHETIC_PRESET', preset)
    out = tmp_path / 'bench'
    assert market.main(['--epochs', '1', '--max-steps-per-epoch', '1', '--batch-size', '8', '--num-instances', '4',
                        '--device', 'cpu', '--workers', '0', '--output', str(out),
                        '--eval-data-root', str(data_root)]) == 0
    trainer = json.loads((out / 'train_market_layout' / 'results.json').read_text())
    row, = trainer['cross_domain']
    assert row['data_root'] == str(data_root) and trainer['config']['eval_data_roots'] == [str(data_root)]
    assert f"tested on {data_root} (market_layout): rank-1 {100 * row['rank1']:.1f}, mAP {100 * row['mAP']:.1f}" \
        in capsys.readouterr().out
