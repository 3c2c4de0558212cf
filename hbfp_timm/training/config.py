"""Training configuration: :class:`TrainConfig` (the paper's recipe as defaults) and its validation."""
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import timm
from timm.models import split_model_name_tag

from ..data import DATASET_NAMES

__all__ = ['TrainConfig', 'TrainSetupError', 'validate_config', 'field_problem', 'FIELD_RULES', 'AMP_DTYPES',
           'DEVICE_DEFAULTS']

AMP_DTYPES = ('auto', 'bfloat16', 'float16')
# Speed options whose best value depends on the device type; a TrainConfig field left at None takes the value
# here. They change speed, not results. On CPU channels-last depends on the backbone (`python -m benchmarks.speed
# --sections memory_format`, one thread: a training step 1.53x faster for hbfp_mobilenetv2_100 at 128x64, 1.04x for
# hbfp_resnet50 at 384x128, 0.87x, slower, for the embedded default's hbfp_resnet18 at 64x32), so it stays off and
# `--channels-last` turns it on; torch.compile does not pay off for short CPU runs. The CUDA values stay off until
# benchmarks/speed.py has been run on a GPU.
DEVICE_DEFAULTS: Dict[str, Dict[str, bool]] = {
    'cpu': {'channels_last': False, 'compile': False},
    'cuda': {'channels_last': False, 'compile': False},
}


