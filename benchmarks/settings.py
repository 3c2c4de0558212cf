"""The command line of the benchmarks: the shared flags, the embedded default's preset, how flags left unset are
filled (the paper's recipe on real data, :data:`SYNTHETIC_PRESET` on synthetic data), seeding, and the plumbing
every benchmark command shares (the user-facing :class:`BenchmarkError`, the guard that turns it into one line,
``hbfp_timm.commands.one_line``, and an exit code; the parser whose errors are one line; the recorded command
line).

The recipe flags (``--lr``, ``--margin``, ``--label-smoothing``, ...) are the trainer's
(:class:`hbfp_timm.train.TrainConfig`) under the same names; a flag given overrides the preset. Each is checked
when the command line is parsed, so a bad value fails before any data is read or any model trained.
"""
import argparse
import contextlib
import random
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np
import timm
import torch

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm.commands import flags_of, one_line, parse_model_arg
from hbfp_timm.data.datasets import DATASET_NAMES
from hbfp_timm.train import TrainConfig
from hbfp_timm.training.cli import RECIPE_FLAGS, add_recipe_arguments, field_type, positive_int
from hbfp_timm.training.interrupts import Interruptions
from hbfp_timm.training.prepare import folders_removed_on_failure
from hbfp_timm.utils import devices

__all__ = [
    'Settings', 'DEFAULT_MODEL', 'DATA_ROOT_ENV', 'SYNTHETIC_PRESET', 'add_common_arguments', 'resolve_settings',
    'seeds_of', 'training_flags_given', 'parse_model_arg', 'seed_everything', 'check_device', 'BenchmarkError',
    'ArgumentParser', 'exact_command', 'guarded', 'FLAGS',
]


DEFAULT_MODEL = 'hbfp_resnet50'
# The environment variable naming the folder that holds the data sets (looked in before ~/data).
DATA_ROOT_ENV = 'REID_DATA_ROOT'

# The embedded default: sized so that `python -m benchmarks.market` finishes in a few minutes on a 2-core CPU
# and the trained model is clearly better than the untrained one. Training starts from random weights (no
# download), so it departs from the paper's recipe where a short from-scratch run needs it: a 5x larger
# constant learning rate and no random erasing or cutout (measured: with them, 12 epochs did not beat the
# untrained model; 40 epochs as below take rank-1 from 28.1 to 61.4 and mAP from 14.2 to 43.6 in about 3 minutes,
# see README.md's table). Images are generated at 128x64 and fed to the network at 64x32. The resumable checkpoint
# (weights + Adam moments) is written every 10 epochs and after the last, rather than after each of them.
SYNTHETIC_PRESET: Dict[str, Any] = dict(
    model='hbfp_resnet18', img_size=(64, 32), epochs=40, batch_size=32, num_instances=4,
    num_ids=64, num_cams=4, images_per_id=12, image_size=(128, 64), workers=0,
    train_overrides=dict(lr=1e-3, random_erasing_prob=0.0, cutout_prob=0.0, checkpoint_every=10),
)


@dataclass
class Settings:
    """Everything a benchmark run needs besides the data.

    Attributes:
        model: timm model name (an ``hbfp_*`` model).
        model_args: Extra HBFPNet constructor kwargs (ablations).
        img_size: (height, width) of the network input.
        epochs: Training epochs; None keeps the trainer's default (the paper's 500).
        batch_size: P x K of the training batches.
        num_instances: K, images per identity in a training batch.
        device: torch device string.
        workers: Data loading worker processes.
        seed: Random seed.
        pretrained_backbone: Initialise the backbone from ImageNet when training.
        backbone_weights: Local ImageNet weights file of the backbone.
        max_steps_per_epoch: Cap on training steps per epoch (None: full epochs).
        train_overrides: Further ``TrainConfig`` fields (loss and augmentation settings of the ablations).
        rerank: Also score k-reciprocal re-ranked distances.
        synthetic: The run uses the synthetic data set.
        synthetic_data: Generator parameters of the synthetic set (``num_ids``, ``num_cams``, ``images_per_id``,
            ``image_size``); empty on real data.
    """
    model: str
    model_args: Dict[str, Any]
    img_size: Tuple[int, int]
    epochs: Optional[int]
    batch_size: int
    num_instances: int
    device: str
    workers: int
    seed: int
    pretrained_backbone: bool
    backbone_weights: Optional[str]
    max_steps_per_epoch: Optional[int] = None
    train_overrides: Dict[str, Any] = field(default_factory=dict)
    rerank: bool = False
    synthetic: bool = False
    synthetic_data: Dict[str, Any] = field(default_factory=dict)


