"""The machinery shared by the Table 1 benchmarks (``benchmarks.market``, ``.duke``, ``.cuhk03``, ``.table1``)
and the ablations (``benchmarks.ablation``).

Modes (one of):

* ``--checkpoint FILE``: evaluate a safetensors file (``num_classes=0`` state dict, as the trainer and
  ``hbfp_timm.hub`` write it) loaded strictly into ``--model`` by ``hbfp_timm.hub.load_checkpoint``;
* ``--pretrained``: evaluate the Hub weights of ``--model`` (``timm.create_model(model, pretrained=True)``);
* ``--train``: train with the paper's recipe through ``hbfp_timm.train.train`` (its defaults: P=16 x K=4,
  Adam 2e-4, label smoothing 0.3, margin 0.3, flip + random erasing + cutout, 500 epochs), then evaluate.

With no mode, a found data set is evaluated with ``--pretrained``; the embedded default (below) uses ``--train``.

Data: ``--data-root DIR`` is read with ``hbfp_timm.data.build_dataset``; a malformed root is an error printed on
one line (exit code 2). Without ``--data-root`` the data set is looked for under ``$REID_DATA_ROOT`` and
``~/data``. If it is not there, the command prints where the real data set is expected and how its folders
must look, and runs the **embedded default**: the whole pipeline on a synthetic Market-layout set generated
into ``OUTPUT/synthetic`` (``hbfp_timm.synthetic``), with a small model (``hbfp_resnet18``), small images, a
short schedule, no ImageNet initialisation (no download), evaluated untrained and trained (settings in
:data:`SYNTHETIC_PRESET`). Its rows are
labelled "synthetic — not comparable with the paper".

Outputs in ``--output``: the markdown table (printed too), ``results.json`` (numbers, exact command, model,
sha256 of the weights, library versions, device, wall time), a ranked-list image per evaluated run and a CMC
curve per data set under ``figures/``. Re-ranked numbers (``--rerank``) are a separate table, never set beside
the paper's.

Reproducibility: ``--seed`` seeds python, numpy and torch (and the trainer and the PK sampler), and
``torch.use_deterministic_algorithms(True, warn_only=True)`` is on for the run.
"""
import argparse
import json
import os
import random
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm.data import ImageDataset, ReIDDataset, build_dataset, build_test_transform
from hbfp_timm.engine import evaluate
from hbfp_timm.hub import load_checkpoint

from .figures import draw_cmc_curves, draw_ranked_lists
from hbfp_timm.paper import DATASET_TITLES, PAPER_CITATION, PAPER_TABLE1
from .report import SYNTHETIC_LABEL, library_versions, render_report, sha256_file

__all__ = [
    'BenchmarkError', 'Settings', 'SYNTHETIC_PRESET', 'DATA_ROOT_ENV', 'DEFAULT_DATA_ROOTS', 'add_common_arguments',
    'seed_everything', 'find_datasets', 'prepare_synthetic', 'resolve_settings', 'create_model', 'load_weights',
    'evaluate_model', 'train_model', 'main',
]

DEFAULT_MODEL = 'hbfp_resnet50'
DATA_ROOT_ENV = 'REID_DATA_ROOT'
DEFAULT_DATA_ROOTS = (Path('~/data'),)

# The embedded default: sized so that `python -m benchmarks.market` finishes in a few minutes on a 2-core CPU
# and the trained model is clearly better than the untrained one. Training starts from random weights (no
# download), so it departs from the paper's recipe where a short from-scratch run needs it: a 5x larger
# constant learning rate and no random erasing or cutout (measured: with them, 12 epochs did not beat the
# untrained model; 40 epochs as below take rank-1 from 28.1 to 54.4 and mAP from 14.2 to 36.5 in under 2 minutes,
# see README.md). Images are generated at 128x64 and fed to the network at 64x32. The resumable checkpoint
# (weights + Adam moments) is written once, after the last epoch, rather than after each of them.
SYNTHETIC_PRESET: Dict[str, Any] = dict(
    model='hbfp_resnet18', img_size=(64, 32), epochs=40, batch_size=32, num_instances=4,
    num_ids=64, num_cams=4, images_per_id=12, image_size=(128, 64), workers=0,
    train_overrides=dict(lr=1e-3, random_erasing_prob=0.0, cutout_prob=0.0, checkpoint_every=1000),
)


