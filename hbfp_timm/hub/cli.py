"""``python -m hbfp_timm.hub save|push``: a trainer run exported as a Hugging Face Hub repository."""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub.errors import HfHubHTTPError

from ..commands import exit_code, one_line, output_folder
from ..metrics.verification import THRESHOLDS_NAME, read_thresholds
from ..models.pretrained import CheckpointMismatchError
from .publish import push_to_hub, save_pretrained
from .weights import load_run

__all__ = ['main']


def _read_notes(path: str) -> str:
    """The markdown of ``--notes``; what cannot be read is one line naming the flag."""
    notes = Path(path).expanduser()
    if notes.is_dir():
        raise ValueError(f'--notes: {notes}: a folder; expected a markdown file for the model card')
    try:
        return notes.read_text(encoding='utf-8')
    except FileNotFoundError:
        message = f'--notes: {notes}: file not found; expected a markdown file for the model card'
        raise FileNotFoundError(message) from None
    except UnicodeDecodeError as error:
        raise ValueError(f'--notes: {notes}: not a UTF-8 text file ({error})') from None
    except OSError as error:
        raise OSError(f'--notes: {notes}: cannot be read ({error.strerror or error})') from None


def _read_thresholds_flag(path: str):
    """The record of ``--thresholds``; an error names the flag (of the same kind: the exit status)."""
    try:
        return read_thresholds(Path(path).expanduser())
    except IsADirectoryError:
        raise ValueError(f'--thresholds: {path}: a folder; expected the thresholds.json of python -m '
                         'hbfp_timm.evaluate --calibrate') from None
    except (OSError, ValueError) as error:
        kind = FileNotFoundError if isinstance(error, FileNotFoundError) else \
            OSError if isinstance(error, OSError) else ValueError
        raise kind(f'--thresholds: {one_line(error)}') from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.hub {save,push}``; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.hub',
        description='Export a trained HBFP-Net run (results.json + model.safetensors) as a Hugging Face Hub '
                    'repository: config.json, model.safetensors and a README.md model card.')
    commands = parser.add_subparsers(dest='command', required=True)
    save = commands.add_parser('save', help='write the Hub layout to a local folder (loadable with local-dir:)')
    save.add_argument('run', help='trainer output directory (or the .safetensors file inside it)')
    save.add_argument('out', help='output folder')
    push = commands.add_parser('push', help='upload the Hub layout to a Hub model repository')
    push.add_argument('run', help='trainer output directory (or the .safetensors file inside it)')
    push.add_argument('--repo-id', required=True, help='ORG/NAME of the Hub repository, created if missing')
    push.add_argument('--private', action='store_true', help='create the repository as private')
    push.add_argument('--token', default=None, help='Hub token (default: saved login or HF_TOKEN)')
    push.add_argument('--commit-message', default='Add HBFP-Net Re-ID weights')
    for command in (save, push):
        command.add_argument('--notes', metavar='FILE.md', help="markdown added to the model card (comparisons, "
                                                                "seeds, the data set's terms)")
        command.add_argument('--dataset', metavar='NAME',
                             help="the data set's name on the card and in the tag, instead of the trainer's reader "
                                  "name (e.g. cuhk03 for a folder read as market_layout)")
        command.add_argument('--thresholds', metavar='FILE',
                             help='"same person" thresholds (thresholds.json of python -m hbfp_timm.evaluate '
                                  "--calibrate) stored in config.json and on the card (default: the run folder's "
                                  'thresholds.json, when there is one)')
        command.add_argument('--license', default='apache-2.0',
                             help="the card's licence identifier (%(default)s; 'other' for weights bound by a data "
                                  "set's terms)")
    args = parser.parse_args(argv)
    try:
        out = output_folder('out', args.out) if args.command == 'save' else None  # a file in the way: before any work
        notes = _read_notes(args.notes) if args.notes else None
        model, results = load_run(args.run)
        if args.dataset:
            results = dict(results, dataset=args.dataset)
        run_folder = Path(args.run).parent if Path(args.run).suffix == '.safetensors' else Path(args.run)
        if args.thresholds:
            results = dict(results, thresholds=_read_thresholds_flag(args.thresholds))
        elif (run_folder / THRESHOLDS_NAME).is_file():
            results = dict(results, thresholds=read_thresholds(run_folder / THRESHOLDS_NAME))
        if args.command == 'save':
            print(save_pretrained(model, out, results, notes=notes, license=args.license))
        else:
            print(push_to_hub(model, args.repo_id, results, private=args.private, token=args.token,
                              commit_message=args.commit_message, notes=notes, license=args.license))
    except (OSError, ValueError, CheckpointMismatchError, HfHubHTTPError) as exc:  # OSError: a full disk too
        print(f'{parser.prog}: error: {one_line(exc)}', file=sys.stderr)
        return exit_code(exc)  # 2: a missing run file, bad results; 1: the disk or the Hub failed
    return 0