_PAPER = TrainConfig()
# What the benchmarks' --help adds to the trainer's recipe flags: where their defaults differ from the paper's.
_RECIPE_NOTES = {
    'lr': f" (default: the paper's {_PAPER.lr:g}; {SYNTHETIC_PRESET['train_overrides']['lr']:g} on synthetic data)",
    'label_smoothing': f" (default: the paper's {_PAPER.label_smoothing:g}; the ablation rows without the ID loss "
                       "have none)",
    'random_erasing_prob': f' (default {_PAPER.random_erasing_prob:g}; 0 on synthetic data)',
    'cutout_prob': f' (default {_PAPER.cutout_prob:g}; 0 in the embedded default; the ablation rows without cutout '
                   'set 0)',
    'eval_every': f'; the best of these evaluations is reported beside the final one (default {_PAPER.eval_every})',
}
# Flags that only mean something when the benchmark trains (their names as attributes of the parsed flags).
TRAINING_ONLY = ('epochs', 'batch_size', 'num_instances', 'max_steps_per_epoch', 'backbone_weights',
                 'no_pretrained_backbone', 'channels_last', 'eval_data_roots', 'eval_dataset', *RECIPE_FLAGS)


def add_common_arguments(parser: argparse.ArgumentParser, synthetic_epochs: Optional[int] = None) -> None:
    """Flags shared by every benchmark (data, model, schedule and recipe, seeds, device, output).

    Args:
        parser: The parser to extend.
        synthetic_epochs: Epochs on synthetic data named in ``--help`` (default: the embedded default's).
    """
    synthetic_epochs = SYNTHETIC_PRESET['epochs'] if synthetic_epochs is None else synthetic_epochs
    parser.add_argument('--data-root', default=None, metavar='DIR',
                        help=f'folder holding the data set; default: ${DATA_ROOT_ENV}, then ~/data, else the '
                             f'synthetic embedded default')
    parser.add_argument('--model', default=None, metavar='NAME',
                        help=f'timm model name (default {DEFAULT_MODEL}; {SYNTHETIC_PRESET["model"]} on synthetic '
                             'data)')
    parser.add_argument('--model-arg', dest='model_args', action='append', type=parse_model_arg, default=[],
                        metavar='KEY=VALUE',
                        help='HBFPNet constructor argument, the value read as a Python literal (repeatable), e.g. '
                             '--model-arg gep_combine=sum --model-arg "gep_lambdas=(0, 1)"; on ablation rows it '
                             'replaces the row\'s value')
    parser.add_argument('--img-size', type=positive_int, nargs=2, metavar=('H', 'W'), default=None,
                        help="input height and width (default: the model's pretrained_cfg, 384 128; "
                             f"{' '.join(map(str, SYNTHETIC_PRESET['img_size']))} on synthetic data)")
    parser.add_argument('--device', default=None, help='torch device (default cuda if available, else cpu)')
    parser.add_argument('--workers', type=field_type('workers', int), default=None, metavar='N',
                        help='data loading workers (default 4; 0 on synthetic data)')
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument('--seed', type=int, default=0, metavar='N', help='random seed (default 0)')
    seeds.add_argument('--seeds', type=int, nargs='+', default=None, metavar='SEED',
                       help='train every row once per seed; the report gives per row the mean, the standard '
                            'deviation and n of the final and of the best evaluation')
    parser.add_argument('--rerank', action='store_true',
                        help='also report k-reciprocal re-ranked numbers, in a separate table')
    parser.add_argument('--output', default=None, metavar='DIR', help='output folder (default runs/<benchmark>)')

    recipe = parser.add_argument_group('training recipe (the paper\'s unless given; training runs only)')
    recipe.add_argument('--epochs', type=positive_int, default=None, metavar='N',
                        help=f"training epochs (default: the trainer's, the paper's {_PAPER.epochs}; "
                             f"{synthetic_epochs} on synthetic data)")
    recipe.add_argument('--batch-size', type=positive_int, default=None, metavar='N',
                        help=f"training batch P x K (default {_PAPER.batch_size}; {SYNTHETIC_PRESET['batch_size']} "
                             'on synthetic data)')
    recipe.add_argument('--num-instances', type=positive_int, default=None, metavar='K',
                        help=f'K, images per identity in a batch (default {_PAPER.num_instances})')
    add_recipe_arguments(recipe, notes={name: _RECIPE_NOTES.get(name, f" (default: the paper's "
                                                                      f'{getattr(_PAPER, name):g})')
                                        for name in RECIPE_FLAGS})
    recipe.add_argument('--max-steps-per-epoch', type=positive_int, default=None, metavar='N',
                        help='cap training steps per epoch (smoke runs)')
    recipe.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                        help="train in channels-last memory format (speed only; default: the trainer's, off; "
                             'measure a backbone with python -m benchmarks.speed --sections memory_format)')
    recipe.add_argument('--eval-data-root', dest='eval_data_roots', action='append', default=None, metavar='DIR',
                        help='another data set the trainer scores at every evaluation, beside the in-domain one '
                             '(cross-domain; repeatable; in the trainer run folder\'s results.json)')
    recipe.add_argument('--eval-dataset', default=None, choices=DATASET_NAMES,
                        help='reader of the --eval-data-root folders (default market_layout)')
    backbone = recipe.add_mutually_exclusive_group()
    backbone.add_argument('--backbone-weights', default=None, metavar='FILE',
                          help='local ImageNet weights file of the backbone, for training on an offline machine')
    backbone.add_argument('--no-pretrained-backbone', action='store_true', default=None,
                          help='train from a randomly initialised backbone (default on real data: timm\'s ImageNet '
                               'weights, downloaded; on synthetic data always random)')


