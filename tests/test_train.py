"""The trainer (hbfp_timm.train) on a tiny synthetic data set, CPU only, a few seconds per run."""
import json
import os
import re
import shutil
import socket
import stat
from dataclasses import replace

import pytest
import timm
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import hbfp_timm  # noqa: F401  (registers the hbfp_* models)
from hbfp_timm.data import ImageDataset, build_dataset, build_test_transform
from hbfp_timm.metrics.evaluation import evaluate
from hbfp_timm.train import ConstantThenExponentialDecay, TrainConfig, TrainSetupError, main, train
from hbfp_timm.training import loop
from hbfp_timm.utils.files import current_umask, format_size

IMG_SIZE = (64, 32)
pytestmark = pytest.mark.usefixtures('single_thread')


def test_training_lowers_the_loss_and_writes_loadable_outputs(make_config, data_root, tmp_path, capsys):
    cfg = make_config(tmp_path / 'run', epochs=3, lr=1e-3)
    results = train(cfg, command=['test'])
    log = capsys.readouterr().out.splitlines()

    losses = [epoch['loss'] for epoch in results['history']]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert set(results['history'][0]) >= {'epoch', 'loss', 'triplet', 'id', 'lr', 'time', 'steps'}

    on_disk = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert [e['epoch'] for e in on_disk['evaluations']] == [1, 2, 3]
    assert on_disk['last'] == on_disk['evaluations'][-1]
    assert on_disk['best']['mAP'] == max(e['mAP'] for e in on_disk['evaluations'])
    assert on_disk['img_size'] == list(IMG_SIZE) and on_disk['config']['lr'] == 1e-3
    assert on_disk['synthetic_data']['seed'] == 0 and on_disk['checkpoint_epoch'] == 3
    names = ['checkpoint.pt', 'model.safetensors', 'best.safetensors', 'results.json']
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == sorted(names)  # no temporaries left
    umask = current_umask()
    assert all(stat.S_IMODE((tmp_path / 'run' / name).stat().st_mode) == 0o666 & ~umask for name in names)

    # The log says up front what the run writes and how large, and at the end what it wrote.
    sizes = {name: (tmp_path / 'run' / name).stat().st_size for name in names}
    planned = next(line for line in log if line.startswith(f'writing to {tmp_path / "run"}: '))
    estimate = float(re.search(r'checkpoint\.pt ~([\d.]+) MB', planned)[1]) * 1e6
    assert estimate == pytest.approx(sizes['checkpoint.pt'], rel=0.02)
    assert log[-1] == f'wrote {tmp_path / "run"}: ' + ', '.join(
        f'{name} {format_size(sizes[name])}' for name in names)

    # The descriptor model loads strictly and reproduces the final evaluation.
    descriptor_model = timm.create_model(cfg.model, num_classes=0, **cfg.model_args)
    descriptor_model.load_state_dict(load_file(tmp_path / 'run' / 'model.safetensors'), strict=True)
    dataset = build_dataset('market_layout', data_root)
    query, gallery = (DataLoader(ImageDataset(items, build_test_transform(IMG_SIZE)), batch_size=32)
                      for items in (dataset.query, dataset.gallery))
    again = evaluate(descriptor_model, query, gallery, 'cpu')
    for key in ('rank1', 'rank5', 'rank10', 'mAP'):
        assert again[key] == pytest.approx(on_disk['metrics'][key], abs=1e-6)


