"""Table 1 of HBFP-Net, all four columns (Market-1501, DukeMTMC-reID, CUHK03-NP labeled and detected):
`python -m benchmarks.table1 --data-root DIR --help` (see :mod:`benchmarks.harness`).

With ``--data-root``, every data set must be under it; without it, the data sets found under the default
roots are run and the others listed, and with none found the synthetic embedded default runs.
"""
import functools

from hbfp_timm.commands import run_command
from hbfp_timm.hub.paper import PAPER_TABLE1

from .harness import main as harness_main

# main(argv=None) -> exit code
main = functools.partial(
    harness_main,
    prog='python -m benchmarks.table1', report_name='table1', dataset_names=tuple(PAPER_TABLE1),
    description="HBFP-Net on the four data sets of the paper's Table 1, side by side with it.",
)

if __name__ == '__main__':
    run_command(main)  # warnings as one line each, then the exit status
