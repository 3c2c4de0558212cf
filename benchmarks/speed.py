"""Speed of HBFP-Net against the BoT baseline, of its BFP and GeP layers, of the input pipeline, of evaluation and
search, of the memory formats and of gradient checkpointing; the estimated wall time of the paper's training recipe.

``python -m benchmarks.speed`` runs the sections named by ``--sections`` (default: the first four), prints a
markdown report, checks the targets of issues 6 and 10 and writes everything to ``--output`` (``runs/speed.json``)
as JSON; ``--quick`` shrinks every section, ``--help`` lists the options. The measuring is ``benchmarks.probes``::

    python -m benchmarks.speed                  # models, layers, pipeline, evaluation
    python -m benchmarks.speed --sections memory_format --models hbfp_mobilenetv2_100 --img-size 128 64 --batch-size 64
    python -m benchmarks.speed --sections checkpointing --model hbfp_resnet50 --batch-size 64
    python -m benchmarks.speed --sections search --device cpu --tasks topk,rerank    # --device cuda: on the device

* ``models``: images/s of ``hbfp_resnet50`` and of the BoT baseline (``hbfp_resnet50`` with
  ``hbfp_timm.models.BOT_ARGS``: ResNet-50 with last stride 1, average pooling and a BatchNorm neck, Luo et al.
  2019), eval forward (``no_grad``) and train forward+backward (loss: mean square of the descriptor, the same for
  both; no optimizer step), at ``--img-size`` (384x128), each of ``--batch-sizes`` and ``--precisions`` (``fp32``;
  ``amp``: autocast in ``--amp-dtype``, by default ``hbfp_timm.inference.features.autocast_dtype(device)``), eager
  or ``--compile``, ``--channels-last`` or not; the models interleaved, times medians over ``--repeats``, ratios
  medians of paired ratios. Also the amp over fp32 speed-up, the peak memory of one step (``--no-memory`` skips it),
  the FLOPs (``torch.utils.flop_counter``) and the wall time of the paper's Market-1501 recipe (500 epochs of 12,936
  images at batch 64, an evaluation of 19,281 images every 50 epochs) estimated from those throughputs and, with
  ``pipeline``, the input pipeline's;
* ``layers``: the cost of the two BFP modules and of GeP alone, on the real map sizes, against a whole forward, at
  each precision and at every batch size >= 32 (the largest one when all are smaller);
* ``pipeline``: images/s that JPEG decoding and the training augmentation deliver with each of ``--loader-workers``;
* ``evaluation``: ``hbfp_timm.metrics.evaluate_rank`` at Market-1501 test scale (3,368 x 15,913 random distances,
  Market-like identities and cameras) against the per-query loop over argsorted rows that torchreid runs, timed on
  ``--reference-queries`` queries and extrapolated linearly (it is linear in the number of queries);
* ``memory_format``: channels-last against contiguous, the same weights, interleaved: a training step
  (``forward_branches``, the sum of the logits and of the squared pooled features, backward) and an eval forward of
  each of ``--models`` at ``--batch-size`` (``--modes``); the speed-up (median of the paired contiguous /
  channels-last ratios; above 1: channels-last is faster) and how far apart the outputs are (the formats differ only
  in the kernels' order of summation). The trainer's ``--channels-last`` default per device follows it;
* ``checkpointing``: what ``model.set_grad_checkpointing()`` saves in a training step of ``--model`` at
  ``--batch-size``, off and on, each in a fresh process after a warm-up step: the activation memory (the bytes
  autograd keeps for backward, parameters excluded; exact and machine-independent), the peak memory and the time;
* ``search``: on CPU, ``--tasks``: ``topk`` of 1,000 queries in 1M x 512-d gallery descriptors against the whole
  distance matrix + ``torch.topk`` (the naive way), the faiss flat index when installed, and a float16 gallery;
  ``evaluate_features`` of 10,000 x 100,000 x 512-d against ``evaluate_rank`` of the whole matrix; k-reciprocal
  re-ranking at Market-1501 scale from the three distance matrices and from 2,048-d descriptors. Each call in a
  fresh process: wall time, CPU time (user + system, steadier on a shared machine), extra memory (peak RSS growth),
  agreement with ours. On an accelerator instead: top-10 of 1,000 float32 queries in 1M x 4,096-d float16
  descriptors on the device, 5 synchronised calls, the extra device memory and the agreement with an exact float32
  search (target of issue 11: 0.2 s on one H100).

On a shared machine pause other work: absolute speeds vary, the ratios are the claims.
"""
import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import hbfp_timm
from hbfp_timm.commands import one_line
from hbfp_timm.inference.features import autocast_dtype
from hbfp_timm.models.backbone import run_modules

