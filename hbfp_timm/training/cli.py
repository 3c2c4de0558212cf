"""``python -m hbfp_timm.train``: the command line of the trainer."""
import argparse
import ast
import json
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from ..data import DATASET_NAMES
from .checkpoint import load_checkpoint
from .config import TrainConfig, TrainSetupError
from .loop import train

__all__ = ['build_parser', 'main']


def _model_arg(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE with KEY a Python identifier, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word such as global_pool=avg is a string


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m hbfp_timm.train`` argument parser; defaults come from :class:`TrainConfig`."""
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.train',
        description='Train HBFP-Net for person re-identification. Every default is the paper\'s recipe '
                    '(HBFP-Net, ACM MM 2020, section 4.2): 384x128 input, flip + random erasing + cutout, '
                    'PK batches 16x4, triplet margin 0.3, label smoothing 0.3, Adam lr 2e-4 wd 5e-4, constant '
                    'for 200 epochs then exponential decay to epoch 500. Several GPUs: torchrun --nproc-per-node '
                    'N -m hbfp_timm.train ...',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', default=d.dataset, choices=DATASET_NAMES, help='data set reader')
    data.add_argument('--data-root', default=d.data_root, help='folder holding the data set')
    data.add_argument('--img-size', nargs=2, type=_positive_int, default=list(d.img_size), metavar=('H', 'W'),
                      help='input height and width')
    data.add_argument('--batch-size', type=_positive_int, default=d.batch_size,
                      help='P x K images per batch (per process under torchrun)')
    data.add_argument('--num-instances', type=_positive_int, default=d.num_instances,
                      help='K, images per identity in a batch')
    data.add_argument('--flip-prob', type=float, default=d.flip_prob, help='horizontal flip probability')
    data.add_argument('--random-erasing-prob', type=float, default=d.random_erasing_prob,
                      help='random erasing probability')
    data.add_argument('--cutout-prob', type=float, default=d.cutout_prob, help='cutout probability')
    data.add_argument('--workers', type=int, default=d.workers, help='data loading processes')

    model = parser.add_argument_group('model')
    model.add_argument('--model', default=d.model, help='timm name of the HBFP model')
    model.add_argument('--model-arg', action='append', type=_model_arg, default=[], metavar='KEY=VALUE',
                       help='HBFPNet constructor argument, value parsed as a Python literal (repeatable), '
                            'e.g. --model-arg "gep_lambdas=(0, 1)" --model-arg hierarchical=False')
    model.add_argument('--no-pretrained-backbone', dest='pretrained_backbone', action='store_false',
                       help='start the backbone from random weights instead of timm\'s ImageNet weights '
                            '(pretrained_backbone=%(default)s)')
    model.add_argument('--backbone-weights', default=d.backbone_weights, metavar='FILE',
                       help='local ImageNet weights file for the backbone (offline machines)')

    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--epochs', type=_positive_int, default=d.epochs, help='training epochs')
    optim.add_argument('--lr-constant-epochs', type=int, default=d.lr_constant_epochs,
                       help='epochs at the base learning rate before the exponential decay')
    optim.add_argument('--lr-final-factor', type=float, default=d.lr_final_factor,
                       help='learning-rate factor reached at the last epoch (the paper\'s "decays to 0")')
    optim.add_argument('--lr', type=float, default=d.lr, help='Adam learning rate')
    optim.add_argument('--weight-decay', type=float, default=d.weight_decay, help='Adam weight decay')
    optim.add_argument('--margin', type=float, default=d.margin, help='triplet loss margin')
    optim.add_argument('--label-smoothing', type=float, default=d.label_smoothing, help='ID loss label smoothing')
    optim.add_argument('--triplet-weight', type=float, default=d.triplet_weight, help='weight of the triplet loss')
    optim.add_argument('--id-weight', type=float, default=d.id_weight, help='weight of the ID loss')
    optim.add_argument('--max-steps-per-epoch', type=_positive_int, default=d.max_steps_per_epoch,
                       help='cap on steps per epoch (smoke runs)')

    run = parser.add_argument_group('run')
    run.add_argument('--device', default=d.device, help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:N'")
    run.add_argument('--no-amp', dest='amp', action='store_false', help='disable mixed precision on CUDA (amp=%(default)s)')
    run.add_argument('--seed', type=int, default=d.seed, help='random seed')
    run.add_argument('--eval-every', type=_positive_int, default=d.eval_every,
                     help='evaluate every N epochs (and after the last)')
    run.add_argument('--checkpoint-every', type=_positive_int, default=d.checkpoint_every,
                     help='write the resumable checkpoint every N epochs (and after the last)')
    run.add_argument('--flip-test', action='store_true', help='average test descriptors with mirrored images')
    run.add_argument('--metric', default=d.metric, choices=('euclidean', 'cosine'), help='test distance')
    run.add_argument('--test-batch-size', type=_positive_int, default=d.test_batch_size,
                     help='feature extraction batch size')
    run.add_argument('--output', default=d.output, metavar='DIR',
                     help='output folder (default: the --resume folder, else runs/<model>_<dataset>)')
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
    try:
        if args['resume']:
            # A resumed run keeps its own configuration; flags given on this command line override it.
            saved = json.loads(load_checkpoint(args['resume'])['config'])
            given = _given_arguments(argv)
            args = {**saved, **{key: value for key, value in args.items() if key in given}}
            args['img_size'] = tuple(args['img_size'])
        return train(TrainConfig(**args), command=['python', '-m', 'hbfp_timm.train', *argv])
    except TrainSetupError as exc:
        parser.exit(2, f'{parser.prog}: error: {exc}\n')


def _given_arguments(argv: Sequence[str]) -> set:
    """``TrainConfig`` field names of the options present on the command line (not left at their default)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(argv)))
    return {'model_args' if name == 'model_arg' else name for name in given} | {'resume'}

