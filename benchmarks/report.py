"""What a benchmark reports and leaves in its output folder: markdown comparison tables (also printed; the speed
benchmark's report is in :mod:`benchmarks.speed_report`), the provenance block of ``results.json``, and the
trainer's runs. The folder is checked before any work, and the disk space the runs take is said before and after
(each trainer run keeps a resumable ``checkpoint.pt`` about three times the size of the weights).

A benchmark result is a plain dict (the content of ``results.json``). The part the tables read is::

    {
      "synthetic": false,                      # true: rows are labelled "not comparable with the paper"
      "data_note": "...",                      # optional: a line under the heading (e.g. the user's own data)
      "entries": [                             # one per data set (Table 1) or configuration (Tables 2-3)
        {"title": "Market-1501",
         "paper_title": "Market-1501",                   # optional: first cell of the paper row (default title)
         "paper": {"rank1": 95.8, "mAP": 89.8},          # percent, only what the paper prints
         "comparable": true,                             # optional (default: not synthetic): show differences
         "runs": [{"label": "hbfp_resnet50, checkpoint", # runs of one row over several seeds share the label
                   "seed": 0,                            # optional
                   "metrics": {"rank1": .., "rank5": .., "rank10": .., "mAP": ..},   # percent, final evaluation
                   "best": {"epoch": .., "rank1": .., ..., "mAP": ..} or null,     # the trainer's best evaluation
                   "reranked": {...} or null}]}
      ]
    }

A row trained with several seeds is one line of the comparison (the mean over its seeds) and one line of the
seed table: mean, standard deviation and n of Rank-1 and mAP at the final and at the best evaluation.
Re-ranked scores go to a table of their own: the paper's numbers are without re-ranking, so they are never
set beside them.
"""
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn

from hbfp_timm.commands import one_line
from hbfp_timm.train import CHECKPOINT_NAME
from hbfp_timm.utils.files import format_size

from .runs import state_bytes
from .settings import BenchmarkError

__all__ = [
    'METRIC_COLUMNS', 'SYNTHETIC_LABEL', 'count', 'summarize_seeds', 'comparison_table', 'seed_table',
    'render_report', 'library_versions', 'prepare_output', 'training_footprint', 'announce_training',
    'bytes_written', 'write_outputs',
]


METRIC_COLUMNS = (('rank1', 'Rank-1'), ('rank5', 'Rank-5'), ('rank10', 'Rank-10'), ('mAP', 'mAP'))
SPREAD_COLUMNS = (('rank1', 'Rank-1'), ('mAP', 'mAP'))
SYNTHETIC_LABEL = 'synthetic — not comparable with the paper'
MISSING = '–'


