"""Run settings of the benchmarks: the shared flags, the embedded default's preset, how flags left unset are
filled (the paper's recipe on real data, :data:`SYNTHETIC_PRESET` on synthetic data), and seeding.
"""
import argparse
import random
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import timm
import torch

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)

from .cli import BenchmarkError
from .datasets import DATA_ROOT_ENV

__all__ = ['Settings', 'DEFAULT_MODEL', 'SYNTHETIC_PRESET', 'add_common_arguments', 'resolve_settings', 'seed_everything']

DEFAULT_MODEL = 'hbfp_resnet50'

# The embedded default: sized so that `python -m benchmarks.market` finishes in a few minutes on a 2-core CPU
# and the trained model is clearly better than the untrained one. Training starts from random weights (no
# download), so it departs from the paper's recipe where a short from-scratch run needs it: a 5x larger
# constant learning rate and no random erasing or cutout (measured: with them, 12 epochs did not beat the
# untrained model; 40 epochs as below take rank-1 from 28.1 to 54.4 and mAP from 14.2 to 36.5 in under 2 minutes,
# see README.md). Images are generated at 128x64 and fed to the network at 64x32. The resumable checkpoint
# (weights + Adam moments) is written once, after the last epoch, rather than after each of them.
SYNTHETIC_PRESET: Dict[str, Any] = dict(
    model='hbfp_resnet18', img_size=(64, 32), epochs=40, batch_size=32, num_instances=4,
    num_ids=64, num_cams=4, images_per_id=12, image_size=(128, 64), workers=0,
    train_overrides=dict(lr=1e-3, random_erasing_prob=0.0, cutout_prob=0.0, checkpoint_every=1000),
)


@dataclass
class Settings:
    """Everything a benchmark run needs besides the data.

    Attributes:
        model: timm model name (an ``hbfp_*`` model).
        model_args: Extra HBFPNet constructor kwargs (ablations).
        img_size: (height, width) of the network input.
        epochs: Training epochs; None keeps the trainer's default (the paper's 500).
        batch_size: P x K of the training batches.
        num_instances: K, images per identity in a training batch.
        device: torch device string.
        workers: Data loading worker processes.
        seed: Random seed.
        pretrained_backbone: Initialise the backbone from ImageNet when training.
        backbone_weights: Local ImageNet weights file of the backbone.
        max_steps_per_epoch: Cap on training steps per epoch (None: full epochs).
        train_overrides: Further ``TrainConfig`` fields (loss and augmentation settings of the ablations).
        rerank: Also score k-reciprocal re-ranked distances.
        synthetic: The run uses the synthetic data set.
        synthetic_data: Generator parameters of the synthetic set (``num_ids``, ``num_cams``, ``images_per_id``,
            ``image_size``); empty on real data.
    """
    model: str
    model_args: Dict[str, Any]
    img_size: Tuple[int, int]
    epochs: Optional[int]
    batch_size: int
    num_instances: int
    device: str
    workers: int
    seed: int
    pretrained_backbone: bool
    backbone_weights: Optional[str]
    max_steps_per_epoch: Optional[int] = None
    train_overrides: Dict[str, Any] = field(default_factory=dict)
    rerank: bool = False
    synthetic: bool = False
    synthetic_data: Dict[str, Any] = field(default_factory=dict)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every benchmark (data, model, schedule, device, output).

    Args:
        parser: The parser to extend.
    """
    parser.add_argument('--data-root', default=None,
                        help=f'folder holding the data set; default: ${DATA_ROOT_ENV}, then ~/data, else the '
                             f'synthetic embedded default')
    parser.add_argument('--model', default=None,
                        help=f'timm model name (default {DEFAULT_MODEL}; {SYNTHETIC_PRESET["model"]} on synthetic data)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help="input height and width (default: the model's pretrained_cfg, 384 128; "
                             f"{' '.join(map(str, SYNTHETIC_PRESET['img_size']))} on synthetic data)")
    parser.add_argument('--epochs', type=int, default=None,
                        help=f"training epochs (default: the trainer's, the paper's 500; "
                             f"{SYNTHETIC_PRESET['epochs']} on synthetic data)")
    parser.add_argument('--batch-size', type=int, default=None,
                        help=f"training batch P x K (default 64; {SYNTHETIC_PRESET['batch_size']} on synthetic data)")
    parser.add_argument('--num-instances', type=int, default=None, help='K, images per identity in a batch (default 4)')
    parser.add_argument('--max-steps-per-epoch', type=int, default=None, help='cap training steps per epoch (smoke runs)')
    parser.add_argument('--device', default=None, help='torch device (default cuda if available, else cpu)')
    parser.add_argument('--workers', type=int, default=None, help='data loading workers (default 4; 0 on synthetic data)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--backbone-weights', default=None,
                        help='local ImageNet weights file of the backbone, for training on an offline machine')
    parser.add_argument('--rerank', action='store_true',
                        help='also report k-reciprocal re-ranked numbers, in a separate table')
    parser.add_argument('--output', default=None, help='output folder (default runs/<benchmark>)')


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic algorithms (warning where it has none).

    Args:
        seed: The seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_settings(args: argparse.Namespace, synthetic: bool) -> Settings:
    """Fill the flags left unset with the paper's defaults, or the embedded default's on synthetic data.

    Args:
        args: Parsed flags of :func:`add_common_arguments`.
        synthetic: The run uses the synthetic data set.

    Returns:
        The settings.
    """
    preset = SYNTHETIC_PRESET if synthetic else {}
    model = args.model or preset.get('model', DEFAULT_MODEL)
    if not timm.is_model(model):
        raise BenchmarkError(f'--model: unknown timm model {model!r}; HBFP models: '
                             f'{", ".join(timm.list_models("hbfp_*"))}')
    if args.img_size is not None:
        img_size = tuple(args.img_size)
    elif 'img_size' in preset:
        img_size = preset['img_size']
    else:
        img_size = tuple(timm.get_pretrained_cfg(model).input_size[1:])
    if min(img_size) < 16:
        raise BenchmarkError(f'--img-size: expected H W of at least 16 pixels each, got {img_size}')
    batch_size = args.batch_size or preset.get('batch_size', 64)
    num_instances = args.num_instances or preset.get('num_instances', 4)
    if batch_size % num_instances:
        raise BenchmarkError(f'--batch-size {batch_size}: expected a multiple of --num-instances {num_instances} (P x K)')
    return Settings(
        model=model, model_args={}, img_size=img_size,
        epochs=args.epochs if args.epochs is not None else preset.get('epochs'),
        batch_size=batch_size, num_instances=num_instances,
        device=args.device or ('cuda' if torch.cuda.is_available() else 'cpu'),
        workers=args.workers if args.workers is not None else preset.get('workers', 4),
        seed=args.seed,
        # No download on synthetic data (CPU demo, maybe offline); the paper starts from ImageNet.
        pretrained_backbone=not synthetic or args.backbone_weights is not None,
        backbone_weights=args.backbone_weights,
        max_steps_per_epoch=args.max_steps_per_epoch,
        train_overrides=dict(preset.get('train_overrides', {})),
        rerank=args.rerank, synthetic=synthetic,
        synthetic_data={key: preset[key] for key in ('num_ids', 'num_cams', 'images_per_id', 'image_size')
                        if key in preset},
    )
