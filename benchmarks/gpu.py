"""The GPU check: every measurement of the GPU issue in one run of at most 7 minutes on one H100/H200.

    python -m benchmarks.gpu --output OUT                  # on the device machine (OUT: e.g. $OUT)
    python -m benchmarks.gpu --output OUT --only speed_fp16,search    # rerun some sections
    python -m benchmarks.gpu --output OUT --dry-run        # the same sections on CPU at tiny sizes

Each section runs the speed benchmark (``python -m benchmarks.speed``: its default sections, or ``--sections``
``memory_format``, ``checkpointing`` or ``search``) or the test suite (in 4 pytest-xdist workers where xdist is
installed, as on the device image) in a child process with its own time budget, so that a section that fails or
overruns is recorded and the others still run. After every section
``OUT/gpu_report.md`` (a table of the sections, the targets with measured value, target and by how much they are
met or missed, and each section's printed tail) and ``OUT/gpu_raw.json`` (everything: the machine, each section's
own JSON and its whole output) are rewritten: a run cut short still leaves what finished. These two are the only
files written under OUT (the probes' JSON files go to a scratch folder), so a machine that sends back only a few
files sends back the whole check.

Without CUDA and without ``--dry-run`` it stops at once (exit 2): the numbers are only meaningful on the device.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ['Section', 'SECTIONS', 'suite_command', 'sections_for', 'run_sections', 'render_report', 'main']

ROOT = Path(__file__).resolve().parents[1]  # the project's root: benchmarks/ and hbfp_timm/ are in it
TAIL_LINES = 25
OUTPUT_CHARS = 200_000


class Section(NamedTuple):
    """One part of the check: a command (``{work}`` stands for a scratch folder), its budget and what it shows."""
    name: str
    what: str
    command: List[str]
    budget_s: int
    json_name: Optional[str] = None  # the probe's own JSON file in the scratch folder, when it writes one
    env: Tuple[Tuple[str, str], ...] = ()  # set for the command, on top of this process's environment


def _python(*args: str) -> List[str]:
    return [sys.executable, *args]


def _speed(*args: str) -> List[str]:
    return _python('-m', 'benchmarks.speed', *args)


# Test files with device paths, run first in the suite section: if its budget runs out, the CUDA tests have run.
DEVICE_TESTS = ('tests/test_layers.py', 'tests/test_engine.py', 'tests/test_extractor.py', 'tests/test_retrieval.py',
                'tests/test_timm_contract.py', 'tests/test_train.py')
# The suite takes about 5 minutes in one process on a 2-core CPU, more than its budget: where pytest-xdist is
# installed (the device image has it), 4 worker processes of 4 threads share the device machine's 16 cores, a test
# file to a worker (module fixtures are built once).
SUITE_WORKERS = 4


def suite_command(workers: int = SUITE_WORKERS) -> Tuple[List[str], Tuple[Tuple[str, str], ...]]:
    """The suite section's command and environment: device tests first; in `workers` processes where pytest-xdist
    is installed, else in this one."""
    command = _python('-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider')
    if workers > 1 and importlib.util.find_spec('xdist') is not None:
        threads = str(max(1, (os.cpu_count() or workers) // workers))
        return command + ['-n', str(workers), '--dist', 'loadfile', *DEVICE_TESTS, 'tests'], (
            ('OMP_NUM_THREADS', threads),)
    return command + [*DEVICE_TESTS, 'tests'], ()


# On the device: the sizes of the GPU issue, the suite last. Budgets (caps) add up to 7 minutes.
SECTIONS = [
    Section('speed_bf16', 'hbfp_resnet50 vs BoT at 384x128, batch 32 and 64, eval and train, fp32 and AMP bfloat16: '
                          'images/s, time per FLOP, GeP share and each GeP path, AMP speed-up, peak memory, recipe '
                          'wall time and the input pipeline\'s share, evaluate_rank',
            _speed('--batch-sizes', '32', '64', '--precisions', 'fp32', 'amp', '--amp-dtype', 'bfloat16', '--repeats',
                   '3', '--output', '{work}/speed_bf16.json'),
            80, 'speed_bf16.json'),
    Section('speed_fp16', 'the same under AMP float16 (no memory probe)',
            _speed('--sections', 'models,layers', '--batch-sizes', '32', '64', '--precisions', 'amp', '--amp-dtype',
                   'float16', '--repeats', '3', '--no-memory', '--output', '{work}/speed_fp16.json'),
            30, 'speed_fp16.json'),
    Section('compile', 'torch.compile of both models, batch 64, AMP bfloat16',
            _speed('--sections', 'models', '--batch-sizes', '64', '--precisions', 'amp', '--amp-dtype', 'bfloat16',
                   '--compile', '--repeats', '3', '--no-memory', '--output', '{work}/speed_compile.json'),
            35, 'speed_compile.json'),
    Section('mobilenet', 'hbfp_mobilenetv2_100 (the shipped architecture) vs its BoT configuration at 256x128, batch '
                         '32 and 64, fp32 and AMP bfloat16: images/s, time per FLOP, GeP share, AMP speed-up',
            _speed('--sections', 'models,layers', '--model', 'hbfp_mobilenetv2_100', '--img-size', '256', '128',
                   '--batch-sizes', '32', '64', '--precisions', 'fp32', 'amp', '--amp-dtype', 'bfloat16',
                   '--repeats', '3', '--no-memory', '--output', '{work}/mobilenet.json'), 30, 'mobilenet.json'),
    Section('memory_format', 'channels-last against contiguous, train and eval, batch 64 at 384x128: hbfp_resnet50 '
                             'and hbfp_mobilenetv2_100',
            _speed('--sections', 'memory_format', '--models', 'hbfp_resnet50', 'hbfp_mobilenetv2_100', '--batch-size',
                   '64', '--repeats', '3', '--output', '{work}/memory_format.json'), 20, 'memory_format.json'),
    Section('checkpointing', 'peak device memory of a training step at batch 64, with and without gradient '
                             'checkpointing',
            _speed('--sections', 'checkpointing', '--batch-size', '64', '--output', '{work}/checkpointing.json'),
            20, 'checkpointing.json'),
    Section('search', 'top-10 of 1,000 queries over 1M x 4,096 float16 descriptors on the device, against exact',
            _speed('--sections', 'search', '--device', 'cuda', '--output', '{work}/search.json'), 30, 'search.json'),
    Section('suite', 'the whole test suite, device tests first, skips listed (CUDA-only tests must run, not skip)',
            suite_command()[0], 175, env=suite_command()[1]),
]

# On CPU, every section at tiny sizes: checks that the script and its report work, measures nothing.
DRY_RUN = {
    'suite': _python('-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', 'tests/test_losses.py'),
    'speed_bf16': _speed('--quick', '--device', 'cpu', '--img-size', '64', '32', '--precisions', 'fp32', '--no-memory',
                         '--loader-workers', '0', '--reference-queries', '10', '--output', '{work}/speed_bf16.json'),
    'speed_fp16': None,  # the same probe as speed_bf16: once is enough for a dry run
    'compile': None,
    'mobilenet': _speed('--sections', 'models', '--model', 'hbfp_mobilenetv2_100', '--quick', '--device', 'cpu',
                        '--img-size', '64', '32', '--precisions', 'fp32', '--no-memory', '--output',
                        '{work}/mobilenet.json'),
    'memory_format': _speed('--sections', 'memory_format', '--models', 'hbfp_resnet18', '--img-size', '64', '32',
                            '--batch-size', '2', '--repeats', '1', '--modes', 'eval', '--device', 'cpu',
                            '--output', '{work}/memory_format.json'),
    'checkpointing': _speed('--sections', 'checkpointing', '--model', 'hbfp_resnet18', '--img-size', '64', '32',
                            '--batch-size', '2', '--device', 'cpu', '--output', '{work}/checkpointing.json'),
    'search': _speed('--sections', 'search', '--quick', '--tasks', 'topk', '--device', 'cpu', '--output',
                     '{work}/search.json'),
}


def sections_for(dry_run: bool, only: Optional[Sequence[str]] = None) -> List[Section]:
    """The sections to run: all (or `only`), with the dry-run commands when `dry_run`."""
    names = [section.name for section in SECTIONS]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f'--only: unknown section {", ".join(unknown)}; expected some of {", ".join(names)}')
    chosen = [section for section in SECTIONS if not only or section.name in only]
    if dry_run:
        chosen = [section._replace(command=DRY_RUN[section.name], budget_s=120, env=()) for section in chosen
                  if DRY_RUN[section.name] is not None]
    return chosen


# The libraries whose versions the report shows: a device image's may differ from the test path's pins (hub
# publishing needs timm >= 1.0.31; faiss is an optional extra).
LIBRARIES = ('timm', 'triton', 'torchvision', 'huggingface-hub', 'safetensors', 'numpy', 'pytest-xdist', 'faiss-cpu')


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> Dict[str, Any]:
    """The machine: torch, CUDA, the device's name, the versions of :data:`LIBRARIES` (None: not installed), and
    ``nvidia-smi`` when there is one."""
    info: Dict[str, Any] = {'python': platform.python_version(), 'torch': torch.__version__,
                            'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(),
                            'cpu_count': os.cpu_count(),
                            'libraries': {name: _version(name) for name in LIBRARIES}}
    if torch.cuda.is_available():
        info['device'] = torch.cuda.get_device_name(0)
        info['bf16_supported'] = torch.cuda.is_bf16_supported()
    try:
        info['nvidia_smi'] = subprocess.run(['nvidia-smi'], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        info['nvidia_smi'] = None
    return info


def _text(stream) -> str:
    return stream.decode(errors='replace') if isinstance(stream, bytes) else stream or ''


def _child_environment(section: Section) -> Dict[str, str]:
    """This process's environment, the project's root first on ``PYTHONPATH`` (the device machine runs a copy of
    the working tree that is not pip-installed: the tests' own child processes, started from other folders, still
    import ``hbfp_timm`` and ``benchmarks``), then the section's own variables."""
    paths = [str(ROOT)] + [path for path in os.environ.get('PYTHONPATH', '').split(os.pathsep) if path]
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(paths), **dict(section.env)}


