"""The speed benchmark's pieces: layer costs under mixed precision, the recipe estimate, the input pipeline,
the amp speed-up table and the memory probe (on CPU, with tiny models)."""
import pytest
import timm
import torch

import hbfp_timm  # noqa: F401  (registers the hbfp_* models)
from benchmarks.input_pipeline import loader_throughput
from benchmarks.memory import peak_memory
from benchmarks.speed import _amp_speedups, layer_costs, parse_args, recipe_estimate
from benchmarks.timing import count_flops, make_step

CPU = torch.device('cpu')


def _tiny_hbfp():
    torch.manual_seed(0)
    return timm.create_model('hbfp_resnet18', correlation_dim=8, perception_dim=16)


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16])
def test_layer_costs_run_every_part_at_the_forwards_precision(amp_dtype):
    """Under autocast the BFP maps are half precision: counting their FLOPs used to crash (issue 10)."""
    costs = layer_costs(_tiny_hbfp(), 2, (64, 32), CPU, repeats=1, amp_dtype=amp_dtype, channels_last=False)
    assert costs['precision'] == ('fp32' if amp_dtype is None else 'amp')
    assert set(costs['share_of_forward']) == {'bfp_low_mid', 'bfp_mid_high', 'gep', 'avg_pool'}
    assert all(share > 0 for share in costs['share_of_forward'].values())
    assert 0 < costs['bfp_flop_share'] < 1
    assert costs['map_shapes']['gep_input'] == [2, 1024, 4, 2]


def test_flops_are_counted_in_float32_whatever_the_input_dtype():
    model = _tiny_hbfp()
    x = torch.randn(2, 3, 64, 32)
    assert count_flops(model, 'eval', x.to(torch.bfloat16)) == count_flops(model, 'eval', x) > 0


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


def test_amp_speedups_pair_the_rows_of_both_precisions():
    def row(batch, precision, mode, bot, hbfp):
        return {'batch_size': batch, 'precision': precision, 'mode': mode,
                'images_per_second': {'bot_resnet50': bot, 'hbfp_resnet50': hbfp}}
    rows = [row(64, 'fp32', 'train', 100.0, 40.0), row(64, 'amp', 'train', 250.0, 80.0),
            row(32, 'amp', 'eval', 10.0, 10.0)]  # no fp32 partner: no speed-up
    assert _amp_speedups(rows) == [{'batch_size': 64, 'mode': 'train', 'bot_resnet50': 2.5, 'hbfp_resnet50': 2.0}]


def test_loader_throughput_measures_each_worker_count(tmp_path):
    result = loader_throughput([0], img_size=(64, 32), batch_size=8, batches=2, folder=str(tmp_path))
    assert list(result) == [0] and result[0] > 0
    assert (tmp_path / 'bounding_box_train').is_dir()


def test_peak_memory_of_a_train_step_in_a_fresh_process_exceeds_an_eval_step():
    train = peak_memory('hbfp_resnet18', 'train', 4, (64, 32), CPU, amp_dtype=None, channels_last=False)
    evaluate = peak_memory('hbfp_resnet18', 'eval', 4, (64, 32), CPU, amp_dtype=None, channels_last=False)
    assert train > evaluate > 0


def test_train_step_gives_every_parameter_a_gradient_under_autocast():
    model = _tiny_hbfp()
    make_step(model, 'train', torch.randn(2, 3, 64, 32), torch.bfloat16)()
    assert all(p.grad is not None for p in model.parameters())


def test_command_line_defaults_and_conflicts(tmp_path):
    args = parse_args(['--device', 'cpu', '--quick', '--output', str(tmp_path / 'speed.json')])
    assert args.precisions == ['fp32'] and args.amp_dtype == torch.bfloat16 and args.loader_workers == [0]
    assert parse_args(['--device', 'cpu', '--amp', '--amp-dtype', 'float16']).precisions == ['amp']
    assert parse_args(['--device', 'cpu']).output.endswith('runs/speed.json')  # never the working folder
    with pytest.raises(SystemExit):
        parse_args(['--device', 'cpu', '--amp', '--precisions', 'fp32'])
    with pytest.raises(SystemExit):
        parse_args(['--device', 'cpu', '--output', str(tmp_path)])
