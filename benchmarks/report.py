"""Markdown comparison tables and the provenance block of ``results.json``.

A benchmark result is a plain dict (the content of ``results.json``). The part the tables read is::

    {
      "synthetic": false,                      # true: rows are labelled "not comparable with the paper"
      "entries": [                             # one per data set (Table 1) or configuration (Tables 2-3)
        {"title": "Market-1501",
         "paper_title": "Market-1501",                   # optional: first cell of the paper row (default title)
         "paper": {"rank1": 95.8, "mAP": 89.8},          # percent, only what the paper prints
         "runs": [{"label": "hbfp_resnet50, checkpoint",
                   "metrics": {"rank1": .., "rank5": .., "rank10": .., "mAP": ..},   # percent
                   "reranked": {...} or null}]}
      ]
    }

Re-ranked scores go to a table of their own: the paper's numbers are without re-ranking, so they are never
set beside them.
"""
import hashlib
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ['METRIC_COLUMNS', 'SYNTHETIC_LABEL', 'comparison_table', 'render_report', 'sha256_file', 'library_versions']

METRIC_COLUMNS = (('rank1', 'Rank-1'), ('rank5', 'Rank-5'), ('rank10', 'Rank-10'), ('mAP', 'mAP'))
SYNTHETIC_LABEL = 'synthetic — not comparable with the paper'
MISSING = '–'


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


def comparison_table(results: Mapping[str, Any], first_column: str = 'Data set') -> str:
    """The markdown comparison of our numbers with the paper's (percent, one decimal).

    Per entry: the paper's row, one row per run of ours and, on real data, the difference ours - paper on the
    metrics the paper prints. On synthetic data every row of ours carries :data:`SYNTHETIC_LABEL` and no
    difference is shown. Re-ranked runs, if any, follow in a second table with no paper row.

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
        if paper:
            lines.append(_row(entry.get('paper_title', title), 'paper' + (' (real data set)' if synthetic else ''),
                              paper))
        for run in entry['runs']:
            label = f"ours: {run['label']}" + (f' ({SYNTHETIC_LABEL})' if synthetic else '')
            lines.append(_row(title, label, run['metrics']))
            if paper and not synthetic:
                # Difference of the printed (one-decimal) numbers, so that the rows add up as read.
                difference = {key: round(run['metrics'][key], 1) - value for key, value in paper.items()
                              if run['metrics'].get(key) is not None}
                lines.append(_row(title, 'difference (ours - paper)', difference, signed=True))
            if run.get('reranked'):
                reranked_lines.append(_row(title, f"ours + re-ranking: {run['label']}", run['reranked']))
    if reranked_lines:
        lines += ['', 'With k-reciprocal re-ranking (Zhong et al. 2017); the paper reports no re-ranked numbers, '
                      'so these are not compared with it.', ''] + _header(first_column) + reranked_lines
    return '\n'.join(lines)


def render_report(results: Mapping[str, Any], heading: str, first_column: str = 'Data set') -> str:
    """The full markdown report: heading, provenance lines and :func:`comparison_table`.

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
    lines += [f"Paper: {results.get('paper_citation')}.", '',
              f"Command: `{results.get('command')}`  ",
              f"Model: `{results.get('model')}`; device: {results.get('device')}; "
              f"wall time: {results.get('wall_time_s', 0.0):.0f} s.", '',
              comparison_table(results, first_column), '']
    return '\n'.join(lines)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks.

    Args:
        path: The file.
        chunk_size: Bytes read at a time.

    Returns:
        The 64-character hex digest.
    """
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


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
