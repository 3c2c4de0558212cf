"""Peak extra memory of one benchmark step (``benchmarks.speed``).

On CPU each measurement runs in a fresh process, ``python -m benchmarks.memory MODEL MODE BATCH H W DTYPE
[--channels-last]``, which prints the number of bytes.
"""
import argparse
import os
import resource
import subprocess
import sys
from typing import Optional, Sequence, Tuple

import torch

from .baseline import prepare
from .timing import make_step

__all__ = ['peak_memory', 'memory_probe', 'status_bytes']

_DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(f'{field} not in /proc/self/status')


def memory_probe(name: str, mode: str, batch_size: int, img_size: Tuple[int, int],
                  amp_dtype: Optional[torch.dtype], channels_last: bool) -> int:
    """Run in a fresh process: peak resident set size during one step minus the resident set size just
    before it (model, input and interpreter already allocated)."""
    torch.manual_seed(0)
    model, x = prepare(name, batch_size, img_size, torch.device('cpu'), channels_last)
    step = make_step(model, mode, x, amp_dtype)
    try:
        # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0), so that the
        # transient memory of building the model does not mask the step's peak.
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        before = status_bytes('VmRSS')
        step()
        return status_bytes('VmHWM') - before
    except OSError:
        # ru_maxrss cannot be reset: a lower bound when building the model peaked higher than the step.
        scale = 1 if sys.platform == 'darwin' else 1024  # KiB on Linux, bytes on macOS
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        step()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - before


def peak_memory(name: str, mode: str, batch_size: int, img_size: Tuple[int, int], device: torch.device,
                amp_dtype: Optional[torch.dtype], channels_last: bool) -> int:
    """Peak extra memory of one step, in bytes (activations, autograd buffers, gradients, workspaces).

    On CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the allocation before it. On CPU the
    torch allocator keeps no statistics and ``tracemalloc`` does not see it, so the step runs in a fresh
    Python process and the growth of its peak resident set size over the value just before the step is
    reported; this includes allocator and oneDNN overheads.
    """
    if device.type == 'cuda':
        model, x = prepare(name, batch_size, img_size, device, channels_last)
        step = make_step(model, mode, x, amp_dtype)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del model, x, step
        torch.cuda.empty_cache()
        return peak
    dtype_name = 'float32' if amp_dtype is None else str(amp_dtype).replace('torch.', '')
    command = [sys.executable, '-m', 'benchmarks.memory', name, mode, str(batch_size), *map(str, img_size),
               dtype_name] + (['--channels-last'] if channels_last else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))
    return int(result.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.memory', description=__doc__.split('\n\n')[0])
    parser.add_argument('model')
    parser.add_argument('mode', choices=('eval', 'train'))
    parser.add_argument('batch_size', type=int)
    parser.add_argument('height', type=int)
    parser.add_argument('width', type=int)
    parser.add_argument('dtype', choices=tuple(_DTYPES), help='float32, or the autocast dtype')
    parser.add_argument('--channels-last', action='store_true')
    args = parser.parse_args(argv)
    print(memory_probe(args.model, args.mode, args.batch_size, (args.height, args.width), _DTYPES[args.dtype],
                       args.channels_last))
    return 0


if __name__ == '__main__':
    sys.exit(main())
