"""The speed benchmark (``python -m benchmarks.speed``) and its probes (``benchmarks.probes``) on CPU, with tiny
models: layer costs under mixed precision, the recipe estimate, the input pipeline, the amp speed-up table, peak
memory in a fresh process, the memory-format, checkpointing and search sections, and the command line."""
import json
import statistics

import pytest
import timm
import torch
import torch.nn as nn

import hbfp_timm  # noqa: F401  (registers the hbfp_* models)
from benchmarks import probes, speed, speed_report
from benchmarks.probes import count_flops, loader_throughput, make_step, peak_memory
from benchmarks.speed import amp_speedups, layer_costs, parse_args, recipe_estimate
from hbfp_timm.metrics.retrieval import faiss_available

CPU = torch.device('cpu')
TINY = ['--img-size', '64', '32', '--batch-size', '2', '--device', 'cpu']


def _tiny_hbfp():
    torch.manual_seed(0)
    return timm.create_model('hbfp_resnet18', correlation_dim=8, perception_dim=16)


def _run(tmp_path, *argv):
    """``python -m benchmarks.speed ARGV --output TMP``: the exit code and the JSON written."""
    output = tmp_path / 'speed.json'
    code = speed.main([*argv, '--output', str(output)])
    return code, json.loads(output.read_text()) if output.is_file() else None


# -- models, layers, pipeline, evaluation ---------------------------------------------------------------------------

@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16])
def test_layer_costs_run_every_part_at_the_forwards_precision(amp_dtype):
    """Under autocast the BFP maps are half precision: counting their FLOPs used to crash (issue 10)."""
    costs = layer_costs(_tiny_hbfp(), 2, (64, 32), CPU, repeats=1, amp_dtype=amp_dtype, channels_last=False)
    assert costs['precision'] == ('fp32' if amp_dtype is None else 'amp')
    gep_paths = {f'gep_{path}{mode}' for path in ('plain', 'chunked') for mode in ('', '_train')}
    assert set(costs['share_of_forward']) == {'bfp_low_mid', 'bfp_mid_high', 'gep', 'avg_pool', *gep_paths}
    assert all(share > 0 for share in costs['share_of_forward'].values())
    assert costs['gep_default'] == 'chunked'  # on CPU
    assert 0 < costs['bfp_flop_share'] < 1
    assert costs['map_shapes']['gep_input'] == [2, 1024, 4, 2]


def test_flops_are_counted_in_float32_whatever_the_input_dtype():
    model = _tiny_hbfp()
    x = torch.randn(2, 3, 64, 32)
    assert count_flops(model, 'eval', x.to(torch.bfloat16)) == count_flops(model, 'eval', x) > 0


