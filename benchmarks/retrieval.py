"""Time and memory of search and evaluation without the whole distance matrix, against the whole-matrix way.

``python -m benchmarks.retrieval`` measures (``--tasks`` picks some, ``--quick`` shrinks every size):

* ``topk``: 1,000 queries against 1M gallery descriptors of 512-d, top-10: `hbfp_timm.metrics.retrieval.topk`
  against ``compute_distance_matrix`` + ``torch.topk`` (the naive baseline), the faiss flat index when faiss
  is installed, and ``topk`` on the same gallery stored in float16;
* ``evaluate``: CMC / mAP of 10,000 queries against 100,000 gallery descriptors of 512-d:
  `hbfp_timm.metrics.evaluate_features` against ``evaluate_rank(compute_distance_matrix(...))``;
* ``rerank``: k-reciprocal re-ranking at Market-1501 test scale (3,368 queries, 15,913 gallery images,
  2,048-d clustered descriptors): `hbfp_timm.metrics.reranking.re_ranking` from the three distance matrices and
  `re_ranking_features` from the descriptors.

``--device cuda`` measures instead the accelerator case: top-10 of 1,000 float32 queries against 1M gallery
descriptors of 4,096-d stored in float16 on the device (8 GB; built there, never copied to float32), the median
of 5 synchronised calls after a warm-up, the extra device memory (``torch.cuda.max_memory_allocated``), and
agreement with an exact float32 search of the first 10 queries (target of issue 11: 0.2 s on one H100).

Each measurement runs in a fresh Python process that first builds its inputs (seeded, the same in every
process), then resets the peak resident set size (``/proc/self/clear_refs``) and runs the call once: the
reported extra memory is the peak resident set size during the call minus the resident set size before it
(torch and NumPy allocations alike), the time its wall clock and its CPU time (user + system, all threads;
on a machine shared with other work the CPU time is the steadier measure). Results agree across methods
(checked and reported). Speed claims are the ratios printed against the baseline of the same run; on a shared
machine, pause other work (this project's measurements ran under ``pause-training``).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.metrics import evaluate_features, evaluate_rank
from hbfp_timm.metrics.retrieval import faiss_available, topk
from hbfp_timm.metrics.reranking import re_ranking, re_ranking_features

from .memory import status_bytes

__all__ = ['SIZES', 'measure', 'run', 'main']

SIZES = {
    'full': dict(topk=(1000, 1_000_000, 512, 10), evaluate=(10_000, 100_000, 512, 2.5), rerank=(3368, 15913, 2048)),
    'quick': dict(topk=(50, 20_000, 64, 10), evaluate=(300, 3_000, 64, 1.2), rerank=(100, 600, 64)),
}
TASKS = ('topk', 'evaluate', 'rerank')
# (queries, gallery, dim, k) of the device measurement: a float16 gallery that lives on the accelerator.
DEVICE_SIZES = {'full': (1000, 1_000_000, 4096, 10), 'quick': (50, 20_000, 64, 10)}
DEVICE_TARGET_S = 0.2  # issue 11, one H100


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: unlike wall time, barely changed by other work
    sharing the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ids(count: int, num_ids: int, num_cams: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(1, num_ids + 1, count), rng.integers(0, num_cams, count)


def _topk_inputs(sizes):
    num_q, num_g, dim, _ = sizes
    generator = torch.Generator().manual_seed(0)
    return torch.randn(num_q, dim, generator=generator), torch.randn(num_g, dim, generator=generator)


def _evaluate_inputs(sizes):
    # The spread of an identity's descriptors around its centre (noise) makes the ranking far from perfect: a
    # perfect one would hide a disagreement between the methods.
    num_q, num_g, dim, noise = sizes
    generator = torch.Generator().manual_seed(1)
    num_ids = max(2, num_g // 20)
    centres = torch.randn(num_ids, dim, generator=generator)
    (q_pids, q_cams), (g_pids, g_cams) = _ids(num_q, num_ids, 6, 2), _ids(num_g, num_ids, 6, 3)
    q_feats = centres[q_pids - 1] + noise * torch.randn(num_q, dim, generator=generator)
    g_feats = centres[g_pids - 1] + noise * torch.randn(num_g, dim, generator=generator)
    return q_feats, g_feats, q_pids, g_pids, q_cams, g_cams


def _rerank_inputs(sizes):
    num_q, num_g, dim = sizes
    generator = torch.Generator().manual_seed(4)
    num_ids = max(2, (num_q + num_g) // 13)
    centres = torch.randn(num_ids, dim, generator=generator)
    pids = torch.randint(0, num_ids, (num_q + num_g,), generator=generator)
    features = torch.nn.functional.normalize(centres[pids] + torch.randn(num_q + num_g, dim, generator=generator),
                                             dim=1)
    return features[:num_q], features[num_q:]


def _probe(task: str, method: str, scale: str) -> Dict[str, Any]:
    """One measurement in this (fresh) process: inputs, then one timed call under a reset peak RSS."""
    sizes = SIZES[scale][task]
    call: Callable[[], Any]
    if task == 'topk':
        query, gallery = _topk_inputs(sizes)
        k = sizes[3]
        if method == 'topk_float16':
            gallery = gallery.half()
        if method == 'naive':
            def call():
                return torch.from_numpy(compute_distance_matrix(query, gallery)).topk(k, dim=1, largest=False)
        else:
            def call():
                return topk(query, gallery, k=k, backend='faiss' if method == 'faiss' else 'torch')
    elif task == 'evaluate':
        q_feats, g_feats, *ids = _evaluate_inputs(sizes)
        if method == 'naive':
            def call():
                return evaluate_rank(compute_distance_matrix(q_feats, g_feats), *ids)
        else:
            def call():
                return evaluate_features(q_feats, g_feats, *ids)
    else:
        query, gallery = _rerank_inputs(sizes)
        if method == 're_ranking':
            matrices = [compute_distance_matrix(a, b) for a, b in ((query, gallery), (query, query), (gallery, gallery))]

            def call():
                return re_ranking(*matrices)
        else:
            def call():
                return re_ranking_features(query, gallery)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM (the peak RSS) to the current RSS
    before = status_bytes('VmRSS')
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    result = call()
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    extra = status_bytes('VmHWM') - before
    if task == 'topk':
        summary = {'indices': result[1][:, :10].tolist(), 'first_distances': result[0][:5, 0].tolist()}
    elif task == 'evaluate':
        summary = {'cmc': [float(v) for v in result[0][:10]], 'mAP': float(result[1])}
    else:
        summary = {'sample_rows': result[::max(1, len(result) // 10)].tolist()}  # 10 full rows
    return {'task': task, 'method': method, 'sizes': list(sizes), 'seconds': seconds, 'cpu_seconds': cpu_seconds,
            'extra_bytes': extra, 'result': summary}


def measure(task: str, method: str, scale: str) -> Dict[str, Any]:
    """Run `_probe` in a fresh Python process with this process's thread count."""
    command = [sys.executable, '-m', 'benchmarks.retrieval', '--probe', task, method, '--scale', scale]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f'{task}/{method} failed: {completed.stderr.strip().splitlines()[-1:]}')
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _methods(task: str) -> List[str]:
    if task == 'topk':
        return ['topk', 'naive', 'topk', 'topk_float16'] + (['faiss'] if faiss_available() else [])
    if task == 'evaluate':
        return ['evaluate_features', 'naive', 'evaluate_features']
    return ['re_ranking', 're_ranking_features']