def test_the_epoch_line_says_how_many_queries_had_no_match_and_were_skipped(make_config, data_root, tmp_path,
                                                                           capsys):
    """Queries whose identity the gallery holds from no other camera are left out of rank-1 and mAP by the
    protocol: the epoch line says how many, rather than dropping them without a word."""
    root = tmp_path / 'data'
    shutil.copytree(data_root, root)
    first = sorted((root / 'query').iterdir())[0]
    pid, camera = first.name.split('_')[:2]
    for image in (root / 'bounding_box_test').glob(f'{pid}_*'):
        if not image.name.split('_')[1].startswith(camera):
            image.unlink()
    results = train(make_config(tmp_path / 'run', data_root=str(root), epochs=1, max_steps_per_epoch=1))
    entry = results['last']
    assert entry['num_skipped_queries'] >= 1
    assert (f"mAP {entry['mAP']:.2%} ({entry['num_skipped_queries']} of {entry['num_query']} queries without a match "
            f"in the gallery skipped)") in capsys.readouterr().out


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_gives_the_same_weights_as_a_straight_run(make_config, data_root, tmp_path, workers):
    base = make_config(tmp_path / 'straight', epochs=2, max_steps_per_epoch=2, eval_every=5,
                   workers=workers)
    train(base, command=['test'])
    train(replace(base, output=str(tmp_path / 'stopped'), epochs=1), command=['test'])
    resumed = train(replace(base, output=None, resume=str(tmp_path / 'stopped')), command=['test'])

    straight = torch.load(tmp_path / 'straight' / 'checkpoint.pt', weights_only=True)
    continued = torch.load(tmp_path / 'stopped' / 'checkpoint.pt', weights_only=True)
    assert continued['epoch'] == straight['epoch'] == 2
    assert straight['model'].keys() == continued['model'].keys()
    for name, tensor in straight['model'].items():
        assert torch.equal(tensor, continued['model'][name]), name
    for param_id, state in straight['optimizer']['state'].items():
        assert torch.equal(state['exp_avg'], continued['optimizer']['state'][param_id]['exp_avg'])
    assert [h['epoch'] for h in resumed['history']] == [1, 2]
    assert resumed['resumed_from'][0]['epoch'] == 1


def test_cli_resume_keeps_the_run_configuration_and_takes_new_flags(data_root, tmp_path, capsys, monkeypatch):
    """A run started with relative paths and resumed from another folder continues where it is, on its own data;
    results.json keeps the first command line and adds the resume's."""
    monkeypatch.chdir(tmp_path)
    first = ['--dataset', 'market_layout', '--data-root', os.path.relpath(data_root), '--model', 'hbfp_mobilenetv2_100',
             '--model-arg', 'correlation_dim=8', '--model-arg', 'perception_dim=16',
             '--img-size', str(IMG_SIZE[0]), str(IMG_SIZE[1]), '--batch-size', '8', '--num-instances', '2',
             '--epochs', '1', '--max-steps-per-epoch', '1', '--no-pretrained-backbone', '--workers', '0',
             '--eval-every', '5', '--lr', '0.001', '--output', 'run', '--device', 'cpu']
    main(first)
    # The data set's summary, with the junk images (id -1) of the gallery counted as dropped.
    junk = len(list((data_root / 'bounding_box_test').glob('-1_*.jpg')))
    assert junk > 0 and f'  dropped: junk (id -1): {junk}' in capsys.readouterr().out.splitlines()
    run = tmp_path / 'run'
    (run / 'thresholds.json').write_text('{}')  # calibrated for the weights that the resume trains further
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = main(['--resume', str(run), '--epochs', '2'])
    assert [h['epoch'] for h in resumed['history']] == [1, 2]
    assert resumed['config']['data_root'] == str(data_root) and resumed['config']['lr'] == 0.001
    assert resumed['config']['epochs'] == 2 and tuple(resumed['config']['img_size']) == IMG_SIZE
    assert resumed['config']['model_args'] == {'correlation_dim': 8, 'perception_dim': 16}
    assert resumed['command'] == ['python', '-m', 'hbfp_timm.train', *first]
    assert resumed['resumed_from'] == [
        {'epoch': 1, 'command': ['python', '-m', 'hbfp_timm.train', '--resume', str(run), '--epochs', '2']}]
    assert json.loads((run / 'results.json').read_text()) == json.loads(json.dumps(resumed))
    assert list(elsewhere.iterdir()) == [] and not (run / 'thresholds.json').exists()
    assert (f'removed thresholds.json from {run}: its thresholds were calibrated for the weights before this resume; '
            f'calibrate again with python -m hbfp_timm.evaluate --calibrate' in capsys.readouterr().out.splitlines())


def test_checkpoint_is_written_every_n_epochs_and_after_the_last(make_config, data_root, tmp_path, monkeypatch):
    from hbfp_timm.training import loop
    written = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, 'save_checkpoint',
                        lambda path, state: (written.append(state['epoch']), real_save(path, state)))
    train(make_config(tmp_path / 'run', epochs=3, max_steps_per_epoch=1, eval_every=5, checkpoint_every=2),
          command=['test'])
    assert written == [2, 3]
    assert torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)['epoch'] == 3


