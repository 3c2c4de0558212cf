"""What the commands (``python -m hbfp_timm.train|embed|search|activations|evaluate|release|hub`` and the
benchmarks) share: the options naming a model and how it runs (``--model-arg KEY=VALUE``: `parse_model_arg`), the
extractor built from them, the checks of an ``--output`` before any work (`output_folder`, `output_file`), and one
rule for errors: a user's mistake or a failed read is one line on stderr (`one_line`) and an exit status
(`exit_code`), never a traceback.
"""
import argparse
import ast
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from safetensors import SafetensorError

from .hub import CheckpointMismatchError, WeightsNotFoundError
from .inference.extractor import FeatureExtractor
from .models.registry import DEFAULT_REID_MODEL
from .utils.files import OutputWriteError

__all__ = ['USER_ERRORS', 'add_model_arguments', 'as_flags', 'command_error', 'extractor_from_args', 'flags_of',
           'run_command', 'exit_code', 'one_line', 'output_file', 'output_folder', 'parse_model_arg']

# What the commands report as one line instead of a traceback.
USER_ERRORS = (FileNotFoundError, ValueError, OSError, TypeError, ImportError, WeightsNotFoundError,
               CheckpointMismatchError, SafetensorError)


def add_model_arguments(parser: argparse.ArgumentParser, descriptors: bool = True) -> None:
    """The options naming the model and how it runs, shared by the embed, search, activations and evaluate
    commands (``python -m hbfp_timm.embed|search|activations|evaluate``).

    Args:
        descriptors: also the options of describing many images (``--batch-size``, ``--amp``, ``--flip``,
            ``--workers``); False (activations, which draws the maps of a few images in one pass) leaves them out
            rather than accepting flags that would change nothing.
    """
    model = parser.add_argument_group('model')
    model.add_argument('--model', metavar='MODEL',
                       help='trainer run directory, Hub folder (config.json), hf-hub:ORG/NAME, local-dir:PATH, or a '
                            'registered name such as hbfp_resnet50 (with --checkpoint, or its published weights) '
                            f'(default: {DEFAULT_REID_MODEL}, whose weights ship with the package)')
    model.add_argument('--checkpoint', metavar='FILE', help='weights file (.safetensors) to load into --model')
    model.add_argument('--untrained', action='store_true',
                       help='run a registered --model without any trained weights (to check a pipeline)')
    model.add_argument('--model-arg', action='append', type=parse_model_arg, default=[], metavar='KEY=VALUE',
                       help='constructor argument of a registered --model, value parsed as a Python literal '
                            '(repeatable), e.g. --model-arg correlation_dim=8')
    model.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                       help="input size (default: the run's training size or the model's pretrained_cfg)")
    model.add_argument('--device', default=None, help='cpu, cuda, cuda:1, ... or auto (default: cuda when available)')
    if descriptors:
        model.add_argument('--batch-size', type=int, default=32, help='images per forward pass (%(default)s)')
        model.add_argument('--amp', action='store_true',
                           help='mixed precision (bfloat16 where the device has it natively, else float16)')
        model.add_argument('--flip', action='store_true', help='average with the mirrored image')
        model.add_argument('--workers', type=int, default=2, help='image decoding processes (%(default)s)')
    else:  # what `extractor_from_args` reads: one batch, float32, no flip, decoded in this process
        parser.set_defaults(batch_size=32, amp=False, flip=False, workers=0)
    model.add_argument('--skip-bad-images', action='store_true',
                       help='leave out images that cannot be decoded, listing each one and the count (default: '
                            'the first one is an error)')