def _flags() -> Dict[str, str]:
    parser = argparse.ArgumentParser(add_help=False)
    add_common_arguments(parser)
    flags = flags_of(parser)
    return {**flags, 'pretrained_backbone': flags['no_pretrained_backbone']}  # the TrainConfig field of the flag


# The flag of each name of the parsed flags and of each TrainConfig field the flags set, as the user types it:
# batch_size -> --batch-size, model_args -> --model-arg, eval_data_roots -> --eval-data-root (for
# hbfp_timm.commands.as_flags).
FLAGS: Dict[str, str] = _flags()


def seeds_of(args: argparse.Namespace) -> List[int]:
    """The seeds of the run: ``--seeds``, else ``[--seed]``.

    Args:
        args: Parsed flags of :func:`add_common_arguments`.

    Returns:
        The seeds, in the order given.
    """
    seeds = list(args.seeds) if args.seeds else [args.seed]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise BenchmarkError(f'--seeds: expected distinct seeds, got {" ".join(map(str, seeds))} '
                             f'({", ".join(map(str, repeated))} repeated)')
    return seeds


def training_flags_given(args: argparse.Namespace) -> List[str]:
    """The flags given that only apply when training (``--lr``, ``--epochs``, ..., several ``--seeds``).

    Args:
        args: Parsed flags of :func:`add_common_arguments`.

    Returns:
        The flags as typed (``--lr``), in ``--help`` order.
    """
    given = [FLAGS[name] for name in TRAINING_ONLY if getattr(args, name) is not None]
    return given + (['--seeds'] if args.seeds and len(args.seeds) > 1 else [])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic algorithms (warning where it has none).

    Args:
        seed: The seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_settings(args: argparse.Namespace, synthetic: bool) -> Settings:
    """Fill the flags left unset with the paper's defaults, or the embedded default's on synthetic data.

    Args:
        args: Parsed flags of :func:`add_common_arguments`.
        synthetic: The run uses the synthetic data set.

    Returns:
        The settings.
    """
    preset = SYNTHETIC_PRESET if synthetic else {}
    model = args.model or preset.get('model', DEFAULT_MODEL)
    if not timm.is_model(model):
        raise BenchmarkError(f'--model: unknown timm model {model!r}; HBFP models: '
                             f'{", ".join(timm.list_models("hbfp_*"))}')
    if args.img_size is not None:
        img_size = tuple(args.img_size)
    elif 'img_size' in preset:
        img_size = preset['img_size']
    else:
        img_size = tuple(timm.get_pretrained_cfg(model).input_size[1:])
    if min(img_size) < 16:
        raise BenchmarkError(f'--img-size: expected H W of at least 16 pixels each, got {img_size}')
    batch_size = args.batch_size or preset.get('batch_size', _PAPER.batch_size)
    num_instances = args.num_instances or preset.get('num_instances', _PAPER.num_instances)
    if num_instances < 2:
        raise BenchmarkError(f'--num-instances {num_instances}: expected at least 2 (batch-hard triplets need '
                             f'positives)')
    if batch_size % num_instances or batch_size < 2 * num_instances:
        raise BenchmarkError(f'--batch-size {batch_size}: expected a multiple of --num-instances {num_instances} '
                             f'(P x K) holding at least two identities')
    if args.backbone_weights is not None and not Path(args.backbone_weights).expanduser().is_file():
        raise BenchmarkError(f'--backbone-weights {args.backbone_weights}: no such file (expected a local ImageNet '
                             f'weights file of the backbone)')
    recipe = {name: getattr(args, name) for name in (*RECIPE_FLAGS, 'channels_last', 'eval_dataset')
              if getattr(args, name) is not None}
    if args.eval_data_roots:
        recipe['eval_data_roots'] = tuple(args.eval_data_roots)
    return Settings(
        model=model, model_args=dict(args.model_args), img_size=img_size,
        epochs=args.epochs if args.epochs is not None else preset.get('epochs'),
        batch_size=batch_size, num_instances=num_instances,
        device=check_device(args.device),
        workers=args.workers if args.workers is not None else preset.get('workers', 4),
        seed=seeds_of(args)[0],
        # No download on synthetic data (CPU demo, maybe offline); the paper starts from ImageNet.
        pretrained_backbone=(not synthetic or args.backbone_weights is not None) and not args.no_pretrained_backbone,
        backbone_weights=args.backbone_weights,
        max_steps_per_epoch=args.max_steps_per_epoch,
        train_overrides={**preset.get('train_overrides', {}), **recipe},
        rerank=args.rerank, synthetic=synthetic,
        synthetic_data={key: preset[key] for key in ('num_ids', 'num_cams', 'images_per_id', 'image_size')
                        if key in preset},
    )


