"""Tables 2 and 3 of HBFP-Net (ablations on Market-1501) as configurations of one model and one trainer:
``python -m benchmarks.ablation [--rows KEY,KEY,...] [--data-root DIR]``.

Every row trains ``--model`` with ``hbfp_timm.train.train`` (the paper's recipe) under the settings below,
evaluates it, and is printed beside the paper's mAP / Rank-1 / Rank-5. Without a Market-1501 data set the rows
run on the synthetic Market-layout set with a tiny budget, labelled "synthetic — not comparable with the paper".

How each paper row maps to ``HBFPNet`` kwargs and trainer settings. Unless a row says otherwise: label
smoothing 0.3 and ID loss on (``id_weight=1``), cutout 0.5, triplet loss on; random erasing and flip as the
run's defaults (the paper's 0.5 each on real data; on synthetic data the CPU preset of
:data:`benchmarks.settings.SYNTHETIC_PRESET` turns random erasing off, cutout still follows the row).

======================  ==========  ====================================================================
row (paper label)       ``--rows``  configuration
======================  ==========  ====================================================================
Baseline                baseline    branches=('high',), bfp_pairs=(), hierarchical=False,
                                    global_pool='avg'; triplet loss only (id_weight=0), no cutout
Baseline(+LS)           ls          as Baseline + label-smoothed ID loss (id_weight=1, epsilon 0.3),
                                    no cutout
Baseline(+LS+Cutout)    cutout      as Baseline(+LS) + cutout 0.5 (the paper's baseline for what follows)
Middle+High(Res)        mh_res      branches=('mid', 'high'), bfp_pairs=(), hierarchical=False, avg
Low+Middle+High(Res)    lmh_res     branches=('low', 'mid', 'high'), bfp_pairs=(), hierarchical=False, avg
BFP(Low&Middle)+High    bfp_lm_h    branches=all three, bfp_pairs=('low_mid',), hierarchical=False, avg
BFP(Middle&High)        bfp_mh      branches=('mid', 'high'), bfp_pairs=('mid_high',), hierarchical=False,
                                    avg
Low+BFP(Middle&High)    l_bfp_mh    branches=all three, bfp_pairs=('mid_high',), hierarchical=False, avg
BFP(Low&Middle&High)    bfp_lmh     branches=all three, bfp_pairs=both, hierarchical=False, avg
HBFP                    hbfp        branches=all three, bfp_pairs=both, hierarchical=True, avg
HBFP+GeP                hbfp_gep    HBFP with global_pool='gep', gep_lambdas=(0, .3, .5, .7, 1)
GeP{0} ... (Table 3)    gep0,       HBFP with global_pool='gep' and the cumulative lambda sets {0},
                        gep03,      {0, .3}, {0, .3, .5}, {0, .3, .5, .7}, {0, .3, .5, .7, 1}
                        gep035,
                        gep0357,
                        gep03571
======================  ==========  ====================================================================

Readings of the paper, **(choice)**: "(Res)" rows are the backbone's own maps, each trained as a branch
without BFP; "BFP(Low&Middle)+High" keeps the high branch as the backbone gives it; the Baseline rows keep
random erasing and flip (the paper names only the loss and cutout as what changes); ``GeP{0}`` is HBFP with
generalized pooling at lambda 0, mathematically average pooling, so it should match the HBFP row.
``--rows table2`` / ``table3`` select a whole table (default: both).
"""
import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hbfp_timm.paper import PAPER_CITATION, PAPER_TABLE2, PAPER_TABLE3

from .cli import BenchmarkError, exact_command, guarded
from .datasets import find_datasets, no_data_notice, prepare_synthetic, root_of
from .models import create_model, load_weights
from .outputs import write_outputs
from .report import SYNTHETIC_LABEL, library_versions
from .runs import Run, evaluate_runs, train_model
from .settings import add_common_arguments, resolve_settings, seed_everything

