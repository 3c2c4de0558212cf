"""Speed of HBFP-Net against the BoT baseline, of its BFP and GeP layers, and of the re-id evaluation.

``python -m benchmarks.speed`` measures in one run (``--quick`` for a short one):

* images/s of ``hbfp_resnet50`` and of the BoT baseline (timm ``resnet50`` with last stride 1, average
  pooling and a BatchNorm neck, Luo et al. 2019), eval forward (``no_grad``) and train forward+backward
  (loss: mean square of the descriptor, the same for both), at 384x128 and several batch sizes. The two models
  are *interleaved*: every repetition runs one step of each, so that a slow moment of a shared machine hits
  both; the reported time is the median over repetitions and the ratio the median of the per-repetition
  ratios;
* peak memory of one step (see :func:`peak_memory`);
* FLOPs of both from ``torch.utils.flop_counter.FlopCounterMode`` (matmul/convolution FLOPs, the
  arithmetic that dominates; element-wise ops are not counted);
* the cost of the two BFP modules and of GeP alone, on the real map sizes, against a whole forward;
* ``hbfp_timm.metrics.evaluate_rank`` at Market-1501 test scale (3,368 x 15,913 random distances with
  Market-like identities and cameras) against the per-query reference loop ``evaluate_rank_reference``,
  which is timed on a subset of queries and extrapolated linearly (it is linear in the number of queries).

It prints a markdown table, checks the targets of issue 6 and writes everything to ``--output`` as JSON.
On CUDA, steps are timed with CUDA events after ``torch.cuda.synchronize()``.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import hbfp_timm
from hbfp_timm.metrics import evaluate_rank, evaluate_rank_reference
from hbfp_timm.models import BatchNormNeck, create_backbone
from hbfp_timm.models.backbone import run_modules

__all__ = ['BoTBaseline', 'create_benchmark_model', 'time_interleaved', 'peak_memory', 'count_flops',
           'market_like_ids', 'main']

MODELS = ('bot_resnet50', 'hbfp_resnet50')
MODES = ('eval', 'train')

# Targets of issue 6 on this machine's CPU.
TIME_OVER_FLOP_RATIO_MAX = 1.15
GEP_SHARE_MAX = 0.03
EVAL_SECONDS_MAX = 1.5
EVAL_SPEEDUP_MIN = 30.0

# Market-1501 test split: 3,368 queries and 15,913 gallery images (junk removed) of 750 identities in 6
# cameras, 2,798 of the gallery images distractors (identity 0).
MARKET_QUERIES, MARKET_GALLERY, MARKET_IDS, MARKET_CAMS, MARKET_DISTRACTORS = 3368, 15913, 750, 6, 2798


class BoTBaseline(nn.Module):
    """BoT baseline (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification",
    2019): ResNet-50 with last stride 1, global average pooling, BatchNorm neck; the descriptor is the neck
    output, as for HBFP-Net."""

    def __init__(self, backbone: str = 'resnet50'):
        super().__init__()
        self.backbone = create_backbone(backbone)
        self.backbone.reset_classifier(0, global_pool='avg')
        self.neck = BatchNormNeck(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))


def create_benchmark_model(name: str) -> nn.Module:
    """``'bot_resnet50'`` (the baseline) or any timm model name (``'hbfp_resnet50'``)."""
    if name == 'bot_resnet50':
        return BoTBaseline('resnet50')
    return timm.create_model(name)


def _autocast(device: torch.device, amp: bool):
    dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp)


def make_step(model: nn.Module, mode: str, x: torch.Tensor, amp: bool) -> Callable[[], None]:
    """One benchmark step: eval forward under ``no_grad``, or train forward + backward of a scalar loss."""
    if mode == 'eval':
        model.eval()

        def step() -> None:
            with torch.no_grad(), _autocast(x.device, amp):
                model(x)
    elif mode == 'train':
        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with _autocast(x.device, amp):
                loss = model(x).float().square().mean()
            loss.backward()
    else:
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    return step


def _time_once(step: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    begin = time.perf_counter()
    step()
    return time.perf_counter() - begin


def time_interleaved(steps: Dict[str, Callable[[], None]], repeats: int, device: torch.device,
                     warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each step, the steps alternating within every repetition.

    Args:
        steps: Name -> zero-argument callable.
        repeats: Timed repetitions of each step.
        device: Where the steps run (CUDA steps are timed with events).
        warmup: Untimed calls of each step first (allocator, oneDNN / cuDNN kernel selection).

    Returns:
        Name -> list of ``repeats`` durations in seconds, in repetition order (so index r of two lists
        pairs calls made at nearly the same moment).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        # Alternate the order too, so that neither step always runs right after the other.
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_time_once(steps[name], device))
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the paired per-repetition ratios (robust to a slow moment that hits both)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def count_flops(model: nn.Module, mode: str, x: torch.Tensor) -> int:
    """FLOPs of one step counted by ``FlopCounterMode`` (forward, plus backward in train mode)."""
    step = make_step(model, mode, x, amp=False)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(f'{field} not in /proc/self/status')


def _memory_probe(name: str, mode: str, batch_size: int, img_size: Tuple[int, int], amp: bool,
                  channels_last: bool) -> int:
    """Run in a fresh process: peak resident set size during one step minus the resident set size just
    before it (model, input and interpreter already allocated)."""
    torch.manual_seed(0)
    model, x = _prepare(name, batch_size, img_size, torch.device('cpu'), channels_last)
    step = make_step(model, mode, x, amp)
    try:
        # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0), so that the
        # transient memory of building the model does not mask the step's peak.
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        before = _status_bytes('VmRSS')
        step()
        return _status_bytes('VmHWM') - before
    except OSError:
        # ru_maxrss cannot be reset: a lower bound when building the model peaked higher than the step.
        scale = 1 if sys.platform == 'darwin' else 1024  # KiB on Linux, bytes on macOS
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        step()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - before


def peak_memory(name: str, mode: str, batch_size: int, img_size: Tuple[int, int], device: torch.device,
                amp: bool, channels_last: bool) -> int:
    """Peak extra memory of one step, in bytes (activations, autograd buffers, gradients, workspaces).

    On CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the allocation before it. On CPU the
    torch allocator keeps no statistics and ``tracemalloc`` does not see it, so the step runs in a fresh
    Python process and the growth of its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) over
    the value just before the step is reported; this includes allocator and oneDNN overheads.
    """
    if device.type == 'cuda':
        model, x = _prepare(name, batch_size, img_size, device, channels_last)
        step = make_step(model, mode, x, amp)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del model, x, step
        torch.cuda.empty_cache()
        return peak
    command = [sys.executable, '-m', 'benchmarks.speed', '--memory-probe', name, mode, str(batch_size),
               '--img-size', *map(str, img_size)] + (['--amp'] if amp else []) + \
              (['--channels-last'] if channels_last else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))
    return int(result.stdout.strip().splitlines()[-1])


def _prepare(name: str, batch_size: int, img_size: Tuple[int, int], device: torch.device,
             channels_last: bool) -> Tuple[nn.Module, torch.Tensor]:
    model = create_benchmark_model(name).to(device)
    x = torch.randn(batch_size, 3, *img_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def layer_costs(model: hbfp_timm.HBFPNet, batch_size: int, img_size: Tuple[int, int], device: torch.device,
                repeats: int, amp: bool, channels_last: bool) -> Dict:
    """Eval time of each BFP module and of GeP on the maps the model really produces, against a whole
    forward, interleaved; plus the FLOP share of the BFP modules."""
    model.eval()
    x = torch.randn(batch_size, 3, *img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cuts = model._cuts
    with torch.no_grad(), _autocast(device, amp):
        low = run_modules(model.backbone, cuts.stem, x)
        mid = run_modules(model.backbone, cuts.block3, low)
        high = run_modules(model.backbone, cuts.block4, mid)
        features = model.forward_features(x)

    def under_no_grad(fn: Callable[[], object]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad(), _autocast(device, amp):
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
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    total_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.bfp_low_mid.perceive(low, mid)
        model.bfp_mid_high.perceive(mid, high)
    bfp_flops = counter.get_total_flops()
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        'batch_size': batch_size,
        'map_shapes': {'low': list(low.shape), 'mid': list(mid.shape), 'high': list(high.shape),
                       'gep_input': list(features.shape)},
        'lambdas': [round(v, 4) for v in model.global_pool.lambdas.tolist()] if hasattr(model.global_pool, 'lambdas') else None,
        'seconds': times,
        'median_seconds': median,
        'share_of_forward': {name: median_ratio(t, times['forward']) for name, t in times.items()
                             if name != 'forward'},
        'bfp_flop_share': bfp_flops / total_flops,
    }


def market_like_ids(seed: int = 0) -> Tuple[np.ndarray, ...]:
    """Random identities and cameras with the structure of the Market-1501 test split.

    Every identity has queries in distinct cameras and gallery images in random cameras; distractors
    (identity 0) fill the rest of the gallery.

    Returns:
        (q_pids, g_pids, q_camids, g_camids) int64 arrays of lengths 3,368 and 15,913.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(1, MARKET_IDS + 1)
    q_pids = np.concatenate([ids, rng.choice(ids, MARKET_QUERIES - MARKET_IDS)])
    q_camids = rng.integers(1, MARKET_CAMS + 1, MARKET_QUERIES)
    num_id_images = MARKET_GALLERY - MARKET_DISTRACTORS
    g_pids = np.concatenate([ids, rng.choice(ids, num_id_images - MARKET_IDS), np.zeros(MARKET_DISTRACTORS, int)])
    g_camids = rng.integers(1, MARKET_CAMS + 1, MARKET_GALLERY)
    # Every identity keeps at least one gallery image in a camera other than its first query's.
    g_camids[:MARKET_IDS] = q_camids[:MARKET_IDS] % MARKET_CAMS + 1
    return q_pids.astype(np.int64), g_pids.astype(np.int64), q_camids.astype(np.int64), g_camids.astype(np.int64)