def check_device(name: Optional[str]) -> str:
    """``name`` (None or ``'auto'``: CUDA when available, else the CPU) as a torch device this machine has, else
    a :class:`BenchmarkError` naming ``--device`` (:func:`hbfp_timm.utils.devices.check_device`'s rule)."""
    try:
        return str(devices.check_device(name, argument='--device'))
    except ValueError as error:
        raise BenchmarkError(str(error)) from None


# --- cli --------------------------------------------------------------------------------------------------------------
INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a process ended by SIGINT (128 + 2)
TERMINATED_EXIT_CODE = 143  # ... and by SIGTERM (128 + 15)


class BenchmarkError(Exception):
    """A user-facing error (bad data root, missing weights...): printed on one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (the usage is in ``--help``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {" ".join(message.split())} (see --help)\n')


def exact_command(prog: str, argv: Sequence[str]) -> str:
    """The command line as a user would retype it.

    Args:
        prog: ``python -m benchmarks.<name>``.
        argv: The arguments.

    Returns:
        One shell-quoted line.
    """
    return prog + (' ' + shlex.join(argv) if argv else '')


@contextlib.contextmanager
def each_warning_once() -> Iterator[None]:
    """Within it, a warning is shown once, however often and from wherever it is raised again: a benchmark reads
    its data, then the trainer reads it again for each run, and the data's warnings (images not read) would be
    repeated. The warning filters apply as ever (``-W error`` still raises); only the repeats are not shown."""
    show, shown = warnings.showwarning, set()

    def show_once(message, category, filename, lineno, file=None, line=None):
        if (category, str(message)) not in shown:
            shown.add((category, str(message)))
            show(message, category, filename, lineno, file, line)
    warnings.showwarning = show_once
    try:
        yield
    finally:
        warnings.showwarning = show


def guarded(function: Callable[[], Any], output: Optional[Union[str, Path]] = None) -> int:
    """Run ``function``; a :class:`BenchmarkError` becomes one ``error:`` line on stderr and exit code 2, an
    ``OSError`` (disk full, a file gone) one line and exit code 1, Ctrl-C one line and exit code 130, SIGTERM one
    line and exit code 143 (each training run's last checkpoint stays intact and resumable). Each warning is shown
    once (:func:`each_warning_once`). A run that fails removes the folders it created for ``output`` and left empty.

    Args:
        function: The benchmark body.
        output: The folder the body writes into (``--output``, or its default), if any.

    Returns:
        The process exit code.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with Interruptions() as interruptions, each_warning_once():
        try:
            with folders_removed_on_failure(Path(output).expanduser()) if output else contextlib.nullcontext():
                function()
        except BenchmarkError as error:
            print(f'error: {one_line(error)}', file=sys.stderr, flush=True)
            return 2
        except OSError as error:  # the machine's part (disk full, a file gone): its message names the file
            print(f'error: {one_line(error)}', file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            interruptions.settle()
            name = interruptions.received or 'Ctrl-C'
            print(f'interrupted ({name}); no report written; each train_* folder keeps its last checkpoint.pt: '
                  f'python -m hbfp_timm.train --resume FOLDER continues it', file=sys.stderr, flush=True)
            return TERMINATED_EXIT_CODE if name == 'SIGTERM' else INTERRUPTED_EXIT_CODE
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return 0
