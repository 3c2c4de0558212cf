"""The trainer (hbfp_timm.train) on a tiny synthetic data set, CPU only, a few seconds per run."""
import json
import os
import socket
from dataclasses import replace

import pytest
import timm
import torch
import torch.multiprocessing as mp
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import hbfp_timm  # noqa: F401  (registers the hbfp_* models)
from hbfp_timm.data import ImageDataset, build_dataset, build_test_transform
from hbfp_timm.engine import evaluate
from hbfp_timm.synthetic import generate_synthetic_dataset
from hbfp_timm.train import ConstantThenExponentialDecay, TrainConfig, main, train

IMG_SIZE = (64, 32)


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on a busy 2-core CI machine, OpenMP threads waiting on each other make these
    tiny training steps many times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    generate_synthetic_dataset(root, num_ids=12, num_cams=3, seed=0, images_per_id=8, height=64, width=32,
                               progress=False)
    return root


def _config(data_root, output, **overrides) -> TrainConfig:
    settings = dict(dataset='market_layout', data_root=str(data_root), model='hbfp_resnet18', img_size=IMG_SIZE,
                    batch_size=8, num_instances=2, epochs=2, pretrained_backbone=False, workers=0,
                    eval_every=1, test_batch_size=32, output=str(output), seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_training_lowers_the_loss_and_writes_loadable_outputs(data_root, tmp_path):
    cfg = _config(data_root, tmp_path / 'run', epochs=3, lr=1e-3)
    results = train(cfg, command=['test'])

    losses = [epoch['loss'] for epoch in results['history']]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert set(results['history'][0]) >= {'epoch', 'loss', 'triplet', 'id', 'lr', 'time', 'steps'}

    on_disk = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert [e['epoch'] for e in on_disk['evaluations']] == [1, 2, 3]
    assert on_disk['last'] == on_disk['evaluations'][-1]
    assert on_disk['best']['mAP'] == max(e['mAP'] for e in on_disk['evaluations'])
    assert on_disk['img_size'] == list(IMG_SIZE) and on_disk['config']['lr'] == 1e-3
    assert (tmp_path / 'run' / 'checkpoint.pt').is_file() and (tmp_path / 'run' / 'best.safetensors').is_file()
    assert not [p for p in (tmp_path / 'run').iterdir() if p.name.endswith('.tmp')]

    # The descriptor model loads strictly and reproduces the final evaluation.
    descriptor_model = timm.create_model('hbfp_resnet18', num_classes=0)
    descriptor_model.load_state_dict(load_file(tmp_path / 'run' / 'model.safetensors'), strict=True)
    dataset = build_dataset('market_layout', data_root)
    query, gallery = (DataLoader(ImageDataset(items, build_test_transform(IMG_SIZE)), batch_size=32)
                      for items in (dataset.query, dataset.gallery))
    again = evaluate(descriptor_model, query, gallery, 'cpu')
    for key in ('rank1', 'rank5', 'rank10', 'mAP'):
        assert again[key] == pytest.approx(on_disk['metrics'][key], abs=1e-6)


@pytest.mark.parametrize('workers', [0, 2])
def test_resume_gives_the_same_weights_as_a_straight_run(data_root, tmp_path, workers):
    base = _config(data_root, tmp_path / 'straight', epochs=2, max_steps_per_epoch=2, eval_every=5,
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


def test_cli_resume_keeps_the_run_configuration_and_takes_new_flags(data_root, tmp_path):
    run = tmp_path / 'run'
    main(['--dataset', 'market_layout', '--data-root', str(data_root), '--model', 'hbfp_resnet18',
          '--img-size', str(IMG_SIZE[0]), str(IMG_SIZE[1]), '--batch-size', '8', '--num-instances', '2',
          '--epochs', '1', '--max-steps-per-epoch', '1', '--no-pretrained-backbone', '--workers', '0',
          '--eval-every', '5', '--lr', '0.001', '--output', str(run)])
    resumed = main(['--resume', str(run), '--epochs', '2'])
    assert [h['epoch'] for h in resumed['history']] == [1, 2]
    assert resumed['config']['data_root'] == str(data_root) and resumed['config']['lr'] == 0.001
    assert resumed['config']['epochs'] == 2 and tuple(resumed['config']['img_size']) == IMG_SIZE


def test_checkpoint_is_written_every_n_epochs_and_after_the_last(data_root, tmp_path, monkeypatch):
    from hbfp_timm.training import loop
    written = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, 'save_checkpoint',
                        lambda path, state: (written.append(state['epoch']), real_save(path, state)))
    train(_config(data_root, tmp_path / 'run', epochs=3, max_steps_per_epoch=1, eval_every=5, checkpoint_every=2),
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


def test_cli_reports_a_missing_data_root(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    with pytest.raises(SystemExit) as exit_info:
        main(['--dataset', 'market_layout', '--data-root', str(missing), '--model', 'hbfp_resnet18',
              '--no-pretrained-backbone', '--output', str(tmp_path / 'out')])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(missing) in error and 'data_root' in error


@pytest.mark.parametrize('argv, expected', [
    (['--model-arg', 'no_equals_sign'], 'KEY=VALUE'),
    (['--img-size', '384'], '--img-size'),
    (['--epochs', '0'], 'positive integer'),
    (['--model', 'hbfp_nonexistent'], 'unknown timm model'),
    (['--resume', 'missing_dir/checkpoint.pt'], 'resume'),
    (['--batch-size', '6', '--num-instances', '4'], 'batch_size'),
    (['--model-arg', "branches=('x',)", '--batch-size', '8', '--num-instances', '2'], 'model_args'),
])
def test_cli_rejects_bad_arguments_with_one_line(data_root, tmp_path, capsys, argv, expected):
    common = ['--dataset', 'market_layout', '--data-root', str(data_root), '--no-pretrained-backbone',
              '--model', 'hbfp_resnet18', '--output', str(tmp_path / 'out')]
    with pytest.raises(SystemExit) as exit_info:
        main(common + argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err.strip().splitlines()[-1]


def test_offline_pretrained_backbone_failure_suggests_the_offline_flags(data_root, tmp_path, monkeypatch):
    def offline_create_model(*args, **kwargs):
        raise LocalEntryNotFoundError('cannot find the requested files in the local cache')

    monkeypatch.setattr(timm, 'create_model', offline_create_model)
    with pytest.raises(ValueError, match='--backbone-weights FILE.*--no-pretrained-backbone'):
        train(_config(data_root, tmp_path / 'out', pretrained_backbone=True), command=['test'])


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


def test_distributed_training_on_two_cpu_processes_writes_once(data_root, tmp_path):
    cfg = _config(data_root, tmp_path / 'ddp', epochs=1, max_steps_per_epoch=2, eval_every=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / 'ddp' / 'model.safetensors').is_file()
    results = json.loads((tmp_path / 'ddp' / 'results.json').read_text())
    assert results['world_size'] == 2 and len(results['evaluations']) == 1
    steps = [torch.load(tmp_path / f'rank{r}.pt')['num_steps'] for r in range(2)]
    assert steps[0] == steps[1] == [2]  # every rank gets whole PK batches, as many as the others
