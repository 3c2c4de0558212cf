"""Train HBFP-Net with the paper's recipe: ``python -m hbfp_timm.train --dataset market1501 --data-root DATA``.

The trainer lives in :mod:`hbfp_timm.training` (configuration, schedule, checkpoints, loop, command line); this
module is its command-line entry point and keeps the names importable from ``hbfp_timm.train``.
"""
from .commands import run_command
from .training import (
    BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULTS_NAME, ConstantThenExponentialDecay, TrainConfig,
    TrainSetupError, build_parser, descriptor_state_dict, main, train,
)

__all__ = [
    'TrainConfig', 'TrainSetupError', 'ConstantThenExponentialDecay', 'train', 'main', 'build_parser',
    'descriptor_state_dict', 'CHECKPOINT_NAME', 'RESULTS_NAME', 'MODEL_NAME', 'BEST_MODEL_NAME',
]

if __name__ == '__main__':
    run_command(lambda: main() and 0)  # warnings as one line each; exit status 0 after a run (main returns results)
