"""The HBFP-Net trainer: ``python -m hbfp_timm.train --dataset market1501 --data-root DATA``.

Recipe (paper 4.2; docs/design.md, "Training recipe"), the defaults of :class:`TrainConfig` and of the command line:
384x128 input; random horizontal flip, random erasing and cutout; PK batches of P = 16 identities x K = 4
images; batch-hard triplet loss (margin 0.3) + label-smoothed ID loss (epsilon 0.3) on every branch; Adam,
lr 2e-4, weight decay 5e-4, constant for 200 epochs then decaying exponentially towards 0 by epoch 500.

Runs on CUDA with mixed precision when a GPU is present (bfloat16 where the GPU has it, else float16 with a
gradient scaler; ``--amp-dtype``), on CPU otherwise, and on several GPUs or machines through ``torchrun``
(DistributedDataParallel; each process gets whole PK batches; at most one process per GPU). Before the first
epoch it checks the arguments, the output folder, the data set (every image cheaply, or decoded with
``--check-images``), the model's weights and input size, and whether a resumed checkpoint fits (model arguments,
input size, identities); it says what it will write and, at the end, what it wrote. An output folder that holds
another run is refused by the command line (``--overwrite`` replaces it); a run that replaces one removes its files,
``thresholds.json`` included, once the checks have passed, and a resumed run removes its ``thresholds.json`` (the
weights change). Writes to ``--output`` (a resumed run: the folder of its checkpoint, or ``--output``, where the
run's ``best.safetensors`` is copied):

* ``checkpoint.pt``: resumable state (model, optimizer, scheduler, grad scaler, epoch, RNG states, history),
  rewritten atomically every ``--checkpoint-every`` epochs (default 1) and after the last; ``--resume``
  continues it exactly;
* ``results.json``: configuration, the command line (and, under ``resumed_from``, each resume's), per-epoch
  losses, every evaluation, the best and the last; rewritten atomically after every epoch;
* ``model.safetensors``: the final Re-ID descriptor model (classifier dropped), loadable with
  ``timm.create_model(name, num_classes=0, **model_args)``; ``best.safetensors``: the same for the
  evaluation with the best mAP.

Determinism: at the start of every epoch the Python, NumPy and torch generators (augmentation in the main
process) and the generator that seeds the DataLoader workers (augmentation in workers) are reseeded from
(seed, epoch, rank), and the PK sampler orders batches from (seed, epoch). An epoch's data therefore depends on
nothing that came before it, and a run resumed after epoch e on the same device replays epochs e+1... exactly
(tested on CPU with 0 and 2 workers). The checkpoint also stores the process RNG states and restores them.

Failures end in one line naming the argument or the file (see :mod:`.cli` for the exit statuses); a diverging
run stops at the first NaN or infinite loss or weight; Ctrl-C and SIGTERM leave the last checkpoint intact and
no temporary files.

Modules: :mod:`.config` (``TrainConfig`` and its rules), :mod:`.schedule` (the learning-rate schedule),
:mod:`.checkpoint` (what a run writes and reads back, atomically, and its size), :mod:`.determinism` (per-epoch
seeds, RNG states for exact resume), :mod:`.losses` (Eq. 7-9), :mod:`.distributed` (device, torchrun),
:mod:`.cross_domain` (``--eval-data-root``), :mod:`.interrupts` (Ctrl-C, SIGTERM), :mod:`.prepare` (the checks
before the first epoch), :mod:`.loop` (``train``), :mod:`.cli` (``build_parser``,
``main``). ``hbfp_timm.train`` re-exports the public names.
"""
from .checkpoint import BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULTS_NAME, descriptor_state_dict
from .cli import build_parser, main
from .config import TrainConfig, TrainSetupError
from .loop import train
from .schedule import ConstantThenExponentialDecay

__all__ = [
    'TrainConfig', 'TrainSetupError', 'ConstantThenExponentialDecay', 'train', 'main', 'build_parser',
    'descriptor_state_dict', 'CHECKPOINT_NAME', 'RESULTS_NAME', 'MODEL_NAME', 'BEST_MODEL_NAME',
]
