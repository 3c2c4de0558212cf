"""Train HBFP-Net with the paper's recipe: ``python -m hbfp_timm.train --dataset market1501 --data-root DATA``.

Recipe (paper 4.2, DESIGN.md section 3), the defaults of :class:`TrainConfig` and of the command line:
384x128 input; random horizontal flip, random erasing and cutout; PK batches of P = 16 identities x K = 4
images; batch-hard triplet loss (margin 0.3) + label-smoothed ID loss (epsilon 0.3) on every branch; Adam,
lr 2e-4, weight decay 5e-4, constant for 200 epochs then decaying exponentially towards 0 by epoch 500.

Runs on CUDA with mixed precision when a GPU is present, on CPU otherwise, and on several GPUs or machines
through ``torchrun`` (DistributedDataParallel; each process gets whole PK batches). Writes to ``--output``:

* ``checkpoint.pt``: resumable state (model, optimizer, scheduler, grad scaler, epoch, RNG states, history),
  rewritten atomically after every epoch; ``--resume`` continues it exactly;
* ``results.json``: configuration, per-epoch losses, every evaluation, the best and the last; rewritten
  atomically after every epoch;
* ``model.safetensors``: the final Re-ID descriptor model (classifier dropped), loadable with
  ``timm.create_model(name, num_classes=0, **model_args)``; ``best.safetensors``: the same for the
  evaluation with the best mAP.

Determinism: at the start of every epoch the Python, NumPy and torch generators (augmentation in the main
process) and the generator that seeds the DataLoader workers (augmentation in workers) are reseeded from
(seed, epoch, rank), and the PK sampler orders batches from (seed, epoch). An epoch's data therefore depends on
nothing that came before it, and a run resumed after epoch e on the same device replays epochs e+1... exactly
(tested on CPU with 0 and 2 workers). The checkpoint also stores the process RNG states and restores them.
"""
import argparse
import ast
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import save_file
from timm.optim import create_optimizer_v2
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import DATASET_NAMES, RandomIdentitySampler, build_dataset, make_dataloaders
from .data.transforms import build_test_transform, build_train_transform
from .engine import evaluate
from .losses import HBFPLoss

__all__ = ['TrainConfig', 'TrainSetupError', 'ConstantThenExponentialDecay', 'train', 'main']

CHECKPOINT_NAME = 'checkpoint.pt'
RESULTS_NAME = 'results.json'
MODEL_NAME = 'model.safetensors'
BEST_MODEL_NAME = 'best.safetensors'


class TrainSetupError(ValueError):
    """A configuration, data set, checkpoint or weights problem found before training starts."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the paper's recipe (4.2).

    Attributes:
        dataset: Data set name (``hbfp_timm.data.DATASET_NAMES``; ``market_layout`` for any Market-style folder).
        data_root: Folder holding the data set.
        model: timm name of the HBFP model.
        model_args: Extra ``HBFPNet`` constructor kwargs (Table 2 / Table 3 ablations).
        img_size: Network input (height, width).
        epochs: Training epochs.
        lr_constant_epochs: Epochs at the base learning rate before the exponential decay starts.
        lr_final_factor: **(choice)** Learning-rate factor reached at the last epoch. The paper says "decays
            exponentially to 0", which an exponential never reaches; 1e-3 of the base rate stands for 0.
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
        amp: Mixed precision (autocast + GradScaler); applies on CUDA only.
        workers: Data loading processes.
        seed: Seed of model initialisation, PK sampling and augmentation.
        eval_every: Evaluate on query/gallery every this many epochs (and always after the last).
        checkpoint_every: Write the resumable checkpoint every this many epochs (and always after the last);
            it holds the model and Adam's moments (about 3x the weights), so short CPU runs write it rarely.
        flip_test: Average test descriptors with those of mirrored images (the paper does not).
        metric: Distance between descriptors at test time, ``'euclidean'`` or ``'cosine'``.
        test_batch_size: Batch size of feature extraction.
        output: Output folder; default the folder of ``resume``, else ``runs/<model>_<dataset>``.
        resume: ``checkpoint.pt`` (or the folder holding it) to continue from.
        max_steps_per_epoch: Cap on training steps per epoch (smoke runs); None trains on full epochs.
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


class ConstantThenExponentialDecay:
    """LambdaLR factor: 1 for the first ``constant_epochs`` epochs, then ``final_factor ** t`` with t going
    linearly from 0 to 1 over the remaining epochs, so the rate reaches ``final_factor`` times the base rate
    at ``total_epochs`` (paper 4.2: "constant for 200 epochs, then decays exponentially to 0 by epoch 500").

    A class rather than a closure, so that ``LambdaLR.state_dict`` stores its parameters.

    Args:
        constant_epochs: Epochs at factor 1.
        total_epochs: Epoch at which the factor reaches ``final_factor``.
        final_factor: Factor at ``total_epochs``, in (0, 1].
    """

    def __init__(self, constant_epochs: int, total_epochs: int, final_factor: float):
        self.constant_epochs = constant_epochs
        self.total_epochs = total_epochs
        self.final_factor = final_factor

    def __call__(self, epoch: int) -> float:
        if epoch < self.constant_epochs or self.total_epochs <= self.constant_epochs:
            return 1.0
        progress = min((epoch - self.constant_epochs) / (self.total_epochs - self.constant_epochs), 1.0)
        return self.final_factor ** progress


# --- small utilities ------------------------------------------------------------------------------------

def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_path)`` on a temporary file in the same folder, fsync it, then
    ``os.replace`` it into place: a crash mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    try:
        write(tmp_name)
        with open(tmp_name, 'rb+') as tmp_file:
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    if hasattr(os, 'O_DIRECTORY'):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    def write(tmp_name: str) -> None:
        with open(tmp_name, 'w') as tmp_file:
            json.dump(data, tmp_file, indent=2)
    _atomic_write(path, write)


def descriptor_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict without the ID classifier: the weights of the Re-ID descriptor model
    (``timm.create_model(name, num_classes=0)``), as contiguous CPU tensors ready for safetensors.

    Args:
        model: A timm model; its ``pretrained_cfg['classifier']`` names the classifier module.

    Returns:
        Name -> tensor.
    """
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'classifier')
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
            if not name.startswith(classifier + '.')}


