"""Tiny untrained HBFP models and what users point the tools at (a trainer run directory, images, embeddings
files), for fast tests."""
import contextlib
import json
import resource
import signal
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import hbfp_timm  # noqa: F401  (registers the hbfp_* models)

TINY_ARGS = dict(correlation_dim=8, perception_dim=16)
TINY_SIZE = (64, 32)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """hbfp_resnet18 with small BFP layers and a 64x32 input size in its pretrained_cfg, in eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model('hbfp_resnet18', pretrained_cfg_overlay=dict(input_size=(3, *TINY_SIZE)), **TINY_ARGS)
    return model.eval()


def write_run(directory: Path, model: torch.nn.Module) -> Path:
    """A trainer-style run directory (results.json + model.safetensors) holding `model`."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(directory / 'model.safetensors'))
    results = dict(model='hbfp_resnet18', model_args=TINY_ARGS, dataset='synthetic', img_size=list(TINY_SIZE),
                   metrics=None)
    (directory / 'results.json').write_text(json.dumps(results))
    return directory


def write_images(folder: Path, names, size=(24, 48), seed: int = 0):
    """Small RGB images with random pixels (so that their descriptors differ), one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for name in names:
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.numpy()).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture
def single_thread():
    """One intra-op thread: on a busy 2-core CI machine, OpenMP threads waiting on each other make the tiny
    forward passes of these tests many times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter and BatchNorm statistic away from its initial value (the zero-initialised BFP
    projections included), so that a model that did not load these weights gives different outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = 0.05 * torch.randn(tensor.shape, generator=generator)
                tensor.copy_(tensor.abs() + 0.5 + noise.abs() if name.endswith('running_var') else tensor + noise)
    return model.eval()


# How the shipped model's descriptors are made, as embed writes it in an embeddings file's metadata.
SHIPPED_HOW = {'model': 'hbfp_mobilenetv2_100.cuhk03', 'img_size': '128x64', 'flip': 'False'}


def write_embeddings(folder: Path, query_how: dict, gallery_how: dict, dim: int = 4):
    """A query and a gallery embeddings file (two images each) whose metadata say how they were made."""
    from hbfp_timm.inference.embeddings import Embeddings, save_embeddings
    files = []
    for name, how in (('q', query_how), ('g', gallery_how)):
        files.append(str(save_embeddings(folder / f'{name}.safetensors', Embeddings(
            torch.arange(2 * dim, dtype=torch.float32).reshape(2, dim), [f'{name}0.png', f'{name}1.png'],
            metadata=how))))
    return files


@contextlib.contextmanager
def file_size_limit(max_bytes: int):
    """Within it, no file of this process grows past `max_bytes` (a disk that fills up in the middle of a write):
    such a write writes what fits, then fails with EFBIG (File too large), as the kernel does it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
