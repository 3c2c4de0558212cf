"""Fixtures of the trainer tests (tests/test_train*.py): a tiny synthetic data set and a configuration factory."""
import signal

import pytest
import torch

from hbfp_timm.data.synthetic import generate_synthetic_dataset
from hbfp_timm.train import TrainConfig

TRAIN_IMG_SIZE = (64, 32)
# A 3.6M-parameter HBFP-Net: its checkpoints (43 MB) and steps keep a run to seconds on a busy 2-core machine.
SMALL_MODEL = 'hbfp_mobilenetv2_100'
SMALL_MODEL_ARGS = {'correlation_dim': 8, 'perception_dim': 16}
# The devices of this machine: device paths are tested on each, so a GPU machine runs the CUDA ones too.
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.fixture
def single_thread():
    """One intra-op thread: on a busy 2-core CI machine, OpenMP threads waiting on each other make tiny training
    steps many times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """12 identities (6 for training, 8 images each) at 64x32, with distractors and junk in the gallery."""
    root = tmp_path_factory.mktemp('synthetic')
    generate_synthetic_dataset(root, num_ids=12, num_cams=3, seed=0, images_per_id=8, height=64, width=32,
                               progress=False)
    return root


@pytest.fixture
def make_config(data_root):
    """``make_config(output, **overrides)``: a CPU run of the small model on ``data_root``, PK batches 4 x 2."""
    def make(output, **overrides) -> TrainConfig:
        settings = dict(dataset='market_layout', data_root=str(data_root), model=SMALL_MODEL,
                        model_args=dict(SMALL_MODEL_ARGS), img_size=TRAIN_IMG_SIZE, batch_size=8, num_instances=2,
                        epochs=2, pretrained_backbone=False, workers=0, eval_every=1, test_batch_size=32,
                        output=str(output), seed=0, device='cpu')
        settings.update(overrides)
        return TrainConfig(**settings)
    return make


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test, whatever the suite was started with: a background job of a
    non-interactive shell (and many CI runners) starts with SIGINT ignored, where a Ctrl-C test could never fire."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def default_sigint_in_child() -> None:
    """``preexec_fn`` of a child that must react to Ctrl-C: ignored signals are inherited across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