class BenchmarkError(Exception):
    """A user-facing error (bad data root, missing weights...): printed on one line, exit code 2."""


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


# --- command line ---------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every benchmark (data, model, schedule, device, output).

    Args:
        parser: The parser to extend.
    """
    parser.add_argument('--data-root', default=None,
                        help=f'folder holding the data set; default: ${DATA_ROOT_ENV}, then ~/data, else the '
                             f'synthetic embedded default')
    parser.add_argument('--model', default=None,
                        help=f'timm model name (default {DEFAULT_MODEL}; {SYNTHETIC_PRESET["model"]} on synthetic data)')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help="input height and width (default: the model's pretrained_cfg, 384 128; "
                             f"{' '.join(map(str, SYNTHETIC_PRESET['img_size']))} on synthetic data)")
    parser.add_argument('--epochs', type=int, default=None,
                        help=f"training epochs (default: the trainer's, the paper's 500; "
                             f"{SYNTHETIC_PRESET['epochs']} on synthetic data)")
    parser.add_argument('--batch-size', type=int, default=None,
                        help=f"training batch P x K (default 64; {SYNTHETIC_PRESET['batch_size']} on synthetic data)")
    parser.add_argument('--num-instances', type=int, default=None, help='K, images per identity in a batch (default 4)')
    parser.add_argument('--max-steps-per-epoch', type=int, default=None, help='cap training steps per epoch (smoke runs)')
    parser.add_argument('--device', default=None, help='torch device (default cuda if available, else cpu)')
    parser.add_argument('--workers', type=int, default=None, help='data loading workers (default 4; 0 on synthetic data)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--backbone-weights', default=None,
                        help='local ImageNet weights file of the backbone, for training on an offline machine')
    parser.add_argument('--rerank', action='store_true',
                        help='also report k-reciprocal re-ranked numbers, in a separate table')
    parser.add_argument('--output', default=None, help='output folder (default runs/<benchmark>)')


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError):
        text = text.strip("'\"")
    return ' '.join(text.split())


def exact_command(prog: str, argv: Sequence[str]) -> str:
    """The command line as a user would retype it.

    Args:
        prog: ``python -m benchmarks.<name>``.
        argv: The arguments.

    Returns:
        One shell-quoted line.
    """
    return prog + (' ' + shlex.join(argv) if argv else '')


# --- reproducibility -------------------------------------------------------------------------------------------
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


# --- data ------------------------------------------------------------------------------------------------------
def default_data_roots() -> List[Path]:
    """Where a data set is looked for when ``--data-root`` is not given: ``$REID_DATA_ROOT``, then ``~/data``."""
    roots = [Path(os.environ[DATA_ROOT_ENV])] if os.environ.get(DATA_ROOT_ENV) else []
    return roots + [root.expanduser() for root in DEFAULT_DATA_ROOTS]


def find_datasets(names: Sequence[str], data_root: Optional[str]) -> Tuple[Dict[str, ReIDDataset], Dict[str, str]]:
    """Read the named data sets from ``data_root``, or from the default roots when it is None.

    Args:
        names: ``hbfp_timm.data.build_dataset`` names.
        data_root: The ``--data-root`` value.

    Returns:
        ``(found, missing)``: name -> data set, and name -> the reader's error for the data sets not found
        (only when ``data_root`` is None).

    Raises:
        BenchmarkError: ``data_root`` is given and a data set cannot be read from it.
    """
    found: Dict[str, ReIDDataset] = {}
    missing: Dict[str, str] = {}
    for name in names:
        if data_root is not None:
            try:
                found[name] = build_dataset(name, data_root)
            except (FileNotFoundError, ValueError, OSError) as error:
                raise BenchmarkError(f'--data-root {data_root}: {_one_line(error)}') from error
            continue
        errors = []
        for root in default_data_roots():
            try:
                found[name] = build_dataset(name, root)
                break
            except (FileNotFoundError, ValueError, OSError) as error:
                errors.append(_one_line(error))
        else:
            missing[name] = errors[-1] if len(errors) == 1 else ' / '.join(errors)
    return found, missing


def prepare_synthetic(folder: Path, seed: int) -> ReIDDataset:
    """Generate (or reuse) the synthetic Market-layout set of the embedded default and read it.

    The generator is deterministic, so a folder written earlier with the same parameters is reused;
    a parameter file beside the images tells.

    Args:
        folder: Where the images go (``OUTPUT/synthetic``).
        seed: Generator seed.

    Returns:
        The data set, read with the ``market_layout`` reader.
    """
    from hbfp_timm.synthetic import generate_synthetic_dataset

    params = dict(num_ids=SYNTHETIC_PRESET['num_ids'], num_cams=SYNTHETIC_PRESET['num_cams'], seed=seed,
                  images_per_id=SYNTHETIC_PRESET['images_per_id'], height=SYNTHETIC_PRESET['image_size'][0],
                  width=SYNTHETIC_PRESET['image_size'][1])
    stamp = folder / 'synthetic_params.json'
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        generate_synthetic_dataset(folder, overwrite=True, **params)
        stamp.write_text(json.dumps(params, indent=1))
    return build_dataset('market_layout', folder)


def _no_data_notice(missing: Dict[str, str], prog: str,
                    modes: str = " add --train to train with the paper's recipe or --checkpoint FILE to evaluate "
                                 "weights.") -> str:
    lines = []
    for name, error in missing.items():
        lines.append(f'No {DATASET_TITLES.get(name, name)} data set found (no --data-root given; looked under '
                     f'${DATA_ROOT_ENV} and ~/data): {error}')
    lines.append(f'To benchmark the real data set: {prog} --data-root DIR (or set ${DATA_ROOT_ENV});{modes}')
    return '\n'.join(lines)


# --- model -----------------------------------------------------------------------------------------------------
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
    batch_size = args.batch_size or preset.get('batch_size', 64)
    num_instances = args.num_instances or preset.get('num_instances', 4)
    if batch_size % num_instances:
        raise BenchmarkError(f'--batch-size {batch_size}: expected a multiple of --num-instances {num_instances} (P x K)')
    return Settings(
        model=model, model_args={}, img_size=img_size,
        epochs=args.epochs if args.epochs is not None else preset.get('epochs'),
        batch_size=batch_size, num_instances=num_instances,
        device=args.device or ('cuda' if torch.cuda.is_available() else 'cpu'),
        workers=args.workers if args.workers is not None else preset.get('workers', 4),
        seed=args.seed,
        # No download on synthetic data (CPU demo, maybe offline); the paper starts from ImageNet.
        pretrained_backbone=not synthetic or args.backbone_weights is not None,
        backbone_weights=args.backbone_weights,
        max_steps_per_epoch=args.max_steps_per_epoch,
        train_overrides=dict(preset.get('train_overrides', {})),
        rerank=args.rerank, synthetic=synthetic,
    )


def create_model(settings: Settings, pretrained: bool = False) -> nn.Module:
    """The descriptor model (``num_classes=0``) of the settings, randomly initialised or with Hub weights.

    Args:
        settings: Run settings.
        pretrained: Load the Hub weights of ``settings.model``.

    Returns:
        The model on ``settings.device``, in eval mode.
    """
    try:
        model = timm.create_model(settings.model, pretrained=pretrained, num_classes=0, **settings.model_args)
    except (RuntimeError, OSError, ValueError) as error:
        flag = '--pretrained' if pretrained else '--model'
        raise BenchmarkError(f'{flag} {settings.model}: {_one_line(error)}') from error
    return model.to(settings.device).eval()


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint into ``model`` with ``hbfp_timm.hub.load_checkpoint`` (strict; safetensors or .pt).

    Args:
        model: The model.
        path: The checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f'--checkpoint {path}: no such file (expected a .safetensors state dict)')
    try:
        load_checkpoint(model, path)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        raise BenchmarkError(f'--checkpoint {path}: {_one_line(error)}') from error


# --- evaluation ------------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Scores (percent) and the distances behind them."""
    metrics: Dict[str, float]
    reranked: Optional[Dict[str, float]]
    cmc: List[float]
    distmat: np.ndarray
    num_query: int
    num_gallery: int


