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

This module also finds the data (a ``--data-root``, the default roots ``$REID_DATA_ROOT`` and ``~/data``, or the
synthetic set, generated on demand). The other pieces live beside it: :mod:`.settings` (flags, presets, errors
and exit codes), :mod:`.runs` (models, weights, training and evaluating), :mod:`.report` (tables and what is
written).
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn

from hbfp_timm.commands import one_line
from hbfp_timm.data import ReIDDataset, build_dataset
from hbfp_timm.hub.paper import DATASET_TITLES, PAPER_CITATION, PAPER_TABLE1

from .report import (
    SYNTHETIC_LABEL, announce_training, count, library_versions, prepare_output, summarize_seeds, training_footprint,
    write_outputs,
)
from .runs import (
    Run, create_model, evaluate_runs, hub_weights_file, load_weights, outline_model, train_model, trained_run,
)
from .settings import (
    DATA_ROOT_ENV, ArgumentParser, BenchmarkError, Settings, add_common_arguments, exact_command, guarded,
    resolve_settings, seed_everything, seeds_of, training_flags_given,
)

__all__ = [
    'build_parser', 'run_table1', 'main', 'DATA_ROOT_ENV', 'DEFAULT_DATA_ROOTS', 'PAPER_IDENTITIES', 'BenchmarkData',
    'default_data_roots', 'find_datasets', 'prepare_synthetic', 'not_the_paper_dataset', 'benchmark_data',
    'synthetic_benchmark_data', 'own_data_note', 'no_data_notice', 'root_of',
]


# --- where the data is ------------------------------------------------------------------------------------------------
DEFAULT_DATA_ROOTS = (Path('~/data'),)

# (training, query) identities of the paper's data sets under their standard protocols. The Market-style readers
# take any folder in that layout, so these counts are what tells the paper's data set from a user's own.
PAPER_IDENTITIES: Dict[str, Tuple[int, int]] = {
    'market1501': (751, 750), 'dukemtmc': (702, 702), 'cuhk03_labeled': (767, 700), 'cuhk03_detected': (767, 700),
}


@dataclass
class BenchmarkData:
    """A data set as a benchmark uses it.

    Attributes:
        key: The paper's data set it stands in for (``market1501``...), the key of the paper's numbers.
        reader: ``build_dataset`` name the trainer reads it with.
        dataset: The data set.
        root: The root the trainer reads it from.
        title: Its name in the tables.
        own_data: Why it is not the paper's data set (a user's own data in the same layout); None if it is, or
            for the synthetic set.
    """
    key: str
    reader: str
    dataset: ReIDDataset
    root: Path
    title: str
    own_data: Optional[str] = None


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
                raise BenchmarkError(f'--data-root {data_root}: {one_line(error)}') from error
            continue
        errors = []
        for root in default_data_roots():
            try:
                found[name] = build_dataset(name, root)
                break
            except (FileNotFoundError, ValueError, OSError) as error:
                errors.append(one_line(error))
        else:
            missing[name] = errors[-1] if len(errors) == 1 else ' / '.join(errors)
    return found, missing


def prepare_synthetic(folder: Path, seed: int, spec: Mapping[str, Any]) -> ReIDDataset:
    """Generate (or reuse) the synthetic Market-layout set of the embedded default and read it.

    The generator is deterministic, so a folder written earlier with the same parameters is reused;
    a parameter file beside the images tells.

    Args:
        folder: Where the images go (``OUTPUT/synthetic``).
        seed: Generator seed.
        spec: ``num_ids``, ``num_cams``, ``images_per_id`` and ``image_size`` (height, width) of the set
            (``Settings.synthetic_data``).

    Returns:
        The data set, read with the ``market_layout`` reader.
    """
    from hbfp_timm.data.synthetic import generate_synthetic_dataset

    params = dict(num_ids=spec['num_ids'], num_cams=spec['num_cams'], seed=seed,
                  images_per_id=spec['images_per_id'], height=spec['image_size'][0], width=spec['image_size'][1])
    stamp = folder / 'synthetic_params.json'
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        generate_synthetic_dataset(folder, overwrite=True, **params)
        stamp.write_text(json.dumps(params, indent=1))
    return build_dataset('market_layout', folder)


