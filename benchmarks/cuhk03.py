"""Table 1 of HBFP-Net, CUHK03-NP columns: `python -m benchmarks.cuhk03 --split labeled|detected --help`
(see :mod:`benchmarks.harness`)."""
import sys
from typing import Optional, Sequence

from .harness import main as harness_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CUHK03-NP benchmark (new protocol, 767/700 split) on the ``--split`` boxes.

    Args:
        argv: Command line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    return harness_main(argv, prog='python -m benchmarks.cuhk03', report_name='cuhk03',
                        dataset_names=('cuhk03_labeled', 'cuhk03_detected'), cuhk03_split=True,
                        description='HBFP-Net on CUHK03-NP (paper Table 1), side by side with the paper.')


if __name__ == '__main__':
    sys.exit(main())
