"""Table 1 of HBFP-Net, DukeMTMC-reID column: `python -m benchmarks.duke --help` (see :mod:`benchmarks.harness`)."""
import functools

from hbfp_timm.commands import run_command

from .harness import main as harness_main

# main(argv=None) -> exit code
main = functools.partial(
    harness_main,
    prog='python -m benchmarks.duke', report_name='duke', dataset_names=('dukemtmc',),
    description='HBFP-Net on DukeMTMC-reID (paper Table 1), side by side with the paper.',
)

if __name__ == '__main__':
    run_command(main)  # warnings as one line each, then the exit status
