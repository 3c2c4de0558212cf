"""The benchmarks' models and their runs: a model created from its timm name (with Hub weights or a checkpoint file),
trained with the library's trainer, and evaluated under the Market-1501 protocol with its ranked-list and CMC
pictures."""
import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn

from hbfp_timm.commands import as_flags, one_line
from hbfp_timm.data import ReIDDataset, build_test_transform, test_loaders
from hbfp_timm.hub import load_checkpoint
from hbfp_timm.inference.visualize import draw_cmc_curves, draw_ranked_lists
from hbfp_timm.metrics.evaluation import evaluate
from hbfp_timm.train import MODEL_NAME, TrainConfig, train
from hbfp_timm.training.prepare import folders_removed_on_failure
from hbfp_timm.utils.files import sha256_file

from .settings import FLAGS, BenchmarkError, Settings

__all__ = [
    'Evaluation', 'evaluate_model', 'train_model', 'best_evaluation', 'Run', 'trained_run', 'evaluate_runs',
    'create_model', 'outline_model', 'state_bytes', 'load_weights', 'hub_weights_file',
]


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


def evaluate_model(model: nn.Module, dataset: ReIDDataset, settings: Settings, max_rank: int = 50) -> Evaluation:
    """Single-query Rank-1/5/10 and mAP under the Market-1501 protocol, through
    ``hbfp_timm.metrics.evaluation.evaluate``.

    Args:
        model: Descriptor model.
        dataset: Data set with query and gallery.
        settings: Run settings (image size, device, workers, re-ranking).
        max_rank: Length of the CMC curve.

    Returns:
        The evaluation.
    """
    scores = evaluate(model, *test_loaders(dataset, build_test_transform(settings.img_size), 128, settings.workers),
                      settings.device, rerank=settings.rerank, max_rank=max_rank, keep_distmat=True)
    reranked = _percent(scores['reranked']) if settings.rerank else None
    return Evaluation(_percent(scores), reranked, scores['cmc'], scores['distmat'], scores['num_query'],
                      scores['num_gallery'])


def train_model(dataset_name: str, data_root: Path, settings: Settings, output: Path,
                command: Optional[str] = None, context: str = '--train') -> Tuple[Path, Dict[str, Any]]:
    """Train with the library's trainer (the paper's recipe, overridden by the settings).

    A failed run (an error, Ctrl-C) removes the folders it created for ``output`` that it left empty; a folder that
    was there before, or that holds anything (a resumable checkpoint), stays.

    Args:
        dataset_name: ``build_dataset`` name.
        data_root: Data root.
        settings: Run settings.
        output: Trainer output folder.
        command: Command line recorded in the trainer's results.
        context: What a training error is reported against (``--train``, an ablation row).

    Returns:
        ``(weights_file, trainer_results)``: the ``num_classes=0`` safetensors file and the trainer's results.

    Raises:
        BenchmarkError: The trainer refused the settings or the data, or training diverged.
    """
    fields = dict(
        dataset=dataset_name, data_root=str(data_root), model=settings.model, model_args=dict(settings.model_args),
        img_size=tuple(settings.img_size), batch_size=settings.batch_size, num_instances=settings.num_instances,
        device=settings.device, output=str(output), seed=settings.seed, workers=settings.workers,
        pretrained_backbone=settings.pretrained_backbone, backbone_weights=settings.backbone_weights,
        max_steps_per_epoch=settings.max_steps_per_epoch, **settings.train_overrides)
    if settings.epochs is not None:
        fields['epochs'] = settings.epochs
    try:
        with folders_removed_on_failure(output):
            results = train(TrainConfig(**fields), command=shlex.split(command) if command else None)
    except (OSError, ValueError, ArithmeticError) as error:  # setup, data or output errors; a diverged loss
        raise BenchmarkError(f'{context}: {as_flags(one_line(error), FLAGS)}') from error
    weights = output / MODEL_NAME
    if not weights.is_file():
        raise BenchmarkError(f'{context}: the trainer wrote no {weights}')
    return weights, results


