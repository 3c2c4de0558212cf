"""``python -m hbfp_timm.train``: the command line of the trainer.

Every failure ends in one line on stderr naming the argument or the file: exit status 2 for a problem found
before training (arguments, data, output folder, checkpoint, weights), 1 for one met during training (divergence,
a full disk, an image that became unreadable), 130 on Ctrl-C and 143 on SIGTERM (the last checkpoint is intact;
the line says how to resume). A run that fails removes the output folders it created and left empty.

An ``--output`` folder that holds another run is refused (``--overwrite`` replaces that run); ``--resume`` writes
into the folder of the checkpoint. The data paths are recorded as absolute paths, so that a run resumes from any
working folder; a resumed run keeps its own configuration, and flags given override it.
"""
import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..commands import as_flags, flags_of, one_line, parse_model_arg
from ..data import DATASET_NAMES, ImageReadError
from ..utils.files import OutputWriteError
from .checkpoint import CHECKPOINT_NAME, RESULTS_NAME, load_train_state
from .config import AMP_DTYPES, DEVICE_DEFAULTS, TrainConfig, TrainSetupError, field_problem
from .interrupts import Interruptions
from .loop import TrainingDivergedError, train
from .prepare import check_no_earlier_run, missing_folders, output_dir, remove_created_folders

__all__ = ['RECIPE_FLAGS', 'add_recipe_arguments', 'build_parser', 'field_type', 'main', 'positive_int']

