"""Data loaders for training (PK batches) and evaluation (query, gallery)."""
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from .datasets import ImageDataset, ReIDDataset
from .sampler import RandomIdentitySampler
from .transforms import build_test_transform, build_train_transform

__all__ = ['ReIDLoaders', 'make_dataloaders']


class ReIDLoaders(NamedTuple):
    """Loaders of one data set; unpacks as ``train, query, gallery = make_dataloaders(...)``."""
    train: DataLoader
    query: DataLoader
    gallery: DataLoader


def make_dataloaders(
        dataset: ReIDDataset,
        img_size: Tuple[int, int] = (384, 128),
        p: int = 16,
        k: int = 4,
        batch_size_test: int = 128,
        workers: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        train_transform: Optional[Callable] = None,
        test_transform: Optional[Callable] = None,
) -> ReIDLoaders:
    """Build the training loader (P x K batches, last partial batch dropped) and the query / gallery loaders.

    Before each epoch call ``loaders.train.sampler.set_epoch(epoch)`` and reseed
    ``loaders.train.generator`` (the worker seeds): the workers are not persistent, so each epoch's
    augmentation then depends only on those two seeds and a resumed run replays it exactly. With several
    processes (torchrun) each rank gets whole PK batches of the same global order; the query and gallery
    loaders are not split.

    Args:
        dataset: the data set.
        img_size: (height, width) of the network input (for the default transforms).
        p: identities per training batch (per process).
        k: images per identity in a training batch.
        batch_size_test: batch size of the query and gallery loaders.
        workers: data loading worker processes.
        seed: seed of the PK sampler.
        num_replicas: number of training processes.
        rank: this process's rank.
        train_transform: overrides `build_train_transform(img_size)`.
        test_transform: overrides `build_test_transform(img_size)`.

    Returns:
        `ReIDLoaders(train, query, gallery)`.
    """
    train_transform = train_transform or build_train_transform(img_size)
    test_transform = test_transform or build_test_transform(img_size)
    sampler = RandomIdentitySampler(
        [pid for _, pid, _ in dataset.train], num_instances=k, batch_size=p * k, seed=seed,
        num_replicas=num_replicas, rank=rank)
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available())
    train = DataLoader(ImageDataset(dataset.train, train_transform), batch_size=p * k, sampler=sampler,
                       drop_last=True, generator=torch.Generator().manual_seed(seed), **common)
    query, gallery = (
        DataLoader(ImageDataset(items, test_transform), batch_size=batch_size_test, shuffle=False, **common)
        for items in (dataset.query, dataset.gallery))
    return ReIDLoaders(train, query, gallery)
