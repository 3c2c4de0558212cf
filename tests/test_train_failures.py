"""Every way a training run can go wrong ends in one line naming the argument or the file, with a non-zero exit
and no traceback: found before the first epoch where it can be, and leaving no temporary files where it cannot."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image

from hbfp_timm.data import ReIDDataset
from hbfp_timm.data.synthetic import generate_synthetic_dataset
from hbfp_timm.models import pretrained
from hbfp_timm.train import TrainSetupError, build_parser, main, train
from hbfp_timm.training import loop, prepare
from hbfp_timm.training.losses import HBFPLoss
from hbfp_timm.utils import files

from conftest import default_sigint_in_child

pytestmark = pytest.mark.usefixtures('single_thread')
ROOT = Path(__file__).resolve().parents[1]
PROG = 'python -m hbfp_timm.train'


def _argv(data_root, output, *extra) -> list:
    """A small CPU run: a 3.6M-parameter HBFP-Net (43 MB checkpoints), PK batches 4 x 2, one epoch."""
    return ['--dataset', 'market_layout', '--data-root', str(data_root), '--model', 'hbfp_mobilenetv2_100',
            '--model-arg', 'correlation_dim=8', '--model-arg', 'perception_dim=16', '--img-size', '64', '32',
            '--batch-size', '8', '--num-instances', '2', '--no-pretrained-backbone', '--workers', '0',
            '--device', 'cpu', '--epochs', '1', '--eval-every', '5', '--output', str(output), *extra]


def _exit(argv, capsys):
    """Run the CLI expecting it to stop; returns (exit status, the one line it printed on stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return info.value.code, lines[0]


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp')) if folder.is_dir() else []


# --- arguments and output folder ----------------------------------------------------------------------------
def test_a_missing_data_root_is_one_line(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    code, line = _exit(_argv(missing, tmp_path / 'out'), capsys)
    assert code == 2 and line.startswith(f'{PROG}: error: --data-root: ') and str(missing) in line


@pytest.mark.parametrize('argv, expected', [
    (['--model-arg', 'no_equals_sign'], 'KEY=VALUE'),
    (['--img-size', '384'], '--img-size'),
    (['--epochs', '0'], 'positive integer'),
    (['--model', 'hbfp_nonexistent'], 'unknown timm model'),
    (['--model', 'hbfp_mobilenetv2_100.cuhk03'], "--model: 'hbfp_mobilenetv2_100.cuhk03' names trained weights (tag "
                                                 "'cuhk03'), which the trainer does not start from: it would train "),
    (['--model', 'resnet18'], "--model: 'resnet18' is a timm backbone, not an HBFP model; use --model hbfp_resnet18 "),
    (['--model', 'mobilenetv3_small_100'], '--model: \'mobilenetv3_small_100\' is a timm backbone, not an HBFP model; '
                                           'use an HBFP model on it: --model hbfp_resnet50 --model-arg '
                                           'backbone=mobilenetv3_small_100 (HBFP models: '),
    (['--resume', 'missing_dir/checkpoint.pt'], '--resume: '),
    (['--batch-size', '6', '--num-instances', '4'], '--batch-size: '),
    (['--model-arg', "branches=('x',)"], '--model-arg: '),
    (['--batch-size', '16'], 'has 6 training identities, too few for batches of P=8 identities (--batch-size 16 / '
                             '--num-instances 2); expected --batch-size at most 6 x --num-instances = 12'),
    (['--model-arg', 'corelation_dim=8'], "--model-arg: hbfp_mobilenetv2_100 takes no argument 'corelation_dim' (did "
                                          'you mean correlation_dim?); HBFPNet takes backbone, num_classes, '),
    (['--model-arg', 'corelation_dim=8'], ', drop_path_rate, pretrained_backbone, backbone_weights'),  # not flags
    (['--model-arg', 'num_classes=5'], '--model-arg: num_classes is set by the trainer (one class per training '),
    (['--model-arg', 'in_chans=1'], '--model-arg: in_chans=1, but the trainer reads every image as RGB (3 channels)'),
    (['--label-smoothing', '1.5'], '--label-smoothing: expected a value in [0, 1), got 1.5'),
    (['--lr', 'inf'], '--lr: expected a value in (0, 1] (the paper uses 2e-4), got inf'),
    (['--lr', '1e30'], '--lr: expected a value in (0, 1] (the paper uses 2e-4), got 1e+30'),
    (['--lr', 'nan'], '--lr: '),
    (['--random-erasing-prob', '2'], '--random-erasing-prob: expected a probability in [0, 1], got 2.0'),
    (['--cutout-prob', '-1'], '--cutout-prob: expected a probability in [0, 1], got -1.0'),
    (['--flip-prob', 'nan'], '--flip-prob: '),
    (['--margin', '-0.1'], '--margin: '),
    (['--triplet-weight', '0', '--id-weight', '0'], '--triplet-weight, --id-weight: expected at least one above 0'),
    (['--seed', '-1'], '--seed: '),
    (['--img-size', '8', '4'], '--img-size: hbfp_mobilenetv2_100 cannot run on 8x4 images'),
])
def test_bad_arguments_stop_before_training_with_one_line(data_root, tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        main(_argv(data_root, tmp_path / 'out', *argv))
    err = capsys.readouterr().err
    assert info.value.code == 2 and 'Traceback' not in err
    assert expected in err.strip().splitlines()[-1]
    assert not (tmp_path / 'out' / 'checkpoint.pt').exists()


def test_help_shows_defaults_only_where_there_is_one():
    text = build_parser().format_help()
    assert '(default: None)' not in text and '(default: [])' not in text
    assert '(default: 384 128)' in text and '(default: 500)' in text


@pytest.mark.parametrize('inside', ['', 'run'])
def test_an_output_that_cannot_be_a_folder_is_refused_before_training(data_root, tmp_path, capsys, inside):
    (tmp_path / 'a_file').write_text('')
    output = tmp_path / 'a_file' / inside  # the file itself, or a folder inside it
    start = time.perf_counter()
    code, line = _exit(_argv(data_root, output), capsys)
    assert code == 2 and line.startswith(f'{PROG}: error: --output: ') and 'a_file' in line
    assert time.perf_counter() - start < 10  # before the data set, model and first epoch


def test_a_bad_backbone_weights_file_is_named_and_the_folder_the_run_made_is_removed(data_root, tmp_path, capsys):
    bad = tmp_path / 'imagenet.pth'
    bad.write_bytes(b'not a weights file')
    output = tmp_path / 'runs' / 'new'
    code, line = _exit(_argv(data_root, output, '--backbone-weights', str(bad)), capsys)
    assert code == 2 and line.startswith(f'{PROG}: error: --backbone-weights: cannot read {bad} as a weights file (')
    assert not (tmp_path / 'runs').exists()  # created by the run, which wrote nothing there: removed
    output.mkdir(parents=True)
    code, line = _exit(_argv(data_root, output, '--backbone-weights', str(bad)), capsys)
    assert code == 2 and output.is_dir()  # a folder that was there before stays


def test_an_output_holding_another_run_is_refused_and_overwrite_replaces_it(finished_run, data_root, tmp_path,
                                                                            capsys):
    run = tmp_path / 'run'
    shutil.copytree(finished_run, run)
    (run / 'thresholds.json').write_text('{}')  # python -m hbfp_timm.evaluate --calibrate, for the old weights
    before = {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in run.iterdir()}
    code, line = _exit(_argv(data_root, run, '--max-steps-per-epoch', '1'), capsys)
    assert code == 2 and line == (
        f'{PROG}: error: --output: {run} already holds a finished run (checkpoint.pt, results.json, '
        f'model.safetensors, best.safetensors, thresholds.json); pass --resume {run} to continue it, --overwrite to '
        f'replace it, or choose another folder')
    assert {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in run.iterdir()} == before
    (run / 'model.safetensors').unlink()
    code, line = _exit(_argv(data_root, run, '--max-steps-per-epoch', '1'), capsys)
    assert code == 2 and f'--output: {run} already holds an unfinished run (checkpoint.pt, results.json, ' in line

    main(_argv(data_root, run, '--max-steps-per-epoch', '1', '--overwrite'))
    assert (f'removed checkpoint.pt, results.json, best.safetensors, thresholds.json from {run}: this run replaces '
            f'the earlier one; calibrate again with python -m hbfp_timm.evaluate --calibrate'
            in capsys.readouterr().out.splitlines())
    assert sorted(path.name for path in run.iterdir()) == [
        'best.safetensors', 'checkpoint.pt', 'model.safetensors', 'results.json']


def test_stale_temporaries_of_a_killed_run_are_removed_when_the_next_run_starts(tmp_path, capsys):
    stale = tmp_path / '.checkpoint.pt.k3x_9qzw.tmp'  # what a kill -9 during a checkpoint write leaves
    stale.write_bytes(bytes(2000))
    prepare.prepare_output(tmp_path)
    assert not stale.exists()
    assert capsys.readouterr().out.strip() == (f'removed 1 temporary file (2.0 kB) left in {tmp_path} by an '
                                               f'interrupted run')


# --- resuming -----------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def finished_run(data_root, tmp_path_factory):
    """A one-epoch, one-step run to resume from."""
    run = tmp_path_factory.mktemp('finished') / 'run'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the single_thread fixture, which module fixtures come before
    main(_argv(data_root, run, '--max-steps-per-epoch', '1'))
    torch.set_num_threads(threads)
    return run


def test_resume_with_other_model_arguments_says_what_differs(finished_run, capsys):
    own = ['--model-arg', 'correlation_dim=8', '--model-arg', 'perception_dim=16']
    code, line = _exit(['--resume', str(finished_run), '--epochs', '2', *own, '--model-arg', 'hierarchical=False'],
                       capsys)
    assert code == 2
    assert line == (f'{PROG}: error: --resume: {finished_run} was trained with other model arguments (checkpoint -> '
                    f'this run: hierarchical default -> False); a run continues only with its own: drop --model-arg '
                    f'to continue it, or start a new run with another --output')
    code, line = _exit(['--resume', str(finished_run), '--epochs', '2', '--model-arg', 'correlation_dim=8'], capsys)
    assert '(checkpoint -> this run: perception_dim 16 -> default)' in line


def test_resume_with_another_input_size_says_so(finished_run, capsys):
    code, line = _exit(['--resume', str(finished_run), '--epochs', '2', '--img-size', '96', '48'], capsys)
    assert code == 2
    assert line == (f'{PROG}: error: --resume: {finished_run} was trained on 64x32 images but this run asks for '
                    f'96x48; a run continues only at its own input size: drop --img-size to continue it, or start a '
                    f'new run with another --output')


def test_resume_of_a_relative_data_root_from_another_folder_names_it(finished_run, tmp_path, capsys, monkeypatch):
    checkpoint = torch.load(finished_run / 'checkpoint.pt', weights_only=True)
    config = json.loads(checkpoint['config'])
    config['data_root'] = 'data'  # as runs recorded it before the trainer made data paths absolute
    checkpoint['config'] = json.dumps(config)
    (tmp_path / 'old').mkdir()
    torch.save(checkpoint, tmp_path / 'old' / 'checkpoint.pt')
    monkeypatch.chdir(tmp_path)
    code, line = _exit(['--resume', str(tmp_path / 'old'), '--epochs', '2'], capsys)
    assert code == 2
    assert line == (f'{PROG}: error: --resume: {tmp_path / "old"} records --data-root data, a path relative to the '
                    f'folder the run was started in, and {Path.cwd()} has no data; resume from that folder, or pass '
                    f'--data-root with the path from here')


def test_resume_of_a_checkpoint_whose_weights_do_not_fit_lists_the_keys(finished_run, tmp_path, capsys):
    checkpoint = torch.load(finished_run / 'checkpoint.pt', weights_only=True)
    key = sorted(checkpoint['model'])[0]
    checkpoint['model'][key + '_renamed'] = checkpoint['model'].pop(key)
    torch.save(checkpoint, tmp_path / 'checkpoint.pt')
    code, line = _exit(['--resume', str(tmp_path), '--epochs', '2'], capsys)
    assert code == 2 and line.startswith(f'{PROG}: error: --resume: {tmp_path}: holds a checkpoint (')
    assert f'missing keys (1): {key};' in line and f'unexpected keys (1): {key}_renamed' in line


def test_resume_on_a_data_set_with_other_identities_says_so(finished_run, tmp_path, capsys):
    other = tmp_path / 'bigger'
    generate_synthetic_dataset(other, num_ids=16, num_cams=3, seed=1, images_per_id=4, height=64, width=32,
                               progress=False)
    code, line = _exit(['--resume', str(finished_run), '--epochs', '2', '--data-root', str(other)], capsys)
    assert code == 2 and line.startswith(f'{PROG}: error: --resume: {finished_run} was trained on 6 identities')
    assert f'market_layout at {other} has 8' in line


def test_resuming_a_finished_run_asks_for_more_epochs(finished_run, capsys):
    code, line = _exit(['--resume', str(finished_run)], capsys)
    assert code == 2 and 'has already completed 1 epoch; pass --epochs greater than 1' in line


# --- images -------------------------------------------------------------------------------------------------
@pytest.fixture
def own_copy(data_root, tmp_path):
    copy = tmp_path / 'data'
    shutil.copytree(data_root, copy)
    return copy


def test_truncated_and_empty_images_are_found_before_training(own_copy, tmp_path, capsys):
    truncated = sorted((own_copy / 'bounding_box_train').iterdir())[3]
    truncated.write_bytes(truncated.read_bytes()[:-200])  # cut inside the pixel data
    empty = sorted((own_copy / 'query').iterdir())[0]
    empty.write_bytes(b'')
    code, line = _exit(_argv(own_copy, tmp_path / 'out'), capsys)
    total = sum(1 for p in own_copy.rglob('*.jpg') if not p.name.startswith('-1_'))
    assert code == 2 and f'--data-root: 2 of {total} images cannot be used: ' in line
    assert f'{truncated} (image file is truncated' in line and f'{empty} (empty file (0 bytes))' in line
    assert not (tmp_path / 'out' / 'checkpoint.pt').exists()


def test_a_decompression_bomb_is_named_before_training(data_root, tmp_path, capsys, monkeypatch):
    # PIL refuses images above twice MAX_IMAGE_PIXELS; lowering it turns the 64x32 images into "bombs".
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    code, line = _exit(_argv(data_root, tmp_path / 'out'), capsys)
    first = sorted(p for p in data_root.rglob('*.jpg') if not p.name.startswith('-1_'))[0]
    assert code == 2 and f'{first} (too large to decode safely (Image size (2048 pixels) exceeds limit' in line


def test_the_command_shows_a_data_warning_as_one_line_without_python_source(own_copy, tmp_path):
    image = next((own_copy / 'query').iterdir())
    (own_copy / 'query' / 'later').mkdir()
    shutil.copy(image, own_copy / 'query' / 'later' / image.name)  # not read: one warning names the subfolder
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-m', 'hbfp_timm.train', *_argv(own_copy, tmp_path / 'out', '--batch-size',
                                                                            '16')],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr
    assert lines[0] == (f'warning: {own_copy / "query"}: skipped 1 image in subfolders (later/); a split folder of '
                        'the Market-1501 layout holds its images directly: move them up to read them')
    assert lines[1].startswith(f'{PROG}: error: --batch-size: ')


def test_a_gallery_without_the_query_identities_is_refused_before_training(own_copy, tmp_path, capsys):
    query_pids = {path.name.split('_')[0] for path in (own_copy / 'query').iterdir()}
    for path in (own_copy / 'bounding_box_test').iterdir():
        if path.name.split('_')[0] in query_pids:
            path.unlink()  # only distractors (and junk) are left: no query can be scored
    code, line = _exit(_argv(own_copy, tmp_path / 'out'), capsys)
    assert code == 2 and line.startswith(f'{PROG}: error: --data-root: market_layout at {own_copy}: none of the ')
    assert 'queries has a gallery image of its identity from another camera' in line
    assert not (tmp_path / 'out').exists()


def test_queries_that_the_protocol_will_skip_are_counted_before_training():
    gallery = [('g1', 1, 0), ('g2', 1, 1), ('g3', 2, 0), ('g4', 9, 0)]
    query = [('q1', 1, 0), ('q2', 2, 0), ('q3', 2, 1), ('q4', 3, 0)]  # q2: same camera only; q4: not in the gallery
    dataset = ReIDDataset('mine', [], query, gallery)
    note = prepare.check_queries(dataset, 'data_root', 'mine')
    assert note.startswith('2 of the 4 queries of mine have no gallery image of their identity from another camera')
    assert prepare.check_queries(ReIDDataset('mine', [], query[:1] + query[2:3], gallery), 'data_root', 'x') is None
    with pytest.raises(TrainSetupError, match=r'^eval_data_roots: mine: none of the 2 queries has '):
        prepare.check_queries(ReIDDataset('mine', [], [query[1], query[3]], gallery), 'eval_data_roots', 'mine')


def _damage_pixel_data(image: Path) -> None:
    """PNG data under the .jpg name with a damaged middle: header and end marker intact, decoding fails."""
    Image.open(image).save(image, format='PNG')
    data = bytearray(image.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    image.write_bytes(bytes(data))


def test_damaged_pixel_data_is_found_by_check_images_or_named_when_training_reads_it(own_copy, tmp_path, capsys):
    by_identity = {}
    for image in sorted((own_copy / 'bounding_box_train').iterdir()):
        by_identity.setdefault(image.name[:4], image)
    for image in by_identity.values():  # one per identity: the first batch meets one
        _damage_pixel_data(image)
    damaged = sorted(str(p) for p in by_identity.values())

    code, line = _exit(_argv(own_copy, tmp_path / 'checked', '--check-images'), capsys)
    assert code == 2 and f'{len(damaged)} of ' in line and damaged[0] in line and 'every image was decoded' in line

    # Without the full check the cheap one lets them through; the worker that reads one names it.
    code, line = _exit(_argv(own_copy, tmp_path / 'unchecked', '--workers', '2'), capsys)
    assert code == 1 and line.startswith(f'{PROG}: error: cannot read image ')
    assert any(path in line for path in damaged) and line.endswith('--check-images finds every unreadable image '
                                                                   'before training')


# --- during training ----------------------------------------------------------------------------------------
class _NanLossAtStep2(HBFPLoss):
    calls = 0

    def forward(self, outputs, targets):
        loss, parts = super().forward(outputs, targets)
        type(self).calls += 1
        return (loss * float('nan'), parts) if type(self).calls == 2 else (loss, parts)


class _NanGradients(HBFPLoss):
    """A finite loss whose gradient is NaN (0 * d sqrt(x)/dx at x = 0), as exploding gradients end up."""

    def forward(self, outputs, targets):
        loss, parts = super().forward(outputs, targets)
        at_zero = 0 * outputs.pooled[0].sum()
        return loss + 0 * torch.sqrt(at_zero), parts


def test_a_nan_loss_stops_training_with_one_line_and_writes_nothing(data_root, tmp_path, capsys, monkeypatch):
    _NanLossAtStep2.calls = 0
    monkeypatch.setattr(loop, 'HBFPLoss', _NanLossAtStep2)
    code, line = _exit(_argv(data_root, tmp_path / 'out', '--max-steps-per-epoch', '3'), capsys)
    assert code == 1
    assert line == f'{PROG}: error: training diverged at epoch 1 step 2 (loss nan); lower --lr (now 0.0002)'
    assert not (tmp_path / 'out').exists()  # nothing was written in the folder the run created: removed


def test_weights_that_become_nan_stop_training_before_anything_is_written(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, 'HBFPLoss', _NanGradients)
    code, line = _exit(_argv(data_root, tmp_path / 'out', '--max-steps-per-epoch', '1'), capsys)
    assert code == 1 and line.startswith(f'{PROG}: error: training diverged at epoch 1 step 1 (the weights became '
                                         f'NaN or infinite; mean loss of the epoch ')
    assert line.endswith('); lower --lr') and not (tmp_path / 'out').exists()


def _interrupted_save(exc_or_signal):
    """torch.save that writes part of the file, then is interrupted (by a signal) or fails."""
    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(bytes(1000))
        if isinstance(exc_or_signal, BaseException):
            raise exc_or_signal
        signal.raise_signal(exc_or_signal)
    return save


def test_sigterm_during_a_checkpoint_write_is_one_line_exit_143_and_no_temporary(data_root, tmp_path, capsys,
                                                                                  monkeypatch):
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(torch, 'save', _interrupted_save(signal.SIGTERM))
    code, line = _exit(_argv(data_root, tmp_path / 'out', '--max-steps-per-epoch', '1', '--epochs', '2'), capsys)
    assert code == 143
    assert line == f'{PROG}: interrupted (SIGTERM); no checkpoint was written yet in {tmp_path / "out"}'
    assert _leftovers(tmp_path / 'out') == [] and signal.getsignal(signal.SIGTERM) is handler


class _LostInterrupt:
    """Raises Ctrl-C where Python can only report and drop the KeyboardInterrupt (as in a fork hook)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_that_python_dropped_is_delivered_again(data_root, tmp_path, capsys, monkeypatch, python_sigint):
    real_write_json = loop.write_json

    def write_json(path, data):
        _LostInterrupt()  # collected at once: the interrupt is raised in __del__ and dropped
        monkeypatch.setattr(loop, 'write_json', real_write_json)
        real_write_json(path, data)

    monkeypatch.setattr(loop, 'write_json', write_json)
    start = time.perf_counter()
    code, line = _exit(_argv(data_root, tmp_path / 'out', '--max-steps-per-epoch', '1', '--epochs', '1000',
                             '--eval-every', '1000', '--checkpoint-every', '1000'), capsys)  # _exit: no other line
    assert code == 130 and line == f'{PROG}: interrupted (Ctrl-C); no checkpoint was written yet in {tmp_path / "out"}'
    assert time.perf_counter() - start < 120


def test_a_full_disk_during_a_checkpoint_write_says_no_space_left_naming_the_file(data_root, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(torch, 'save', _interrupted_save(RuntimeError(
        '[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write '
        'failed')))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(files.shutil, 'disk_usage', lambda path: real_usage(path)._replace(free=0))
    code, line = _exit(_argv(data_root, tmp_path / 'out', '--max-steps-per-epoch', '1', '--epochs', '2'), capsys)
    assert code == 1 and line.startswith(f'{PROG}: error: {tmp_path / "out" / "checkpoint.pt"}: no space left on '
                                         f'device (0 B free)')
    assert _leftovers(tmp_path / 'out') == []


@pytest.mark.parametrize('signum, code, name', [(signal.SIGINT, 130, 'Ctrl-C'), (signal.SIGTERM, 143, 'SIGTERM')])
def test_ctrl_c_or_sigterm_to_a_running_job_is_one_line_and_no_temporary(data_root, tmp_path, signum, code, name):
    """A terminal's Ctrl-C or a scheduler's SIGTERM: the signal reaches the whole process group, data-loading
    workers included, as the next epoch starts them (the hardest moment: Python can lose a signal during fork)."""
    output = tmp_path / 'out'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    process = subprocess.Popen(
        [sys.executable, '-m', 'hbfp_timm.train', *_argv(data_root, output, '--epochs', '1000', '--eval-every',
                                                         '1000', '--max-steps-per-epoch', '1', '--workers', '2')],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_sigint_in_child)
    try:
        deadline = time.monotonic() + 240
        while not (output / 'results.json').exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read()
        os.killpg(process.pid, signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == code and 'Traceback' not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f'{PROG}: interrupted ({name}); {output / "checkpoint.pt"} (epoch ')
    assert line.endswith(f') is intact; continue with: {PROG} --resume {output}')
    assert _leftovers(output) == []


# --- setup on the machine -----------------------------------------------------------------------------------
def test_a_workers_thread_that_loses_the_main_process_is_not_a_traceback_but_other_errors_are():
    """Seen once in the job above: a worker's resource-sharer thread printed "ConnectionResetError: Connection
    reset by peer" after the main process had stopped on Ctrl-C. Workers leave such a lost connection unprinted."""
    code = (
        "import threading\n"
        "from hbfp_timm.data.loader import ignore_interruptions\n"
        "ignore_interruptions(0)\n"
        "def fail(error):\n"
        "    raise error\n"
        "for error in (ConnectionResetError(104, 'Connection reset by peer'), EOFError(), ValueError('real')):\n"
        "    thread = threading.Thread(target=fail, args=(error,))\n"
        "    thread.start()\n"
        "    thread.join()\n"
        # multiprocessing's resource sharer catches its thread's errors and reports them through sys.excepthook
        "import sys\n"
        "for error in (ConnectionResetError(104, 'Connection reset by peer'), EOFError(), KeyError('real too')):\n"
        "    sys.excepthook(type(error), error, None)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert 'ValueError: real' in done.stderr and "KeyError: 'real too'" in done.stderr
    assert 'ConnectionResetError' not in done.stderr and 'EOFError' not in done.stderr


def test_offline_pretrained_backbone_fails_at_once_with_the_offline_flags(make_config, tmp_path, monkeypatch):
    """No network and no cached ImageNet weights: the ways out within seconds, not after ~50 s of retries."""
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    monkeypatch.setattr(pretrained, 'hub_reachable', lambda timeout: False)
    start = time.perf_counter()
    with pytest.raises(TrainSetupError, match='offline, pass --backbone-weights FILE.*or --no-pretrained-backbone'):
        train(make_config(tmp_path / 'out', pretrained_backbone=True), command=['test'])
    assert time.perf_counter() - start < 20 and huggingface_hub.constants.HF_HUB_OFFLINE is False
