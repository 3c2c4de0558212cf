"""What a benchmark leaves in its output folder: the markdown report (also printed) and ``results.json``."""
import json
from pathlib import Path
from typing import Any, Dict

from .report import render_report

__all__ = ['write_outputs']


def write_outputs(results: Dict[str, Any], output: Path, report_name: str, heading: str,
                  first_column: str = 'Data set') -> str:
    """Print the report and write ``OUTPUT/<report_name>.md`` and ``OUTPUT/results.json``.

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
    return report
