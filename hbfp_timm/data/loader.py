"""Data loaders for training (PK batches) and evaluation (query, gallery)."""
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
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
        distributed: bool = False,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        train_transform: Optional[Callable] = None,
        test_transform: Optional[Callable] = None,
) -> ReIDLoaders:
    """Build the training loader (P x K batches, last partial batch dropped) and the query / gallery loaders.

    Call ``loaders.train.sampler.set_epoch(epoch)`` before each epoch. In distributed mode each rank gets whole
    PK batches of the same global order; the query and gallery loaders are not split (evaluate on one rank or
    on all).

    Args:
        dataset: the data set.
        img_size: (height, width) of the network input.
        p: identities per training batch.
        k: images per identity in a training batch.
        batch_size_test: batch size of the query and gallery loaders.
        workers: data loading worker processes.
        distributed: split training batches over the torch.distributed process group (must be initialised).
        seed: seed of the PK sampler.
        mean: normalisation mean (used by the default transforms).
        std: normalisation std (used by the default transforms).
        train_transform: overrides `build_train_transform(img_size, mean, std)`.
        test_transform: overrides `build_test_transform(img_size, mean, std)`.

    Returns:
        `ReIDLoaders(train, query, gallery)`.
    """
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError('distributed=True needs an initialised torch.distributed process group (use torchrun)')
    train_transform = train_transform or build_train_transform(img_size, mean, std)
    test_transform = test_transform or build_test_transform(img_size, mean, std)
    sampler = RandomIdentitySampler(
        [pid for _, pid, _ in dataset.train], num_instances=k, batch_size=p * k, seed=seed,
        num_replicas=None if distributed else 1, rank=None if distributed else 0)
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    train = DataLoader(ImageDataset(dataset.train, train_transform), batch_size=p * k, sampler=sampler,
                       drop_last=True, **common)
    query = DataLoader(ImageDataset(dataset.query, test_transform), batch_size=batch_size_test, shuffle=False,
                       **common)
    gallery = DataLoader(ImageDataset(dataset.gallery, test_transform), batch_size=batch_size_test,
                         shuffle=False, **common)
    return ReIDLoaders(train, query, gallery)