from .settings import ArgumentParser, exact_command, guarded
from .probes import (DTYPES, MARKET_GALLERY, MARKET_QUERIES, PRECISIONS, SEARCH_TASKS, autocast,
                     compare_checkpointing, compare_formats, compare_search, count_flops, create_benchmark_model,
                     device_topk, evaluation_speed, loader_throughput, make_step, median_ratio, peak_memory,
                     time_interleaved)

__all__ = ['SECTIONS', 'layer_costs', 'recipe_estimate', 'run', 'format_table', 'parse_args', 'main']

SECTIONS = ('models', 'layers', 'pipeline', 'evaluation', 'memory_format', 'checkpointing', 'search')
DEFAULT_SECTIONS = SECTIONS[:4]
MODELS = ('bot_resnet50', 'hbfp_resnet50')
MODES = ('eval', 'train')

# Targets of issues 6 (CPU), 10 (GPU) and 11 (search on one H100, printed).
TIME_OVER_FLOP_RATIO_MAX = 1.15
GEP_SHARE_MAX = 0.03
EVAL_SECONDS_MAX = 1.5
EVAL_SPEEDUP_MIN = 30.0
AMP_TRAIN_SPEEDUP_MIN = 1.8  # HBFP training, amp over fp32, at batch 64
RECIPE_HOURS_MAX = 1.5  # on one H100: only checked on CUDA
DEVICE_TOPK_SECONDS_MAX = 0.2

# The paper's recipe (4.2) on Market-1501: 12,936 training images, batch 64, 500 epochs; an evaluation every 50.
MARKET_TRAIN_IMAGES, RECIPE_EPOCHS, RECIPE_BATCH, RECIPE_EVAL_EVERY = 12936, 500, 64, 50