def extractor_from_args(args: argparse.Namespace) -> FeatureExtractor:
    """A `FeatureExtractor` from the options of `add_model_arguments`."""
    if not args.model and (args.checkpoint or args.untrained):
        flag = '--checkpoint' if args.checkpoint else '--untrained'
        raise ValueError(f'{flag}: needs --model naming the architecture (e.g. --model hbfp_resnet50)')
    for flag, value, least in (('--batch-size', args.batch_size, 1), ('--workers', args.workers, 0)):
        if value < least:
            raise ValueError(f'{flag}: expected a {"positive" if least else "non-negative"} integer, got {value}')
    if args.img_size and min(args.img_size) < 1:
        raise ValueError(f'--img-size: expected two positive integers H W, got {args.img_size[0]} {args.img_size[1]}')
    args.model = args.model or DEFAULT_REID_MODEL
    return FeatureExtractor(args.model, checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size,
                            amp=args.amp, flip=args.flip, img_size=tuple(args.img_size) if args.img_size else None,
                            workers=args.workers, model_args=dict(args.model_arg) or None,
                            progress=True, pretrained=not args.untrained)  # a bar, or a line a minute in logs


def _file_in_the_way(path: Path) -> Optional[Path]:
    """The first of `path` and the folders above it that exists, when it is not a folder."""
    for existing in (path, *path.parents):
        if existing.exists():
            return None if existing.is_dir() else existing
    return None


def output_folder(flag: str, path: Union[str, Path]) -> Path:
    """A command's output folder (`flag` names the option), checked before any work without creating it: a file
    at its place or above it is refused (ValueError: exit status 2)."""
    path = Path(path).expanduser()
    in_the_way = _file_in_the_way(path)
    if in_the_way == path:
        raise ValueError(f'{flag}: {path} is a file; expected a folder (created if missing)')
    if in_the_way is not None:
        raise ValueError(f'{flag}: {path} cannot be created: {in_the_way} is a file; expected a folder')
    return path


def output_file(flag: str, path: Union[str, Path], suffix: str) -> Path:
    """A command's output file (`flag` names the option), checked before any work: its name must end with
    `suffix` (what is written in it), and it must not be a folder nor lie under a file (ValueError: exit status
    2)."""
    path = Path(path).expanduser()
    if path.suffix != suffix:
        raise ValueError(f'{flag}: {path}: expected a file name ending with {suffix}, the format written in it')
    if path.is_dir():
        raise ValueError(f'{flag}: {path} is a folder; expected a {suffix} file')
    in_the_way = _file_in_the_way(path.parent)
    if in_the_way is not None:
        raise ValueError(f'{flag}: {path} cannot be written: {in_the_way} is a file, not a folder')
    return path


def flags_of(parser: argparse.ArgumentParser, **fields: str) -> Dict[str, str]:
    """The flag of each option of ``parser`` as the user types it, by its ``dest`` (``batch_size`` ->
    ``--batch-size``); ``fields`` adds the names that a flag of another name sets (``model_args='--model-arg'``)."""
    flags = {action.dest: max(action.option_strings, key=len) for action in parser._actions if action.option_strings}
    return {**flags, **fields}


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """An error of the Python API (a ``TrainConfig`` field first: ``batch_size: ... (batch_size 64 / num_instances
    4)``) as the user of a command reads it, with the flags that set those fields (``flags``, see
    :func:`flags_of`): ``--batch-size: ... (--batch-size 64 / --num-instances 4)``.

    The fields the message starts with (``name: ``, ``name, name: ``) are translated when every one has a flag, and
    in the rest of it the ``snake_case`` names that have one; a plain word (``model``, ``margin``) and a name within
    a path stay. A ``model_args`` message names the model's own constructor arguments, which are no flags, even
    where a flag has the same name (``pretrained_backbone``): only its start is translated."""
    start = re.match(r'([a-z_]+(?:, [a-z_]+)*): ', message)
    names = start[1].split(', ') if start else []
    if names and all(name in flags for name in names):
        message = ', '.join(flags[name] for name in names) + message[len(start[1]):]
    if names == ['model_args']:
        return message
    return re.sub(r'(?<![\w/.-])[a-z]+(?:_[a-z]+)+(?![\w/-]|\.\w)', lambda name: flags.get(name[0], name[0]), message)