def evaluation_speed(repeats: int, reference_queries: int, seed: int = 0) -> Dict:
    """``evaluate_rank`` at Market-1501 scale against the per-query loop (extrapolated from a subset)."""
    q_pids, g_pids, q_camids, g_camids = market_like_ids(seed)
    distmat = np.random.default_rng(seed + 1).random((MARKET_QUERIES, MARKET_GALLERY), dtype=np.float32)
    vectorised = []
    for _ in range(repeats):
        begin = time.perf_counter()
        cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
        vectorised.append(time.perf_counter() - begin)
    subset = min(reference_queries, MARKET_QUERIES)
    begin = time.perf_counter()
    reference = evaluate_rank_reference(distmat[:subset], q_pids[:subset], g_pids, q_camids[:subset], g_camids)
    reference_subset_seconds = time.perf_counter() - begin
    subset_cmc, subset_mAP = evaluate_rank(distmat[:subset], q_pids[:subset], g_pids, q_camids[:subset], g_camids)
    reference_seconds = reference_subset_seconds * MARKET_QUERIES / subset
    median = statistics.median(vectorised)
    return {
        'shape': [MARKET_QUERIES, MARKET_GALLERY],
        'seconds': vectorised,
        'median_seconds': median,
        'rank1': float(cmc[0]),
        'mAP': mAP,
        'reference_queries_timed': subset,
        'reference_subset_seconds': reference_subset_seconds,
        'reference_seconds': reference_seconds,
        'reference_extrapolated': subset < MARKET_QUERIES,
        'reference_agrees_on_subset': bool(np.allclose(reference.cmc, subset_cmc)
                                           and abs(reference.mAP - subset_mAP) < 1e-9),
        'speedup': reference_seconds / median,
    }


