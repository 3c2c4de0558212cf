"""Re-ID data: data set readers, PK sampler, transforms and loaders."""
from .datasets import (
    DATASET_NAMES, ImageDataset, ImageReadError, Item, ReIDDataset, build_dataset, cuhk03, dukemtmc, market1501,
    market_layout, msmt17,
)
from .lists import ImageList, identities_from_names, image_lists, read_image_list
from .loader import ReIDLoaders, make_dataloaders, test_loaders
from .sampler import RandomIdentitySampler
from .transforms import Cutout, build_test_transform, build_train_transform

__all__ = [
    'DATASET_NAMES', 'ImageDataset', 'ImageReadError', 'Item', 'ReIDDataset', 'build_dataset', 'cuhk03', 'dukemtmc',
    'market1501', 'market_layout', 'msmt17', 'ImageList', 'identities_from_names', 'image_lists', 'read_image_list',
    'ReIDLoaders', 'make_dataloaders', 'test_loaders', 'RandomIdentitySampler', 'Cutout', 'build_test_transform',
    'build_train_transform',
]