def _run_section(section: Section, work: Path) -> Dict[str, Any]:
    command = [part.replace('{work}', str(work)) for part in section.command]
    env = ''.join(f'{key}={value} ' for key, value in section.env)
    print(f'[gpu check] {section.name}: {env}{" ".join(command[1:])} (budget {section.budget_s} s)', flush=True)
    start = time.perf_counter()
    record: Dict[str, Any] = {'name': section.name, 'what': section.what, 'command': command,
                              'budget_s': section.budget_s, 'env': dict(section.env)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=section.budget_s,
                              env=_child_environment(section))
        record['status'] = 'ok' if done.returncode == 0 else f'failed (exit {done.returncode})'
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        record['status'] = f'timed out after {section.budget_s} s'
        output = _text(expired.stdout) + _text(expired.stderr)
    except OSError as error:
        record['status'] = f'failed ({error})'
        output = ''
    record['seconds'] = round(time.perf_counter() - start, 1)
    record['tail'] = '\n'.join(output.strip().splitlines()[-TAIL_LINES:])
    record['output'] = output[-OUTPUT_CHARS:]  # the whole output, for a failure's traceback (its end when long)
    if section.json_name and (work / section.json_name).is_file():
        try:
            record['result'] = json.loads((work / section.json_name).read_text())
        except ValueError:
            record['result'] = None
    print(f'[gpu check] {section.name}: {record["status"]} in {record["seconds"]} s', flush=True)
    return record


