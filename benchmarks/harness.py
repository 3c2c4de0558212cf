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
into ``OUTPUT/synthetic`` (``hbfp_timm.data.synthetic``), with a small model (``hbfp_resnet18``), small images, a
short schedule, no ImageNet initialisation (no download), evaluated untrained and trained (settings in
:data:`benchmarks.settings.SYNTHETIC_PRESET`). Its rows are labelled "synthetic — not comparable with the paper".

Outputs in ``--output``: the markdown table (printed too), ``results.json`` (numbers, exact command, model,
sha256 of the weights, library versions, device, wall time), a ranked-list image per evaluated run and a CMC
curve per data set under ``figures/``. Re-ranked numbers (``--rerank``) are a separate table, never set beside
the paper's.

A user's own data in the layout of a paper's data set (a Market-1501-style folder that is not Market-1501, told
by its identity counts) is benchmarked under its folder name, beside the paper's numbers without differences.

Recipe: with ``--train``, the trainer's recipe flags (``--lr``, ``--lr-constant-epochs``, ``--margin``,
``--label-smoothing``, ``--eval-every``, ``--weight-decay``, the augmentation probabilities) and
``--model-arg KEY=VALUE`` set up a comparison on a user's own data; they are refused in the evaluation modes,
where they would mean nothing. ``--seeds 0 1 2`` trains once per seed; the report gives per row the mean, the
standard deviation and n of Rank-1 and mAP at the final and at the best evaluation, and ``results.json`` keeps
every seed's numbers.

Checked before any evaluation or training: the flags, the data, the output folder (``--output``), that the model
builds with the ``--model-arg`` values, and the checkpoint file. Training says up front about how much it will
write (each trainer run keeps a resumable ``checkpoint.pt``) and at the end what it wrote.

Reproducibility: each seed seeds python, numpy and torch (and the trainer and the PK sampler), and
``torch.use_deterministic_algorithms(True, warn_only=True)`` is on for the run.

The pieces live beside this module: :mod:`.settings` (flags and presets), :mod:`.datasets` (finding the data),
:mod:`.models` (models and weights), :mod:`.runs` (training and evaluating), :mod:`.outputs` and :mod:`.report`
(what is written), :mod:`.cli` (errors and exit codes).
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from hbfp_timm.hub.paper import DATASET_TITLES, PAPER_CITATION, PAPER_TABLE1

from .cli import ArgumentParser, BenchmarkError, exact_command, guarded
from .datasets import (
    BenchmarkData, benchmark_data, find_datasets, no_data_notice, own_data_note, prepare_synthetic,
    synthetic_benchmark_data)
from .models import create_model, hub_weights_file, load_weights, outline_model
from .outputs import announce_training, prepare_output, training_footprint, write_outputs
from .report import SYNTHETIC_LABEL, count, library_versions, summarize_seeds
from .runs import Run, evaluate_runs, train_model, trained_run
from .settings import Settings, add_common_arguments, resolve_settings, seed_everything, seeds_of, training_flags_given

__all__ = ['build_parser', 'run_table1', 'main']


def _runs_for(args: argparse.Namespace, mode: str, settings: Settings, data: BenchmarkData, output: Path,
              train_dir_name: str, checkpoint_model: Optional[nn.Module]) -> List[Run]:
    model_name = settings.model
    if mode == 'checkpoint':
        checkpoint = Path(args.checkpoint).expanduser()
        return [Run(f'{model_name}, checkpoint {checkpoint.name}', lambda: checkpoint_model, checkpoint)]
    if mode == 'pretrained':
        model = create_model(settings, pretrained=True)
        return [Run(f'{model_name}, Hub weights', lambda: model, hub_weights_file(model))]
    runs = []
    if settings.synthetic:
        untrained = create_model(settings)  # random initialisation, as training starts from (no ImageNet here)
        runs.append(Run(f'{model_name}, untrained', lambda: untrained, seed=settings.seed))
    train_dir = output / train_dir_name
    weights, train_results = train_model(data.reader, data.root, settings, train_dir, args.command)
    epochs = count(train_results['config']['epochs'], 'epoch')
    for row in train_results.get('cross_domain') or []:
        print(f"{model_name} trained on {data.root}, tested on {row['data_root']} ({row['dataset']}): "
              f"rank-1 {100 * row['rank1']:.1f}, mAP {100 * row['mAP']:.1f}")
    runs.append(trained_run(f'{model_name}, trained {epochs}', settings, weights, train_results, train_dir))
    return runs