def _environment(device: torch.device, args: argparse.Namespace) -> Dict:
    info = {
        'python': platform.python_version(), 'torch': torch.__version__, 'timm': timm.__version__,
        'platform': platform.platform(), 'processor': platform.processor(), 'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(), 'device': str(device), 'amp': args.amp,
        'channels_last': args.channels_last, 'img_size': list(args.img_size), 'repeats': args.repeats,
        'command': 'python -m benchmarks.speed ' + ' '.join(sys.argv[1:]),
    }
    if hasattr(os, 'getloadavg'):
        info['load_average_at_start'] = os.getloadavg()
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def run(args: argparse.Namespace) -> Dict:
    device = torch.device(args.device)
    img_size = tuple(args.img_size)
    torch.manual_seed(0)
    results: Dict = {'environment': _environment(device, args), 'throughput': [], 'targets': {}}
    models = {}
    for name in MODELS:
        model = create_benchmark_model(name).to(device)
        models[name] = model.to(memory_format=torch.channels_last) if args.channels_last else model

    # Two images: train-mode BatchNorm needs more than one value per channel.
    flop_input = torch.randn(2, 3, *img_size, device=device)
    flops = {name: {mode: count_flops(model, mode, flop_input) // 2 for mode in MODES}
             for name, model in models.items()}
    results['flops_per_image'] = flops
    results['flop_ratio'] = {mode: flops['hbfp_resnet50'][mode] / flops['bot_resnet50'][mode] for mode in MODES}
    results['params'] = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}

    for batch_size in args.batch_sizes:
        x = torch.randn(batch_size, 3, *img_size, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for mode in MODES:
            if mode == 'train' and batch_size == 1:
                continue  # train-mode BatchNorm needs more than one value per channel
            steps = {name: make_step(model, mode, x, args.amp) for name, model in models.items()}
            times = time_interleaved(steps, args.repeats, device)
            row = {'batch_size': batch_size, 'mode': mode, 'seconds': times,
                   'time_ratio': median_ratio(times['hbfp_resnet50'], times['bot_resnet50']),
                   'images_per_second': {n: batch_size / statistics.median(t) for n, t in times.items()}}
            if not args.no_memory:
                row['peak_memory_bytes'] = {
                    name: peak_memory(name, mode, batch_size, img_size, device, args.amp, args.channels_last)
                    for name in MODELS}
            row['time_over_flop_ratio'] = row['time_ratio'] / results['flop_ratio'][mode]
            results['throughput'].append(row)
            print(_throughput_line(row), flush=True)

    results['layers'] = layer_costs(models['hbfp_resnet50'], max(args.batch_sizes), img_size, device,
                                    args.repeats, args.amp, args.channels_last)
    results['evaluation'] = evaluation_speed(max(3, args.repeats // 2), args.reference_queries)

    worst_ratio = max(row['time_over_flop_ratio'] for row in results['throughput'])
    gep_share = results['layers']['share_of_forward']['gep']
    evaluation = results['evaluation']
    results['targets'] = {
        'time_over_flop_ratio': {'worst': worst_ratio, 'max': TIME_OVER_FLOP_RATIO_MAX,
                                 'met': worst_ratio <= TIME_OVER_FLOP_RATIO_MAX},
        'gep_share_of_forward': {'value': gep_share, 'max': GEP_SHARE_MAX, 'met': gep_share < GEP_SHARE_MAX},
        'evaluate_rank_seconds': {'value': evaluation['median_seconds'], 'max': EVAL_SECONDS_MAX,
                                  'met': evaluation['median_seconds'] < EVAL_SECONDS_MAX},
        'evaluate_rank_speedup': {'value': evaluation['speedup'], 'min': EVAL_SPEEDUP_MIN,
                                  'met': evaluation['speedup'] >= EVAL_SPEEDUP_MIN},
    }
    return results


def _throughput_line(row: Dict) -> str:
    ips = row['images_per_second']
    return (f"batch {row['batch_size']:>3} {row['mode']:<5}: BoT {ips['bot_resnet50']:.2f} img/s, "
            f"HBFP {ips['hbfp_resnet50']:.2f} img/s, time ratio {row['time_ratio']:.2f}")


def _mib(value: Optional[int]) -> str:
    return '-' if value is None else f'{value / 2 ** 20:.0f}'


def format_table(results: Dict) -> str:
    """The results as markdown tables."""
    env = results['environment']
    lines = [
        f"Device {env['device']}, {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"input {env['img_size'][0]}x{env['img_size'][1]}, amp={env['amp']}, "
        f"channels_last={env['channels_last']}, {env['repeats']} interleaved repeats (medians).",
        '',
        '| batch | mode | BoT img/s | HBFP img/s | time ratio | FLOP ratio | time / FLOP ratio '
        '| BoT peak MiB | HBFP peak MiB |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for row in results['throughput']:
        ips = row['images_per_second']
        memory = row.get('peak_memory_bytes', {})
        lines.append(
            f"| {row['batch_size']} | {row['mode']} | {ips['bot_resnet50']:.2f} | {ips['hbfp_resnet50']:.2f} "
            f"| {row['time_ratio']:.2f} | {results['flop_ratio'][row['mode']]:.2f} "
            f"| {row['time_over_flop_ratio']:.2f} | {_mib(memory.get('bot_resnet50'))} "
            f"| {_mib(memory.get('hbfp_resnet50'))} |")
    flops, params = results['flops_per_image'], results['params']
    lines += [
        '',
        '| model | params (M) | GFLOPs/img forward | GFLOPs/img forward+backward |',
        '|---|---|---|---|',
    ]
    for name in MODELS:
        lines.append(f"| {name} | {params[name] / 1e6:.1f} | {flops[name]['eval'] / 1e9:.1f} "
                     f"| {flops[name]['train'] / 1e9:.1f} |")
    layers = results['layers']
    median, share = layers['median_seconds'], layers['share_of_forward']
    lines += [
        '',
        f"Layers alone, eval, batch {layers['batch_size']}, GeP input {tuple(layers['map_shapes']['gep_input'])}, "
        f"lambdas {tuple(layers['lambdas'] or ())}; BFP FLOP share of the forward "
        f"{100 * layers['bfp_flop_share']:.1f}%:",
        '',
        '| part | ms | share of forward |',
        '|---|---|---|',
        f"| whole forward | {1e3 * median['forward']:.1f} | 100% |",
    ]
    for name in ('bfp_low_mid', 'bfp_mid_high', 'gep', 'avg_pool'):
        lines.append(f'| {name} | {1e3 * median[name]:.1f} | {100 * share[name]:.2f}% |')
    ev = results['evaluation']
    reference_note = (f"extrapolated from {ev['reference_queries_timed']} queries" if ev['reference_extrapolated']
                      else 'all queries')
    lines += [
        '',
        f"evaluate_rank, {ev['shape'][0]} x {ev['shape'][1]} random distances: {ev['median_seconds']:.3f} s; "
        f"per-query reference loop {ev['reference_seconds']:.2f} s ({reference_note}); speedup "
        f"{ev['speedup']:.0f}x; agree on the timed subset: {ev['reference_agrees_on_subset']}.",
        '',
        '| target | value | limit | met |',
        '|---|---|---|---|',
    ]
    for name, target in results['targets'].items():
        value = target.get('worst', target.get('value'))
        limit = f"<= {target['max']}" if 'max' in target else f">= {target['min']}"
        lines.append(f'| {name} | {value:.3f} | {limit} | {"yes" if target["met"] else "NO"} |')
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                        help='batch sizes (default: 2 4 8 on CPU, 8 32 64 on CUDA); train mode needs >= 2')
    parser.add_argument('--repeats', type=int, default=None, help='timed repetitions (default 5, 2 with --quick)')
    parser.add_argument('--img-size', type=int, nargs=2, default=(384, 128), metavar=('H', 'W'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='autocast (bfloat16 on CPU, float16 on CUDA)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    parser.add_argument('--reference-queries', type=int, default=None,
                        help='queries on which the per-query reference loop is timed (default 1000, 300 with --quick)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurements')
    parser.add_argument('--quick', action='store_true', help='short run: batch size 2, 2 repeats')
    parser.add_argument('--output', default='speed.json', help='JSON file for all measurements')
    parser.add_argument('--memory-probe', nargs=3, metavar=('MODEL', 'MODE', 'BATCH'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    on_cuda = str(args.device).startswith('cuda')
    if args.batch_sizes is None:
        args.batch_sizes = [2] if args.quick else ([8, 32, 64] if on_cuda else [2, 4, 8])
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.reference_queries is None:
        args.reference_queries = 300 if args.quick else 1000
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.reference_queries < 1:
        parser.error('--batch-sizes, --repeats and --reference-queries must be positive')
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        name, mode, batch_size = args.memory_probe
        print(_memory_probe(name, mode, int(batch_size), tuple(args.img_size), args.amp, args.channels_last))
        return {}
    results = run(args)
    table = format_table(results)
    print(table)
    results['table'] = table
    with open(args.output, 'w') as f:
        json.dump(results, f, indent=1)
    print(f'\nwrote {args.output}')
    return results


if __name__ == '__main__':
    main()