class TrainSetupError(ValueError):
    """A configuration, data set, checkpoint or weights problem found before training starts."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the paper's recipe (4.2).

    Attributes:
        dataset: Data set name (``hbfp_timm.data.DATASET_NAMES``; ``market_layout`` for any Market-style folder).
        data_root: Folder holding the data set (the command line makes it, ``eval_data_roots`` and
            ``backbone_weights`` absolute, so that a run resumes from any working folder).
        model: timm name of the HBFP model.
        model_args: Extra ``HBFPNet`` constructor kwargs (Table 2 / Table 3 ablations).
        img_size: Network input (height, width).
        epochs: Training epochs.
        lr_constant_epochs: Epochs before the exponential decay starts. Each epoch runs at the schedule's value
            at its start, so epoch ``lr_constant_epochs + 1`` is still at the base rate
            (``ConstantThenExponentialDecay``).
        lr_final_factor: **(choice)** Learning-rate factor the decay reaches at the end of the last epoch. The
            paper says "decays exponentially to 0", which an exponential never reaches; 1e-3 of the base rate
            stands for 0.
        batch_size: P x K images per batch (per process under torchrun).
        num_instances: K, images per identity in a batch.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        margin: Triplet margin.
        label_smoothing: Label-smoothing epsilon of the ID loss.
        triplet_weight: Weight of the triplet loss.
        id_weight: Weight of the ID loss.
        flip_prob: Probability of a horizontal flip in training.
        random_erasing_prob: Probability of random erasing in training.
        cutout_prob: Probability of cutout in training.
        pretrained_backbone: Start the backbone from timm's ImageNet weights (downloaded from the Hub).
        backbone_weights: Local ImageNet weights file for the backbone (offline machines).
        device: ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:1'``...
        amp: Mixed precision (autocast); applies on CUDA only.
        amp_dtype: ``'bfloat16'``, ``'float16'`` (with a GradScaler, which bfloat16 does not need) or ``'auto'``:
            bfloat16 where the GPU supports it, else float16.
        channels_last: Channels-last memory format for the model and its inputs; None takes the device's
            default (``DEVICE_DEFAULTS``).
        compile: ``torch.compile`` the training forward pass; None takes the device's default.
        check_images: Decode every image before training (by default only cheap header and size checks run).
        workers: Data loading processes.
        seed: Seed of model initialisation, PK sampling and augmentation.
        eval_every: Evaluate on query/gallery every this many epochs (and always after the last).
        checkpoint_every: Write the resumable checkpoint every this many epochs (and always after the last);
            it holds the model and Adam's moments (about 3x the weights), so short CPU runs write it rarely.
        flip_test: Average test descriptors with those of mirrored images (the paper does not).
        metric: Distance between descriptors at test time, ``'euclidean'`` or ``'cosine'``.
        test_batch_size: Batch size of feature extraction.
        output: Output folder; default the folder of ``resume``, else ``runs/<model>_<dataset>``. An earlier run
            there is replaced (its files, ``thresholds.json`` included, are removed once the checks have passed)
            unless this run continues its checkpoint; the command line refuses such a folder without
            ``--overwrite``.
        resume: ``checkpoint.pt`` (or the folder holding it) to continue from.
        max_steps_per_epoch: Cap on training steps per epoch (smoke runs); None trains on full epochs.
        eval_data_roots: Other data sets scored at every evaluation, beside the in-domain one (cross-domain).
        eval_dataset: Reader of ``eval_data_roots`` (``market_layout``: any Market-style folder).
    """
    dataset: str = 'market1501'
    data_root: str = 'data'
    model: str = 'hbfp_resnet50'
    model_args: Dict[str, Any] = field(default_factory=dict)
    img_size: Tuple[int, int] = (384, 128)
    epochs: int = 500
    lr_constant_epochs: int = 200
    lr_final_factor: float = 1e-3
    batch_size: int = 64
    num_instances: int = 4
    lr: float = 2e-4
    weight_decay: float = 5e-4
    margin: float = 0.3
    label_smoothing: float = 0.3
    triplet_weight: float = 1.0
    id_weight: float = 1.0
    flip_prob: float = 0.5
    random_erasing_prob: float = 0.5
    cutout_prob: float = 0.5
    pretrained_backbone: bool = True
    backbone_weights: Optional[str] = None
    device: str = 'auto'
    amp: bool = True
    amp_dtype: str = 'auto'
    channels_last: Optional[bool] = None
    compile: Optional[bool] = None
    check_images: bool = False
    workers: int = min(4, os.cpu_count() or 1)
    seed: int = 0
    eval_every: int = 50
    checkpoint_every: int = 1
    flip_test: bool = False
    metric: str = 'euclidean'
    test_batch_size: int = 128
    output: Optional[str] = None
    resume: Optional[str] = None
    max_steps_per_epoch: Optional[int] = None
    eval_data_roots: Tuple[str, ...] = ()
    eval_dataset: str = 'market_layout'


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# What each numeric field must be: (rule, what is expected). validate_config applies them to a whole TrainConfig,
# and the command lines (the trainer's and the benchmarks') to each flag as it is parsed (`field_problem`).
FIELD_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    'epochs': (lambda v: v >= 1, 'expected >= 1'),
    'lr_constant_epochs': (lambda v: v >= 0, 'expected >= 0'),
    'lr_final_factor': (lambda v: _finite(v) and 0 < v <= 1, 'expected a value in (0, 1]'),
    'num_instances': (lambda v: v >= 2, 'expected >= 2 (batch-hard triplets need positives)'),
    # Adam steps are about lr in size whatever the gradient: above 1 the weights are lost in a few steps.
    'lr': (lambda v: _finite(v) and 0 < v <= 1, 'expected a value in (0, 1] (the paper uses 2e-4)'),
    'weight_decay': (lambda v: _finite(v) and v >= 0, 'expected a finite value >= 0'),
    'margin': (lambda v: _finite(v) and v >= 0, 'expected a finite value >= 0'),
    'label_smoothing': (lambda v: _finite(v) and 0 <= v < 1, 'expected a value in [0, 1)'),
    'triplet_weight': (lambda v: _finite(v) and v >= 0, 'expected a finite value >= 0'),
    'id_weight': (lambda v: _finite(v) and v >= 0, 'expected a finite value >= 0'),
    'flip_prob': (lambda v: _finite(v) and 0 <= v <= 1, 'expected a probability in [0, 1]'),
    'random_erasing_prob': (lambda v: _finite(v) and 0 <= v <= 1, 'expected a probability in [0, 1]'),
    'cutout_prob': (lambda v: _finite(v) and 0 <= v <= 1, 'expected a probability in [0, 1]'),
    'seed': (lambda v: v >= 0, 'expected an integer >= 0'),
    'workers': (lambda v: v >= 0, 'expected >= 0'),
    'eval_every': (lambda v: v >= 1, 'expected >= 1'),
    'checkpoint_every': (lambda v: v >= 1, 'expected >= 1'),
    'test_batch_size': (lambda v: v >= 1, 'expected >= 1'),
}


