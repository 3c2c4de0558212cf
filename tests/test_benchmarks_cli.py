"""The benchmark commands as a user meets them when something goes wrong: what a failed run leaves behind, the
flags its errors name, and how its warnings are printed."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import market
from benchmarks.settings import FLAGS
from hbfp_timm.commands import as_flags
from hbfp_timm.data import build_dataset
from hbfp_timm.data.synthetic import generate_synthetic_dataset

NUM_INSTANCES = 4
ROOT = Path(__file__).resolve().parents[1]
# `python -m benchmarks.<name>` from any folder: the checkout first on the path.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))


def _image_in_a_subfolder(split: Path) -> None:
    """Copy an image of ``split`` into its subfolder ``later/``, which the readers warn about and do not read."""
    image = next(path for path in sorted(split.iterdir()) if path.is_file())
    (split / 'later').mkdir()
    shutil.copy(image, split / 'later' / image.name)


def _failing_train_flags(root: Path) -> list:
    """``--train`` flags for the Market-layout set ``root`` whose PK batches ask for one identity more than it trains
    on: the trainer refuses them before the first step."""
    identities = build_dataset('market_layout', root).num_train_pids
    return ['--data-root', str(root), '--train', '--model', 'hbfp_resnet18', '--img-size', '64', '32',
            '--epochs', '1', '--batch-size', str((identities + 1) * NUM_INSTANCES),
            '--num-instances', str(NUM_INSTANCES), '--no-pretrained-backbone', '--device', 'cpu', '--workers', '0']


@pytest.fixture(scope='module')
def few_identities(tmp_path_factory):
    """A small Market-layout set and :func:`_failing_train_flags` for it."""
    root = tmp_path_factory.mktemp('few_identities')
    generate_synthetic_dataset(root, num_ids=4, num_cams=2, images_per_id=4, height=64, width=32, progress=False)
    return root, _failing_train_flags(root)


def test_a_failed_training_run_leaves_no_empty_train_folder_but_keeps_one_it_found(few_identities, tmp_path, capsys):
    _, flags = few_identities
    out = tmp_path / 'new' / 'out'
    assert market.main(flags + ['--output', str(out)]) == 2
    assert capsys.readouterr().err.startswith('error: --train: ')
    assert not (tmp_path / 'new').exists()  # nor the --output folder (and its parents) it created and left empty
    out.mkdir(parents=True)
    found = out / 'train_market_layout'  # the folder a run on a Market-layout set of one's own trains in
    found.mkdir()
    assert market.main(flags + ['--output', str(out)]) == 2
    assert capsys.readouterr().err.startswith('error: --train: ')
    assert found.is_dir() and [path.name for path in out.glob('train_*')] == [found.name]


def test_a_trainer_error_names_the_flags_the_user_typed_not_the_python_fields(few_identities, tmp_path, capsys):
    _, flags = few_identities
    assert market.main(flags + ['--output', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: --train: --batch-size: '), err
    assert '--num-instances' in err and 'batch_size' not in err and 'num_instances' not in err


def test_training_flags_refused_when_only_evaluating_are_named_as_typed(few_identities, tmp_path, capsys):
    root, _ = few_identities
    assert market.main(['--data-root', str(root), '--pretrained', '--eval-data-root', str(root),
                        '--no-pretrained-backbone', '--output', str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err == ('error: --no-pretrained-backbone, --eval-data-root: training flags, but this '
                                       'run only evaluates (--pretrained); add --train to train\n')


@pytest.mark.parametrize('message, expected', [
    ('epochs, lr: expected at least one', '--epochs, --lr: expected at least one'),
    ('model_args: cannot build the model (no margin)', '--model-arg: cannot build the model (no margin)'),
    ('eval_data_roots: /data/batch_size/query and batch_size.txt: missing', '--eval-data-root: /data/batch_size/query '
     'and batch_size.txt: missing'),
    ('triplet_weight, id_weight: expected one above 0', 'triplet_weight, id_weight: expected one above 0'),
    # The model's constructor arguments are no flags, even where a flag has the same name.
    ("model_args: hbfp_resnet18 takes no argument 'x'; HBFPNet takes backbone, drop_rate, pretrained_backbone",
     "--model-arg: hbfp_resnet18 takes no argument 'x'; HBFPNet takes backbone, drop_rate, pretrained_backbone"),
])
def test_trainer_fields_become_flags_but_words_paths_and_fields_without_a_flag_stay(message, expected):
    assert as_flags(message, FLAGS) == expected


def test_every_table_command_prints_a_warning_as_one_line_without_python_source(tmp_path):
    """A training split with an image in a subfolder (a warning) and a file name no reader parses (an error, before
    any model is built): each command warns in one line, then fails in one line."""
    generate_synthetic_dataset(tmp_path / 'data', num_ids=4, num_cams=2, images_per_id=4, height=64, width=32,
                               progress=False)
    train = tmp_path / 'data' / 'bounding_box_train'
    _image_in_a_subfolder(train)
    Image.new('RGB', (32, 64)).save(train / 'person7.jpg')
    commands = {name: subprocess.Popen(
        [sys.executable, '-m', f'benchmarks.{name}', '--data-root', str(tmp_path / 'data'), '--device', 'cpu',
         '--output', str(tmp_path / name)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ('duke', 'cuhk03', 'table1', 'ablation')}
    for name, process in commands.items():
        _, err = process.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert process.returncode == 2 and 'UserWarning' not in err and len(lines) == 2, (name, err)
        assert lines[0].startswith(f'warning: {train}: skipped 1 image in subfolders (later/);'), (name, err)
        assert lines[1].startswith(f'error: --data-root {tmp_path / "data"}: cannot parse '), (name, err)


def test_a_data_warning_is_printed_once_though_the_trainer_reads_the_data_again(few_identities, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(few_identities[0], data)
    flags = _failing_train_flags(data)
    _image_in_a_subfolder(data / 'query')
    done = subprocess.run([sys.executable, '-m', 'benchmarks.market', *flags,
                           '--output', str(tmp_path / 'out')], env=ENV, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr
    assert lines[0].startswith(f'warning: {data / "query"}: skipped 1 image in subfolders (later/);'), done.stderr
    assert lines[1].startswith('error: --train: --batch-size: '), done.stderr
