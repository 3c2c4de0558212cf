"""Training memory and time that gradient checkpointing (``model.set_grad_checkpointing()``) saves.

``python -m benchmarks.checkpointing --model hbfp_resnet50 --img-size 384 128 --batch-size 16`` runs, for
checkpointing off and on, each in a fresh Python process, one warm-up training step and one measured step
(``forward_branches``; loss: sum of the logits and of the squared pooled features; backward) and reports:

* activation memory: the bytes autograd keeps from forward to backward (every tensor saved for backward,
  parameters and buffers excluded; a checkpointed unit keeps only its input). Exact and machine-independent;
* peak memory of the step: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the step;
  on CPU the growth of the peak resident set size over the resident set size just before the step (the peak
  is reset through ``/proc/self/clear_refs``, Linux; glibc is told to map every block of 128 KiB or more on
  its own and unmap it when freed, so that the resident set follows the live tensors rather than what the
  warm-up step left in the heap); gradients, workspaces and allocator overhead included;
* the step time (one step; on a shared machine run it with the other work paused).

It prints a table with the on/off ratios and writes everything to ``--output`` as JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import timm
import torch

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)

from .memory import status_bytes
from .timing import branches_loss


def activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple:
    """One training step; returns (bytes saved for backward, loss)."""
    parameters = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model.forward_branches(x)
        loss = branches_loss(outputs)
    loss.backward()
    return sum(kept.values()), loss


def probe(model_name: str, img_size: Sequence[int], batch_size: int, checkpointing: bool, device: str) -> Dict:
    """Measure one configuration in this process (see the module docstring)."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = timm.create_model(model_name, num_classes=100).to(device).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch_size, 3, *img_size, device=device)
    activation_bytes(model, x)  # warm-up: one-time allocations of the first step
    model.zero_grad(set_to_none=True)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets the peak RSS (VmHWM) to the current RSS
        before = status_bytes('VmRSS')
    start = time.perf_counter()
    activations, loss = activation_bytes(model, x)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = status_bytes('VmHWM') - before
    return dict(checkpointing=checkpointing, activation_bytes=activations, peak_step_bytes=peak,
                step_seconds=time.perf_counter() - start, loss=loss.item())


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict:
    rows = []
    for checkpointing in (False, True):
        command = [sys.executable, '-m', 'benchmarks.checkpointing', '--model', args.model, '--img-size',
                   *map(str, args.img_size), '--batch-size', str(args.batch_size), '--device', args.device,
                   '--probe', 'on' if checkpointing else 'off']
        malloc = dict(MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072')  # see the module docstring
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ, **malloc))
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    off, on = rows
    return dict(model=args.model, img_size=list(args.img_size), batch_size=args.batch_size, device=args.device,
                torch=torch.__version__, timm=timm.__version__,
                command=' '.join(['python -m benchmarks.checkpointing', *argv]), off=off, on=on,
                same_loss=off['loss'] == on['loss'])


def format_table(results: Dict) -> str:
    off, on = results['off'], results['on']
    mib = 2 ** 20
    lines = [f"{results['model']}, {results['img_size'][0]}x{results['img_size'][1]}, batch {results['batch_size']}, "
             f"{results['device']}", '', '| | off | on | on / off |', '|---|---:|---:|---:|']
    for key, label, scale, unit in (('activation_bytes', 'activations kept for backward', mib, 'MiB'),
                                    ('peak_step_bytes', 'peak memory of a step', mib, 'MiB'),
                                    ('step_seconds', 'step time', 1, 's')):
        lines.append(f'| {label} ({unit}) | {off[key] / scale:.1f} | {on[key] / scale:.1f} | '
                     f'{on[key] / off[key]:.2f} |')
    lines.append(f"\nsame loss with and without: {results['same_loss']}")
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', default='hbfp_resnet50', help='timm model name')
    parser.add_argument('--img-size', type=int, nargs=2, default=(384, 128), metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--output', default=None, help='JSON file for the measurements (default: print only)')
    parser.add_argument('--probe', choices=('on', 'off'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 2:
        parser.error(f'--batch-size: expected at least 2 (the BatchNorm neck trains on batches), got {args.batch_size}')
    if args.output and Path(args.output).exists():
        parser.error(f'--output: {args.output} exists; expected a new file name')
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.model, args.img_size, args.batch_size, args.probe == 'on', args.device)))
        return {}
    results = run(args, argv)
    results['table'] = format_table(results)
    print(results['table'])
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(results, f, indent=1)
        print(f'\nwrote {args.output}')
    return results


if __name__ == '__main__':
    main()