def _targets(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The speed benchmark's targets of every section that judged some, each with its section."""
    rows = []
    for record in records:
        for name, target in ((record.get('result') or {}).get('targets') or {}).items():
            rows.append({'section': record['name'], 'target': name, **target})
    return rows


def _shell(record: Dict[str, Any]) -> str:
    """A section's command as a shell line, its environment first."""
    return ' '.join([f'{key}={value}' for key, value in (record.get('env') or {}).items()] + record['command'])


def render_report(raw: Dict[str, Any]) -> str:
    """``gpu_report.md``: the sections, the targets (met or missed, and by how much) and each section's tail."""
    env = raw['environment']
    lines = [f"# GPU check ({'DRY RUN on CPU: checks the script, measures nothing' if raw['dry_run'] else 'device'})",
             '', f"Command: `{' '.join(raw['command'])}`", '',
             f"Machine: {env.get('device', 'no CUDA device')}, torch {env['torch']}, CUDA {env['cuda']}, "
             f"{env['cpu_count']} CPUs; started {raw['started']}, {raw['seconds']} s in all.", '',
             'Libraries: ' + ', '.join(f'{name} {version or "not installed"}'
                                       for name, version in env.get('libraries', {}).items()) + '.', '',
             '| section | status | seconds (budget) | what |', '|---|---|---:|---|']
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']} ({r['budget_s']}) | {r['what']} |"
              for r in raw['sections']]
    targets = _targets(raw['sections'])
    lines += ['', '## Targets', '', '| section | target | measured | goal | met |', '|---|---|---:|---:|---|']
    for row in targets:
        goal = f"<= {row['max']:g}" if 'max' in row else f">= {row['min']:g}"
        bound = row.get('max', row.get('min'))
        by = '' if row['met'] or row['met'] is None else f" (missed by {abs(row['value'] / bound - 1):.0%})"
        met = 'n/a' if row['met'] is None else ('yes' if row['met'] else 'NO' + by)
        lines.append(f"| {row['section']} | {row['target']} | {row['value']:.4g} | {goal} | {met} |")
    if not targets:
        lines.append('| – | no section judged a target | | | |')
    for record in raw['sections']:
        lines += ['', f"## {record['name']}: {record['status']}", '', f"`{_shell(record)}`", '',
                  '```', record['tail'], '```']
    return '\n'.join(lines) + '\n'


