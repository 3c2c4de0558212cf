"""Determinism of training runs: every epoch's random generators reseeded from (seed, epoch, rank), so that an
epoch's data depends on nothing before it, and the process generators' states saved in the checkpoint and restored
on resume."""
import random
from typing import Any, Dict, Tuple

import numpy as np
import torch

__all__ = ['epoch_seeds', 'rng_states', 'set_rng_states']


def epoch_seeds(seed: int, epoch: int, rank: int) -> Tuple[int, int]:
    """Two 32-bit seeds (augmentation RNGs, loader workers) that depend only on (seed, epoch, rank)."""
    augmentation, workers = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    return int(augmentation), int(workers)


def rng_states() -> Dict[str, Any]:
    np_state = np.random.get_state()
    states = {
        'python': random.getstate(),
        # numpy's state as plain types and a tensor, so the checkpoint loads with weights_only=True.
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[
            v.item() if isinstance(v, np.generic) else v for v in np_state[2:]]),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(_as_tuples(states['python']))
    np_state = states['numpy']
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def _as_tuples(value: Any) -> Any:
    """Lists back to tuples (random.setstate wants the exact nesting of random.getstate)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