def best_evaluation(trainer_results: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """The trainer's evaluation with the best mAP (every ``eval_every`` epochs and after the last), in percent.

    Args:
        trainer_results: The trainer's results dict.

    Returns:
        ``epoch`` and the four metrics in percent; None when the trainer evaluated nothing.
    """
    best = trainer_results.get('best')
    if not best:
        return None
    return {'epoch': best['epoch'], **_percent(best)}


@dataclass
class Run:
    """A model to evaluate: a label (runs of one row over several seeds share it), how to get the model, and
    where it came from.

    Attributes:
        label: Row label.
        build: Returns the model, on the device, in eval mode.
        weights: The weights file, if any (its sha256 is recorded).
        seed: Seed of the training (or initialisation) behind the model; None for given weights.
        best: The trainer's best evaluation (:func:`best_evaluation`); None when not trained here.
        extra: Further fields of the run's result.
    """
    label: str
    build: Callable[[], nn.Module]
    weights: Optional[Path] = None
    seed: Optional[int] = None
    best: Optional[Dict[str, float]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def trained_run(label: str, settings: Settings, weights: Path, trainer_results: Dict[str, Any], train_dir: Path,
                extra: Optional[Dict[str, Any]] = None) -> Run:
    """The :class:`Run` of a model trained by :func:`train_model`.

    Args:
        label: Row label.
        settings: The settings it was trained with (model, model kwargs, device, seed).
        weights: Its ``model.safetensors``.
        trainer_results: The trainer's results.
        train_dir: The trainer's output folder.
        extra: Further fields of the run's result.

    Returns:
        The run; its model is built and loaded when evaluated.
    """
    def build() -> nn.Module:
        model = create_model(settings)
        load_weights(model, weights)
        return model.to(settings.device).eval()
    return Run(label, build, weights, seed=settings.seed, best=best_evaluation(trainer_results),
               extra=dict(train_output=str(train_dir), trainer_metrics=trainer_results.get('metrics'), **(extra or {})))


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
        One result dict per run (label, seed, metrics, best, reranked, cmc, sizes, weights, figure files).
    """
    results, curves = [], {}
    stem = _slug(figure_name or dataset.name)
    several_seeds = len({run.seed for run in runs}) > 1
    for run in runs:
        name = f'{run.label} (seed {run.seed})' if several_seeds else run.label
        print(f'evaluating {name} on {title} ({len(dataset.query)} queries, {len(dataset.gallery)} gallery)',
              flush=True)
        try:
            evaluation = evaluate_model(run.build(), dataset, settings)
        except (OSError, ValueError, RuntimeError) as error:  # an unreadable image, a diverged model, memory
            raise BenchmarkError(f'evaluating {name} on {title}: {one_line(error)}') from error
        ranked = draw_ranked_lists(evaluation.distmat, dataset.query, dataset.gallery,
                                   figures / f'ranked_{stem}_{_slug(name)}.png')
        curves[name] = evaluation.cmc
        results.append(dict(
            label=run.label, seed=run.seed, metrics=evaluation.metrics, best=run.best, reranked=evaluation.reranked,
            cmc=evaluation.cmc, num_query=evaluation.num_query, num_gallery=evaluation.num_gallery,
            weights=str(run.weights) if run.weights else None,
            weights_sha256=sha256_file(run.weights) if run.weights else None,
            ranked_list_image=str(ranked), **run.extra))
    cmc_image = draw_cmc_curves(curves, figures / f'cmc_{stem}.png', f'CMC, {title}')
    for result in results:
        result['cmc_image'] = str(cmc_image)
    return results


# --- models -----------------------------------------------------------------------------------------------------------
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
    except (RuntimeError, OSError, ValueError, TypeError) as error:
        flag = '--pretrained' if pretrained else '--model'
        model_args = ''.join(f' --model-arg {key}={value!r}' for key, value in settings.model_args.items())
        raise BenchmarkError(f'{flag} {settings.model}{model_args}: {one_line(error)}') from error
    return model.to(settings.device).eval()


def outline_model(settings: Settings) -> nn.Module:
    """The model of the settings built on the meta device: no memory and no initialisation, so it checks the model
    name and the ``--model-arg`` values, and gives the model's size, in a fraction of the time of a real build.

    Args:
        settings: Run settings.

    Returns:
        The model, its tensors without data.
    """
    with torch.device('meta'):
        return create_model(dataclasses.replace(settings, device='meta'))


def state_bytes(model: nn.Module) -> Tuple[int, int]:
    """Bytes of a model's parameters and of its buffers, as a state dict on disk holds them.

    Args:
        model: The model.

    Returns:
        ``(parameter_bytes, buffer_bytes)``.
    """
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return parameters, buffers


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
    except Exception as error:  # the readers (safetensors, unpickling) raise many types; all mean "not loadable"
        raise BenchmarkError(f'--checkpoint {path}: cannot load it ({type(error).__name__}: {one_line(error)})') \
            from error


def hub_weights_file(model: nn.Module) -> Optional[Path]:
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
