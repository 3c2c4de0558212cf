"""Tables 2 and 3 of HBFP-Net (ablations on Market-1501) as configurations of one model and one trainer:
``python -m benchmarks.ablation [--rows KEY,KEY,...] [--data-root DIR] [--seeds 0 1 2]``.

Every row trains ``--model`` with ``hbfp_timm.train.train`` (the paper's recipe, or the recipe flags given)
under the settings below, evaluates it, and is printed beside the paper's mAP / Rank-1 / Rank-5. Without a
Market-1501 data set the rows run on the synthetic Market-layout set with a tiny budget, labelled "synthetic —
not comparable with the paper". A ``--data-root`` folder in the Market-1501 layout that is not Market-1501 (a
user's own data, told by its identity counts) runs the same rows, set beside the paper's numbers without
differences. With ``--seeds`` every row trains once per seed and the report adds the mean, standard deviation
and n of its final and best evaluation.

How each paper row maps to ``HBFPNet`` kwargs and trainer settings. Unless a row says otherwise: ID loss on
(``id_weight=1``) with label smoothing (the paper's 0.3, or ``--label-smoothing``), cutout (the paper's 0.5, or
``--cutout-prob``), triplet loss on; random erasing and flip as the run's defaults (the paper's 0.5 each on real
data; on synthetic data the CPU preset of :data:`benchmarks.settings.SYNTHETIC_PRESET` turns random erasing off,
cutout still follows the row). ``--model-arg KEY=VALUE`` applies to every row and replaces a row's own value
(said when it does).

======================  ============  ==================================================================
row (paper label)       ``--rows``    configuration
======================  ============  ==================================================================
Baseline                baseline      branches=('high',), bfp_pairs=(), hierarchical=False,
                                      global_pool='avg'; triplet loss only (id_weight=0), no cutout
Baseline(+LS)           ls            as Baseline + label-smoothed ID loss (id_weight=1), no cutout
Baseline(+LS+Cutout)    cutout        as Baseline(+LS) + cutout (the paper's baseline for what follows)
Middle+High(Res)        mh_res        branches=('mid', 'high'), bfp_pairs=(), hierarchical=False, avg
Low+Middle+High(Res)    lmh_res       branches=('low', 'mid', 'high'), bfp_pairs=(), hierarchical=False,
                                      avg
BFP(Low&Middle)+High    bfp_lm_h      branches=all three, bfp_pairs=('low_mid',), hierarchical=False, avg
BFP(Middle&High)        bfp_mh        branches=('mid', 'high'), bfp_pairs=('mid_high',),
                                      hierarchical=False, avg
Low+BFP(Middle&High)    l_bfp_mh      branches=all three, bfp_pairs=('mid_high',), hierarchical=False, avg
BFP(Low&Middle&High)    bfp_lmh       branches=all three, bfp_pairs=both, hierarchical=False, avg
HBFP                    hbfp          branches=all three, bfp_pairs=both, hierarchical=True, avg
HBFP+GeP                hbfp_gep      HBFP with global_pool='gep', gep_lambdas=(0, .3, .5, .7, 1),
                                      gep_combine='mean'
GeP{0} ... (Table 3)    gep0,         HBFP with global_pool='gep', gep_combine='mean' and the cumulative
                        gep03,        lambda sets {0}, {0, .3}, {0, .3, .5}, {0, .3, .5, .7},
                        gep035,       {0, .3, .5, .7, 1}
                        gep0357,
                        gep03571
GeP{0,.3,.5,.7,1},      gep03571_sum  as gep03571 with gep_combine='sum', the paper's literal sum: five
literal sum (Table 3)                 times the feature scale, against which the triplet margin is set
======================  ============  ==================================================================

Readings of the paper, **(choice)**: "(Res)" rows are the backbone's own maps, each trained as a branch
without BFP; "BFP(Low&Middle)+High" keeps the high branch as the backbone gives it; the Baseline rows keep
random erasing and flip (the paper names only the loss and cutout as what changes); GeP combines its
thresholds by their mean (the paper's sum divided by the number of thresholds), so that every Table 3 row
meets the triplet margin at the scale of average pooling; the ``gep03571_sum`` row, set beside the paper's
``GeP{0,.3,.5,.7,1}`` numbers, shows what the literal sum does. ``GeP{0}`` is HBFP with generalized pooling
at lambda 0, mathematically average pooling, so it should match the HBFP row.
``--rows table2`` / ``table3`` select a whole table (default: both).
"""
import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hbfp_timm.commands import run_command
from hbfp_timm.hub.paper import PAPER_CITATION, PAPER_TABLE2, PAPER_TABLE3
from hbfp_timm.models import BOT_ARGS
from hbfp_timm.train import TrainConfig