def count(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless it is one: ``count(1, 'epoch')`` is ``'1 epoch'``."""
    return f'{number} {noun}' + ('' if number == 1 else 's')


def _cell(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return MISSING
    return f'{value:+.1f}' if signed else f'{value:.1f}'


def _row(first: str, second: str, metrics: Mapping[str, Optional[float]], signed: bool = False) -> str:
    cells = [first, second] + [_cell(metrics.get(key), signed) for key, _ in METRIC_COLUMNS]
    return '| ' + ' | '.join(cells) + ' |'


def _header(first_column: str) -> List[str]:
    names = [first_column, 'Row'] + [name for _, name in METRIC_COLUMNS]
    return ['| ' + ' | '.join(names) + ' |', '|' + '|'.join(['---'] * 2 + ['---:'] * len(METRIC_COLUMNS)) + '|']


def _groups(runs: Sequence[Mapping[str, Any]]) -> List[Tuple[str, List[Mapping[str, Any]]]]:
    """Runs grouped by label, in order of first appearance (a row's runs over its seeds)."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run['label'], []).append(run)
    return list(groups.items())


def _mean_metrics(metrics: Sequence[Mapping[str, Optional[float]]]) -> Dict[str, Optional[float]]:
    means: Dict[str, Optional[float]] = {}
    for key, _ in METRIC_COLUMNS:
        values = [m[key] for m in metrics if m.get(key) is not None]
        means[key] = sum(values) / len(values) if len(values) == len(metrics) else None
    return means


def _spread(values: Sequence[float]) -> Dict[str, Optional[float]]:
    return {'mean': sum(values) / len(values), 'std': statistics.stdev(values) if len(values) > 1 else None}


def summarize_seeds(runs: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per row (runs sharing a label): n, the seeds, and mean and sample standard deviation of every metric at
    the final evaluation and of Rank-1 and mAP at the best one.

    Args:
        runs: An entry's runs (see the module docstring).

    Returns:
        One dict per row, in order: ``label``, ``n``, ``seeds``, ``final`` (metric -> ``{mean, std}``) and
        ``best`` (Rank-1 and mAP -> ``{mean, std}``; None unless every run has a best evaluation). ``std`` is
        None for a single run.
    """
    summaries = []
    for label, group in _groups(runs):
        final = {key: _spread([run['metrics'][key] for run in group]) for key, _ in METRIC_COLUMNS}
        bests = [run.get('best') for run in group]
        best = {key: _spread([b[key] for b in bests]) for key, _ in SPREAD_COLUMNS} if all(bests) else None
        summaries.append(dict(label=label, n=len(group), seeds=[run.get('seed') for run in group], final=final,
                              best=best))
    return summaries


def _paper_label(synthetic: bool, comparable: bool) -> str:
    if synthetic:
        return 'paper (real data set)'
    return 'paper' if comparable else 'paper (its data set, not this one)'


def comparison_table(results: Mapping[str, Any], first_column: str = 'Data set') -> str:
    """The markdown comparison of our numbers with the paper's (percent, one decimal).

    Per entry: the paper's row, one row per run of ours (the mean over seeds for a row run with several) and,
    where the entry is comparable with the paper (real data set of the paper's size), the difference
    ours - paper on the metrics the paper prints. On synthetic data every row of ours carries
    :data:`SYNTHETIC_LABEL`. Re-ranked runs, if any, follow in a second table with no paper row.

    Args:
        results: The benchmark result (see the module docstring).
        first_column: Header of the first column ("Data set" for Table 1, "Configuration" for ablations).

    Returns:
        The table(s), lines joined by newlines, without a trailing newline.
    """
    synthetic = bool(results.get('synthetic'))
    lines = _header(first_column)
    reranked_lines: List[str] = []
    for entry in results['entries']:
        title, paper = entry['title'], entry.get('paper') or {}
        comparable = entry.get('comparable', not synthetic)
        if paper:
            lines.append(_row(entry.get('paper_title', title), _paper_label(synthetic, comparable), paper))
        for label, group in _groups(entry['runs']):
            name = label if len(group) == 1 else f'{label}, mean of {count(len(group), "seed")}'
            metrics = _mean_metrics([run['metrics'] for run in group])
            lines.append(_row(title, f'ours: {name}' + (f' ({SYNTHETIC_LABEL})' if synthetic else ''), metrics))
            if paper and comparable:
                # Difference of the printed (one-decimal) numbers, so that the rows add up as read.
                difference = {key: round(metrics[key], 1) - value for key, value in paper.items()
                              if metrics.get(key) is not None}
                lines.append(_row(title, 'difference (ours - paper)', difference, signed=True))
            reranked = [run['reranked'] for run in group if run.get('reranked')]
            if reranked:
                reranked_lines.append(_row(title, f'ours + re-ranking: {name}', _mean_metrics(reranked)))
    if reranked_lines:
        lines += ['', 'With k-reciprocal re-ranking (Zhong et al. 2017); the paper reports no re-ranked numbers, '
                      'so these are not compared with it.', ''] + _header(first_column) + reranked_lines
    return '\n'.join(lines)


def _spread_cell(spread: Optional[Mapping[str, Optional[float]]]) -> str:
    if spread is None:
        return MISSING
    if spread['std'] is None:
        return f"{spread['mean']:.1f}"
    return f"{spread['mean']:.1f} ± {spread['std']:.1f}"


def seed_table(results: Mapping[str, Any], first_column: str = 'Data set') -> str:
    """The final and the best evaluation of every row over its seeds (empty when no row was trained here).

    Args:
        results: The benchmark result (see the module docstring).
        first_column: See :func:`comparison_table`.

    Returns:
        An explanatory line and a markdown table, or ``''``.
    """
    rows = [(entry['title'], summary) for entry in results['entries'] for summary in summarize_seeds(entry['runs'])]
    if not any(summary['n'] > 1 or summary['best'] for _, summary in rows):
        return ''
    names = [first_column, 'Row', 'n'] + [f'{name} {when}' for when in ('final', 'best') for _, name in SPREAD_COLUMNS]
    lines = ['Final and best evaluation per row (percent): mean ± sample standard deviation over the n seeds. '
             '"final" is after the last epoch; "best" is the trainer\'s evaluation with the highest mAP (every '
             '--eval-every epochs and after the last), picked after the fact. Differences between rows that are '
             'small against these standard deviations may be seed noise.', '',
             '| ' + ' | '.join(names) + ' |', '|' + '|'.join(['---'] * 2 + ['---:'] * (len(names) - 2)) + '|']
    for title, summary in rows:
        cells = [title, summary['label'], str(summary['n'])]
        cells += [_spread_cell(summary['final'][key]) for key, _ in SPREAD_COLUMNS]
        cells += [_spread_cell(summary['best'][key] if summary['best'] else None) for key, _ in SPREAD_COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def render_report(results: Mapping[str, Any], heading: str, first_column: str = 'Data set') -> str:
    """The full markdown report: heading, provenance lines, :func:`comparison_table` and :func:`seed_table`.

    Args:
        results: The benchmark result, with ``command``, ``model``, ``device`` and ``wall_time_s``.
        heading: Title line (without the leading ``#``).
        first_column: See :func:`comparison_table`.

    Returns:
        Markdown text ending with a newline.
    """
    lines = [f'# {heading}', '']
    if results.get('synthetic'):
        lines += [f'**{SYNTHETIC_LABEL}.** These rows come from the synthetic Market-layout set generated into '
                  f"`{results.get('data_root')}`; they show that the pipeline works, not how HBFP-Net performs.", '']
    if results.get('data_note'):
        lines += [results['data_note'], '']
    lines += [f"Paper: {results.get('paper_citation')}.", '',
              f"Command: `{results.get('command')}`  ",
              f"Model: `{results.get('model')}`; device: {results.get('device')}; "
              f"wall time: {results.get('wall_time_s', 0.0):.0f} s.", '',
              comparison_table(results, first_column), '']
    seeds = seed_table(results, first_column)
    if seeds:
        lines += [seeds, '']
    return '\n'.join(lines)


def library_versions(extra: Sequence[str] = ()) -> Dict[str, str]:
    """Versions of python, torch, timm, hbfp_timm, numpy and pillow (plus ``extra`` module names).

    Args:
        extra: Further importable module names whose ``__version__`` to record.

    Returns:
        Name -> version string.
    """
    import importlib

    versions = {'python': platform.python_version()}
    for name in ('torch', 'timm', 'hbfp_timm', 'numpy', 'PIL', *extra):
        module = importlib.import_module(name)
        versions['pillow' if name == 'PIL' else name] = str(getattr(module, '__version__', 'unknown'))
    return versions


# --- outputs ----------------------------------------------------------------------------------------------------------
def prepare_output(output: Union[str, Path]) -> Path:
    """Create the output folder and check that a file can be written in it, before any evaluation or training.

    Args:
        output: The ``--output`` value.

    Returns:
        The folder.

    Raises:
        BenchmarkError: It is a file, or it cannot be created or written to.
    """
    path = Path(output).expanduser()
    if path.exists() and not path.is_dir():
        raise BenchmarkError(f'--output {path}: is a file; expected a folder (for the report, results.json, the '
                             f'pictures and the training runs)')
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise BenchmarkError(f'--output {path}: cannot write there ({error.strerror or one_line(error)})') from error
    return path


def training_footprint(model: nn.Module) -> int:
    """About the bytes one trainer run of ``model`` writes: ``checkpoint.pt`` (weights, buffers and Adam's two
    moments) and the ``model.safetensors`` and ``best.safetensors`` weights (the ID classifier, sized by the
    data, left out).

    Args:
        model: The descriptor model (``num_classes=0``) that will be trained.

    Returns:
        The estimate in bytes.
    """
    parameter_bytes, buffer_bytes = state_bytes(model)
    return 3 * parameter_bytes + buffer_bytes + 2 * (parameter_bytes + buffer_bytes)


def announce_training(footprints: Sequence[int], output: Path) -> None:
    """Print, before training, how many runs will write about how much, and where.

    Args:
        footprints: :func:`training_footprint` of each run.
        output: The output folder.
    """
    print(f'The {count(len(footprints), "training run")} will write about {format_size(sum(footprints))} under '
          f'{output}/train_* (per run: {CHECKPOINT_NAME} to resume training, model.safetensors and best.safetensors)',
          flush=True)


def bytes_written(folders: Sequence[Union[str, Path]]) -> Tuple[int, int]:
    """Bytes of the files under the trainer's output folders, and the part that is resumable checkpoints.

    Args:
        folders: The trainer output folders.

    Returns:
        ``(total_bytes, checkpoint_bytes)``.
    """
    total = checkpoints = 0
    for folder in folders:
        for path in Path(folder).rglob('*'):
            if path.is_file():
                size = path.stat().st_size
                total += size
                checkpoints += size if path.name == CHECKPOINT_NAME else 0
    return total, checkpoints


def write_outputs(results: Dict[str, Any], output: Path, report_name: str, heading: str,
                  first_column: str = 'Data set') -> str:
    """Print the report and write ``OUTPUT/<report_name>.md`` and ``OUTPUT/results.json``; then say how much the
    training runs wrote, if any.

    Args:
        results: The results dict.
        output: Output folder.
        report_name: Base name of the markdown file.
        heading: Report title.
        first_column: First column header of the table.

    Returns:
        The markdown report.
    """
    report = render_report(results, heading, first_column)
    (output / f'{report_name}.md').write_text(report)
    (output / 'results.json').write_text(json.dumps(results, indent=2, default=str) + '\n')
    print(report, flush=True)
    print(f'wrote {output / (report_name + ".md")}, {output / "results.json"} and pictures in {output / "figures"}',
          flush=True)
    train_dirs = sorted({run['train_output'] for entry in results['entries'] for run in entry['runs']
                         if run.get('train_output')})
    if train_dirs:
        total, checkpoints = bytes_written(train_dirs)
        print(f'the {count(len(train_dirs), "training run")} wrote {format_size(total)} '
              f'under {output}/train_*, of which {format_size(checkpoints)} are {CHECKPOINT_NAME} files (needed '
              f'only to resume or extend training)', flush=True)
    return report
