"""The training run: data, model, optimiser, the epoch loop, periodic evaluation and the outputs."""
import json
import math
import random
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import RandomIdentitySampler, make_dataloaders
from ..data.loader import interruptions_deferred
from ..data.synthetic import read_synthetic_marker
from ..data.transforms import build_test_transform, build_train_transform
from ..inference.features import autocast_dtype
from ..metrics.evaluation import evaluate
from ..utils.progress import progress
from .checkpoint import (
    BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULTS_NAME, describe_outputs, load_train_state, planned_outputs,
    resume_best_model, save_checkpoint, save_descriptor_model, write_json,
)
from .config import DEVICE_DEFAULTS, TrainConfig, TrainSetupError, validate_config
from .cross_domain import cross_domain_line, evaluate_cross_domain, read_eval_datasets
from .determinism import epoch_seeds, rng_states, set_rng_states
from .distributed import BranchForward, init_distributed, resolve_device
from .losses import HBFPLoss
from .prepare import (
    build_model, check_identities, check_images, check_input_size, check_queries, check_resume_fits, output_dir,
    prepare_output, read_dataset, remove_earlier_outputs, resume_folder,
)
from .schedule import ConstantThenExponentialDecay

__all__ = ['train', 'TrainingDivergedError']


class TrainingDivergedError(FloatingPointError):
    """The loss or the weights stopped being finite; the message says when and suggests a lower ``--lr``."""


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


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (the project's rule, :func:`hbfp_timm.inference.features.autocast_dtype`), or None for
    full precision (CPU, or ``amp=False``)."""
    if not cfg.amp or device.type != 'cuda':
        return None
    try:
        return autocast_dtype(device, None if cfg.amp_dtype == 'auto' else getattr(torch, cfg.amp_dtype))
    except ValueError as error:
        raise TrainSetupError(f'{error}; use --amp-dtype float16 (or auto)') from None


def _speed_option(value: Optional[bool], name: str, device: torch.device) -> bool:
    return DEVICE_DEFAULTS.get(device.type, DEVICE_DEFAULTS['cpu'])[name] if value is None else value


def _headline(evaluation: Dict[str, Any]) -> Dict[str, float]:
    return {key: evaluation[key] for key in ('rank1', 'rank5', 'rank10', 'mAP')}


def train(cfg: TrainConfig, command: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train (or resume) a model, evaluate it periodically and write the outputs described in the package doc.

    Everything that can be checked before the first epoch is: the configuration, the output folder, the data set
    and its images (cheaply; fully with ``check_images``), the model's weights and input size, and whether a
    resumed checkpoint fits.

    Args:
        cfg: The run configuration.
        command: Command line recorded in ``results.json``; defaults to ``sys.argv``.

    Returns:
        The results dict, as written to ``results.json`` (on every rank; only rank 0 evaluates, so
        other ranks hold no evaluations).

    Raises:
        TrainSetupError: On an invalid configuration, output folder, data set, checkpoint or unavailable weights.
        TrainingDivergedError: The loss or the weights became NaN or infinite.
        hbfp_timm.utils.files.OutputWriteError: An output could not be written (e.g. no space left on the device).
        hbfp_timm.data.ImageReadError: An image became unreadable during training.
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
    amp_dtype = _amp_dtype(cfg, device)
    output = output_dir(cfg)
    prepare_output(output, remove_stale=is_main)
    checkpoint = load_train_state(cfg.resume, cfg.model) if cfg.resume else None

    dataset = read_dataset(cfg)
    eval_sets = read_eval_datasets(cfg)
    check_identities(dataset, cfg)
    notes = [check_queries(dataset, 'data_root', f'{cfg.dataset} at {cfg.data_root}'),
             *(check_queries(eval_set, 'eval_data_roots', root) for root, eval_set in eval_sets)]
    if is_main:
        tqdm.write(dataset.summary())
        for note in filter(None, notes):
            tqdm.write(f'note: {note}')

    torch.manual_seed(cfg.seed)  # model initialisation (identical on every rank; DDP broadcasts it anyway)
    model = build_model(cfg, dataset.num_train_pids).to(device)
    check_input_size(model, cfg, device)
    if checkpoint is not None:
        check_resume_fits(checkpoint, cfg, dataset, model)
    num_images, seconds = check_images(dataset, cfg.check_images, rank, world_size)
    if is_main:
        tqdm.write(f'{"decoded" if cfg.check_images else "checked"} {num_images} images in {seconds:.1f}s')
    train_loader, query_loader, gallery_loader = _build_loaders(cfg, dataset, rank, world_size)
    sampler: RandomIdentitySampler = train_loader.sampler

    criterion = HBFPLoss(margin=cfg.margin, label_smoothing=cfg.label_smoothing,
                         triplet_weight=cfg.triplet_weight, id_weight=cfg.id_weight)
    optimizer = create_optimizer_v2(model, 'adam', lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = LambdaLR(optimizer, ConstantThenExponentialDecay(cfg.lr_constant_epochs, cfg.epochs,
                                                                 cfg.lr_final_factor))
    # bfloat16 has float32's exponent range: only float16 gradients need scaling to stay representable.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    results: Dict[str, Any] = {
        'model': cfg.model, 'model_args': dict(cfg.model_args), 'dataset': cfg.dataset,
        'img_size': list(cfg.img_size), 'config': asdict(cfg), 'command': command,
        'num_train_pids': dataset.num_train_pids, 'world_size': world_size, 'device': str(device),
        'amp_dtype': str(amp_dtype).replace('torch.', '') if amp_dtype else None,
        'synthetic_data': read_synthetic_marker(cfg.data_root),
        'history': [], 'evaluations': [], 'best': None, 'last': None, 'metrics': None, 'checkpoint_epoch': None,
    }
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        if checkpoint['scaler'] and scaler.is_enabled():  # a float16 run resumed as float16
            scaler.load_state_dict(checkpoint['scaler'])
        start_epoch = int(checkpoint['epoch'])
        sampler.set_epoch(int(checkpoint['sampler_epoch']))
        set_rng_states(checkpoint['rng'])
        previous = json.loads(checkpoint['results'])
        for key in ('history', 'evaluations', 'best', 'last', 'metrics'):
            results[key] = previous[key]
        if 'cross_domain' in previous:
            results['cross_domain'] = previous['cross_domain']
        results['checkpoint_epoch'] = start_epoch
        results['command'] = previous.get('command', command)  # the run's first; each resume's is in resumed_from
        results['resumed_from'] = previous.get('resumed_from', []) + [{'epoch': start_epoch, 'command': command}]
    if is_main:
        remove_earlier_outputs(output, cfg)
        if checkpoint is not None:
            results['best'] = resume_best_model(resume_folder(cfg.resume), output, results['best'])
        tqdm.write(planned_outputs(model, output, cfg.checkpoint_every))

    channels_last = _speed_option(cfg.channels_last, 'channels_last', device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_module: nn.Module = BranchForward(model)
    if world_size > 1:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=cfg.id_weight == 0)  # without the ID loss the classifier gets no gradient
    if _speed_option(cfg.compile, 'compile', device):
        train_module = torch.compile(train_module)
    metadata = {'architecture': cfg.model, 'model_args': json.dumps(cfg.model_args), 'dataset': cfg.dataset,
                'img_size': json.dumps(list(cfg.img_size))}

    for epoch in range(start_epoch, cfg.epochs):
        augmentation_seed, worker_seed = epoch_seeds(cfg.seed, epoch, rank)
        random.seed(augmentation_seed)
        np.random.seed(augmentation_seed)
        torch.manual_seed(augmentation_seed)
        train_loader.generator.manual_seed(worker_seed)
        sampler.set_epoch(epoch)
        stats = _train_one_epoch(train_module, criterion, optimizer, scaler, train_loader, device, amp_dtype,
                                 channels_last, cfg.max_steps_per_epoch, epoch=epoch + 1, epochs=cfg.epochs,
                                 show=is_main)
        _check_weights(model, epoch + 1, stats)
        stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]['lr'])
        scheduler.step()
        results['history'].append(stats)

        if is_main:
            losses = ', '.join(f'{name} {stats[name]:.4f}' for name in ('loss', 'triplet', 'id') if name in stats)
            tqdm.write(f'epoch {epoch + 1}/{cfg.epochs}: {losses}, lr {stats["lr"]:.2e}, {stats["time"]:.1f}s')
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                evaluation = evaluate(model, query_loader, gallery_loader, device, metric=cfg.metric,
                                      flip=cfg.flip_test, amp=amp_dtype is not None,
                                      amp_dtype=amp_dtype)
                entry = {'epoch': epoch + 1, **_headline(evaluation), 'num_query': evaluation['num_query'],
                         'num_skipped_queries': evaluation['num_skipped_queries']}
                if eval_sets:
                    entry['cross_domain'] = evaluate_cross_domain(model, eval_sets, cfg, device, amp_dtype)
                    results['cross_domain'] = entry['cross_domain']
                results['evaluations'].append(entry)
                results['last'] = entry
                results['metrics'] = _headline(evaluation)
                best = results['best']
                if best is None or (entry['mAP'], entry['rank1']) > (best['mAP'], best['rank1']):
                    results['best'] = entry
                    save_descriptor_model(model, output / BEST_MODEL_NAME, {**metadata, 'epoch': str(epoch + 1)})
                skipped = entry['num_skipped_queries']  # the protocol scores only queries with a match
                tqdm.write(f'epoch {epoch + 1}: rank-1 {entry["rank1"]:.2%}  mAP {entry["mAP"]:.2%}'
                           + (f' ({skipped} of {entry["num_query"]} queries without a match in the gallery '
                              f'skipped)' if skipped else '')
                           + cross_domain_line(entry.get('cross_domain', [])))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                results['checkpoint_epoch'] = epoch + 1
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
        tqdm.write(describe_outputs(output))
    return results


def _check_weights(model: nn.Module, epoch: int, stats: Dict[str, Any]) -> None:
    """Stop before a model with NaN or infinite weights is evaluated or written (the last step of an epoch can
    break the weights with a loss that was still finite)."""
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    if not bool(finite):
        raise TrainingDivergedError(
            f'training diverged at epoch {epoch} step {stats["steps"]} (the weights became NaN or infinite; mean loss '
            f'of the epoch {stats.get("loss", float("nan")):.4g}); lower --lr')


def _train_one_epoch(
        train_module: nn.Module,
        criterion: HBFPLoss,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        loader: DataLoader,
        device: torch.device,
        amp_dtype: Optional[torch.dtype],
        channels_last: bool,
        max_steps: Optional[int],
        epoch: int,
        epochs: int,
        show: bool,
) -> Dict[str, Any]:
    """One pass over the PK batches; returns the mean losses, the number of steps and the wall time.

    Raises:
        TrainingDivergedError: A loss that is NaN or infinite.
    """
    train_module.train()
    start = time.perf_counter()
    sums: Dict[str, float] = {}
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    bar = progress(total=steps, desc=f'epoch {epoch}/{epochs}', disable=not show, leave=False)
    with interruptions_deferred():  # while the workers are forked
        batches = iter(loader)
    for step, (images, targets, _, _) in enumerate(batches):
        if step >= steps:
            break
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = train_module(images)
        loss, parts = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        # Read after the step, so that the GPU is not left idle waiting for it; a NaN loss has then spoilt the
        # weights in memory, but the run stops before anything is evaluated or written.
        values = {'loss': loss.item(), **{name: value.item() for name, value in parts.items()}}
        if not math.isfinite(values['loss']):
            bar.close()
            raise TrainingDivergedError(f'training diverged at epoch {epoch} step {step + 1} (loss '
                                        f'{values["loss"]}); lower --lr (now {optimizer.param_groups[0]["lr"]:g})')
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        bar.update()
        bar.set_postfix({name: f'{value:.3f}' for name, value in values.items()})
    bar.close()
    stats: Dict[str, Any] = {name: total / max(steps, 1) for name, total in sums.items()}
    stats.update(steps=steps, time=time.perf_counter() - start)
    return stats
