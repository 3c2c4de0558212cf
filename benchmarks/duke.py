"""Table 1 of HBFP-Net, DukeMTMC-reID column: `python -m benchmarks.duke --help` (see :mod:`benchmarks.harness`)."""
import sys
from typing import Optional, Sequence

from .harness import main as harness_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the DukeMTMC-reID benchmark.

    Args:
        argv: Command line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    return harness_main(argv, prog='python -m benchmarks.duke', report_name='duke', dataset_names=('dukemtmc',),
                        description='HBFP-Net on DukeMTMC-reID (paper Table 1), side by side with the paper.')


if __name__ == '__main__':
    sys.exit(main())