def not_the_paper_dataset(name: str, dataset: ReIDDataset) -> Optional[str]:
    """Why a data set read by the ``name`` reader is not the paper's ``name`` data set, if it is not.

    Args:
        name: ``build_dataset`` name of a data set in the paper (:data:`PAPER_IDENTITIES`).
        dataset: The data set read.

    Returns:
        None when its training and query identities are the paper's; else a phrase saying how they differ.
    """
    expected = PAPER_IDENTITIES[name]
    found = (dataset.num_train_pids, len({pid for _, pid, _ in dataset.query}))
    if found == expected:
        return None
    return (f'{found[0]} training and {found[1]} query identities, not the {expected[0]} and {expected[1]} of '
            f'{DATASET_TITLES[name]}')


def benchmark_data(key: str, dataset: ReIDDataset, data_root: Optional[str]) -> BenchmarkData:
    """A found data set as the benchmark uses it: the paper's data set, or the user's own in its layout.

    A Market-style folder whose identity counts are not the paper's data set's is the user's own: it is named
    after its folder (never "Market-1501"), the trainer reads it under a neutral reader name, and the tables set
    it beside the paper's numbers without differences.

    Args:
        key: The ``build_dataset`` name it was read with.
        dataset: The data set.
        data_root: The ``--data-root`` value (None: found under the default roots).

    Returns:
        The benchmark's view of it.
    """
    root = Path(data_root).expanduser() if data_root else root_of(dataset)
    reason = not_the_paper_dataset(key, dataset)
    if reason is None:
        return BenchmarkData(key, key, dataset, root, DATASET_TITLES[key])
    # The market_layout reader is the Market-1501 reader without the name, so the trainer's outputs (and a model
    # card made from them) do not call the user's data Market-1501.
    reader = 'market_layout' if key == 'market1501' else key
    return BenchmarkData(key, reader, dataset, root_of(dataset) if reader == 'market_layout' else root,
                         root_of(dataset).name, own_data=reason)


def synthetic_benchmark_data(dataset: ReIDDataset, folder: Path) -> BenchmarkData:
    """The synthetic set of the embedded default (:func:`prepare_synthetic`), standing in for Market-1501."""
    return BenchmarkData('market1501', 'market_layout', dataset, folder, 'synthetic Market layout')


def own_data_note(data: Sequence[BenchmarkData]) -> Optional[str]:
    """What the run says (printed, and under the report's heading) about the user's own data sets among ``data``.

    Args:
        data: The benchmark's data sets.

    Returns:
        One sentence per own data set, or None when there is none.
    """
    notes = [f'{item.root}: {item.own_data}; benchmarked as your own data set "{item.title}", beside the paper\'s '
             f'{DATASET_TITLES[item.key]} numbers without differences.' for item in data if item.own_data]
    return ' '.join(notes) or None


def no_data_notice(missing: Dict[str, str], prog: str,
                   modes: str = " add --train to train with the paper's recipe or --checkpoint FILE to evaluate "
                                "weights.") -> str:
    """The lines printed when no data set was found: where each was looked for, and how to point at one.

    Args:
        missing: Data set name -> the reader's error (from :func:`find_datasets`).
        prog: ``python -m benchmarks.<name>``.
        modes: End of the last line: what to add to the command.

    Returns:
        The notice, lines joined by newlines.
    """
    lines = []
    for name, error in missing.items():
        lines.append(f'No {DATASET_TITLES.get(name, name)} data set found (no --data-root given; looked under '
                     f'${DATA_ROOT_ENV} and ~/data): {error}')
    lines.append(f'To benchmark the real data set: {prog} --data-root DIR (or set ${DATA_ROOT_ENV});{modes}')
    return '\n'.join(lines)


def root_of(dataset: ReIDDataset) -> Path:
    """The data root a found data set was read from (the folder above its split folders)."""
    return Path(dataset.train[0][0]).parent.parent


# --- the Table 1 command ----------------------------------------------------------------------------------------------
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
    output = prepare_output(args.output)
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


def main(argv: Optional[Sequence[str]] = None, *, prog: str, description: str, dataset_names: Sequence[str],
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
    args.output = args.output or str(Path('runs') / report_name)
    return guarded(lambda: run_table1(args, names, prog, argv, report_name), output=args.output)