def build_parser(prog: str, description: str, cuhk03_split: bool = False) -> argparse.ArgumentParser:
    """The parser of the Table 1 commands.

    Args:
        prog: Program name shown in ``--help``.
        description: First paragraph of ``--help``.
        cuhk03_split: Add ``--split labeled|detected``.

    Returns:
        The parser.
    """
    parser = ArgumentParser(prog=prog, description=description + ' Without a mode, a found data set is '
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


def _mode_of(args: argparse.Namespace, synthetic: bool) -> str:
    mode = 'checkpoint' if args.checkpoint else 'pretrained' if args.pretrained else 'train' if args.train else None
    mode = mode or ('train' if synthetic else 'pretrained')
    given = training_flags_given(args)
    if mode != 'train' and given:
        chosen = '--checkpoint' if mode == 'checkpoint' else '--pretrained' + ('' if args.pretrained else
                                                                               ', the mode of a found data set')
        raise BenchmarkError(f'{", ".join(given)}: training flag{"s" if len(given) > 1 else ""}, but this run only '
                             f'evaluates ({chosen}); add --train to train')
    return mode


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
    seeds = seeds_of(args)
    found, missing = find_datasets(dataset_names, args.data_root)
    synthetic = not found
    mode = _mode_of(args, synthetic)
    settings = resolve_settings(args, synthetic)
    outline = outline_model(settings)  # the model builds with its --model-arg values, before any work
    checkpoint_model = None
    if mode == 'checkpoint':
        checkpoint_model = create_model(settings)
        load_weights(checkpoint_model, Path(args.checkpoint).expanduser())
    output = prepare_output(args.output or Path('runs') / report_name)
    if missing:
        print(no_data_notice(missing, prog), flush=True)
    data: List[BenchmarkData] = []
    if synthetic:
        print(f'Running the embedded default instead ({SYNTHETIC_LABEL}): {settings.model}, '
              f'{settings.img_size[0]}x{settings.img_size[1]} images, mode {mode}, on {settings.device}; '
              f'synthetic data in {output / "synthetic"}', flush=True)
        dataset = prepare_synthetic(output / 'synthetic', seeds[0], settings.synthetic_data)
        data.append(synthetic_benchmark_data(dataset, output / 'synthetic'))
    else:
        data = [benchmark_data(name, found[name], args.data_root) for name in dataset_names if name in found]
    if own_data_note(data):
        print(own_data_note(data), flush=True)
    if mode == 'train':
        announce_training([training_footprint(outline)] * (len(data) * len(seeds)), output)
    entries = []
    for item in data:
        if mode != 'train':  # the trainer prints the same table before it trains
            print(item.dataset.summary(), flush=True)
        runs = []
        for seed in seeds:
            seed_everything(seed)
            train_dir = f'train_{item.reader}' + (f'_seed{seed}' if len(seeds) > 1 else '')
            runs += _runs_for(args, mode, dataclasses.replace(settings, seed=seed), item, output, train_dir,
                              checkpoint_model)
        run_results = evaluate_runs(item.title, item.dataset, runs, settings, output / 'figures')
        entries.append(dict(key=item.key, title=item.title, dataset=item.dataset.name,
                            paper_title=DATASET_TITLES[item.key], paper=PAPER_TABLE1[item.key],
                            comparable=not synthetic and not item.own_data, own_data=item.own_data,
                            runs=run_results, seeds=summarize_seeds(run_results)))
    results = dict(
        benchmark=report_name, command=command, cwd=os.getcwd(), mode=mode, synthetic=synthetic,
        data_root=str(output / 'synthetic') if synthetic else args.data_root,
        data_note=own_data_note(data),
        model=settings.model, model_args=settings.model_args, img_size=list(settings.img_size),
        epochs=settings.epochs, batch_size=settings.batch_size, num_instances=settings.num_instances,
        train_overrides=settings.train_overrides if mode == 'train' else None,
        seed=seeds[0], seeds=seeds, device=settings.device, versions=library_versions(), units='percent',
        paper_citation=PAPER_CITATION, entries=entries, missing_datasets=missing,
    )
    results['wall_time_s'] = round(time.perf_counter() - start, 1)
    write_outputs(results, output, report_name, f'HBFP-Net Table 1: {", ".join(e["title"] for e in entries)}')
    return results


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