def command_error(parser: argparse.ArgumentParser, error: BaseException) -> int:
    """Say a command's error as its one line on stderr (``PROG: error: ...``), the fields of the Python API that
    it names written as the command's flags (:func:`as_flags`: ``device: ...`` -> ``--device: ...``), and return
    its exit status (:func:`exit_code`)."""
    print(f'{parser.prog}: error: {as_flags(one_line(error), flags_of(parser, model_args="--model-arg"))}',
          file=sys.stderr)
    return exit_code(error)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A command's warnings as one ``warning:`` line, without the source location meant for programmers."""
    return f'warning: {message}\n'


def _prog() -> str:
    """The command as the user typed it: ``python -m hbfp_timm.search``, else the script's name."""
    spec = getattr(sys.modules.get('__main__'), '__spec__', None)
    return f'python -m {spec.name}' if spec is not None else Path(sys.argv[0]).name


def run_command(main) -> None:
    """The ``__main__`` of a command (``python -m hbfp_timm.embed|search|activations|evaluate``, ``python -m
    benchmarks.market|duke|cuhk03|table1|ablation|speed|probes``): warnings shown as one line each, then the
    command's exit status. Ctrl-C (and SIGTERM) that the command does not handle itself end it with one line and
    exit status 130 (143), not a traceback."""
    from .training.interrupts import Interruptions  # here: hbfp_timm.training imports this module

    warnings.formatwarning = _warning_line
    with Interruptions() as interruptions:
        try:
            code = main()
        except KeyboardInterrupt:
            interruptions.settle()
            name = interruptions.received or 'Ctrl-C'
            print(f'{_prog()}: interrupted ({name})', file=sys.stderr, flush=True)
            code = 143 if name == 'SIGTERM' else 130
    sys.exit(code)


def exit_code(error: BaseException) -> int:
    """The exit status of a command that stopped on `error`: 1 when the machine failed the work (a file that
    cannot be read or written, a disk that is full), 2 when what the command was asked cannot be done (a missing
    file, an unknown model, weights that do not fit, a bad value), as argparse does for usage errors."""
    return 1 if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) else 2


def one_line(error: BaseException) -> str:
    """The message of an error on one line: its whitespace collapsed; a KeyError's key without quotes; an
    `OutputWriteError`'s message (it names the file) without its errno; for an error raised in a DataLoader worker
    (its text carries the worker's traceback), the original last line without its exception type; the type's name
    when there is no message."""
    text = (error.strerror if isinstance(error, OutputWriteError) else str(error)).strip()  # no "[Errno 28] "
    if isinstance(error, KeyError):
        text = text.strip('\'"')
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if 'Traceback (most recent call last)' in text:
        return re.sub(r'^[\w.]+(Error|Exception): ', '', lines[-1])
    return ' '.join(' '.join(lines).split())


# The first characters of a number, tuple, list, dict or quoted string: a --model-arg value that starts with one and
# does not parse is a typo, not a string.
LITERAL_STARTS = frozenset('([{\'"0123456789+-.')


def parse_model_arg(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` of ``--model-arg``, the value read as a Python literal.

    Args:
        text: The flag value, e.g. ``gep_lambdas=(0, 1)`` or ``global_pool=avg`` (a bare word is a string).

    Returns:
        ``(key, value)``.

    Raises:
        argparse.ArgumentTypeError: Not ``KEY=VALUE`` with ``KEY`` a Python identifier, or a value that starts like
            a number, tuple, list, dict or quoted string and does not parse as one (``gep_lambdas=(0, 1``): taken
            as a string, it would reach the model as text.
    """
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE with KEY a Python identifier, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        if value.strip()[:1] in LITERAL_STARTS:
            reason = exc.msg if isinstance(exc, SyntaxError) else 'not a literal'
            raise argparse.ArgumentTypeError(
                f'{key}={value} does not parse ({reason}); expected a Python literal such as (0, 1), 0.5 or '
                f"'text', or a bare word (a string)") from None
        return key, value