def _percent(scores: Dict[str, Any]) -> Dict[str, float]:
    return {key: 100 * float(scores[key]) for key in ('rank1', 'rank5', 'rank10', 'mAP')}


def _test_loader(items, settings: Settings) -> DataLoader:
    return DataLoader(ImageDataset(items, build_test_transform(settings.img_size)), batch_size=128, shuffle=False,
                      num_workers=settings.workers)


def evaluate_model(model: nn.Module, dataset: ReIDDataset, settings: Settings, max_rank: int = 50) -> Evaluation:
    """Single-query Rank-1/5/10 and mAP under the Market-1501 protocol, through ``hbfp_timm.engine.evaluate``.

    Args:
        model: Descriptor model.
        dataset: Data set with query and gallery.
        settings: Run settings (image size, device, workers, re-ranking).
        max_rank: Length of the CMC curve.

    Returns:
        The evaluation.
    """
    scores = evaluate(model, _test_loader(dataset.query, settings), _test_loader(dataset.gallery, settings),
                      settings.device, rerank=settings.rerank, max_rank=max_rank, keep_distmat=True)
    reranked = _percent(scores['reranked']) if settings.rerank else None
    return Evaluation(_percent(scores), reranked, scores['cmc'], scores['distmat'], scores['num_query'],
                      scores['num_gallery'])