def test_lr_is_constant_then_decays_exponentially_to_the_final_factor():
    factor = ConstantThenExponentialDecay(constant_epochs=200, total_epochs=500, final_factor=1e-3)
    assert factor(0) == factor(199) == factor(200) == 1.0
    assert factor(350) == pytest.approx(1e-3 ** 0.5)
    assert factor(500) == pytest.approx(1e-3) and factor(600) == pytest.approx(1e-3)
    tail = [factor(e) for e in range(200, 501)]
    assert all(a > b for a, b in zip(tail, tail[1:]))
    assert factor(200) / factor(201) == pytest.approx(factor(400) / factor(401))  # a constant ratio


def test_defaults_are_the_paper_recipe():
    cfg = TrainConfig()
    assert (cfg.img_size, cfg.batch_size, cfg.num_instances) == ((384, 128), 64, 4)
    assert (cfg.margin, cfg.label_smoothing, cfg.lr, cfg.weight_decay) == (0.3, 0.3, 2e-4, 5e-4)
    assert (cfg.lr_constant_epochs, cfg.epochs, cfg.model) == (200, 500, 'hbfp_resnet50')


@pytest.mark.parametrize('setting, bf16, expected', [
    ('auto', True, torch.bfloat16), ('auto', False, torch.float16), ('float16', True, torch.float16),
    ('bfloat16', True, torch.bfloat16),
])
def test_mixed_precision_type_on_cuda(make_config, tmp_path, monkeypatch, setting, bf16, expected):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: bf16)
    cfg = make_config(tmp_path, amp_dtype=setting)
    assert loop._amp_dtype(cfg, torch.device('cuda')) == expected
    assert loop._amp_dtype(replace(cfg, amp=False), torch.device('cuda')) is None
    assert loop._amp_dtype(cfg, torch.device('cpu')) is None  # full precision on CPU


def test_bfloat16_on_a_gpu_without_it_is_refused(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla V100')
    with pytest.raises(TrainSetupError, match='amp_dtype: Tesla V100 has no native bfloat16; use --amp-dtype float16'):
        loop._amp_dtype(make_config(tmp_path, amp_dtype='bfloat16'), torch.device('cuda'))


def test_channels_last_and_compile_train_the_same_model(make_config, tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):  # dynamo tracing without code generation: the CPU suite needs no compiler
        compiled.append(module)
        return real_compile(module, backend='eager', **kwargs)

    monkeypatch.setattr(torch, 'compile', eager_compile)
    # One step: its loss comes from the same weights and batch. (After it, Adam's first update, about lr times the
    # sign of each gradient, turns rounding differences of near-zero gradients into different weights.)
    base = make_config(tmp_path / 'plain', epochs=1, max_steps_per_epoch=1, eval_every=5)
    plain = train(base, command=['test'])
    fast = train(replace(base, output=str(tmp_path / 'fast'), channels_last=True, compile=True), command=['test'])
    assert len(compiled) == 1 and plain['config']['compile'] is None
    for part in ('loss', 'triplet', 'id'):  # channels-last convolutions add up in another order
        assert fast['history'][0][part] == pytest.approx(plain['history'][0][part], rel=1e-3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cfg: TrainConfig, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results = train(cfg, command=['test'])
    torch.save({'num_steps': [h['steps'] for h in results['history']]}, os.path.join(out_dir, f'rank{rank}.pt'))


def test_distributed_training_on_two_cpu_processes_writes_once(make_config, data_root, tmp_path):
    cfg = make_config(tmp_path / 'ddp', epochs=1, max_steps_per_epoch=2, eval_every=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / 'ddp' / 'model.safetensors').is_file()
    results = json.loads((tmp_path / 'ddp' / 'results.json').read_text())
    assert results['world_size'] == 2 and len(results['evaluations']) == 1
    steps = [torch.load(tmp_path / f'rank{r}.pt')['num_steps'] for r in range(2)]
    assert steps[0] == steps[1] == [2]  # every rank gets whole PK batches, as many as the others
