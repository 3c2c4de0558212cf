"""Channels-last against contiguous (NCHW) memory format: the time of a training step and of an eval forward.

``python -m benchmarks.memory_format --models hbfp_mobilenetv2_100 hbfp_resnet50 --device cpu`` builds each model
once, copies it into the two memory formats (the same weights), and times, interleaved in the same process:

* ``train``: ``forward_branches`` of a batch, the sum of the logits and of the squared pooled features, backward
  (what a training step computes, less the optimizer);
* ``eval``: the descriptor forward under ``no_grad``.

It prints, per model and mode, the median seconds of each format and the speed-up (median of the paired
contiguous / channels-last ratios; above 1: channels-last is faster), and how far apart the two formats' outputs
are (largest absolute difference beside the outputs' largest magnitude; the formats differ only in the kernels'
order of summation). The trainer's ``--channels-last`` default per device
(``hbfp_timm.training.config.DEVICE_DEFAULTS``) follows these numbers.
"""
import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm.commands import one_line

from .cli import ArgumentParser, BenchmarkError, exact_command, guarded
from .settings import check_device
from .timing import branches_loss, median_ratio, time_interleaved

__all__ = ['compare_formats', 'format_table', 'main']

FORMATS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}


def _step(model: nn.Module, mode: str, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    if mode == 'eval':
        def step() -> torch.Tensor:
            with torch.no_grad():
                return model.eval()(x)
    else:
        def step() -> torch.Tensor:
            model.train().zero_grad(set_to_none=True)
            outputs = model.forward_branches(x)
            loss = branches_loss(outputs)
            loss.backward()
            return loss.detach()
    return step


def compare_formats(model_name: str, img_size: Sequence[int], batch_size: int, repeats: int,
                    device: torch.device, modes: Sequence[str] = ('train', 'eval')) -> List[Dict]:
    """Time one model in both memory formats.

    Args:
        model_name: timm name of an HBFP model.
        img_size: Input (height, width).
        batch_size: Images per step (at least 2: the BatchNorm neck trains on batches).
        repeats: Timed repetitions of each step (after one untimed warm-up call).
        device: Where to run.
        modes: ``'train'`` and/or ``'eval'``.

    Returns:
        One dict per mode: seconds per call of each format (medians and all repetitions), the speed-up and the
        largest absolute difference between the two formats' outputs.
    """
    torch.manual_seed(0)
    try:
        base = timm.create_model(model_name, num_classes=100)
    except (RuntimeError, ValueError, TypeError) as error:
        raise BenchmarkError(f'--models {model_name}: {one_line(error)}') from error
    models = {name: copy.deepcopy(base).to(device, memory_format=fmt) for name, fmt in FORMATS.items()}
    x = torch.randn(batch_size, 3, *img_size, device=device)
    inputs = {'contiguous': x, 'channels_last': x.contiguous(memory_format=torch.channels_last)}
    rows = []
    for mode in modes:
        steps = {name: _step(models[name], mode, inputs[name]) for name in FORMATS}
        # The same weights and BatchNorm state in both copies before the outputs are compared: a train step
        # moves the running statistics, identically in both.
        outputs = {name: step() for name, step in steps.items()}
        difference = (outputs['contiguous'].float() - outputs['channels_last'].float()).abs().max().item()
        times = time_interleaved(steps, repeats, device, warmup=0)
        rows.append(dict(model=model_name, mode=mode, batch_size=batch_size,
                         seconds={name: statistics.median(t) for name, t in times.items()}, times=times,
                         speedup=median_ratio(times['contiguous'], times['channels_last']),
                         max_abs_difference=difference,
                         output_scale=outputs['contiguous'].float().abs().max().item()))
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    """A Markdown table of the rows of :func:`compare_formats`."""
    lines = ['| model | mode | batch | contiguous s | channels-last s | speed-up | max abs difference |',
             '|---|---|---:|---:|---:|---:|---:|']
    for row in rows:
        lines.append(f"| {row['model']} | {row['mode']} | {row['batch_size']} | {row['seconds']['contiguous']:.3f} | "
                     f"{row['seconds']['channels_last']:.3f} | {row['speedup']:.2f} | "
                     f"{row['max_abs_difference']:.1e} (of {row['output_scale']:.1e}) |")
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(prog='python -m benchmarks.memory_format', description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=['hbfp_mobilenetv2_100', 'hbfp_resnet50'], metavar='NAME',
                        help='timm names of HBFP models (default: hbfp_mobilenetv2_100 hbfp_resnet50)')
    parser.add_argument('--img-size', type=int, nargs=2, default=(384, 128), metavar=('H', 'W'),
                        help='input size (default: 384 128)')
    parser.add_argument('--batch-size', type=int, default=16, help='images per step (default: 16)')
    parser.add_argument('--repeats', type=int, default=5, help='timed repetitions of each step (default: 5)')
    parser.add_argument('--modes', nargs='+', choices=('train', 'eval'), default=['train', 'eval'],
                        help='what to time (default: train eval)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device (default: cuda if available, else cpu)')
    parser.add_argument('--threads', type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument('--output', default=None, help='JSON file for the measurements (default: print only)')
    args = parser.parse_args(argv)
    if args.batch_size < 2:
        parser.error(f'--batch-size: expected at least 2 (the BatchNorm neck trains on batches), got {args.batch_size}')
    if args.repeats < 1:
        parser.error(f'--repeats: expected at least 1, got {args.repeats}')
    if min(args.img_size) < 32:
        parser.error(f'--img-size: expected at least 32x32, got {args.img_size[0]}x{args.img_size[1]}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads: expected at least 1, got {args.threads}')
    if args.output and Path(args.output).exists():
        parser.error(f'--output: {args.output} exists; expected a new file name')
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict:
    device = torch.device(check_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for name in args.models
            for row in compare_formats(name, args.img_size, args.batch_size, args.repeats, device, args.modes)]
    return dict(command=exact_command('python -m benchmarks.memory_format', argv), device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                threads=torch.get_num_threads(), img_size=list(args.img_size), repeats=args.repeats,
                torch=torch.__version__, timm=timm.__version__, rows=rows, table=format_table(rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    def body() -> None:
        results = run(args, argv)
        print(f"{results['device_name']}, {results['threads']} threads, {args.img_size[0]}x{args.img_size[1]}, "
              f"{args.repeats} interleaved repeats (medians)\n")
        print(results['table'])
        if args.output:
            Path(args.output).write_text(json.dumps(results, indent=1))
            print(f'\nwrote {args.output}')

    return guarded(body)


if __name__ == '__main__':
    sys.exit(main())
