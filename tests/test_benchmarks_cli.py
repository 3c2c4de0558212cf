"""The benchmark commands as a user meets them when something goes wrong: what a failed run leaves behind, the
flags its errors name, and how its warnings are printed."""
import pytest

from benchmarks import market
from hbfp_timm.data import build_dataset
from hbfp_timm.data.synthetic import generate_synthetic_dataset

NUM_INSTANCES = 4


@pytest.fixture(scope='module')
def few_identities(tmp_path_factory):
    """A Market-layout set and ``--train`` flags whose PK batches ask for one identity more than it trains on:
    the trainer refuses them before the first step."""
    root = tmp_path_factory.mktemp('few_identities')
    generate_synthetic_dataset(root, num_ids=4, num_cams=2, images_per_id=4, height=64, width=32, progress=False)
    identities = build_dataset('market_layout', root).num_train_pids
    flags = ['--data-root', str(root), '--train', '--model', 'hbfp_resnet18', '--img-size', '64', '32',
             '--epochs', '1', '--batch-size', str((identities + 1) * NUM_INSTANCES),
             '--num-instances', str(NUM_INSTANCES), '--no-pretrained-backbone', '--device', 'cpu', '--workers', '0']
    return root, flags


def test_a_failed_training_run_leaves_no_empty_train_folder_but_keeps_one_it_found(few_identities, tmp_path, capsys):
    _, flags = few_identities
    out = tmp_path / 'out'
    assert market.main(flags + ['--output', str(out)]) == 2
    assert capsys.readouterr().err.startswith('error: --train: ')
    assert not list(out.glob('train_*'))
    found = out / 'train_market_layout'  # the folder a run on a Market-layout set of one's own trains in
    found.mkdir()
    assert market.main(flags + ['--output', str(out)]) == 2
    assert capsys.readouterr().err.startswith('error: --train: ')
    assert found.is_dir() and [path.name for path in out.glob('train_*')] == [found.name]
