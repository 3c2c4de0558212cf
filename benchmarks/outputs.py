"""What a benchmark leaves in its output folder: the markdown report (also printed), ``results.json``, and the
trainer's runs. The folder is checked before any work, and the disk space the runs take is said before and
after (each trainer run keeps a resumable ``checkpoint.pt`` about three times the size of the weights)."""
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple, Union

import torch.nn as nn

from hbfp_timm.utils.files import format_size
from hbfp_timm.train import CHECKPOINT_NAME
from hbfp_timm.commands import one_line

from .cli import BenchmarkError
from .models import state_bytes
from .report import count, render_report

__all__ = ['prepare_output', 'training_footprint', 'announce_training', 'bytes_written',
           'write_outputs']


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
