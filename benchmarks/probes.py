"""The measuring machinery of the speed benchmark (``python -m benchmarks.speed`` runs it section by section).

* Timing is interleaved: every repetition runs one call of each step, in alternating order, so that a slow moment of
  a shared machine hits all of them; a ratio is the median of the per-repetition ratios. On CUDA a call is timed
  with CUDA events between two ``torch.cuda.synchronize()``.
* Peak memory of one call (:func:`measure_once`): on CUDA ``torch.cuda.max_memory_allocated`` during the call minus
  the allocation before it. On CPU the torch allocator keeps no statistics and ``tracemalloc`` does not see it: the
  growth of the peak resident set size over the resident set size just before the call (the peak is reset through
  ``/proc/self/clear_refs``, Linux), allocator and oneDNN overheads included, which needs a fresh process per
  measurement. ``python -m benchmarks.probes PROBE JSON`` runs one probe of :data:`CHILD_PROBES` (``memory``,
  ``checkpointing``, ``search``) with its keyword arguments given as JSON and prints its result as one JSON line,
  e.g. ``python -m benchmarks.probes memory '{"name": "hbfp_resnet18", "mode": "train", "batch_size": 4,
  "img_size": [64, 32]}'``.
* The BoT baseline (Luo et al. 2019: ResNet-50, last stride 1, average pooling, BatchNorm neck) is
  ``timm.create_model('hbfp_resnet50', **hbfp_timm.models.BOT_ARGS)``.
"""
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import hbfp_timm
from hbfp_timm.commands import one_line, run_command
from hbfp_timm.data import ImageDataset, build_dataset, build_train_transform
from hbfp_timm.data.synthetic import generate_synthetic_dataset
from hbfp_timm.metrics import evaluate_features, evaluate_rank
from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.metrics.reranking import re_ranking, re_ranking_features
from hbfp_timm.metrics.retrieval import faiss_available, topk
from hbfp_timm.models import BOT_ARGS
from hbfp_timm.utils.memory import saved_activation_bytes

from .settings import BenchmarkError

# 'fp32': no autocast; 'amp': torch.autocast with the run's AMP dtype (``hbfp_timm.inference.features.autocast_dtype``).
PRECISIONS = ('fp32', 'amp')
DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
# Market-1501: bounding boxes of 128x64 pixels; a test split of 3,368 queries and 15,913 gallery images (junk removed)
# of 750 identities in 6 cameras, 2,798 of the gallery images distractors (identity 0).
MARKET_IMAGE_SIZE = (128, 64)
# The paper's recipe (4.2) on Market-1501: 12,936 training images, batch 64, 500 epochs; an evaluation every 50.
MARKET_TRAIN_IMAGES, RECIPE_EPOCHS, RECIPE_BATCH, RECIPE_EVAL_EVERY = 12936, 500, 64, 50
# Targets on one H100 (issues 10 and 11): only checked (recipe) or printed (search) on a GPU.
RECIPE_HOURS_MAX = 1.5
DEVICE_TOPK_SECONDS_MAX = 0.2
MARKET_QUERIES, MARKET_GALLERY, MARKET_IDS, MARKET_CAMS, MARKET_DISTRACTORS = 3368, 15913, 750, 6, 2798
# Search: (queries, gallery, dim, k | noise) per task and scale; the device case is a float16 gallery on the device.
SEARCH_TASKS = ('topk', 'evaluate', 'rerank')
SEARCH_SIZES = {
    'full': dict(topk=(1000, 1_000_000, 512, 10), evaluate=(10_000, 100_000, 512, 2.5), rerank=(3368, 15913, 2048)),
    'quick': dict(topk=(50, 20_000, 64, 10), evaluate=(300, 3_000, 64, 1.2), rerank=(100, 600, 64)),
}
DEVICE_SEARCH_SIZES = {'full': (1000, 1_000_000, 4096, 10), 'quick': (50, 20_000, 64, 10)}
FORMATS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}


# -- Steps and timing --------------------------------------------------------------------------------------------------