def run_sections(sections: List[Section], out: Path, command: List[str], dry_run: bool) -> Dict[str, Any]:
    """Run `sections` in order, rewriting the report and the raw JSON after each one.

    `out` receives exactly two files, ``gpu_report.md`` and ``gpu_raw.json`` (each section's own JSON and its whole
    output are inside the latter); the probes write their JSON into a scratch folder that is removed afterwards.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    raw: Dict[str, Any] = {'command': command, 'dry_run': dry_run, 'environment': environment(),
                           'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'sections': [], 'seconds': 0.0}
    with tempfile.TemporaryDirectory(prefix='gpu-check-') as work:
        for section in sections:
            raw['sections'].append(_run_section(section, Path(work)))
            raw['seconds'] = round(time.perf_counter() - start, 1)
            (out / 'gpu_raw.json').write_text(json.dumps(raw, indent=1) + '\n', encoding='utf-8')
            (out / 'gpu_report.md').write_text(render_report(raw), encoding='utf-8')
    return raw


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.gpu``; see ``--help``."""
    parser = argparse.ArgumentParser(prog='python -m benchmarks.gpu', description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', required=True, metavar='OUT', help='folder for gpu_report.md and gpu_raw.json')
    parser.add_argument('--only', type=lambda text: [part for part in text.split(',') if part], default=None,
                        metavar='A,B', help=f"sections to run (default all: {', '.join(s.name for s in SECTIONS)})")
    parser.add_argument('--dry-run', action='store_true', help='every section on CPU at tiny sizes (a script check)')
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f'{parser.prog}: error: no CUDA device here; the GPU check measures on one (use --dry-run to check the '
              f'script on CPU)', file=sys.stderr)
        return 2
    try:
        sections = sections_for(args.dry_run, args.only)
    except ValueError as error:
        parser.error(str(error))
    command = ['python', '-m', 'benchmarks.gpu', *(sys.argv[1:] if argv is None else argv)]
    raw = run_sections(sections, Path(args.output), command, args.dry_run)
    failed = [r['name'] for r in raw['sections'] if r['status'] != 'ok']
    print(f"[gpu check] wrote {Path(args.output) / 'gpu_report.md'}; "
          + (f"sections not ok: {', '.join(failed)}" if failed else 'every section ok'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