def _save_descriptor_model(model: nn.Module, path: Path, metadata: Dict[str, str]) -> None:
    state = descriptor_state_dict(model)
    _atomic_write(path, lambda tmp_name: save_file(state, tmp_name, metadata=metadata))


def _epoch_seeds(seed: int, epoch: int, rank: int) -> Tuple[int, int]:
    """Two 32-bit seeds (augmentation RNGs, loader workers) that depend only on (seed, epoch, rank)."""
    augmentation, workers = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    return int(augmentation), int(workers)


def _rng_states() -> Dict[str, Any]:
    np_state = np.random.get_state()
    states = {
        'python': random.getstate(),
        # numpy's state as plain types and a tensor, so the checkpoint loads with weights_only=True.
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[
            v.item() if isinstance(v, np.generic) else v for v in np_state[2:]]),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(_as_tuples(states['python']))
    np_state = states['numpy']
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def _as_tuples(value: Any) -> Any:
    """Lists back to tuples (random.setstate wants the exact nesting of random.getstate)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class _BranchForward(nn.Module):
    """Makes ``forward_branches`` the ``forward`` of a module, so DistributedDataParallel sees the training
    forward pass (DDP only synchronises gradients of passes that go through its own ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.forward_branches(images)


# --- setup ----------------------------------------------------------------------------------------------

def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.dataset in DATASET_NAMES, f'dataset: expected one of {", ".join(DATASET_NAMES)}, got {cfg.dataset!r}'),
        (timm.is_model(cfg.model), f'model: unknown timm model {cfg.model!r} (e.g. hbfp_resnet50, hbfp_resnet18)'),
        (len(cfg.img_size) == 2 and all(int(s) > 0 for s in cfg.img_size),
         f'img_size: expected two positive integers (height, width), got {cfg.img_size!r}'),
        (cfg.epochs >= 1, f'epochs: expected >= 1, got {cfg.epochs}'),
        (cfg.lr_constant_epochs >= 0, f'lr_constant_epochs: expected >= 0, got {cfg.lr_constant_epochs}'),
        (0 < cfg.lr_final_factor <= 1, f'lr_final_factor: expected a value in (0, 1], got {cfg.lr_final_factor}'),
        (cfg.num_instances >= 2, f'num_instances: expected >= 2 (batch-hard triplets need positives), '
                                 f'got {cfg.num_instances}'),
        (cfg.batch_size >= 2 * cfg.num_instances and cfg.batch_size % cfg.num_instances == 0,
         f'batch_size: expected a multiple of num_instances={cfg.num_instances} holding at least two identities, '
         f'got {cfg.batch_size}'),
        (cfg.lr > 0, f'lr: expected > 0, got {cfg.lr}'),
        (cfg.weight_decay >= 0, f'weight_decay: expected >= 0, got {cfg.weight_decay}'),
        (cfg.workers >= 0, f'workers: expected >= 0, got {cfg.workers}'),
        (cfg.eval_every >= 1, f'eval_every: expected >= 1, got {cfg.eval_every}'),
        (cfg.checkpoint_every >= 1, f'checkpoint_every: expected >= 1, got {cfg.checkpoint_every}'),
        (cfg.test_batch_size >= 1, f'test_batch_size: expected >= 1, got {cfg.test_batch_size}'),
        (cfg.metric in ('euclidean', 'cosine'), f"metric: expected 'euclidean' or 'cosine', got {cfg.metric!r}"),
        (cfg.max_steps_per_epoch is None or cfg.max_steps_per_epoch >= 1,
         f'max_steps_per_epoch: expected >= 1 or None, got {cfg.max_steps_per_epoch}'),
        (cfg.backbone_weights is None or Path(cfg.backbone_weights).is_file(),
         f'backbone_weights: file {cfg.backbone_weights} does not exist (expected a local ImageNet weights file)'),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainSetupError(message)


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TrainSetupError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from exc
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise TrainSetupError(f'device: {name!r} requested but CUDA is not available')
        if device.index is None:
            device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    return device


