"""Table 1 of HBFP-Net, Market-1501 column: `python -m benchmarks.market --help` (see :mod:`benchmarks.harness`)."""
import functools

from hbfp_timm.commands import run_command

from .harness import main as harness_main

# main(argv=None) -> exit code
main = functools.partial(
    harness_main,
    prog='python -m benchmarks.market', report_name='market', dataset_names=('market1501',),
    description='HBFP-Net on Market-1501 (paper Table 1), side by side with the paper.',
)

if __name__ == '__main__':
    run_command(main)  # warnings as one line each, then the exit status
