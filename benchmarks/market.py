"""Table 1 of HBFP-Net, Market-1501 column: `python -m benchmarks.market --help` (see :mod:`benchmarks.harness`)."""
import sys
from typing import Optional, Sequence

from .harness import main as harness_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the Market-1501 benchmark.

    Args:
        argv: Command line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    return harness_main(argv, prog='python -m benchmarks.market', report_name='market', dataset_names=('market1501',),
                        description='HBFP-Net on Market-1501 (paper Table 1), side by side with the paper.')


if __name__ == '__main__':
    sys.exit(main())