def _init_distributed(device_name: str) -> Tuple[bool, int, int, int]:
    """(we_initialised_it, rank, world_size, local_rank); joins the torchrun process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if dist.is_available() and dist.is_initialized():
        return False, dist.get_rank(), dist.get_world_size(), local_rank
    if world_size <= 1:
        return False, 0, 1, local_rank
    use_cuda = torch.cuda.is_available() and device_name != 'cpu'
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return True, dist.get_rank(), dist.get_world_size(), local_rank


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    kwargs = dict(cfg.model_args)
    kwargs.setdefault('pretrained_backbone', cfg.pretrained_backbone)
    if cfg.backbone_weights is not None:
        kwargs['backbone_weights'] = cfg.backbone_weights
    try:
        return timm.create_model(cfg.model, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise TrainSetupError(f'model_args: {cfg.model} does not accept {sorted(cfg.model_args)} ({exc})') from exc
    except ValueError as exc:
        raise TrainSetupError(f'model_args: cannot build {cfg.model} with {cfg.model_args} ({exc})') from exc
    except OSError as exc:
        if kwargs['pretrained_backbone'] and cfg.backbone_weights is None:
            raise TrainSetupError(
                f'pretrained backbone weights for {cfg.model} could not be loaded ({type(exc).__name__}: '
                f'{str(exc).splitlines()[0] if str(exc) else ""}); offline, pass --backbone-weights FILE (a '
                f'local ImageNet checkpoint) or --no-pretrained-backbone') from exc
        raise TrainSetupError(f'backbone_weights: cannot load {cfg.backbone_weights} ({exc})') from exc


def _build_loaders(cfg: TrainConfig, dataset, rank: int, world_size: int):
    train_transform = build_train_transform(
        tuple(cfg.img_size), flip_prob=cfg.flip_prob, random_erasing_prob=cfg.random_erasing_prob,
        cutout_prob=cfg.cutout_prob)
    test_transform = build_test_transform(tuple(cfg.img_size))
    try:
        return make_dataloaders(
            dataset, p=cfg.batch_size // cfg.num_instances, k=cfg.num_instances, batch_size_test=cfg.test_batch_size,
            workers=cfg.workers, seed=cfg.seed, num_replicas=world_size, rank=rank,
            train_transform=train_transform, test_transform=test_transform)
    except ValueError as exc:
        raise TrainSetupError(f'{cfg.dataset} at {cfg.data_root}: {exc}') from exc


def _load_checkpoint(path_or_dir: str, model_name: Optional[str] = None) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`train` (memory-mapped), checking its model name when given."""
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainSetupError(f'resume: {path} does not exist (expected {CHECKPOINT_NAME} or the folder holding it)')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as exc:  # unpickling reports many error types; all mean "not our checkpoint"
        raise TrainSetupError(f'resume: cannot read {path} as a training checkpoint ({exc})') from exc
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'epoch' not in checkpoint:
        raise TrainSetupError(f'resume: {path} is not a checkpoint written by hbfp_timm.train')
    if model_name is not None and checkpoint.get('model_name') != model_name:
        raise TrainSetupError(f'resume: {path} holds a {checkpoint.get("model_name")!r} model, not {model_name!r}')
    return checkpoint


