"""PK sampling for metric learning: P identities x K images per batch (Hermans et al. 2017, "In Defense of the
Triplet Loss"), deterministic given a seed and the epoch, with a distributed split that keeps whole batches."""
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ['RandomIdentitySampler']


class RandomIdentitySampler(Sampler[int]):
    """Yields dataset indices so that every consecutive `batch_size` of them holds P = batch_size // K
    identities with K images each.

    Per epoch, each identity's images are shuffled and cut into groups of K (an identity with fewer than K
    images is sampled with replacement up to K; leftovers short of K are dropped for that epoch); batches then
    draw P distinct identities at random among those with groups left, until fewer than P remain. The order
    depends only on (seed, epoch), so every rank computes the same batches; rank r takes batches
    r, r + num_replicas, ... and all ranks get the same number (the last few batches are dropped if needed),
    so DistributedDataParallel never waits on a missing batch. Use it with ``DataLoader(batch_size=batch_size,
    sampler=..., drop_last=True)``.

    Args:
        pids: identity of each dataset item, in dataset order.
        num_instances: K, images per identity in a batch.
        batch_size: P * K.
        seed: base seed; the epoch is mixed in via `set_epoch`.
        num_replicas: number of processes; defaults to the torch.distributed world size (1 when not initialised).
        rank: this process's rank; defaults to the torch.distributed rank (0 when not initialised).
    """

    def __init__(
            self,
            pids: Sequence[int],
            num_instances: int = 4,
            batch_size: int = 64,
            seed: int = 0,
            num_replicas: Optional[int] = None,
            rank: Optional[int] = None,
    ):
        if num_instances < 1:
            raise ValueError(f'num_instances (K) must be >= 1, got {num_instances}')
        if batch_size < num_instances or batch_size % num_instances != 0:
            raise ValueError(f'batch_size {batch_size} must be a positive multiple of num_instances {num_instances}')
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f'rank {self.rank} must be in [0, num_replicas={self.num_replicas})')

        self.num_instances = num_instances
        self.batch_size = batch_size
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = seed
        self.epoch = 0
        grouped = defaultdict(list)
        for index, pid in enumerate(pids):
            grouped[int(pid)].append(index)
        self.index_by_pid: Dict[int, np.ndarray] = {pid: np.asarray(grouped[pid]) for pid in sorted(grouped)}
        if len(self.index_by_pid) < self.num_pids_per_batch:
            raise ValueError(
                f'{len(self.index_by_pid)} identities cannot fill a batch of P={self.num_pids_per_batch} '
                f'identities (batch_size {batch_size} / num_instances {num_instances})')
        self._cache_epoch: Optional[int] = None
        self._cache: List[List[int]] = []
        if len(self._rank_batches()) == 0:
            raise ValueError(f'one epoch makes fewer PK batches than num_replicas={self.num_replicas}')

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to produce (call before each epoch, like DistributedSampler)."""
        self.epoch = epoch

    def _global_batches(self) -> List[List[int]]:
        """All PK batches of the current epoch, identical on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        k = self.num_instances
        groups: Dict[int, List[np.ndarray]] = {}
        for pid, indices in self.index_by_pid.items():
            if len(indices) < k:
                indices = rng.choice(indices, size=k, replace=True)
            else:
                indices = rng.permutation(indices)
            groups[pid] = list(indices[:len(indices) // k * k].reshape(-1, k))

        batches = []
        available = np.asarray(sorted(groups))
        while len(available) >= self.num_pids_per_batch:
            chosen = rng.choice(available, size=self.num_pids_per_batch, replace=False)
            batches.append([int(i) for pid in chosen for i in groups[pid].pop()])
            available = np.asarray([pid for pid in available if groups[pid]])
        return batches

    def _rank_batches(self) -> List[List[int]]:
        if self._cache_epoch != self.epoch:
            batches = self._global_batches()
            per_rank = len(batches) // self.num_replicas
            self._cache = batches[self.rank::self.num_replicas][:per_rank]
            self._cache_epoch = self.epoch
        return self._cache

    def __iter__(self) -> Iterator[int]:
        for batch in self._rank_batches():
            yield from batch

    def __len__(self) -> int:
        # Exact: the epoch's batches are computed (and cached) rather than estimated.
        return len(self._rank_batches()) * self.batch_size