# --- training --------------------------------------------------------------------------------------------------
def train_model(dataset_name: str, data_root: Path, settings: Settings, output: Path,
                command: Optional[str] = None) -> Tuple[Path, Dict[str, Any]]:
    """Train with the library's trainer (the paper's recipe, overridden by the settings).

    Args:
        dataset_name: ``build_dataset`` name.
        data_root: Data root.
        settings: Run settings.
        output: Trainer output folder.
        command: Command line recorded in the trainer's results.

    Returns:
        ``(weights_file, trainer_results)``: the ``num_classes=0`` safetensors file and the trainer's results.
    """
    from hbfp_timm.train import TrainConfig, train

    fields = dict(
        dataset=dataset_name, data_root=str(data_root), model=settings.model, model_args=dict(settings.model_args),
        img_size=tuple(settings.img_size), batch_size=settings.batch_size, num_instances=settings.num_instances,
        device=settings.device, output=str(output), seed=settings.seed, workers=settings.workers,
        pretrained_backbone=settings.pretrained_backbone, backbone_weights=settings.backbone_weights,
        max_steps_per_epoch=settings.max_steps_per_epoch, **settings.train_overrides)
    if settings.epochs is not None:
        fields['epochs'] = settings.epochs
    try:
        config = TrainConfig(**fields)
        results = train(config, command=shlex.split(command) if command else None)
    except (FileNotFoundError, ValueError) as error:
        raise BenchmarkError(f'--train: {_one_line(error)}') from error
    weights = output / 'model.safetensors'
    if not weights.is_file():
        raise BenchmarkError(f'--train: the trainer wrote no {weights}')
    return weights, results


# --- one benchmark run ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A model to evaluate: a label, how to get it, and the weights file it came from (if any)."""
    label: str
    build: Callable[[], nn.Module]
    weights: Optional[Path] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r'[^0-9a-z]+', '_', text.lower()).strip('_')