def _output_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output).expanduser()
    if cfg.resume:
        resume = Path(cfg.resume).expanduser()
        return resume if resume.is_dir() else resume.parent
    return Path('runs') / f'{cfg.model}_{cfg.dataset}'


def _headline(evaluation: Dict[str, Any]) -> Dict[str, float]:
    return {key: evaluation[key] for key in ('rank1', 'rank5', 'rank10', 'mAP')}


# --- training -------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, command: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train (or resume) a model, evaluate it periodically and write the outputs described in the module doc.

    Args:
        cfg: The run configuration.
        command: Command line recorded in ``results.json``; defaults to ``sys.argv``.

    Returns:
        The results dict, as written to ``results.json`` (on every rank; only rank 0 evaluates, so
        other ranks hold no evaluations).

    Raises:
        TrainSetupError: On an invalid configuration, data set, checkpoint or unavailable weights.
    """
    _validate(cfg)
    we_initialised, rank, world_size, local_rank = _init_distributed(cfg.device)
    try:
        return _train(cfg, list(sys.argv if command is None else command), rank, world_size, local_rank)
    finally:
        if we_initialised:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, command: List[str], rank: int, world_size: int, local_rank: int) -> Dict[str, Any]:
    is_main = rank == 0
    device = _resolve_device(cfg.device, local_rank)
    use_amp = cfg.amp and device.type == 'cuda'
    output = _output_dir(cfg)
    checkpoint = _load_checkpoint(cfg.resume, cfg.model) if cfg.resume else None

    try:
        dataset = build_dataset(cfg.dataset, cfg.data_root)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainSetupError(f'data_root: {exc}') from exc
    train_loader, query_loader, gallery_loader = _build_loaders(cfg, dataset, rank, world_size)
    sampler: RandomIdentitySampler = train_loader.sampler

    torch.manual_seed(cfg.seed)  # model initialisation (identical on every rank; DDP broadcasts it anyway)
    model = _build_model(cfg, dataset.num_train_pids).to(device)
    criterion = HBFPLoss(margin=cfg.margin, label_smoothing=cfg.label_smoothing,
                         triplet_weight=cfg.triplet_weight, id_weight=cfg.id_weight)
    optimizer = create_optimizer_v2(model, 'adam', lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = LambdaLR(optimizer, ConstantThenExponentialDecay(cfg.lr_constant_epochs, cfg.epochs,
                                                                 cfg.lr_final_factor))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    results: Dict[str, Any] = {
        'model': cfg.model, 'model_args': dict(cfg.model_args), 'dataset': cfg.dataset,
        'img_size': list(cfg.img_size), 'config': asdict(cfg), 'command': command,
        'num_train_pids': dataset.num_train_pids, 'world_size': world_size, 'device': str(device),
        'history': [], 'evaluations': [], 'best': None, 'last': None, 'metrics': None,
    }
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint['scaler'])
        start_epoch = int(checkpoint['epoch'])
        sampler.set_epoch(int(checkpoint['sampler_epoch']))
        _set_rng_states(checkpoint['rng'])
        previous = json.loads(checkpoint['results'])
        for key in ('history', 'evaluations', 'best', 'last', 'metrics'):
            results[key] = previous[key]
        results['resumed_from'] = previous.get('resumed_from', []) + [{'epoch': start_epoch, 'command': command}]
        if start_epoch >= cfg.epochs:
            raise TrainSetupError(f'resume: the checkpoint has already completed {start_epoch} epochs; '
                                  f'pass --epochs greater than {start_epoch} to train further')

    train_module: nn.Module = _BranchForward(model)
    if world_size > 1:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=cfg.id_weight == 0)  # without the ID loss the classifier gets no gradient
    metadata = {'architecture': cfg.model, 'model_args': json.dumps(cfg.model_args), 'dataset': cfg.dataset}

    for epoch in range(start_epoch, cfg.epochs):
        augmentation_seed, worker_seed = _epoch_seeds(cfg.seed, epoch, rank)
        random.seed(augmentation_seed)
        np.random.seed(augmentation_seed)
        torch.manual_seed(augmentation_seed)
        train_loader.generator.manual_seed(worker_seed)
        sampler.set_epoch(epoch)
        stats = _train_one_epoch(train_module, criterion, optimizer, scaler, train_loader, device, use_amp,
                                 cfg.max_steps_per_epoch, desc=f'epoch {epoch + 1}/{cfg.epochs}', show=is_main)
        stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]['lr'])
        scheduler.step()
        results['history'].append(stats)

        if is_main:
            losses = ', '.join(f'{name} {stats[name]:.4f}' for name in ('loss', 'triplet', 'id') if name in stats)
            tqdm.write(f'epoch {epoch + 1}/{cfg.epochs}: {losses}, lr {stats["lr"]:.2e}, {stats["time"]:.1f}s')
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                evaluation = evaluate(model, query_loader, gallery_loader, device, metric=cfg.metric,
                                      flip=cfg.flip_test, amp=use_amp)
                entry = {'epoch': epoch + 1, **_headline(evaluation),
                         'num_skipped_queries': evaluation['num_skipped_queries']}
                results['evaluations'].append(entry)
                results['last'] = entry
                results['metrics'] = _headline(evaluation)
                best = results['best']
                if best is None or (entry['mAP'], entry['rank1']) > (best['mAP'], best['rank1']):
                    results['best'] = entry
                    _save_descriptor_model(model, output / BEST_MODEL_NAME, {**metadata, 'epoch': str(epoch + 1)})
                tqdm.write(f'epoch {epoch + 1}: rank-1 {entry["rank1"]:.2%}  mAP {entry["mAP"]:.2%}')
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                _save_checkpoint(output / CHECKPOINT_NAME, {
                    'model_name': cfg.model, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                    'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch + 1,
                    'sampler_epoch': sampler.epoch, 'rng': _rng_states(), 'config': json.dumps(asdict(cfg)),
                    'results': json.dumps(results),
                })
            _write_json(output / RESULTS_NAME, results)
        if world_size > 1:
            dist.barrier()

    if is_main:
        _save_descriptor_model(model, output / MODEL_NAME, {**metadata, 'epoch': str(cfg.epochs)})
    return results


def _save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    _atomic_write(path, lambda tmp_name: torch.save(state, tmp_name))


def _train_one_epoch(
        train_module: nn.Module,
        criterion: HBFPLoss,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        loader: DataLoader,
        device: torch.device,
        use_amp: bool,
        max_steps: Optional[int],
        desc: str,
        show: bool,
) -> Dict[str, Any]:
    """One pass over the PK batches; returns the mean losses, the number of steps and the wall time."""
    train_module.train()
    start = time.perf_counter()
    sums: Dict[str, float] = {}
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    progress = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True, disable=not show)
    for step, (images, targets, _, _) in enumerate(loader):
        if step >= steps:
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            outputs = train_module(images)
        loss, parts = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        values = {'loss': loss.item(), **{name: value.item() for name, value in parts.items()}}
        if not math.isfinite(values['loss']):
            raise FloatingPointError(f'loss became {values["loss"]} at step {step} ({desc}); lower --lr')
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        progress.update()
        progress.set_postfix({name: f'{value:.3f}' for name, value in values.items()})
    progress.close()
    stats: Dict[str, Any] = {name: total / max(steps, 1) for name, total in sums.items()}
    stats.update(steps=steps, time=time.perf_counter() - start)
    return stats


# --- command line ---------------------------------------------------------------------------------------

def _model_arg(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE with KEY a Python identifier, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word such as global_pool=avg is a string


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m hbfp_timm.train`` argument parser; defaults come from :class:`TrainConfig`."""
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.train',
        description='Train HBFP-Net for person re-identification. Every default is the paper\'s recipe '
                    '(HBFP-Net, ACM MM 2020, section 4.2): 384x128 input, flip + random erasing + cutout, '
                    'PK batches 16x4, triplet margin 0.3, label smoothing 0.3, Adam lr 2e-4 wd 5e-4, constant '
                    'for 200 epochs then exponential decay to epoch 500. Several GPUs: torchrun --nproc-per-node '
                    'N -m hbfp_timm.train ...',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', default=d.dataset, choices=DATASET_NAMES, help='data set reader')
    data.add_argument('--data-root', default=d.data_root, help='folder holding the data set')
    data.add_argument('--img-size', nargs=2, type=_positive_int, default=list(d.img_size), metavar=('H', 'W'),
                      help='input height and width')
    data.add_argument('--batch-size', type=_positive_int, default=d.batch_size,
                      help='P x K images per batch (per process under torchrun)')
    data.add_argument('--num-instances', type=_positive_int, default=d.num_instances,
                      help='K, images per identity in a batch')
    data.add_argument('--flip-prob', type=float, default=d.flip_prob, help='horizontal flip probability')
    data.add_argument('--random-erasing-prob', type=float, default=d.random_erasing_prob,
                      help='random erasing probability')
    data.add_argument('--cutout-prob', type=float, default=d.cutout_prob, help='cutout probability')
    data.add_argument('--workers', type=int, default=d.workers, help='data loading processes')

    model = parser.add_argument_group('model')
    model.add_argument('--model', default=d.model, help='timm name of the HBFP model')
    model.add_argument('--model-arg', action='append', type=_model_arg, default=[], metavar='KEY=VALUE',
                       help='HBFPNet constructor argument, value parsed as a Python literal (repeatable), '
                            'e.g. --model-arg "gep_lambdas=(0, 1)" --model-arg hierarchical=False')
    model.add_argument('--no-pretrained-backbone', dest='pretrained_backbone', action='store_false',
                       help='start the backbone from random weights instead of timm\'s ImageNet weights '
                            '(pretrained_backbone=%(default)s)')
    model.add_argument('--backbone-weights', default=d.backbone_weights, metavar='FILE',
                       help='local ImageNet weights file for the backbone (offline machines)')

    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--epochs', type=_positive_int, default=d.epochs, help='training epochs')
    optim.add_argument('--lr-constant-epochs', type=int, default=d.lr_constant_epochs,
                       help='epochs at the base learning rate before the exponential decay')
    optim.add_argument('--lr-final-factor', type=float, default=d.lr_final_factor,
                       help='learning-rate factor reached at the last epoch (the paper\'s "decays to 0")')
    optim.add_argument('--lr', type=float, default=d.lr, help='Adam learning rate')
    optim.add_argument('--weight-decay', type=float, default=d.weight_decay, help='Adam weight decay')
    optim.add_argument('--margin', type=float, default=d.margin, help='triplet loss margin')
    optim.add_argument('--label-smoothing', type=float, default=d.label_smoothing, help='ID loss label smoothing')
    optim.add_argument('--triplet-weight', type=float, default=d.triplet_weight, help='weight of the triplet loss')
    optim.add_argument('--id-weight', type=float, default=d.id_weight, help='weight of the ID loss')
    optim.add_argument('--max-steps-per-epoch', type=_positive_int, default=d.max_steps_per_epoch,
                       help='cap on steps per epoch (smoke runs)')

    run = parser.add_argument_group('run')
    run.add_argument('--device', default=d.device, help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:N'")
    run.add_argument('--no-amp', dest='amp', action='store_false', help='disable mixed precision on CUDA (amp=%(default)s)')
    run.add_argument('--seed', type=int, default=d.seed, help='random seed')
    run.add_argument('--eval-every', type=_positive_int, default=d.eval_every,
                     help='evaluate every N epochs (and after the last)')
    run.add_argument('--checkpoint-every', type=_positive_int, default=d.checkpoint_every,
                     help='write the resumable checkpoint every N epochs (and after the last)')
    run.add_argument('--flip-test', action='store_true', help='average test descriptors with mirrored images')
    run.add_argument('--metric', default=d.metric, choices=('euclidean', 'cosine'), help='test distance')
    run.add_argument('--test-batch-size', type=_positive_int, default=d.test_batch_size,
                     help='feature extraction batch size')
    run.add_argument('--output', default=d.output, metavar='DIR',
                     help='output folder (default: the --resume folder, else runs/<model>_<dataset>)')
    run.add_argument('--resume', default=d.resume, metavar='PATH_OR_DIR',
                     help='checkpoint.pt (or its folder) to continue from')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; see ``python -m hbfp_timm.train --help``.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The results dict of :func:`train`.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(parser.parse_args(argv))
    args['model_args'] = dict(args.pop('model_arg'))
    args['img_size'] = tuple(args['img_size'])
    try:
        if args['resume']:
            # A resumed run keeps its own configuration; flags given on this command line override it.
            saved = json.loads(_load_checkpoint(args['resume'])['config'])
            given = _given_arguments(argv)
            args = {**saved, **{key: value for key, value in args.items() if key in given}}
            args['img_size'] = tuple(args['img_size'])
        return train(TrainConfig(**args), command=['python', '-m', 'hbfp_timm.train', *argv])
    except TrainSetupError as exc:
        parser.exit(2, f'{parser.prog}: error: {exc}\n')


def _given_arguments(argv: Sequence[str]) -> set:
    """``TrainConfig`` field names of the options present on the command line (not left at their default)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(argv)))
    return {'model_args' if name == 'model_arg' else name for name in given} | {'resume'}


if __name__ == '__main__':
    main()