def test_a_training_step_counts_grouped_convolutions_by_hand():
    """Forward of a convolution: 2 x batch x output positions x output channels x (input channels / groups) x
    kernel area. Backward: the same again for the weight's gradient, and once more for the input's where the input
    needs one (not the first layer's). torch's formula counted a depthwise backward as a dense one (x8 here)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False))
    x = torch.randn(2, 3, 6, 4)
    dense, depthwise = (2 * 2 * 6 * 4 * 8 * cin * 9 for cin in (3, 1))
    assert count_flops(model, 'eval', x) == dense + depthwise
    assert count_flops(model, 'train', x) == 2 * dense + 3 * depthwise


def test_recipe_estimate_is_bounded_by_the_slower_of_model_and_input():
    estimate = recipe_estimate(train_images_per_second=1000.0, eval_images_per_second=2000.0,
                               loader_images_per_second=500.0)
    assert estimate['input_bound'] is True
    assert estimate['train_hours'] == pytest.approx(500 * 12936 / 500 / 3600)
    assert estimate['eval_hours'] == pytest.approx(10 * (3368 + 15913) / 2000 / 3600)
    assert estimate['hours'] == pytest.approx(estimate['train_hours'] + estimate['eval_hours'])
    unbounded = recipe_estimate(1000.0, 2000.0, loader_images_per_second=None)
    assert unbounded['input_bound'] is False
    assert unbounded['train_hours'] == pytest.approx(500 * 12936 / 1000 / 3600)


def testamp_speedups_pair_the_rows_of_both_precisions():
    def row(batch, precision, mode, bot, hbfp):
        return {'batch_size': batch, 'precision': precision, 'mode': mode,
                'images_per_second': {'bot_resnet50': bot, 'hbfp_resnet50': hbfp}}
    rows = [row(64, 'fp32', 'train', 100.0, 40.0), row(64, 'amp', 'train', 250.0, 80.0),
            row(32, 'amp', 'eval', 10.0, 10.0)]  # no fp32 partner: no speed-up
    assert amp_speedups(rows) == [{'batch_size': 64, 'mode': 'train', 'bot_resnet50': 2.5, 'hbfp_resnet50': 2.0}]


def test_loader_throughput_measures_each_worker_count(tmp_path):
    result = loader_throughput([0], img_size=(64, 32), batch_size=8, batches=2, folder=str(tmp_path))
    assert list(result) == [0] and result[0] > 0
    assert (tmp_path / 'bounding_box_train').is_dir()


def test_peak_memory_of_a_train_step_in_a_fresh_process_exceeds_an_eval_step():
    train = peak_memory('hbfp_resnet18', 'train', 4, (64, 32), CPU, amp_dtype=None, channels_last=False)
    evaluate = peak_memory('hbfp_resnet18', 'eval', 4, (64, 32), CPU, amp_dtype=None, channels_last=False)
    assert train > evaluate > 0


def test_an_unknown_child_probe_is_a_usage_error(capsys):
    assert probes.main(['nope', '{}']) == 2 and 'usage: python -m benchmarks.probes' in capsys.readouterr().err


def test_train_step_gives_every_parameter_a_gradient_under_autocast():
    model = _tiny_hbfp()
    make_step(model, 'train', torch.randn(2, 3, 64, 32), torch.bfloat16)()
    assert all(p.grad is not None for p in model.parameters())


def test_command_line_defaults_and_conflicts(tmp_path):
    args = parse_args(['--device', 'cpu', '--quick', '--output', str(tmp_path / 'speed.json')])
    assert args.precisions == ['fp32'] and args.amp_dtype == torch.bfloat16 and args.loader_workers == [0]
    assert args.sections == ['models', 'layers', 'pipeline', 'evaluation']  # what the command measured before
    assert parse_args(['--device', 'cpu', '--amp', '--amp-dtype', 'float16']).precisions == ['amp']
    assert parse_args(['--device', 'cpu']).output.endswith('runs/speed.json')  # never the working folder
    assert parse_args(['--device', 'cpu', '--sections', 'search,checkpointing']).sections == ['search', 'checkpointing']
    with pytest.raises(SystemExit):
        parse_args(['--device', 'cpu', '--amp', '--precisions', 'fp32'])


@pytest.mark.parametrize('argv, message', [
    (['--batch-size', '1'], '--batch-size: expected at least 2'),
    (['--repeats', '0'], '--repeats: expected at least 1'),
    (['--img-size', '16', '8'], '--img-size: expected at least 32x32'),
    (['--output', '{folder}'], 'is a folder; expected a JSON file path'),
    (['--sections', 'models,sorting'], 'expected a comma-separated subset of models,layers,'),
    (['--sections', 'search', '--tasks', 'sorting'], 'expected a comma-separated subset of topk,evaluate,rerank'),
    (['--device', 'gpu9'], "error: --device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu9'"),
    (['--device', 'nonsense'], "python -m benchmarks.speed: error: --device: expected 'auto', 'cpu', 'cuda' or "
                               "'cuda:N', got 'nonsense'"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        speed.main([a.format(folder=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count('\n') == 1


# -- memory_format ----------------------------------------------------------------------------------------------------

def test_both_formats_give_the_same_outputs_and_the_speedup_is_the_median_paired_ratio():
    rows = probes.compare_formats('hbfp_resnet18', (64, 32), batch_size=2, repeats=3, device=CPU)
    assert [row['mode'] for row in rows] == ['train', 'eval']
    for row in rows:
        contiguous, channels_last = row['times']['contiguous'], row['times']['channels_last']
        assert len(contiguous) == len(channels_last) == 3
        ratios = sorted(c / n for c, n in zip(contiguous, channels_last))
        assert row['speedup'] == pytest.approx(ratios[1])
        assert row['seconds']['channels_last'] == pytest.approx(statistics.median(channels_last))
        # Only the kernels' summation order may differ between the formats.
        assert 0 < row['output_scale'] and row['max_abs_difference'] <= 1e-4 * row['output_scale']


def test_memory_format_section_prints_the_table_and_writes_json(tmp_path, capsys):
    code, results = _run(tmp_path, '--sections', 'memory_format', '--models', 'hbfp_resnet18', '--repeats', '1',
                         '--modes', 'eval', *TINY)
    assert code == 0 and [row['mode'] for row in results['memory_format']] == ['eval']
    assert results['environment']['command'].startswith('python -m benchmarks.speed --sections memory_format --models')
    assert results['targets'] == {} and 'throughput' not in results  # only the section asked for
    assert '| hbfp_resnet18 | eval | 2 |' in capsys.readouterr().out


def test_an_unknown_model_is_a_one_line_error(tmp_path, capsys):
    code, results = _run(tmp_path, '--sections', 'memory_format', '--models', 'no_such_model', '--repeats', '1', *TINY)
    err = capsys.readouterr().err
    assert code == 2 and results is None
    assert err.startswith('error: --models no_such_model: Unknown model (no_such_model)') and err.count('\n') == 1


# -- checkpointing ----------------------------------------------------------------------------------------------------

def test_checkpointing_section_measures_both_modes_each_in_its_own_process(tmp_path, capsys):
    code, results = _run(tmp_path, '--sections', 'checkpointing', '--model', 'hbfp_resnet18', *TINY)
    ckpt = results['checkpointing']
    assert code == 0 and ckpt['same_loss']
    assert ckpt['on']['activation_bytes'] < 0.5 * ckpt['off']['activation_bytes']
    assert all(ckpt[mode]['peak_step_bytes'] > 0 for mode in ('off', 'on'))
    assert results['environment']['command'].startswith('python -m benchmarks.speed --sections checkpointing --model')
    assert '| activations kept for backward (MiB) |' in capsys.readouterr().out


# -- search -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('task, ours, baseline', [
    ('topk', 'topk', 'naive'),
    pytest.param('topk', 'topk', 'faiss', marks=pytest.mark.skipif(
        not faiss_available(),
        reason='faiss is an optional extra (pip install "hbfp-timm[faiss]"), not installed here')),
    ('evaluate', 'evaluate_features', 'naive'),
    ('rerank', 're_ranking', 're_ranking_features'),
])
def test_search_probes_measure_time_and_memory_and_agree_with_the_baseline(task, ours, baseline):
    first = probes.search_probe(task, ours, 'quick')
    second = probes.search_probe(task, baseline, 'quick')
    for row in (first, second):
        assert row['seconds'] > 0 and row['cpu_seconds'] > 0 and row['extra_bytes'] >= 0
    agreement = probes.search_agree(task, first, second)
    if task == 'rerank':
        assert float(agreement.split()[-1]) <= 1e-5
    else:
        assert agreement in (True, 1.0)


def test_search_table_lists_every_row_with_its_ratio():
    rows = [dict(task='topk', method='topk', sizes=[1, 2, 3, 4], seconds=2.0, cpu_seconds=3.0, extra_bytes=2 ** 30,
                 agrees_with_first=1.0),
            dict(task='topk', method='naive', sizes=[1, 2, 3, 4], seconds=8.0, cpu_seconds=9.0, extra_bytes=2 ** 31,
                 agrees_with_first=1.0, time_ratio_to_ours=4.0, cpu_ratio_to_ours=3.0)]
    table = speed_report.search_lines({'search': {'topk': rows}})
    assert '| topk | 1x2x3x4 | naive | 8.00 | 9.00 | 2.00 | 4.00 | 3.00 | 1.0 |' in table


def test_device_topk_times_a_half_gallery_and_agrees_with_exact_search():
    result = probes.device_topk('cpu', 'quick', repeats=2)
    assert result['sizes'] == list(probes.DEVICE_SEARCH_SIZES['quick']) and result['gallery_dtype'] == 'float16'
    assert len(result['seconds']) == 2 and result['median_seconds'] > 0
    assert result['extra_device_bytes'] is None  # device memory is only measured on CUDA
    assert result['agreement'] == 1.0  # same float16 values, searched exactly both ways
    line, = speed_report.search_lines({'search': result})
    assert 'top-10 of 50 queries in 20,000 x 64-d float16 on cpu' in line and 'target on one H100: <= 0.2 s' in line