def field_problem(name: str, value: Any) -> Optional[str]:
    """``'<field>: expected ..., got <value>'`` when ``value`` breaks the rule of field ``name``, else None."""
    rule, expected = FIELD_RULES[name]
    return None if rule(value) else f'{name}: {expected}, got {value}'


def _not_hbfp(name: str) -> str:
    """What to say of a timm model that is not an HBFP model (``resnet18``): which ``--model`` to pass instead."""
    hbfp_models = timm.list_models('hbfp_*')
    instead = (f'--model hbfp_{name}' if f'hbfp_{name}' in hbfp_models
               else f'an HBFP model on it: --model hbfp_resnet50 --model-arg backbone={name}')
    return (f'model: {name!r} is a timm backbone, not an HBFP model; use {instead} (HBFP models: '
            f'{", ".join(hbfp_models)})')


def validate_config(cfg: TrainConfig) -> None:
    """Check every field that can be checked without the data or the model.

    Raises:
        TrainSetupError: The first problem, as ``'<field>: expected ..., got ...'``.
    """
    hbfp_or_unknown = cfg.model.startswith('hbfp_') or not timm.is_model(cfg.model)  # unknown: refused just before
    architecture, tag = split_model_name_tag(cfg.model)
    checks = [
        (cfg.dataset in DATASET_NAMES, f'dataset: expected one of {", ".join(DATASET_NAMES)}, got {cfg.dataset!r}'),
        (cfg.eval_dataset in DATASET_NAMES,
         f'eval_dataset: expected one of {", ".join(DATASET_NAMES)}, got {cfg.eval_dataset!r}'),
        (timm.is_model(cfg.model), f'model: unknown timm model {cfg.model!r} (e.g. hbfp_resnet50, hbfp_resnet18)'),
        (hbfp_or_unknown, '' if hbfp_or_unknown else _not_hbfp(cfg.model)),
        (not tag, f'model: {cfg.model!r} names trained weights (tag {tag!r}), which the trainer does not start from: '
                  f'it would train {architecture} from its ImageNet backbone weights alone; expected the '
                  f"architecture's name, {architecture}"),
        (len(cfg.img_size) == 2 and all(int(s) > 0 for s in cfg.img_size),
         f'img_size: expected two positive integers (height, width), got {cfg.img_size!r}'),
        *((problem is None, problem) for problem in (field_problem(name, getattr(cfg, name)) for name in FIELD_RULES)),
        (cfg.batch_size >= 2 * cfg.num_instances and cfg.batch_size % cfg.num_instances == 0,
         f'batch_size: expected a multiple of num_instances={cfg.num_instances} holding at least two identities, '
         f'got {cfg.batch_size}'),
        (cfg.triplet_weight > 0 or cfg.id_weight > 0,
         'triplet_weight, id_weight: expected at least one above 0 (with both at 0 nothing is learnt)'),
        (cfg.amp_dtype in AMP_DTYPES, f'amp_dtype: expected one of {", ".join(AMP_DTYPES)}, got {cfg.amp_dtype!r}'),
        (cfg.metric in ('euclidean', 'cosine'), f"metric: expected 'euclidean' or 'cosine', got {cfg.metric!r}"),
        (cfg.max_steps_per_epoch is None or cfg.max_steps_per_epoch >= 1,
         f'max_steps_per_epoch: expected >= 1 or None, got {cfg.max_steps_per_epoch}'),
        (cfg.backbone_weights is None or Path(cfg.backbone_weights).is_file(),
         f'backbone_weights: file {cfg.backbone_weights} does not exist (expected a local ImageNet weights file)'),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainSetupError(message)