PROG = 'python -m hbfp_timm.train'


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only where there is a value to show (not None, [] or an on/off flag's), and a
    list default as it is typed (``384 128``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ''
        if action.default in (None, argparse.SUPPRESS, []) or action.nargs == 0 or '%(default)' in help_text:
            return help_text
        if isinstance(action.default, (list, tuple)):
            return f'{help_text} (default: {" ".join(str(value) for value in action.default)})'
        return super()._get_help_string(action)


def _device_defaults(option: str) -> str:
    return ', '.join(f'{"on" if values[option] else "off"} on {device.upper()}'
                     for device, values in DEVICE_DEFAULTS.items())


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


# The recipe flags (paper 4.2), declared once for the trainer and the benchmarks: TrainConfig field -> (type of the
# value, metavar, help). Each value is checked by the trainer's own rule (`FIELD_RULES`) as it is parsed.
RECIPE_FLAGS: Dict[str, Tuple[type, str, str]] = {
    'lr': (float, 'LR', 'Adam learning rate'),
    'lr_constant_epochs': (int, 'N', 'epochs at the base learning rate before the exponential decay'),
    'lr_final_factor': (float, 'F', 'learning-rate factor reached at the last epoch (the paper\'s "decays to 0")'),
    'weight_decay': (float, 'WD', 'Adam weight decay'),
    'margin': (float, 'M', 'triplet loss margin'),
    'label_smoothing': (float, 'EPS', 'label smoothing of the ID loss'),
    'flip_prob': (float, 'P', 'horizontal flip probability'),
    'random_erasing_prob': (float, 'P', 'random erasing probability'),
    'cutout_prob': (float, 'P', 'cutout probability'),
    'eval_every': (int, 'N', 'evaluate every N epochs (and after the last)'),
}


def field_type(name: str, kind: type) -> Callable[[str], Any]:
    """The argparse type of the flag of TrainConfig field ``name``: the text read as ``kind``, then checked by the
    trainer's rule of that field, so that a bad value fails as the command line is parsed."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {"an integer" if kind is int else "a number"}, '
                                             f'got {text!r}') from None
        problem = field_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem.partition(': ')[2])
        return value
    parse.__name__ = name
    return parse


def add_recipe_arguments(group: Any, defaults: Optional[TrainConfig] = None,
                         notes: Optional[Mapping[str, str]] = None) -> None:
    """Add the :data:`RECIPE_FLAGS` to a parser or argument group.

    Args:
        group: The parser or group.
        defaults: Their defaults (the trainer's ``TrainConfig()``); None leaves them unset (None).
        notes: Text added to a flag's help, by field name.
    """
    for name, (kind, metavar, text) in RECIPE_FLAGS.items():
        group.add_argument('--' + name.replace('_', '-'), type=field_type(name, kind), metavar=metavar,
                           default=None if defaults is None else getattr(defaults, name),
                           help=text + (notes or {}).get(name, ''))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m hbfp_timm.train`` argument parser; defaults come from :class:`TrainConfig`."""
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Train HBFP-Net for person re-identification. Every default is the paper\'s recipe '
                    '(HBFP-Net, ACM MM 2020, section 4.2): 384x128 input, flip + random erasing + cutout, '
                    'PK batches 16x4, triplet margin 0.3, label smoothing 0.3, Adam lr 2e-4 wd 5e-4, constant '
                    'for 200 epochs then exponential decay to epoch 500. Several GPUs: torchrun --nproc-per-node '
                    'N -m hbfp_timm.train ...',
        formatter_class=_HelpFormatter)
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', default=d.dataset, choices=DATASET_NAMES, help='data set reader')
    data.add_argument('--data-root', default=d.data_root, help='folder holding the data set')
    data.add_argument('--eval-data-root', dest='eval_data_roots', action='append', default=list(d.eval_data_roots),
                      metavar='DIR', help='another data set scored at every evaluation, beside the in-domain one '
                                          '(cross-domain; repeatable)')
    data.add_argument('--eval-dataset', default=d.eval_dataset, choices=DATASET_NAMES,
                      help='reader of the --eval-data-root folders (%(default)s: any Market-style folder)')
    data.add_argument('--img-size', nargs=2, type=positive_int, default=list(d.img_size), metavar=('H', 'W'),
                      help='input height and width')
    data.add_argument('--batch-size', type=positive_int, default=d.batch_size,
                      help='P x K images per batch (per process under torchrun)')
    data.add_argument('--num-instances', type=positive_int, default=d.num_instances,
                      help='K, images per identity in a batch')
    data.add_argument('--workers', type=int, default=d.workers, help='data loading processes')
    data.add_argument('--check-images', action='store_true',
                      help='decode every image before training (by default only cheap header and size checks run)')

    model = parser.add_argument_group('model')
    model.add_argument('--model', default=d.model, help='timm name of the HBFP model')
    model.add_argument('--model-arg', action='append', type=parse_model_arg, default=[], metavar='KEY=VALUE',
                       help='HBFPNet constructor argument, value parsed as a Python literal (repeatable), '
                            'e.g. --model-arg "gep_lambdas=(0, 1)" --model-arg hierarchical=False')
    model.add_argument('--no-pretrained-backbone', dest='pretrained_backbone', action='store_false',
                       help='start the backbone from random weights instead of timm\'s ImageNet weights')
    model.add_argument('--backbone-weights', default=d.backbone_weights, metavar='FILE',
                       help='local ImageNet weights file for the backbone (offline machines)')

    optim = parser.add_argument_group('recipe and optimisation')
    optim.add_argument('--epochs', type=positive_int, default=d.epochs, help='training epochs')
    add_recipe_arguments(optim, d)
    optim.add_argument('--triplet-weight', type=float, default=d.triplet_weight, help='weight of the triplet loss')
    optim.add_argument('--id-weight', type=float, default=d.id_weight, help='weight of the ID loss')
    optim.add_argument('--max-steps-per-epoch', type=positive_int, default=d.max_steps_per_epoch,
                       help='cap on steps per epoch (smoke runs)')

    run = parser.add_argument_group('run')
    run.add_argument('--device', default=d.device, help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:N'")
    run.add_argument('--no-amp', dest='amp', action='store_false', help='disable mixed precision on CUDA')
    run.add_argument('--amp-dtype', default=d.amp_dtype, choices=AMP_DTYPES,
                     help='mixed-precision type on CUDA; auto: bfloat16 where the GPU has it, else float16 (with '
                          'gradient scaling)')
    run.add_argument('--channels-last', default=d.channels_last, action=argparse.BooleanOptionalAction,
                     help='channels-last memory format for model and images; on CPU it pays off for depthwise '
                          'backbones such as MobileNetV2 (python -m benchmarks.speed --sections memory_format) '
                          f'(default: {_device_defaults("channels_last")})')
    run.add_argument('--compile', default=d.compile, action=argparse.BooleanOptionalAction,
                     help=f'torch.compile the training forward pass (default: {_device_defaults("compile")})')
    run.add_argument('--seed', type=int, default=d.seed, help='random seed')
    run.add_argument('--checkpoint-every', type=positive_int, default=d.checkpoint_every,
                     help='write the resumable checkpoint every N epochs (and after the last)')
    run.add_argument('--flip-test', action='store_true', help='average test descriptors with mirrored images')
    run.add_argument('--metric', default=d.metric, choices=('euclidean', 'cosine'), help='test distance')
    run.add_argument('--test-batch-size', type=positive_int, default=d.test_batch_size,
                     help='feature extraction batch size')
    run.add_argument('--output', default=d.output, metavar='DIR',
                     help='output folder (default: the --resume folder, else runs/<model>_<dataset>); one that holds '
                          'another run is refused')
    run.add_argument('--overwrite', action='store_true',
                     help='replace the run that --output holds (its files, thresholds.json included, are removed '
                          'before the first epoch)')
    run.add_argument('--resume', default=d.resume, metavar='PATH_OR_DIR',
                     help='checkpoint.pt (or its folder) to continue from')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; see ``python -m hbfp_timm.train --help``.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The results dict of :func:`train`.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(parser.parse_args(argv))
    args['model_args'] = dict(args.pop('model_arg'))
    args['img_size'] = tuple(args['img_size'])
    args['eval_data_roots'] = tuple(args['eval_data_roots'])
    overwrite = args.pop('overwrite')
    cfg: Optional[TrainConfig] = None
    created: List[Path] = []
    with Interruptions() as interruptions:
        try:
            if args['resume']:
                # A resumed run keeps its own configuration; flags given on this command line override it. Its
                # output is the folder of the checkpoint, wherever the run was started from or moved to.
                saved = json.loads(load_train_state(args['resume'])['config'])
                saved.pop('output', None)
                given = _given_arguments(argv)
                _check_recorded_paths(saved, given, args['resume'])
                args = {**saved, **{key: value for key, value in args.items() if key in given}}
                args['img_size'] = tuple(args['img_size'])
                args['eval_data_roots'] = tuple(args.get('eval_data_roots', ()))
            cfg = TrainConfig(**_absolute_paths(args))
            created = missing_folders(output_dir(cfg))
            if not overwrite:
                check_no_earlier_run(cfg, output_dir(cfg))
            return train(cfg, command=['python', '-m', 'hbfp_timm.train', *argv])
        except (Exception, KeyboardInterrupt) as exc:
            interruptions.settle()
            if isinstance(exc, KeyboardInterrupt) or interruptions.received:
                name = interruptions.received or 'Ctrl-C'
                parser.exit(143 if name == 'SIGTERM' else 130, f'{PROG}: interrupted ({name}); {_resume_hint(cfg)}\n')
            remove_created_folders(created)
            if isinstance(exc, TrainSetupError):
                parser.exit(2, f'{PROG}: error: {as_flags(str(exc), _flags())}\n')
            if isinstance(exc, OutputWriteError):
                parser.exit(1, f'{PROG}: error: {exc.strerror or exc}\n')
            if isinstance(exc, ImageReadError):
                parser.exit(1, f'{PROG}: error: {one_line(exc)}; --check-images finds every unreadable image '
                               f'before training\n')
            if isinstance(exc, TrainingDivergedError):
                parser.exit(1, f'{PROG}: error: {exc}\n')
            raise


# The TrainConfig fields that hold paths of the input (not of the output): recorded as absolute paths.
_PATH_FIELDS = ('data_root', 'eval_data_roots', 'backbone_weights')


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _absolute_paths(args: Dict[str, Any]) -> Dict[str, Any]:
    """``args`` with its input paths made absolute, so that the run records where its data is, not where it is
    from the folder the run was started in (a resume from another folder would look for it elsewhere)."""
    args = dict(args)
    if args.get('data_root') is not None:
        args['data_root'] = _absolute(args['data_root'])
    if args.get('backbone_weights') is not None:
        args['backbone_weights'] = _absolute(args['backbone_weights'])
    args['eval_data_roots'] = tuple(_absolute(path) for path in args.get('eval_data_roots', ()))
    return args


def _check_recorded_paths(saved: Dict[str, Any], given: set, resume: str) -> None:
    """A run recorded before its paths were made absolute holds them relative to the folder it was started in:
    one that this command line does not replace and that is not found from here stops the resume, naming it.

    Raises:
        TrainSetupError: A recorded relative path is not found from the current folder.
    """
    for name in _PATH_FIELDS:
        value = saved.get(name)
        for path in (value if isinstance(value, (list, tuple)) else [value]):
            if name in given or path is None or Path(path).expanduser().is_absolute() or Path(path).exists():
                continue
            flag = _flags()[name]
            raise TrainSetupError(
                f'resume: {resume} records {flag} {path}, a path relative to the folder the run was started in, and '
                f'{Path.cwd()} has no {path}; resume from that folder, or pass {flag} with the path from here')


def _resume_hint(cfg: Optional[TrainConfig]) -> str:
    """What an interrupted run leaves behind, and how to continue it."""
    if cfg is None:
        return 'nothing was written'
    folder = output_dir(cfg)
    if not (folder / CHECKPOINT_NAME).is_file():
        return f'no checkpoint was written yet in {folder}'
    try:
        epoch = json.loads((folder / RESULTS_NAME).read_text()).get('checkpoint_epoch')
    except (OSError, ValueError, AttributeError):
        epoch = None
    held = f' (epoch {epoch})' if epoch else ''
    return f'{folder / CHECKPOINT_NAME}{held} is intact; continue with: {PROG} --resume {folder}'


@functools.lru_cache(maxsize=1)
def _flags() -> Dict[str, str]:
    """The flag of each ``TrainConfig`` field (``model_args`` is set by ``--model-arg``), from the parser built
    once."""
    return flags_of(build_parser(), model_args='--model-arg')


class _Unset(list):
    """Stands for "not on the command line" in a namespace given to argparse, which then leaves an option that is
    not given as it is (argparse only fills in defaults where the namespace has no value; being a list, ``append``
    options start from it)."""


def _given_arguments(argv: Sequence[str]) -> set:
    """``TrainConfig`` field names of the options present on the command line (not left at their default)."""
    parser = build_parser()
    unset = argparse.Namespace(**{name: _Unset() for name in vars(parser.parse_args([]))})
    given = {name for name, value in vars(parser.parse_args(argv, namespace=unset)).items()
             if not (isinstance(value, _Unset) and not value)}
    return {'model_args' if name == 'model_arg' else name for name in given} | {'resume'}