def _agree(task: str, ours: Dict, other: Dict):
    """Whether two results are the same; for top-k, the fraction of equal indices (a float16 gallery is
    rounded data, so its neighbours may differ); for re-ranking, the largest difference over 10 sampled rows."""
    if task == 'topk':
        mine, theirs = np.asarray(ours['result']['indices']), np.asarray(other['result']['indices'])
        return float((mine == theirs).mean())
    if task == 'evaluate':
        return ours['result'] == other['result']
    difference = np.abs(np.asarray(ours['result']['sample_rows']) - np.asarray(other['result']['sample_rows']))
    return f'max |difference| {difference.max():.1e}'


def run(tasks: List[str], scale: str) -> Dict[str, Any]:
    """Every measurement of the tasks, with ratios against the baseline of the same run."""
    results: Dict[str, Any] = {'environment': {
        'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__,
        'platform': platform.platform(), 'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'scale': scale, 'command': 'python -m benchmarks.retrieval ' + ' '.join(sys.argv[1:]),
        'load_average_at_start': os.getloadavg()}}
    for task in tasks:
        rows = []
        for method in _methods(task):
            print(f'{task}: {method} ...', flush=True)
            rows.append(measure(task, method, scale))
        ours = [row for row in rows if row['method'] == rows[0]['method']]
        best = min(ours, key=lambda row: row['seconds'])
        best_cpu = min(ours, key=lambda row: row['cpu_seconds'])
        for row in rows:
            row['agrees_with_first'] = _agree(task, rows[0], row)
            if row['method'] != rows[0]['method']:
                row['time_ratio_to_ours'] = row['seconds'] / best['seconds']
                row['cpu_ratio_to_ours'] = row['cpu_seconds'] / best_cpu['cpu_seconds']
        results[task] = rows
    return results


def format_table(results: Dict[str, Any]) -> str:
    lines = ['| task | sizes | method | wall s | CPU s | extra GiB | wall / ours (best) | CPU / ours (best) | '
             'same result |', '|---|---|---|---|---|---|---|---|---|']
    for task in TASKS:
        for row in results.get(task, []):
            ratios = [row.get(key) for key in ('time_ratio_to_ours', 'cpu_ratio_to_ours')]
            ratios = ['' if ratio is None else f'{ratio:.2f}' for ratio in ratios]
            lines.append(f'| {task} | {"x".join(map(str, row["sizes"]))} | {row["method"]} | {row["seconds"]:.2f} | '
                         f'{row["cpu_seconds"]:.2f} | {row["extra_bytes"] / 2 ** 30:.2f} | {ratios[0]} | {ratios[1]} | '
                         f'{row["agrees_with_first"]} |')
    return '\n'.join(lines)


