"""Table 1 of HBFP-Net, CUHK03-NP columns (new protocol, 767/700 split, the ``--split`` boxes):
`python -m benchmarks.cuhk03 --split labeled|detected --help` (see :mod:`benchmarks.harness`)."""
import functools

from hbfp_timm.commands import run_command

from .harness import main as harness_main

# main(argv=None) -> exit code
main = functools.partial(
    harness_main,
    prog='python -m benchmarks.cuhk03', report_name='cuhk03', cuhk03_split=True,
    dataset_names=('cuhk03_labeled', 'cuhk03_detected'),
    description='HBFP-Net on CUHK03-NP (paper Table 1), side by side with the paper.',
)

if __name__ == '__main__':
    run_command(main)  # warnings as one line each, then the exit status
