"""The speed benchmark's markdown report (``python -m benchmarks.speed``): a table or lines per section that ran
(throughput against BoT, the layers alone, the input pipeline, the paper recipe's wall time, evaluation, memory
format, gradient checkpointing, search), then the targets. The comparison tables of the accuracy benchmarks are in
:mod:`benchmarks.report`."""
from typing import Callable, Dict, List, Optional, Tuple

from .probes import DEVICE_TOPK_SECONDS_MAX, RECIPE_BATCH, SEARCH_TASKS

__all__ = ['speed_report', 'memory_format_lines', 'checkpointing_lines', 'search_lines']


def _mib(value: Optional[int]) -> str:
    return '-' if value is None else f'{value / 2 ** 20:.0f}'


def _models_lines(results: Dict) -> List[str]:
    bot, hbfp = results['models']
    lines = [f'{hbfp} against its BoT configuration {bot}:', '',
             '| batch | precision | mode | BoT img/s | HBFP img/s | time ratio | FLOP ratio | time / FLOP ratio '
             '| BoT peak MiB | HBFP peak MiB |', '|---|---|---|---|---|---|---|---|---|---|']
    for row in results['throughput']:
        ips, memory = row['images_per_second'], row.get('peak_memory_bytes', {})
        lines.append(
            f"| {row['batch_size']} | {row['precision']} | {row['mode']} | {ips[bot]:.2f} "
            f"| {ips[hbfp]:.2f} | {row['time_ratio']:.2f} | {results['flop_ratio'][row['mode']]:.2f} "
            f"| {row['time_over_flop_ratio']:.2f} | {_mib(memory.get(bot))} | {_mib(memory.get(hbfp))} |")
    if results['amp_speedup']:
        lines += ['', 'Mixed precision over fp32, images/s ratio:', '', '| batch | mode | BoT | HBFP |',
                  '|---|---|---|---|']
        lines += [f"| {s['batch_size']} | {s['mode']} | {s[bot]:.2f}x | {s[hbfp]:.2f}x |"
                  for s in results['amp_speedup']]
    flops, params = results['flops_per_image'], results['params']
    lines += ['', '| model | params (M) | GFLOPs/img forward | GFLOPs/img forward+backward |', '|---|---|---|---|']
    lines += [f"| {name} | {params[name] / 1e6:.1f} | {flops[name]['eval'] / 1e9:.1f} "
              f"| {flops[name]['train'] / 1e9:.1f} |"
              for name in results['models']]
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
    lines += ['', f"Generalized pooling by implementation (default here: {first['gep_default']}), eval / forward + "
                  'backward, ms (ratio to plain):', '']
    for layers in results['layers']:
        median = layers['median_seconds']
        paths = [name[4:] for name in median if name.startswith('gep_') and not name.endswith('_train')]
        lines.append(f"- batch {layers['batch_size']} {layers['precision']}: " + ', '.join(
            f"{path} {1e3 * median['gep_' + path]:.2f} / {1e3 * median['gep_' + path + '_train']:.2f} "
            f"({median['gep_plain'] / median['gep_' + path]:.2f}x / "
            f"{median['gep_plain_train'] / median['gep_' + path + '_train']:.2f}x)" for path in paths))
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


def speed_report(results: Dict) -> str:
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