def _exact_topk(query: torch.Tensor, gallery: torch.Tensor, k: int, block: int = 100_000) -> torch.Tensor:
    """Indices of the k nearest gallery rows (euclidean distance in float32, the gallery block by block)."""
    distances = torch.cat([torch.cdist(query.float(), gallery[i:i + block].float()) for i in
                           range(0, len(gallery), block)], dim=1)
    return distances.topk(k, dim=1, largest=False).indices


def device_topk(device: str, scale: str = 'full', repeats: int = 5) -> Dict[str, Any]:
    """`topk` of float32 queries against a float16 gallery stored on `device` (see the module docstring).

    Returns:
        sizes, the per-call seconds (synchronised), their median, the extra device memory of the calls in bytes
        (None off CUDA) and the fraction of top-k indices equal to an exact float32 search of 10 queries.
    """
    num_q, num_g, dim, k = DEVICE_SIZES[scale]
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(num_q, dim, generator=generator, device=device)
    gallery = torch.randn(num_g, dim, generator=generator, device=device, dtype=torch.float16)
    cuda = device.type == 'cuda'

    def synchronise():
        if cuda:
            torch.cuda.synchronize(device)

    topk(query, gallery, k=k)  # warm-up: kernels, allocator
    synchronise()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if cuda else 0
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, indices = topk(query, gallery, k=k)
        synchronise()
        seconds.append(time.perf_counter() - start)
    extra = torch.cuda.max_memory_allocated(device) - before if cuda else None
    checked = min(10, num_q)
    agreement = (indices[:checked] == _exact_topk(query[:checked], gallery, k)).float().mean().item()
    return {'device': str(device), 'device_name': torch.cuda.get_device_name(device) if cuda else platform.processor(),
            'sizes': [num_q, num_g, dim, k], 'gallery_dtype': 'float16', 'seconds': seconds,
            'median_seconds': float(np.median(seconds)), 'extra_device_bytes': extra, 'agreement': agreement}


def format_device_result(result: Dict[str, Any]) -> str:
    num_q, num_g, dim, k = result['sizes']
    extra = result['extra_device_bytes']
    memory = 'n/a' if extra is None else f'{extra / 2 ** 30:.2f} GiB'
    return (f'top-{k} of {num_q:,} queries in {num_g:,} x {dim}-d float16 on {result["device"]} '
            f'({result["device_name"]}): median {result["median_seconds"]:.3f} s over {len(result["seconds"])} calls '
            f'(min {min(result["seconds"]):.3f}, max {max(result["seconds"]):.3f}); extra device memory {memory}; '
            f'indices equal to exact float32 search on the first queries: {result["agreement"]:.3f}; '
            f'target on one H100: <= {DEVICE_TARGET_S} s')


def _report(text: str, results: Dict[str, Any], output: Optional[str]) -> None:
    """Print the table and, with ``--output``, write the results as JSON."""
    print(text)
    if output:
        with open(output, 'w') as f:
            json.dump(results, f, indent=1)
        print(f'wrote {output}')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.retrieval', description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', default=','.join(TASKS), help=f'comma-separated subset of {", ".join(TASKS)}')
    parser.add_argument('--quick', action='store_true', help='small sizes (a check that the benchmark runs)')
    parser.add_argument('--output', default=None, metavar='FILE', help='also write the results as JSON')
    parser.add_argument('--device', default='cpu',
                        help='cpu (the tasks above) or an accelerator such as cuda: the float16 top-k on it')
    parser.add_argument('--probe', nargs=2, metavar=('TASK', 'METHOD'), help=argparse.SUPPRESS)
    parser.add_argument('--scale', default='full', choices=tuple(SIZES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(_probe(*args.probe, args.scale)))
        return 0
    if args.device != 'cpu':
        try:
            device = torch.device(args.device)
            if device.type == 'cuda' and not torch.cuda.is_available():
                raise RuntimeError('CUDA is not available on this machine')
        except RuntimeError as exc:
            print(f'{parser.prog}: error: --device {args.device}: {exc}', file=sys.stderr)
            return 2
        result = device_topk(args.device, 'quick' if args.quick else 'full')
        _report(format_device_result(result), result, args.output)
        return 0
    tasks = [task.strip() for task in args.tasks.split(',') if task.strip()]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        parser.error(f'--tasks: expected a comma-separated subset of {", ".join(TASKS)}, got {args.tasks!r}')
    if not os.path.exists('/proc/self/clear_refs'):
        print(f'{parser.prog}: error: needs Linux (/proc/self/clear_refs) to measure peak memory', file=sys.stderr)
        return 1
    results = run(tasks, 'quick' if args.quick else 'full')
    _report(format_table(results), results, args.output)
    return 0


if __name__ == '__main__':
    sys.exit(main())