def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` with ``amp_dtype``, or nothing when it is None (float32)."""
    return nullcontext() if amp_dtype is None else torch.autocast(device_type=device.type, dtype=amp_dtype)


def branches_loss(outputs: hbfp_timm.models.BranchOutputs) -> torch.Tensor:
    """The stand-in training loss of ``forward_branches``: the sum of every branch's logits and of its squared pooled
    features (it reaches every branch, neck and classifier)."""
    return sum(logit.sum() for logit in outputs.logits) + sum(p.square().sum() for p in outputs.pooled)


def make_step(model: nn.Module, mode: str, x: torch.Tensor, amp_dtype: Optional[torch.dtype] = None,
              branches: bool = False) -> Callable[[], torch.Tensor]:
    """One benchmark step, which returns its output: the eval forward under ``no_grad``, or a train forward and the
    backward of a scalar loss, the mean square of the descriptor (the same for every model), or with ``branches``
    :func:`branches_loss` of ``forward_branches`` (what a training step computes, less the optimizer)."""
    if mode not in ('eval', 'train'):
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    model.train(mode == 'train')

    def step() -> torch.Tensor:
        if mode == 'eval':
            with torch.no_grad(), autocast(x.device, amp_dtype):
                return model(x)
        model.zero_grad(set_to_none=True)
        with autocast(x.device, amp_dtype):
            loss = branches_loss(model.forward_branches(x)) if branches else model(x).float().square().mean()
        loss.backward()
        return loss.detach()
    return step


def _time_once(step: Callable[[], Any], device: torch.device) -> float:
    if device.type != 'cuda':
        begin = time.perf_counter()
        step()
        return time.perf_counter() - begin
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    step()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1000.0


def time_interleaved(steps: Dict[str, Callable[[], Any]], repeats: int, device: torch.device,
                     warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each step (name -> zero-argument callable), after ``warmup`` untimed calls of each
    (allocator, oneDNN / cuDNN kernel selection, compilation), the steps alternating within every repetition and their
    order too, so that none always runs right after another.

    Returns:
        Name -> ``repeats`` durations in repetition order (index r of two lists pairs calls of nearly one moment).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_time_once(steps[name], device))
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the paired per-repetition ratios (robust to a slow moment that hits both)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward: the gradient of the input and that of the weight each take as many
    multiply-adds as the forward (the weight's shape carries the groups). torch's own formula leaves the groups out
    of the weight gradient, counting a depthwise convolution's backward as if it were dense (MobileNetV2's
    forward+backward came out at 23x its forward)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(model: nn.Module, mode: str, x: torch.Tensor) -> int:
    """FLOPs of one float32 step counted by ``FlopCounterMode`` (forward, plus backward in train mode): matmuls and
    convolutions, not element-wise operations; grouped convolutions' backward by :func:`_conv_backward_flops`. The
    count does not depend on the precision: always in float32."""
    step = make_step(model, mode, x.float())
    with FlopCounterMode(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops}) as counter:
        step()
    return counter.get_total_flops()


def model_pair(hbfp_model: str) -> Tuple[str, str]:
    """What the speed benchmark compares: ``('bot_X', 'hbfp_X')``, an HBFP model and its BoT configuration."""
    return 'bot_' + hbfp_model.removeprefix('hbfp_'), hbfp_model


def create_benchmark_model(name: str, **kwargs: Any) -> nn.Module:
    """``'bot_X'`` (the BoT baseline: ``hbfp_X`` with ``BOT_ARGS``, e.g. ``bot_resnet50``) or any timm model name."""
    if name.startswith('bot_'):
        return timm.create_model('hbfp_' + name.removeprefix('bot_'), **BOT_ARGS, **kwargs)
    return timm.create_model(name, **kwargs)


# -- Memory ------------------------------------------------------------------------------------------------------------

def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(f'{field} not in /proc/self/status')


def measure_once(call: Callable[[], Any], device: torch.device) -> Tuple[Any, int, float, float]:
    """One call under a reset peak (see the module docstring).

    Returns:
        (the call's result, its peak extra memory in bytes, its wall seconds, its CPU seconds: user + system time of
        this process, all threads, which other work sharing the cores barely changes).
    """
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # noqa: E731 (ru_utime + ru_stime)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before, peak = torch.cuda.memory_allocated(device), lambda: torch.cuda.max_memory_allocated(device)
    else:
        try:  # writing 5 resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            before, peak = status_bytes('VmRSS'), lambda: status_bytes('VmHWM')
        except OSError:  # ru_maxrss cannot be reset: a lower bound when something earlier peaked higher
            scale = 1 if sys.platform == 'darwin' else 1024  # KiB on Linux, bytes on macOS
            peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale  # noqa: E731
            before = peak()
    cpu_start, start = cpu(), time.perf_counter()
    result = call()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
    return result, peak() - before, seconds, cpu_seconds


def memory_probe(name: str, mode: str, batch_size: int, img_size: Sequence[int], amp_dtype: str = 'float32',
                 channels_last: bool = False, device: str = 'cpu') -> int:
    """Peak extra memory of one benchmark step (:func:`make_step`) in bytes: activations, autograd buffers,
    gradients, workspaces (model, input and interpreter already allocated). ``amp_dtype``: a key of DTYPES."""
    torch.manual_seed(0)
    model = create_benchmark_model(name).to(device)
    x = torch.randn(batch_size, 3, *img_size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return measure_once(make_step(model, mode, x, DTYPES[amp_dtype]), torch.device(device))[1]


def peak_memory(name: str, mode: str, batch_size: int, img_size: Sequence[int], device: torch.device,
                amp_dtype: Optional[torch.dtype], channels_last: bool) -> int:
    """:func:`memory_probe` in this process on CUDA, in a fresh one on CPU (see the module docstring)."""
    dtype = 'float32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')
    kwargs = dict(name=name, mode=mode, batch_size=batch_size, img_size=list(img_size), amp_dtype=dtype,
                  channels_last=channels_last)
    if device.type != 'cuda':
        return in_fresh_process('memory', **kwargs)
    peak = memory_probe(**kwargs, device=str(device))
    torch.cuda.empty_cache()
    return peak


# -- Input pipeline and evaluation -------------------------------------------------------------------------------------

def loader_throughput(workers: Sequence[int], img_size: Tuple[int, int] = (384, 128), batch_size: int = 64,
                      batches: int = 8, folder: Optional[str] = None) -> Dict[int, float]:
    """Training images per second that JPEG decoding and the paper's augmentation deliver, per number of workers.

    Synthetic pedestrians (``hbfp_timm.data.synthetic``) at Market-1501's size, JPEG, read through the trainer's own
    dataset class and transform (``build_train_transform`` to ``img_size``), batched by a ``DataLoader`` as the
    trainer batches: ``batches`` batches timed after one untimed (worker start-up, first reads). ``workers``: numbers
    of loader processes (0: the main process); ``folder``: where the images go (default: a temporary folder).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder or tmp)
        # Enough distinct files that the timed batches do not re-read one file many times.
        num_ids = max(4, (batches + 1) * batch_size // 12 + 2)
        generate_synthetic_dataset(root, num_ids=min(num_ids * 2, 9999), num_cams=2, images_per_id=12,
                                   height=MARKET_IMAGE_SIZE[0], width=MARKET_IMAGE_SIZE[1], progress=False,
                                   overwrite=True)
        dataset = ImageDataset(build_dataset('market_layout', root).train, build_train_transform(tuple(img_size)))
        throughput = {}
        for n in workers:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=n, drop_last=True,
                                generator=torch.Generator().manual_seed(0))
            if len(loader) < batches + 1:
                raise ValueError(f'batches: {batches + 1} batches of {batch_size} need more than the {len(dataset)} '
                                 f'images')
            iterator = iter(loader)
            next(iterator)  # worker start-up and the first reads are not part of the steady state
            begin = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            throughput[n] = batches * batch_size / (time.perf_counter() - begin)
            del iterator
        return throughput


# -- Memory format and gradient checkpointing --------------------------------------------------------------------------

def compare_formats(model_name: str, img_size: Sequence[int], batch_size: int, repeats: int,
                    device: torch.device, modes: Sequence[str] = ('train', 'eval')) -> List[Dict]:
    """One model copied into both memory formats (the same weights), each mode timed interleaved.

    Returns:
        One dict per mode: seconds per call of each format (medians, and all repetitions in ``times``), the speed-up
        (median of the paired contiguous / channels-last ratios) and the largest absolute difference of the outputs.
    """
    torch.manual_seed(0)
    try:
        base = timm.create_model(model_name, num_classes=100)
    except (RuntimeError, ValueError, TypeError) as error:
        raise BenchmarkError(f'--models {model_name}: {one_line(error)}') from error
    models = {name: copy.deepcopy(base).to(device, memory_format=fmt) for name, fmt in FORMATS.items()}
    x = torch.randn(batch_size, 3, *img_size, device=device)
    rows = []
    for mode in modes:
        steps = {name: make_step(models[name], mode, x.contiguous(memory_format=fmt), branches=True)
                 for name, fmt in FORMATS.items()}
        # The same weights and BatchNorm state in both copies before the outputs are compared: a train step
        # moves the running statistics, identically in both.
        outputs = {name: step() for name, step in steps.items()}
        difference = (outputs['contiguous'].float() - outputs['channels_last'].float()).abs().max().item()
        times = time_interleaved(steps, repeats, device, warmup=0)
        rows.append(dict(model=model_name, mode=mode, batch_size=batch_size,
                         seconds={name: statistics.median(t) for name, t in times.items()}, times=times,
                         speedup=median_ratio(times['contiguous'], times['channels_last']),
                         max_abs_difference=difference, output_scale=outputs['contiguous'].float().abs().max().item()))
    return rows


def activation_bytes(model: nn.Module, x: torch.Tensor) -> Tuple[int, torch.Tensor]:
    """One training step (``forward_branches``, :func:`branches_loss`, backward): (the bytes autograd keeps from
    forward to backward, ``hbfp_timm.utils.memory.saved_activation_bytes``; the loss)."""
    return saved_activation_bytes(model, lambda: branches_loss(model.forward_branches(x)))


def checkpointing_probe(model: str, img_size: Sequence[int], batch_size: int, checkpointing: bool,
                        device: str) -> Dict:
    """One warm-up training step, then one measured by :func:`measure_once`, with checkpointing off or on."""
    torch.manual_seed(0)
    net = timm.create_model(model, num_classes=100).to(device).train()
    net.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch_size, 3, *img_size, device=device)
    activation_bytes(net, x)  # warm-up: one-time allocations of the first step
    net.zero_grad(set_to_none=True)
    (activations, loss), peak, seconds, _ = measure_once(lambda: activation_bytes(net, x), torch.device(device))
    return dict(checkpointing=checkpointing, activation_bytes=activations, peak_step_bytes=peak, step_seconds=seconds,
                loss=loss.item())


def compare_checkpointing(model: str, img_size: Sequence[int], batch_size: int, device: str) -> Dict:
    """:func:`checkpointing_probe` off and on, each in a fresh process in which glibc maps every block of 128 KiB or
    more on its own and unmaps it when freed, so that the resident set follows the live tensors rather than what
    the warm-up step left in the heap."""
    malloc = dict(MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072')
    off, on = (in_fresh_process('checkpointing', malloc, model=model, img_size=list(img_size), batch_size=batch_size,
                                checkpointing=checkpointing, device=device) for checkpointing in (False, True))
    return dict(model=model, img_size=list(img_size), batch_size=batch_size, device=device, off=off, on=on,
                same_loss=off['loss'] == on['loss'])


# -- Search ------------------------------------------------------------------------------------------------------------

def _search_inputs(task: str, sizes: Sequence) -> Tuple:
    """Seeded inputs, the same in every process: random descriptors for top-k; for evaluation, descriptors spread
    around identity centres (noise: a perfect ranking would hide a disagreement between the methods), identities and
    cameras; for re-ranking, normalised clustered descriptors."""
    generator = torch.Generator().manual_seed({'topk': 0, 'evaluate': 1, 'rerank': 4}[task])
    if task == 'topk':
        return tuple(torch.randn(n, sizes[2], generator=generator) for n in sizes[:2])
    if task == 'evaluate':
        num_q, num_g, dim, noise = sizes
        num_ids = max(2, num_g // 20)
        centres = torch.randn(num_ids, dim, generator=generator)
        ids = [np.random.default_rng(seed) for seed in (2, 3)]
        (q_pids, q_cams), (g_pids, g_cams) = [(rng.integers(1, num_ids + 1, n), rng.integers(0, 6, n))
                                              for rng, n in zip(ids, (num_q, num_g))]
        q_feats = centres[q_pids - 1] + noise * torch.randn(num_q, dim, generator=generator)
        g_feats = centres[g_pids - 1] + noise * torch.randn(num_g, dim, generator=generator)
        return q_feats, g_feats, q_pids, g_pids, q_cams, g_cams
    num_q, num_g, dim = sizes
    num_ids = max(2, (num_q + num_g) // 13)
    centres = torch.randn(num_ids, dim, generator=generator)
    pids = torch.randint(0, num_ids, (num_q + num_g,), generator=generator)
    features = centres[pids] + torch.randn(num_q + num_g, dim, generator=generator)
    features = torch.nn.functional.normalize(features, dim=1)
    return features[:num_q], features[num_q:]


def search_probe(task: str, method: str, scale: str) -> Dict[str, Any]:
    """One call of a search method on its task's inputs, measured by :func:`measure_once` in this process (run it in
    a fresh one: :func:`compare_search`). Methods: see :func:`search_methods`; 'naive' is the whole distance matrix
    (``compute_distance_matrix``) then ``torch.topk`` / ``evaluate_rank``."""
    sizes = SEARCH_SIZES[scale][task]
    inputs = _search_inputs(task, sizes)
    if task == 'topk':
        query, gallery = inputs
        k, gallery = sizes[3], gallery.half() if method == 'topk_float16' else gallery
        backend = 'faiss' if method == 'faiss' else 'torch'
        call = (lambda: torch.from_numpy(compute_distance_matrix(query, gallery)).topk(k, dim=1, largest=False)) \
            if method == 'naive' else (lambda: topk(query, gallery, k=k, backend=backend))
    elif task == 'evaluate':
        q_feats, g_feats, *ids = inputs
        call = (lambda: evaluate_rank(compute_distance_matrix(q_feats, g_feats), *ids)) if method == 'naive' else \
            (lambda: evaluate_features(q_feats, g_feats, *ids))
    elif method == 're_ranking':
        query, gallery = inputs
        matrices = [compute_distance_matrix(a, b) for a, b in ((query, gallery), (query, query), (gallery, gallery))]
        call = lambda: re_ranking(*matrices)  # noqa: E731
    else:
        call = lambda: re_ranking_features(*inputs)  # noqa: E731
    result, extra, seconds, cpu_seconds = measure_once(call, torch.device('cpu'))
    if task == 'topk':
        summary = {'indices': result[1][:, :10].tolist(), 'first_distances': result[0][:5, 0].tolist()}
    elif task == 'evaluate':
        summary = {'cmc': [float(v) for v in result[0][:10]], 'mAP': float(result[1])}
    else:
        summary = {'sample_rows': result[::max(1, len(result) // 10)].tolist()}  # 10 full rows
    return {'task': task, 'method': method, 'sizes': list(sizes), 'seconds': seconds, 'cpu_seconds': cpu_seconds,
            'extra_bytes': extra, 'result': summary}


def search_methods(task: str) -> List[str]:
    """The methods of a task in the order measured: ours first (twice where the baseline runs between)."""
    if task == 'topk':
        return ['topk', 'naive', 'topk', 'topk_float16'] + (['faiss'] if faiss_available() else [])
    return ['evaluate_features', 'naive', 'evaluate_features'] if task == 'evaluate' else ['re_ranking',
                                                                                          're_ranking_features']


def search_agree(task: str, ours: Dict, other: Dict) -> Any:
    """Whether two results are the same; for top-k, the fraction of equal indices (a float16 gallery is rounded data,
    so its neighbours may differ); for re-ranking, the largest difference over 10 sampled rows."""
    if task == 'topk':
        return float((np.asarray(ours['result']['indices']) == np.asarray(other['result']['indices'])).mean())
    if task == 'evaluate':
        return ours['result'] == other['result']
    difference = np.abs(np.asarray(ours['result']['sample_rows']) - np.asarray(other['result']['sample_rows']))
    return f'max |difference| {difference.max():.1e}'


def compare_search(tasks: Sequence[str], scale: str) -> Dict[str, List[Dict]]:
    """Every method of each task, each in a fresh process, with the wall and CPU ratios to ours (the best of its
    calls) and the agreement with ours."""
    results = {}
    for task in tasks:
        rows = []
        for method in search_methods(task):
            print(f'{task}: {method} ...', flush=True)
            rows.append(in_fresh_process('search', task=task, method=method, scale=scale))
        ours = [row for row in rows if row['method'] == rows[0]['method']]
        best, best_cpu = min(row['seconds'] for row in ours), min(row['cpu_seconds'] for row in ours)
        for row in rows:
            row['agrees_with_first'] = search_agree(task, rows[0], row)
            if row['method'] != rows[0]['method']:
                row['time_ratio_to_ours'] = row['seconds'] / best
                row['cpu_ratio_to_ours'] = row['cpu_seconds'] / best_cpu
        results[task] = rows
    return results


def device_topk(device: str, scale: str = 'full', repeats: int = 5) -> Dict[str, Any]:
    """``topk`` of float32 queries against a float16 gallery built on ``device`` (never copied to float32): the
    synchronised seconds of ``repeats`` calls after a warm-up, the extra device memory in bytes (None off CUDA) and
    the fraction of top-k indices equal to an exact float32 search (euclidean, block by block) of the first 10."""
    num_q, num_g, dim, k = DEVICE_SEARCH_SIZES[scale]
    device = torch.device(device)
    cuda = device.type == 'cuda'
    generator = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(num_q, dim, generator=generator, device=device)
    gallery = torch.randn(num_g, dim, generator=generator, device=device, dtype=torch.float16)
    topk(query, gallery, k=k)  # warm-up: kernels, allocator
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before, last = torch.cuda.memory_allocated(device) if cuda else 0, {}  # only the last call's indices kept
    seconds = time_interleaved({'topk': lambda: last.update(indices=topk(query, gallery, k=k)[1])}, repeats, device,
                               warmup=0)['topk']
    extra = torch.cuda.max_memory_allocated(device) - before if cuda else None
    checked = min(10, num_q)
    exact = torch.cat([torch.cdist(query[:checked].float(), gallery[i:i + 100_000].float())
                       for i in range(0, num_g, 100_000)], dim=1).topk(k, dim=1, largest=False).indices
    return {'device': str(device), 'device_name': torch.cuda.get_device_name(device) if cuda else platform.processor(),
            'sizes': [num_q, num_g, dim, k], 'gallery_dtype': 'float16', 'seconds': seconds,
            'median_seconds': float(np.median(seconds)), 'extra_device_bytes': extra,
            'agreement': (last['indices'][:checked] == exact).float().mean().item()}


# -- Fresh processes ---------------------------------------------------------------------------------------------------

CHILD_PROBES: Dict[str, Callable[..., Any]] = {'memory': memory_probe, 'checkpointing': checkpointing_probe,
                                               'search': search_probe}


def in_fresh_process(probe: str, env: Optional[Dict[str, str]] = None, **kwargs: Any) -> Any:
    """``python -m benchmarks.probes PROBE JSON`` with this process's thread count (and ``env``); its result."""
    command = [sys.executable, '-m', 'benchmarks.probes', probe, json.dumps(kwargs)]
    completed = subprocess.run(command, capture_output=True, text=True, env=dict(
        os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), **(env or {})))
    if completed.returncode != 0:
        raise RuntimeError(f'{" ".join(command[1:])} failed: {(completed.stderr.strip().splitlines() or [""])[-1]}')
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.probes PROBE JSON``: one of CHILD_PROBES in this process, its result as one JSON line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 2 or argv[0] not in CHILD_PROBES:
        print(f'usage: python -m benchmarks.probes {{{",".join(CHILD_PROBES)}}} JSON (keyword arguments)',
              file=sys.stderr)
        return 2
    print(json.dumps(CHILD_PROBES[argv[0]](**json.loads(argv[1]))))
    return 0


if __name__ == '__main__':
    run_command(main)