__all__ = ['AblationRow', 'ABLATION_ROWS', 'select_rows', 'main']

# Epochs per row on synthetic data: sixteen rows must stay a CPU-sized job.
SYNTHETIC_ABLATION_EPOCHS = 4

ALL_LEVELS = ('low', 'mid', 'high')
BOTH_PAIRS = ('low_mid', 'mid_high')
# Loss and cutout are set explicitly on every row, so that they hold whatever the run's defaults are.
TRIPLET_ONLY = dict(id_weight=0.0, cutout_prob=0.0)
WITH_LS = dict(id_weight=1.0, label_smoothing=0.3, cutout_prob=0.0)
WITH_LS_CUTOUT = dict(id_weight=1.0, label_smoothing=0.3, cutout_prob=0.5)


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 2 or 3: the paper's label and the configuration that realises it.

    Attributes:
        key: Name used by ``--rows``.
        label: Row label as printed in the paper.
        table: 2 or 3.
        model_args: ``HBFPNet`` kwargs.
        train_overrides: ``TrainConfig`` loss and cutout fields of the row (applied over the run's defaults).
    """
    key: str
    label: str
    table: int
    model_args: Dict[str, Any]
    train_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def paper(self) -> Dict[str, float]:
        """The paper's numbers for this row (percent)."""
        return (PAPER_TABLE2 if self.table == 2 else PAPER_TABLE3)[self.label]


def _net(branches=ALL_LEVELS, bfp_pairs=BOTH_PAIRS, hierarchical=False, global_pool='avg', **extra) -> Dict[str, Any]:
    return dict(branches=tuple(branches), bfp_pairs=tuple(bfp_pairs), hierarchical=hierarchical,
                global_pool=global_pool, **extra)


_HIGH_ONLY = _net(branches=('high',), bfp_pairs=())
_LAMBDA_SETS = {'gep0': (0.0,), 'gep03': (0.0, 0.3), 'gep035': (0.0, 0.3, 0.5), 'gep0357': (0.0, 0.3, 0.5, 0.7),
                'gep03571': (0.0, 0.3, 0.5, 0.7, 1.0)}
_TABLE3_LABELS = dict(zip(_LAMBDA_SETS, PAPER_TABLE3))

ABLATION_ROWS: List[AblationRow] = [
    AblationRow('baseline', 'Baseline', 2, _HIGH_ONLY, TRIPLET_ONLY),
    AblationRow('ls', 'Baseline(+LS)', 2, _HIGH_ONLY, WITH_LS),
    AblationRow('cutout', 'Baseline(+LS+Cutout)', 2, _HIGH_ONLY, WITH_LS_CUTOUT),
    AblationRow('mh_res', 'Middle+High(Res)', 2, _net(branches=('mid', 'high'), bfp_pairs=()), WITH_LS_CUTOUT),
    AblationRow('lmh_res', 'Low+Middle+High(Res)', 2, _net(bfp_pairs=()), WITH_LS_CUTOUT),
    AblationRow('bfp_lm_h', 'BFP(Low&Middle)+High', 2, _net(bfp_pairs=('low_mid',)), WITH_LS_CUTOUT),
    AblationRow('bfp_mh', 'BFP(Middle&High)', 2, _net(branches=('mid', 'high'), bfp_pairs=('mid_high',)),
                WITH_LS_CUTOUT),
    AblationRow('l_bfp_mh', 'Low+BFP(Middle&High)', 2, _net(bfp_pairs=('mid_high',)), WITH_LS_CUTOUT),
    AblationRow('bfp_lmh', 'BFP(Low&Middle&High)', 2, _net(), WITH_LS_CUTOUT),
    AblationRow('hbfp', 'HBFP', 2, _net(hierarchical=True), WITH_LS_CUTOUT),
    AblationRow('hbfp_gep', 'HBFP+GeP', 2, _net(hierarchical=True, global_pool='gep',
                                                gep_lambdas=(0.0, 0.3, 0.5, 0.7, 1.0)), WITH_LS_CUTOUT),
] + [AblationRow(key, _TABLE3_LABELS[key], 3, _net(hierarchical=True, global_pool='gep', gep_lambdas=lambdas),
                 WITH_LS_CUTOUT)
     for key, lambdas in _LAMBDA_SETS.items()]


def select_rows(spec: Optional[str]) -> List[AblationRow]:
    """The rows named by ``--rows``: comma-separated keys, paper labels, ``table2`` or ``table3``.

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


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m benchmarks.ablation`` parser."""
    parser = argparse.ArgumentParser(
        prog='python -m benchmarks.ablation', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='HBFP-Net ablations (paper Tables 2 and 3) on Market-1501, beside the paper.\n\nRows:\n' +
                    '\n'.join(f'  {row.key:<10} Table {row.table}: {row.label}' for row in ABLATION_ROWS))
    parser.add_argument('--rows', default=None,
                        help='comma-separated row keys or labels, or table2 / table3 (default: all rows)')
    add_common_arguments(parser)
    return parser


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
    output = Path(args.output or Path('runs') / 'ablation').expanduser()
    found, missing = find_datasets(['market1501'], args.data_root)
    synthetic = not found
    if args.epochs is None and synthetic:
        args.epochs = SYNTHETIC_ABLATION_EPOCHS
    settings = resolve_settings(args, synthetic)
    output.mkdir(parents=True, exist_ok=True)
    if synthetic:
        print(no_data_notice(missing, prog, modes=' each row trains with the paper\'s recipe.'), flush=True)
        print(f'Running the ablations on synthetic data instead ({SYNTHETIC_LABEL}): {settings.model}, '
              f'{settings.epochs} epochs per row, {len(rows)} rows', flush=True)
        dataset, reader, root = prepare_synthetic(output / 'synthetic', args.seed, settings.synthetic_data), 'market_layout', output / 'synthetic'
    else:
        dataset, reader = found['market1501'], 'market1501'
        root = Path(args.data_root) if args.data_root else root_of(dataset)
    entries = []
    for index, row in enumerate(rows, start=1):
        print(f'[{index}/{len(rows)}] Table {row.table}: {row.label}', flush=True)
        row_settings = dataclasses.replace(settings, model_args=dict(row.model_args),
                                           train_overrides={**settings.train_overrides, **row.train_overrides})
        seed_everything(args.seed)
        weights, _ = train_model(reader, root, row_settings, output / f'train_{row.key}', command)

        def trained(row_settings=row_settings, weights=weights):
            model = create_model(row_settings)
            load_weights(model, weights)
            return model.to(row_settings.device).eval()
        run = Run(f'{settings.model}, {settings.epochs or "paper"} epochs', trained, weights,
                  dict(model_args=row.model_args, train_overrides=row.train_overrides))
        runs = evaluate_runs(row.label, dataset, [run], row_settings, output / 'figures', figure_name=row.key)
        entries.append(dict(key=row.key, title=f'T{row.table} {row.label}', paper=row.paper, runs=runs))
    results = dict(
        benchmark='ablation', command=command, mode='train', synthetic=synthetic,
        data_root=str(root), model=settings.model, img_size=list(settings.img_size), epochs=settings.epochs,
        batch_size=settings.batch_size, num_instances=settings.num_instances, seed=settings.seed,
        device=settings.device, versions=library_versions(), units='percent', paper_citation=PAPER_CITATION,
        entries=entries,
    )
    results['wall_time_s'] = round(time.perf_counter() - start, 1)
    write_outputs(results, output, 'ablation', 'HBFP-Net ablations (Tables 2 and 3, Market-1501)',
                  first_column='Configuration')
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m benchmarks.ablation``.

    Args:
        argv: Command line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, or 2 after a one-line error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return guarded(lambda: run_ablation(args, argv))


if __name__ == '__main__':
    sys.exit(main())