def evaluate_runs(
        title: str,
        dataset: ReIDDataset,
        runs: Sequence[Run],
        settings: Settings,
        figures: Path,
        figure_name: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Evaluate each run on the data set, draw its ranked lists and the CMC curves of all runs.

    Args:
        title: Data set title for the pictures.
        dataset: The data set.
        runs: Models to evaluate.
        settings: Run settings.
        figures: Folder of the pictures.
        figure_name: Stem of the picture file names (default: the data set name).

    Returns:
        One result dict per run (label, metrics, reranked, cmc, sizes, weights, figure files).
    """
    results, curves = [], {}
    stem = _slug(figure_name or dataset.name)
    for run in runs:
        print(f'evaluating {run.label} on {title} ({len(dataset.query)} queries, {len(dataset.gallery)} gallery)',
              flush=True)
        evaluation = evaluate_model(run.build(), dataset, settings)
        ranked = draw_ranked_lists(evaluation.distmat, dataset.query, dataset.gallery,
                                   figures / f'ranked_{stem}_{_slug(run.label)}.png')
        curves[run.label] = evaluation.cmc
        results.append(dict(
            label=run.label, metrics=evaluation.metrics, reranked=evaluation.reranked, cmc=evaluation.cmc,
            num_query=evaluation.num_query, num_gallery=evaluation.num_gallery,
            weights=str(run.weights) if run.weights else None,
            weights_sha256=sha256_file(run.weights) if run.weights else None,
            ranked_list_image=str(ranked), **run.extra))
    cmc_image = draw_cmc_curves(curves, figures / f'cmc_{stem}.png', f'CMC, {title}')
    for result in results:
        result['cmc_image'] = str(cmc_image)
    return results


def _runs_for(args: argparse.Namespace, mode: str, settings: Settings, dataset_name: str, data_root: Path,
              output: Path) -> List[Run]:
    model_name = settings.model
    if mode == 'checkpoint':
        checkpoint = Path(args.checkpoint).expanduser()
        model = create_model(settings)
        load_weights(model, checkpoint)
        return [Run(f'{model_name}, checkpoint {checkpoint.name}', lambda: model.to(settings.device).eval(),
                    checkpoint)]
    if mode == 'pretrained':
        model = create_model(settings, pretrained=True)
        return [Run(f'{model_name}, Hub weights', lambda: model, _hub_weights_file(model))]
    runs = []
    if settings.synthetic:
        untrained = create_model(settings)  # random initialisation, as training starts from (no ImageNet here)
        runs.append(Run(f'{model_name}, untrained', lambda: untrained))
    train_dir = output / f'train_{dataset_name}'
    weights, train_results = train_model(dataset_name, data_root, settings, train_dir, args.command)

    def trained() -> nn.Module:
        model = create_model(settings)
        load_weights(model, weights)
        return model.to(settings.device).eval()
    epochs = train_results['config']['epochs']
    runs.append(Run(f'{model_name}, trained {epochs} epochs', trained, weights,
                    dict(train_output=str(train_dir), trainer_metrics=train_results.get('metrics'))))
    return runs


def _hub_weights_file(model: nn.Module) -> Optional[Path]:
    """The cached Hub file the pretrained weights came from, for its checksum (None if it cannot be found)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = (getattr(model, 'pretrained_cfg', None) or {}).get('hf_hub_id')
    if not repo_id:
        return None
    for filename in ('model.safetensors', 'pytorch_model.bin'):
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


def build_parser(prog: str, description: str, cuhk03_split: bool = False) -> argparse.ArgumentParser:
    """The parser of the Table 1 commands.

    Args:
        prog: Program name shown in ``--help``.
        description: First paragraph of ``--help``.
        cuhk03_split: Add ``--split labeled|detected``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description + ' Without a mode, a found data set is '
                                     'evaluated with --pretrained and the synthetic embedded default with --train.')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--checkpoint', default=None, metavar='FILE', help='evaluate this safetensors file')
    mode.add_argument('--pretrained', action='store_true', help="evaluate the Hub weights of --model")
    mode.add_argument('--train', action='store_true', help="train with the paper's recipe, then evaluate")
    if cuhk03_split:
        parser.add_argument('--split', choices=('labeled', 'detected'), default='labeled',
                            help='CUHK03-NP bounding boxes: hand-labeled or DPM-detected')
    add_common_arguments(parser)
    return parser


def run_table1(args: argparse.Namespace, dataset_names: Sequence[str], prog: str, argv: Sequence[str],
               report_name: str) -> Dict[str, Any]:
    """Evaluate (and train) on each data set, then write the table, results.json and the pictures.

    Args:
        args: Parsed flags of :func:`build_parser`.
        dataset_names: ``build_dataset`` names, in table order.
        prog: ``python -m benchmarks.<name>``.
        argv: The arguments, for the recorded command.
        report_name: Base name of the markdown file (``market`` -> ``OUTPUT/market.md``).

    Returns:
        The results dict written to ``results.json``.
    """
    start = time.perf_counter()
    command = args.command = exact_command(prog, argv)
    output = Path(args.output or Path('runs') / report_name).expanduser()
    found, missing = find_datasets(dataset_names, args.data_root)
    synthetic = not found
    if missing:
        print(_no_data_notice(missing, prog), flush=True)
    mode = 'checkpoint' if args.checkpoint else 'pretrained' if args.pretrained else 'train' if args.train else None
    mode = mode or ('train' if synthetic else 'pretrained')
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    settings = resolve_settings(args, synthetic)
    data: Dict[str, Tuple[str, ReIDDataset, Path]] = {}
    if synthetic:
        print(f'Running the embedded default instead ({SYNTHETIC_LABEL}): {settings.model}, '
              f'{settings.img_size[0]}x{settings.img_size[1]} images, mode {mode}, on {settings.device}; '
              f'synthetic data in {output / "synthetic"}', flush=True)
        dataset = prepare_synthetic(output / 'synthetic', args.seed)
        data['market1501'] = ('market_layout', dataset, output / 'synthetic')
    else:
        for name in dataset_names:
            if name in found:
                root = Path(args.data_root or _root_of(found[name]))
                data[name] = (name, found[name], root)
    entries = []
    for paper_key, (reader_name, dataset, root) in data.items():
        print(dataset.summary(), flush=True)
        seed_everything(args.seed)
        runs = _runs_for(args, mode, settings, reader_name, root, output)
        title = 'synthetic Market layout' if synthetic else DATASET_TITLES[paper_key]
        run_results = evaluate_runs(title, dataset, runs, settings, output / 'figures')
        entries.append(dict(key=paper_key, title=title, dataset=dataset.name, paper_title=DATASET_TITLES[paper_key],
                            paper=PAPER_TABLE1[paper_key],
                            runs=run_results))
    results = dict(
        benchmark=report_name, command=command, cwd=os.getcwd(), mode=mode, synthetic=synthetic,
        data_root=str(output / 'synthetic') if synthetic else args.data_root,
        model=settings.model, model_args=settings.model_args, img_size=list(settings.img_size),
        epochs=settings.epochs, batch_size=settings.batch_size, num_instances=settings.num_instances,
        seed=settings.seed, device=settings.device, versions=library_versions(), units='percent',
        paper_citation=PAPER_CITATION, entries=entries, missing_datasets=missing,
    )
    results['wall_time_s'] = round(time.perf_counter() - start, 1)
    write_outputs(results, output, report_name, f'HBFP-Net Table 1: {", ".join(e["title"] for e in entries)}')
    return results



def _root_of(dataset: ReIDDataset) -> Path:
    """The data root a found data set was read from (the folder above its split folders)."""
    return Path(dataset.train[0][0]).parent.parent


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


def guarded(function: Callable[[], Any]) -> int:
    """Run ``function``; a :class:`BenchmarkError` becomes one ``error:`` line on stderr and exit code 2.

    Args:
        function: The benchmark body.

    Returns:
        The process exit code.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        function()
    except BenchmarkError as error:
        print(f'error: {_one_line(error)}', file=sys.stderr, flush=True)
        return 2
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return 0


def main(argv: Optional[Sequence[str]], prog: str, description: str, dataset_names: Sequence[str],
         report_name: str, cuhk03_split: bool = False) -> int:
    """Entry point of a Table 1 command.

    Args:
        argv: Arguments (None: ``sys.argv[1:]``).
        prog: ``python -m benchmarks.<name>``.
        description: ``--help`` description.
        dataset_names: ``build_dataset`` names; for ``cuhk03_split`` the ``--split`` picks one of
            ``cuhk03_labeled`` / ``cuhk03_detected`` instead.
        report_name: Base name of the markdown report.
        cuhk03_split: The command has ``--split``.

    Returns:
        The exit code: 0, or 2 after a one-line error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog, description, cuhk03_split).parse_args(argv)
    names = [f'cuhk03_{args.split}'] if cuhk03_split else list(dataset_names)
    return guarded(lambda: run_table1(args, names, prog, argv, report_name))
