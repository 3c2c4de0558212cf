"""The training run: data, model, optimiser, the epoch loop, periodic evaluation and the outputs."""
import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import RandomIdentitySampler, build_dataset, make_dataloaders
from ..data.transforms import build_test_transform, build_train_transform
from ..engine import evaluate
from ..losses import HBFPLoss
from .checkpoint import (
    BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULTS_NAME, epoch_seeds, load_checkpoint, rng_states,
    save_checkpoint, save_descriptor_model, set_rng_states, write_json,
)
from .config import TrainConfig, TrainSetupError, validate_config
from .distributed import BranchForward, init_distributed, resolve_device
from .schedule import ConstantThenExponentialDecay

__all__ = ['train']


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



def _output_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output).expanduser()
    if cfg.resume:
        resume = Path(cfg.resume).expanduser()
        return resume if resume.is_dir() else resume.parent
    return Path('runs') / f'{cfg.model}_{cfg.dataset}'


def _headline(evaluation: Dict[str, Any]) -> Dict[str, float]:
    return {key: evaluation[key] for key in ('rank1', 'rank5', 'rank10', 'mAP')}


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
    validate_config(cfg)
    we_initialised, rank, world_size, local_rank = init_distributed(cfg.device)
    try:
        return _train(cfg, list(sys.argv if command is None else command), rank, world_size, local_rank)
    finally:
        if we_initialised:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, command: List[str], rank: int, world_size: int, local_rank: int) -> Dict[str, Any]:
    is_main = rank == 0
    device = resolve_device(cfg.device, local_rank)
    use_amp = cfg.amp and device.type == 'cuda'
    output = _output_dir(cfg)
    checkpoint = load_checkpoint(cfg.resume, cfg.model) if cfg.resume else None

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
        set_rng_states(checkpoint['rng'])
        previous = json.loads(checkpoint['results'])
        for key in ('history', 'evaluations', 'best', 'last', 'metrics'):
            results[key] = previous[key]
        results['resumed_from'] = previous.get('resumed_from', []) + [{'epoch': start_epoch, 'command': command}]
        if start_epoch >= cfg.epochs:
            raise TrainSetupError(f'resume: the checkpoint has already completed {start_epoch} epochs; '
                                  f'pass --epochs greater than {start_epoch} to train further')

    train_module: nn.Module = BranchForward(model)
    if world_size > 1:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=cfg.id_weight == 0)  # without the ID loss the classifier gets no gradient
    metadata = {'architecture': cfg.model, 'model_args': json.dumps(cfg.model_args), 'dataset': cfg.dataset}

    for epoch in range(start_epoch, cfg.epochs):
        augmentation_seed, worker_seed = epoch_seeds(cfg.seed, epoch, rank)
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
                    save_descriptor_model(model, output / BEST_MODEL_NAME, {**metadata, 'epoch': str(epoch + 1)})
                tqdm.write(f'epoch {epoch + 1}: rank-1 {entry["rank1"]:.2%}  mAP {entry["mAP"]:.2%}')
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                save_checkpoint(output / CHECKPOINT_NAME, {
                    'model_name': cfg.model, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                    'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch + 1,
                    'sampler_epoch': sampler.epoch, 'rng': rng_states(), 'config': json.dumps(asdict(cfg)),
                    'results': json.dumps(results),
                })
            write_json(output / RESULTS_NAME, results)
        if world_size > 1:
            dist.barrier()

    if is_main:
        save_descriptor_model(model, output / MODEL_NAME, {**metadata, 'epoch': str(cfg.epochs)})
    return results



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