def layer_costs(model: hbfp_timm.HBFPNet, batch_size: int, img_size: Tuple[int, int], device: torch.device,
                repeats: int, amp_dtype: Optional[torch.dtype], channels_last: bool) -> Dict:
    """Eval time of each BFP module and of GeP on the maps the model really produces, against a whole forward,
    interleaved, every part under the forward's autocast (``amp_dtype``); plus the FLOP share of the BFP modules."""
    model.eval()
    x = torch.randn(batch_size, 3, *img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cuts = model.cuts
    with torch.no_grad(), autocast(device, amp_dtype):
        low = run_modules(model.backbone, cuts.stem, x)
        mid = run_modules(model.backbone, cuts.block3, low)
        high = run_modules(model.backbone, cuts.block4, mid)
        features = model.forward_features(x)

    def under_no_grad(fn: Callable[[], object]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad(), autocast(device, amp_dtype):
                fn()
        return step

    steps = {
        'forward': under_no_grad(lambda: model(x)),
        'bfp_low_mid': under_no_grad(lambda: model.bfp_low_mid.perceive(low, mid)),
        'bfp_mid_high': under_no_grad(lambda: model.bfp_mid_high.perceive(mid, high)),
        'gep': under_no_grad(lambda: model.global_pool(features)),
        'avg_pool': under_no_grad(lambda: features.mean(dim=(2, 3))),
    }
    times = time_interleaved(steps, repeats, device)
    # FLOPs do not depend on the precision: counted in float32 on float32 copies of the maps.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x.float())
    total_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.bfp_low_mid.perceive(low.float(), mid.float())
        model.bfp_mid_high.perceive(mid.float(), high.float())
    lambdas = getattr(model.global_pool, 'lambdas', None)
    return {
        'batch_size': batch_size,
        'precision': 'fp32' if amp_dtype is None else 'amp',
        'map_shapes': {'low': list(low.shape), 'mid': list(mid.shape), 'high': list(high.shape),
                       'gep_input': list(features.shape)},
        'lambdas': [round(v, 4) for v in lambdas.tolist()] if lambdas is not None else None,
        'seconds': times,
        'median_seconds': {name: statistics.median(t) for name, t in times.items()},
        'share_of_forward': {name: median_ratio(t, times['forward']) for name, t in times.items() if name != 'forward'},
        'bfp_flop_share': counter.get_total_flops() / total_flops,
    }


def recipe_estimate(train_images_per_second: float, eval_images_per_second: float,
                    loader_images_per_second: Optional[float] = None) -> Dict:
    """Wall time of the paper's Market-1501 recipe (500 epochs x 12,936 images, an evaluation of the 19,281 test
    images every 50 epochs) at the given throughputs; training runs at the slower of model and input pipeline.

    Optimizer steps, loss computation and checkpoint writes are not included: a lower bound of the real time.
    """
    effective = train_images_per_second
    if loader_images_per_second is not None:
        effective = min(effective, loader_images_per_second)
    train_seconds = RECIPE_EPOCHS * MARKET_TRAIN_IMAGES / effective
    eval_seconds = RECIPE_EPOCHS // RECIPE_EVAL_EVERY * (MARKET_QUERIES + MARKET_GALLERY) / eval_images_per_second
    return {
        'train_images_per_second': train_images_per_second,
        'loader_images_per_second': loader_images_per_second,
        'input_bound': loader_images_per_second is not None and loader_images_per_second < train_images_per_second,
        'train_hours': train_seconds / 3600,
        'eval_hours': eval_seconds / 3600,
        'hours': (train_seconds + eval_seconds) / 3600,
    }


def _environment(device: torch.device, args: argparse.Namespace, argv: Sequence[str]) -> Dict:
    info = {
        'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'numpy': np.__version__, 'platform': platform.platform(), 'processor': platform.processor(),
        'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'device': str(device),
        'sections': list(args.sections), 'quick': args.quick, 'precisions': list(args.precisions),
        'amp_dtype': str(args.amp_dtype).replace('torch.', ''), 'compile': args.compile,
        'channels_last': args.channels_last, 'img_size': list(args.img_size), 'repeats': args.repeats,
        'command': exact_command('python -m benchmarks.speed', argv),
    }
    if hasattr(os, 'getloadavg'):
        info['load_average_at_start'] = os.getloadavg()
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def _throughput(models: Dict[str, nn.Module], args: argparse.Namespace, device: torch.device) -> List[Dict]:
    rows = []
    for batch_size in args.batch_sizes:
        x = torch.randn(batch_size, 3, *args.img_size, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for precision in args.precisions:
            amp_dtype = args.amp_dtype if precision == 'amp' else None
            for mode in MODES:
                if mode == 'train' and batch_size == 1:
                    continue  # train-mode BatchNorm needs more than one value per channel
                steps = {name: make_step(model, mode, x, amp_dtype) for name, model in models.items()}
                times = time_interleaved(steps, args.repeats, device, warmup=3 if args.compile else 1)
                row = {'batch_size': batch_size, 'precision': precision, 'mode': mode, 'seconds': times,
                       'time_ratio': median_ratio(times['hbfp_resnet50'], times['bot_resnet50']),
                       'images_per_second': {n: batch_size / statistics.median(t) for n, t in times.items()}}
                if not args.no_memory:
                    row['peak_memory_bytes'] = {
                        name: peak_memory(name, mode, batch_size, args.img_size, device, amp_dtype, args.channels_last)
                        for name in MODELS}
                rows.append(row)
                ips = row['images_per_second']
                print(f"batch {batch_size:>3} {precision:<4} {mode:<5}: BoT {ips['bot_resnet50']:.2f} img/s, HBFP "
                      f"{ips['hbfp_resnet50']:.2f} img/s, time ratio {row['time_ratio']:.2f}", flush=True)
    return rows


def _amp_speedups(rows: List[Dict]) -> List[Dict]:
    """amp over fp32 images/s of each model, for every (batch, mode) measured at both precisions."""
    by_key = {(r['batch_size'], r['mode'], r['precision']): r['images_per_second'] for r in rows}
    speedups = []
    for (batch_size, mode, precision), amp_ips in by_key.items():
        fp32_ips = by_key.get((batch_size, mode, 'fp32'))
        if precision == 'amp' and fp32_ips is not None:
            speedups.append({'batch_size': batch_size, 'mode': mode,
                             **{name: amp_ips[name] / fp32_ips[name] for name in MODELS}})
    return speedups


def _recipe_estimates(rows: List[Dict], loader: Dict[int, float]) -> Dict[str, Dict]:
    """Per precision: the recipe's wall time from HBFP's train throughput at batch 64 (else the largest batch
    measured) and its eval throughput at the largest batch, at the best loader throughput measured."""
    estimates = {}
    best_loader = max(loader.values()) if loader else None
    for precision in sorted({r['precision'] for r in rows}):
        train = [r for r in rows if r['precision'] == precision and r['mode'] == 'train']
        evaluate = [r for r in rows if r['precision'] == precision and r['mode'] == 'eval']
        if not train or not evaluate:
            continue
        largest = max(train, key=lambda r: r['batch_size'])
        train_row = next((r for r in train if r['batch_size'] == RECIPE_BATCH), largest)
        eval_row = max(evaluate, key=lambda r: r['batch_size'])
        estimate = recipe_estimate(train_row['images_per_second']['hbfp_resnet50'],
                                   eval_row['images_per_second']['hbfp_resnet50'], best_loader)
        estimates[precision] = dict(estimate, train_batch_size=train_row['batch_size'])
    return estimates


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> Dict:
    """The sections named in ``args.sections``, in the order of SECTIONS; the results, with their targets."""
    device, sections = torch.device(args.device), args.sections
    torch.manual_seed(0)
    results: Dict = {'environment': _environment(device, args, argv), 'targets': {}}
    models = {}
    for name in (MODELS if 'models' in sections else ('hbfp_resnet50',) if 'layers' in sections else ()):
        model = create_benchmark_model(name).to(device)
        models[name] = model.to(memory_format=torch.channels_last) if args.channels_last else model
    if 'models' in sections:
        # Two images: train-mode BatchNorm needs more than one value per channel.
        flop_input = torch.randn(2, 3, *args.img_size, device=device)
        flops = {name: {mode: count_flops(model, mode, flop_input) // 2 for mode in MODES}
                 for name, model in models.items()}
        results['flops_per_image'] = flops
        results['flop_ratio'] = {mode: flops['hbfp_resnet50'][mode] / flops['bot_resnet50'][mode] for mode in MODES}
        results['params'] = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
        timed = {name: torch.compile(model) for name, model in models.items()} if args.compile else models
        rows = _throughput(timed, args, device)
        for row in rows:
            row['time_over_flop_ratio'] = row['time_ratio'] / results['flop_ratio'][row['mode']]
        results['throughput'] = rows
        results['amp_speedup'] = _amp_speedups(rows)
    if 'layers' in sections:
        # Layer costs run the parts of the eager model one by one (a compiled forward is the whole, not its parts).
        layer_batches = [b for b in args.batch_sizes if b >= 32] or [max(args.batch_sizes)]
        results['layers'] = [layer_costs(models['hbfp_resnet50'], b, args.img_size, device, args.repeats,
                                         args.amp_dtype if p == 'amp' else None, args.channels_last)
                             for b in layer_batches for p in args.precisions]
    if 'pipeline' in sections:
        workers = args.loader_workers
        results['loader_images_per_second'] = loader_throughput(workers, args.img_size, RECIPE_BATCH) if workers else {}
    if 'models' in sections:
        results['recipe'] = _recipe_estimates(results['throughput'], results.get('loader_images_per_second') or {})
    if 'evaluation' in sections:
        results['evaluation'] = evaluation_speed(max(3, args.repeats // 2), args.reference_queries)
    if 'memory_format' in sections:
        results['memory_format'] = [row for name in args.models for row in compare_formats(
            name, args.img_size, args.batch_size, args.repeats, device, args.modes)]
    if 'checkpointing' in sections:
        results['checkpointing'] = compare_checkpointing(args.model, args.img_size, args.batch_size, args.device)
    if 'search' in sections:
        scale = 'quick' if args.quick else 'full'
        on_cpu = device.type == 'cpu'
        results['search'] = compare_search(args.tasks, scale) if on_cpu else device_topk(args.device, scale)
    results['targets'] = _targets(results, device)
    return results


def _target(value: float, bound: float, met: Optional[bool], upper: bool = True) -> Dict:
    return {'value': value, 'max' if upper else 'min': bound, 'met': met}


def _targets(results: Dict, device: torch.device) -> Dict[str, Dict]:
    """The targets of the sections that ran, each with its value, bound and whether it is met."""
    targets = {}
    if results.get('throughput'):
        worst = max(row['time_over_flop_ratio'] for row in results['throughput'])
        targets['time_over_flop_ratio'] = _target(worst, TIME_OVER_FLOP_RATIO_MAX, worst <= TIME_OVER_FLOP_RATIO_MAX)
    if results.get('layers'):
        gep = max(layers['share_of_forward']['gep'] for layers in results['layers'])
        targets['gep_share_of_forward'] = _target(gep, GEP_SHARE_MAX, gep <= GEP_SHARE_MAX)
    if 'evaluation' in results:
        seconds, speedup = results['evaluation']['median_seconds'], results['evaluation']['speedup']
        targets['evaluate_rank_seconds'] = _target(seconds, EVAL_SECONDS_MAX, seconds < EVAL_SECONDS_MAX)
        targets['evaluate_rank_speedup'] = _target(speedup, EVAL_SPEEDUP_MIN, speedup >= EVAL_SPEEDUP_MIN, upper=False)
    train_speedups = [s for s in results.get('amp_speedup', []) if s['mode'] == 'train']
    if train_speedups:
        at = next((s for s in train_speedups if s['batch_size'] == RECIPE_BATCH), train_speedups[-1])
        targets[f"hbfp_amp_train_speedup_batch{at['batch_size']}"] = _target(
            at['hbfp_resnet50'], AMP_TRAIN_SPEEDUP_MIN, at['hbfp_resnet50'] >= AMP_TRAIN_SPEEDUP_MIN, upper=False)
    if results.get('recipe'):
        hours = min(estimate['hours'] for estimate in results['recipe'].values())
        # The 1.5 h target is for one H100: elsewhere the estimate is printed, not judged.
        targets['recipe_hours'] = _target(hours, RECIPE_HOURS_MAX,
                                          hours <= RECIPE_HOURS_MAX if device.type == 'cuda' else None)
    return targets


def _mib(value: Optional[int]) -> str:
    return '-' if value is None else f'{value / 2 ** 20:.0f}'


def _models_lines(results: Dict) -> List[str]:
    lines = ['| batch | precision | mode | BoT img/s | HBFP img/s | time ratio | FLOP ratio | time / FLOP ratio '
             '| BoT peak MiB | HBFP peak MiB |', '|---|---|---|---|---|---|---|---|---|---|']
    for row in results['throughput']:
        ips, memory = row['images_per_second'], row.get('peak_memory_bytes', {})
        lines.append(
            f"| {row['batch_size']} | {row['precision']} | {row['mode']} | {ips['bot_resnet50']:.2f} "
            f"| {ips['hbfp_resnet50']:.2f} | {row['time_ratio']:.2f} | {results['flop_ratio'][row['mode']]:.2f} "
            f"| {row['time_over_flop_ratio']:.2f} | {_mib(memory.get('bot_resnet50'))} "
            f"| {_mib(memory.get('hbfp_resnet50'))} |")
    if results['amp_speedup']:
        lines += ['', 'Mixed precision over fp32, images/s ratio:', '', '| batch | mode | BoT | HBFP |',
                  '|---|---|---|---|']
        lines += [f"| {s['batch_size']} | {s['mode']} | {s['bot_resnet50']:.2f}x | {s['hbfp_resnet50']:.2f}x |"
                  for s in results['amp_speedup']]
    flops, params = results['flops_per_image'], results['params']
    lines += ['', '| model | params (M) | GFLOPs/img forward | GFLOPs/img forward+backward |', '|---|---|---|---|']
    lines += [f"| {name} | {params[name] / 1e6:.1f} | {flops[name]['eval'] / 1e9:.1f} "
              f"| {flops[name]['train'] / 1e9:.1f} |"
              for name in MODELS]
    return lines


def _layers_lines(results: Dict) -> List[str]:
    first = results['layers'][0]
    lines = [f"Layers alone, eval, GeP input (C, H, W) {tuple(first['map_shapes']['gep_input'][1:])}, lambdas "
             f"{tuple(first['lambdas'] or ())}; BFP FLOP share of the forward {100 * first['bfp_flop_share']:.1f}%:",
             '', '| batch | precision | forward ms | bfp_low_mid | bfp_mid_high | gep | avg_pool |',
             '|---|---|---|---|---|---|---|']
    for layers in results['layers']:
        median, share = layers['median_seconds'], layers['share_of_forward']
        parts = ' | '.join(f'{1e3 * median[n]:.2f} ms ({100 * share[n]:.2f}%)'
                           for n in ('bfp_low_mid', 'bfp_mid_high', 'gep', 'avg_pool'))
        lines.append(f"| {layers['batch_size']} | {layers['precision']} | {1e3 * median['forward']:.1f} | {parts} |")
    return lines


def _pipeline_lines(results: Dict) -> List[str]:
    return [f"Input pipeline (JPEG decoding + training augmentation, batches of {RECIPE_BATCH}):", '',
            '| loader workers | images/s |', '|---|---|'] + [
        f'| {n} | {ips:.0f} |' for n, ips in results['loader_images_per_second'].items()]


def _recipe_lines(results: Dict) -> List[str]:
    lines = ["Paper's Market-1501 recipe (500 epochs x 12,936 images + 10 evaluations), estimated from HBFP's "
             "throughput; optimizer steps not included:", '',
             '| precision | model train img/s (batch) | input img/s (best workers) | input-bound | hours |',
             '|---|---|---|---|---|']
    for precision, e in results['recipe'].items():
        loader = '-' if e['loader_images_per_second'] is None else f"{e['loader_images_per_second']:.0f}"
        lines.append(f"| {precision} | {e['train_images_per_second']:.1f} ({e['train_batch_size']}) | {loader} "
                     f"| {'yes' if e['input_bound'] else 'no'} | {e['hours']:.2f} |")
    return lines


def _evaluation_lines(results: Dict) -> List[str]:
    ev = results['evaluation']
    reference = f"extrapolated from {ev['reference_queries_timed']} queries" if ev['reference_extrapolated'] else \
        'all queries'
    return [f"evaluate_rank, {ev['shape'][0]} x {ev['shape'][1]} random distances: {ev['median_seconds']:.3f} s; "
            f"per-query reference loop {ev['reference_seconds']:.2f} s ({reference}); speedup {ev['speedup']:.0f}x; "
            f"agree on the timed subset: {ev['reference_agrees_on_subset']}."]


def memory_format_lines(results: Dict) -> List[str]:
    """The ``memory_format`` section: seconds of each format, the speed-up and the outputs' largest difference."""
    lines = ['Memory format, channels-last against contiguous (speed-up above 1: channels-last is faster):', '',
             '| model | mode | batch | contiguous s | channels-last s | speed-up | max abs difference |',
             '|---|---|---:|---:|---:|---:|---:|']
    lines += [f"| {row['model']} | {row['mode']} | {row['batch_size']} | {row['seconds']['contiguous']:.3f} | "
              f"{row['seconds']['channels_last']:.3f} | {row['speedup']:.2f} | "
              f"{row['max_abs_difference']:.1e} (of {row['output_scale']:.1e}) |" for row in results['memory_format']]
    return lines


def checkpointing_lines(results: Dict) -> List[str]:
    """The ``checkpointing`` section: activations, peak memory and time, off and on, with the on/off ratios."""
    ckpt = results['checkpointing']
    off, on = ckpt['off'], ckpt['on']
    lines = [f"Gradient checkpointing, {ckpt['model']}, {ckpt['img_size'][0]}x{ckpt['img_size'][1]}, batch "
             f"{ckpt['batch_size']}, {ckpt['device']}:", '', '| | off | on | on / off |', '|---|---:|---:|---:|']
    for key, label, scale, unit in (('activation_bytes', 'activations kept for backward', 2 ** 20, 'MiB'),
                                    ('peak_step_bytes', 'peak memory of a step', 2 ** 20, 'MiB'),
                                    ('step_seconds', 'step time', 1, 's')):
        lines.append(f'| {label} ({unit}) | {off[key] / scale:.1f} | {on[key] / scale:.1f} '
                     f'| {on[key] / off[key]:.2f} |')
    return lines + ['', f"same loss with and without: {ckpt['same_loss']}"]


def search_lines(results: Dict) -> List[str]:
    """The ``search`` section: one line for the accelerator case, else a table of every method's measurement."""
    search = results['search']
    if 'median_seconds' in search:
        (num_q, num_g, dim, k), extra, seconds = search['sizes'], search['extra_device_bytes'], search['seconds']
        memory = 'n/a' if extra is None else f'{extra / 2 ** 30:.2f} GiB'
        return [f'top-{k} of {num_q:,} queries in {num_g:,} x {dim}-d float16 on {search["device"]} '
                f'({search["device_name"]}): median {search["median_seconds"]:.3f} s over {len(seconds)} calls '
                f'(min {min(seconds):.3f}, max {max(seconds):.3f}); extra device memory {memory}; indices equal to '
                f'exact float32 search on the first queries: {search["agreement"]:.3f}; target on one H100: '
                f'<= {DEVICE_TOPK_SECONDS_MAX} s']
    lines = ['| task | sizes | method | wall s | CPU s | extra GiB | wall / ours (best) | CPU / ours (best) | '
             'same result |', '|---|---|---|---|---|---|---|---|---|']
    for task in SEARCH_TASKS:
        for row in search.get(task, []):
            ratios = ['' if row.get(key) is None else f'{row[key]:.2f}'
                      for key in ('time_ratio_to_ours', 'cpu_ratio_to_ours')]
            lines.append(f'| {task} | {"x".join(map(str, row["sizes"]))} | {row["method"]} | {row["seconds"]:.2f} | '
                         f'{row["cpu_seconds"]:.2f} | {row["extra_bytes"] / 2 ** 30:.2f} | {ratios[0]} | {ratios[1]} | '
                         f'{row["agrees_with_first"]} |')
    return lines


REPORTS: Tuple[Tuple[str, Callable[[Dict], List[str]]], ...] = (
    ('throughput', _models_lines), ('layers', _layers_lines), ('loader_images_per_second', _pipeline_lines),
    ('recipe', _recipe_lines), ('evaluation', _evaluation_lines), ('memory_format', memory_format_lines),
    ('checkpointing', checkpointing_lines), ('search', search_lines))


def format_table(results: Dict) -> str:
    """The results of every section that ran as markdown, then the targets."""
    env = results['environment']
    lines = [f"Device {env.get('gpu', env['device'])}, {env['torch_threads']} torch threads, torch {env['torch']}, "
             f"input {env['img_size'][0]}x{env['img_size'][1]}, amp dtype {env['amp_dtype']}, "
             f"compile={env['compile']}, channels_last={env['channels_last']}, {env['repeats']} interleaved repeats "
             f"(medians).",
             f"Command: `{env['command']}`"]
    for key, report in REPORTS:
        if results.get(key):
            lines += [''] + report(results)
    if results['targets']:
        lines += ['', '| target | value | limit | met |', '|---|---|---|---|']
    for name, target in results['targets'].items():
        limit = f"<= {target['max']}" if 'max' in target else f">= {target['min']}"
        met = {True: 'yes', False: 'NO', None: 'n/a (GPU target)'}[target['met']]
        lines.append(f"| {name} | {target['value']:.3f} | {limit} | {met} |")
    return '\n'.join(lines)


def _subset(choices: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        names = [name.strip() for name in text.split(',') if name.strip()]
        if not names or set(names) - set(choices):
            raise argparse.ArgumentTypeError(f'expected a comma-separated subset of {",".join(choices)}, got {text!r}')
        return names
    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The options of every section; the defaults that depend on the device and on ``--quick`` filled in."""
    parser = ArgumentParser(prog='python -m benchmarks.speed', description=__doc__.split('\n\n')[0])
    add = parser.add_argument
    add('--sections', type=_subset(SECTIONS), default=list(DEFAULT_SECTIONS), metavar='A,B',
        help=f"sections to run, of {','.join(SECTIONS)} (default: {','.join(DEFAULT_SECTIONS)})")
    add('--quick', action='store_true', help='short run: batch size 2, 2 repeats, the loader in the main process, 300 '
        'reference queries, small search sizes')
    add('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
        help='device (default: cuda when available, else cpu); search: cpu runs --tasks, an accelerator its top-k')
    add('--threads', type=int, help="torch.set_num_threads (default: torch's own)")
    add('--img-size', type=int, nargs=2, default=(384, 128), metavar=('H', 'W'),
        help='network input (default: 384 128)')
    add('--repeats', type=int, help='timed repetitions (default: 5, 2 with --quick)')
    add('--output', default=str(Path('runs') / 'speed.json'),
        help='JSON file of all results (default: runs/speed.json)')
    group = parser.add_argument_group('models, layers, pipeline, evaluation').add_argument
    group('--batch-sizes', type=int, nargs='+', metavar='N',
          help='batch sizes; train mode needs >= 2 (default: 2 4 8 on CPU, 8 32 64 on CUDA)')
    group('--precisions', nargs='+', choices=PRECISIONS, metavar='P',
          help="'fp32' and/or 'amp' (default: both on CUDA, fp32 on CPU)")
    group('--amp', action='store_true', help='shorthand for --precisions amp')
    group('--amp-dtype', choices=('bfloat16', 'float16'), metavar='DTYPE',
          help='autocast dtype of the amp rows, bfloat16 or float16 (default: bfloat16 where the device supports it, '
               'else float16)')
    group('--compile', action='store_true', help='time torch.compile(model) instead of eager')
    group('--channels-last', action='store_true', help='channels_last memory format')
    group('--no-memory', action='store_true', help='skip the peak-memory measurements')
    group('--loader-workers', type=int, nargs='*', metavar='N', help='loader worker counts of the input pipeline; none '
          'to skip it (default: 0 1 2 4 8 ... up to the CPU count; 0 with --quick)')
    group('--reference-queries', type=int,
          help='queries on which the per-query reference loop is timed (default: 1000, 300 with --quick)')
    group = parser.add_argument_group('memory_format, checkpointing, search').add_argument
    group('--models', nargs='+', default=['hbfp_mobilenetv2_100', 'hbfp_resnet50'], metavar='NAME',
          help='memory_format: timm names of HBFP models (default: hbfp_mobilenetv2_100 hbfp_resnet50)')
    group('--modes', nargs='+', choices=('train', 'eval'), default=['train', 'eval'],
          help='memory_format: what to time (default: train eval)')
    group('--model', default='hbfp_resnet50', help='checkpointing: timm model name (default: hbfp_resnet50)')
    group('--batch-size', type=int, default=16, help='memory_format, checkpointing: images per step (default: 16)')
    group('--tasks', type=_subset(SEARCH_TASKS), default=list(SEARCH_TASKS), metavar='A,B',
          help=f"search on CPU: a comma-separated subset of {','.join(SEARCH_TASKS)} (default: all)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device}: expected 'cpu', 'cuda' or 'cuda:N' ({one_line(error)})")
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available on this machine')
    if args.amp and args.precisions:
        parser.error('--amp is a shorthand for --precisions amp; give one of them')
    on_cuda = device.type == 'cuda'
    args.precisions = ['amp'] if args.amp else args.precisions or (['fp32', 'amp'] if on_cuda else ['fp32'])
    args.amp_dtype = DTYPES[args.amp_dtype] if args.amp_dtype else autocast_dtype(device)
    cpus = os.cpu_count() or 1
    for key, default, quick in (
            ('batch_sizes', [8, 32, 64] if on_cuda else [2, 4, 8], [2]), ('repeats', 5, 2),
            ('reference_queries', 1000, 300),
            ('loader_workers', sorted({0, cpus} | {n for n in (1, 2, 4, 8, 16) if n <= cpus}), [0])):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else default)
    args.img_size = tuple(args.img_size)
    for option, value, least, why in (
            ('--batch-sizes', min(args.batch_sizes), 1, ''), ('--repeats', args.repeats, 1, ''),
            ('--reference-queries', args.reference_queries, 1, ''),
            ('--loader-workers', min(args.loader_workers or [0]), 0, ''),
            ('--threads', 1 if args.threads is None else args.threads, 1, ''),
            ('--batch-size', args.batch_size, 2, ' (the BatchNorm neck trains on batches)')):
        if value < least:
            parser.error(f'{option}: expected at least {least}{why}, got {value}')
    if min(args.img_size) < 32:
        parser.error(f'--img-size: expected at least 32x32, got {args.img_size[0]}x{args.img_size[1]}')
    if Path(args.output).is_dir():
        parser.error(f'--output {args.output} is a folder; expected a JSON file path')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.speed``: run, print the report, write the JSON; the exit code (see ``guarded``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    def body() -> None:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if 'search' in args.sections and args.device == 'cpu' and not os.path.exists('/proc/self/clear_refs'):
            raise OSError('the search section needs Linux (/proc/self/clear_refs) to measure peak memory')
        results = run(args, argv)
        results['table'] = format_table(results)
        print(results['table'])
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1))
        print(f'\nwrote {output}')

    return guarded(body)


if __name__ == '__main__':
    sys.exit(main())