from .harness import (
    benchmark_data, find_datasets, no_data_notice, own_data_note, prepare_synthetic, synthetic_benchmark_data,
)
from .report import (
    SYNTHETIC_LABEL, announce_training, count, library_versions, prepare_output, summarize_seeds, training_footprint,
    write_outputs,
)
from .runs import evaluate_runs, outline_model, train_model, trained_run
from .settings import (
    ArgumentParser, BenchmarkError, Settings, add_common_arguments, exact_command, guarded, resolve_settings,
    seed_everything, seeds_of,
)

__all__ = ['AblationRow', 'ABLATION_ROWS', 'select_rows', 'row_settings', 'main']

# Epochs per row on synthetic data: all the rows must stay a CPU-sized job.
SYNTHETIC_ABLATION_EPOCHS = 4

ALL_LEVELS = ('low', 'mid', 'high')
BOTH_PAIRS = ('low_mid', 'mid_high')
ALL_LAMBDAS = (0.0, 0.3, 0.5, 0.7, 1.0)
_PAPER_RECIPE = TrainConfig()


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 2 or 3: the paper's label and the configuration that realises it.

    Attributes:
        key: Name used by ``--rows``.
        label: Row label (the paper's, unless the row is not in the paper).
        table: 2 or 3.
        model_args: ``HBFPNet`` kwargs.
        id_loss: The label-smoothed ID loss is on (else triplet loss only).
        cutout: Cutout is on.
        paper_label: The paper's row whose numbers this row is set beside (default: ``label``).
    """
    key: str
    label: str
    table: int
    model_args: Dict[str, Any]
    id_loss: bool = True
    cutout: bool = True
    paper_label: Optional[str] = None

    @property
    def paper(self) -> Dict[str, float]:
        """The paper's numbers for this row (percent)."""
        return (PAPER_TABLE2 if self.table == 2 else PAPER_TABLE3)[self.paper_label or self.label]

    def train_overrides(self, label_smoothing: float, cutout_prob: float) -> Dict[str, Any]:
        """The ``TrainConfig`` loss and cutout fields of the row, set explicitly so that they hold whatever the
        run's defaults are.

        Args:
            label_smoothing: Epsilon of the ID loss, where the row has it.
            cutout_prob: Cutout probability, where the row has cutout.

        Returns:
            ``id_weight``, ``cutout_prob`` and (with the ID loss) ``label_smoothing``.
        """
        fields: Dict[str, Any] = dict(id_weight=1.0 if self.id_loss else 0.0,
                                      cutout_prob=cutout_prob if self.cutout else 0.0)
        if self.id_loss:
            fields['label_smoothing'] = label_smoothing
        return fields


def _net(branches=ALL_LEVELS, bfp_pairs=BOTH_PAIRS, hierarchical=False, global_pool='avg', **extra) -> Dict[str, Any]:
    return dict(branches=tuple(branches), bfp_pairs=tuple(bfp_pairs), hierarchical=hierarchical,
                global_pool=global_pool, **extra)


def _gep(lambdas: Sequence[float], combine: str = 'mean') -> Dict[str, Any]:
    return _net(hierarchical=True, global_pool='gep', gep_lambdas=tuple(lambdas), gep_combine=combine)


_HIGH_ONLY = dict(BOT_ARGS)  # the Baseline rows are BoT
_LAMBDA_SETS = {'gep0': ALL_LAMBDAS[:1], 'gep03': ALL_LAMBDAS[:2], 'gep035': ALL_LAMBDAS[:3],
                'gep0357': ALL_LAMBDAS[:4], 'gep03571': ALL_LAMBDAS}
_TABLE3_LABELS = dict(zip(_LAMBDA_SETS, PAPER_TABLE3))

ABLATION_ROWS: List[AblationRow] = [
    AblationRow('baseline', 'Baseline', 2, _HIGH_ONLY, id_loss=False, cutout=False),
    AblationRow('ls', 'Baseline(+LS)', 2, _HIGH_ONLY, cutout=False),
    AblationRow('cutout', 'Baseline(+LS+Cutout)', 2, _HIGH_ONLY),
    AblationRow('mh_res', 'Middle+High(Res)', 2, _net(branches=('mid', 'high'), bfp_pairs=())),
    AblationRow('lmh_res', 'Low+Middle+High(Res)', 2, _net(bfp_pairs=())),
    AblationRow('bfp_lm_h', 'BFP(Low&Middle)+High', 2, _net(bfp_pairs=('low_mid',))),
    AblationRow('bfp_mh', 'BFP(Middle&High)', 2, _net(branches=('mid', 'high'), bfp_pairs=('mid_high',))),
    AblationRow('l_bfp_mh', 'Low+BFP(Middle&High)', 2, _net(bfp_pairs=('mid_high',))),
    AblationRow('bfp_lmh', 'BFP(Low&Middle&High)', 2, _net()),
    AblationRow('hbfp', 'HBFP', 2, _net(hierarchical=True)),
    AblationRow('hbfp_gep', 'HBFP+GeP', 2, _gep(ALL_LAMBDAS)),
] + [AblationRow(key, _TABLE3_LABELS[key], 3, _gep(lambdas)) for key, lambdas in _LAMBDA_SETS.items()] + [
    AblationRow('gep03571_sum', f'{_TABLE3_LABELS["gep03571"]}, literal sum', 3, _gep(ALL_LAMBDAS, combine='sum'),
                paper_label=_TABLE3_LABELS['gep03571']),
]


def select_rows(spec: Optional[str]) -> List[AblationRow]:
    """The rows named by ``--rows``: comma-separated keys, row labels, ``table2`` or ``table3``.

    Args:
        spec: The flag value; None or empty selects every row.

    Returns:
        The rows, in table order, without repeats.
    """
    if not spec:
        return list(ABLATION_ROWS)
    wanted = set()
    for name in (part.strip() for part in spec.split(',') if part.strip()):
        matches = [row for row in ABLATION_ROWS if name.lower() in (row.key, row.label.lower(), f'table{row.table}')]
        if not matches:
            raise BenchmarkError(f'--rows: unknown row {name!r}; expected table2, table3 or one of '
                                 f'{", ".join(row.key for row in ABLATION_ROWS)}')
        wanted.update(row.key for row in matches)
    return [row for row in ABLATION_ROWS if row.key in wanted]


def row_settings(row: AblationRow, settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings a row trains with: the run's, with the row's model kwargs (``--model-arg`` replacing them)
    and its loss and cutout fields.

    Args:
        row: The row.
        settings: The run's settings (:func:`benchmarks.settings.resolve_settings`).
        args: The parsed flags (``--label-smoothing`` and ``--cutout-prob`` give the values the rows switch on).

    Returns:
        The row's settings.
    """
    label_smoothing = _PAPER_RECIPE.label_smoothing if args.label_smoothing is None else args.label_smoothing
    cutout_prob = _PAPER_RECIPE.cutout_prob if args.cutout_prob is None else args.cutout_prob
    return dataclasses.replace(
        settings, model_args={**row.model_args, **settings.model_args},
        train_overrides={**settings.train_overrides, **row.train_overrides(label_smoothing, cutout_prob)})


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m benchmarks.ablation`` parser."""
    parser = ArgumentParser(
        prog='python -m benchmarks.ablation', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='HBFP-Net ablations (paper Tables 2 and 3) on Market-1501, beside the paper.\n\nRows:\n' +
                    '\n'.join(f'  {row.key:<12} Table {row.table}: {row.label}' for row in ABLATION_ROWS))
    parser.add_argument('--rows', default=None,
                        help='comma-separated row keys or labels, or table2 / table3 (default: all rows)')
    add_common_arguments(parser, synthetic_epochs=SYNTHETIC_ABLATION_EPOCHS)
    return parser


def _replaced_row_values(rows: Sequence[AblationRow], model_args: Dict[str, Any]) -> List[str]:
    lines = []
    for key, value in model_args.items():
        replaced = [row.key for row in rows if key in row.model_args and row.model_args[key] != value]
        if replaced:
            lines.append(f'--model-arg {key}={value!r} replaces the rows\' own {key} in {", ".join(replaced)}')
    return lines


def run_ablation(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, Any]:
    """Train and evaluate the selected rows, then write ``OUTPUT/ablation.md``, ``results.json`` and pictures.

    Args:
        args: Parsed flags.
        argv: The arguments, for the recorded command.

    Returns:
        The results dict.
    """
    start = time.perf_counter()
    prog = 'python -m benchmarks.ablation'
    command = exact_command(prog, argv)
    rows = select_rows(args.rows)
    seeds = seeds_of(args)
    found, missing = find_datasets(['market1501'], args.data_root)
    synthetic = not found
    if args.epochs is None and synthetic:
        args.epochs = SYNTHETIC_ABLATION_EPOCHS
    settings = resolve_settings(args, synthetic)
    configured = {row.key: row_settings(row, settings, args) for row in rows}
    footprints = []
    for row in rows:  # every configuration builds, before any training
        try:
            footprints += [training_footprint(outline_model(configured[row.key]))] * len(seeds)
        except BenchmarkError as error:
            raise BenchmarkError(f'row {row.key}: {error}') from error
    output = prepare_output(args.output)
    if synthetic:
        print(no_data_notice(missing, prog, modes=' each row trains with the paper\'s recipe.'), flush=True)
        print(f'Running the ablations on synthetic data instead ({SYNTHETIC_LABEL}): {settings.model}, '
              f'{count(settings.epochs, "epoch")} per row, {count(len(rows), "row")} x {count(len(seeds), "seed")}',
              flush=True)
        data = synthetic_benchmark_data(
            prepare_synthetic(output / 'synthetic', seeds[0], settings.synthetic_data), output / 'synthetic')
    else:
        data = benchmark_data('market1501', found['market1501'], args.data_root)
        if data.own_data:
            print(own_data_note([data]), flush=True)
    for line in _replaced_row_values(rows, settings.model_args):
        print(line, flush=True)
    announce_training(footprints, output)
    entries = []
    for index, row in enumerate(rows, start=1):
        print(f'[{index}/{len(rows)}] Table {row.table}: {row.label}', flush=True)
        runs = []
        for seed in seeds:
            seeded = dataclasses.replace(configured[row.key], seed=seed)
            name = row.key + (f'_seed{seed}' if len(seeds) > 1 else '')
            seed_everything(seed)
            weights, train_results = train_model(
                data.reader, data.root, seeded, output / f'train_{name}', command,
                context=f'row {row.key}' + (f' (seed {seed})' if len(seeds) > 1 else ''))
            label = f'{settings.model}, {count(train_results["config"]["epochs"], "epoch")}'
            runs.append(trained_run(label, seeded, weights, train_results, output / f'train_{name}',
                                    dict(model_args=seeded.model_args, train_overrides=seeded.train_overrides)))
        run_results = evaluate_runs(row.label, data.dataset, runs, configured[row.key], output / 'figures',
                                    figure_name=row.key)
        entries.append(dict(key=row.key, title=f'T{row.table} {row.label}', paper=row.paper,
                            comparable=not synthetic and not data.own_data, runs=run_results,
                            seeds=summarize_seeds(run_results)))
    results = dict(
        benchmark='ablation', command=command, mode='train', synthetic=synthetic,
        data_root=str(data.root), data_note=own_data_note([data]),
        model=settings.model, model_args=settings.model_args, img_size=list(settings.img_size),
        epochs=settings.epochs, batch_size=settings.batch_size, num_instances=settings.num_instances,
        train_overrides=settings.train_overrides, seed=seeds[0], seeds=seeds, device=settings.device,
        versions=library_versions(), units='percent', paper_citation=PAPER_CITATION, entries=entries,
    )
    results['wall_time_s'] = round(time.perf_counter() - start, 1)
    where = f'your data set {data.title}' if data.own_data else 'Market-1501'
    write_outputs(results, output, 'ablation', f'HBFP-Net ablations (Tables 2 and 3, {where})',
                  first_column='Configuration')
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m benchmarks.ablation``.

    Args:
        argv: Command line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, 2 after a one-line error, 130 after Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.output = args.output or str(Path('runs') / 'ablation')
    return guarded(lambda: run_ablation(args, argv), output=args.output)


if __name__ == '__main__':
    run_command(main)  # warnings as one line each, then the exit status
