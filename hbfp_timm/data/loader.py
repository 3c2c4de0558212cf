"""Data loaders for training (PK batches) and evaluation (query, gallery)."""
import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from .datasets import ImageDataset, ReIDDataset
from .sampler import RandomIdentitySampler
from .transforms import build_test_transform, build_train_transform

__all__ = ['ReIDLoaders', 'make_dataloaders', 'test_loaders', 'ignore_interruptions', 'interruptions_deferred']


class ReIDLoaders(NamedTuple):
    """Loaders of one data set; unpacks as ``train, query, gallery = make_dataloaders(...)``."""
    train: DataLoader
    query: DataLoader
    gallery: DataLoader


# A terminal's Ctrl-C and a scheduler's SIGTERM reach the whole process group, workers included.
INTERRUPTIONS = {signal.SIGINT, signal.SIGTERM}


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(0)


def _hung_up(exc_type: type) -> bool:
    """A worker's background thread (multiprocessing's resource sharer, which hands batches' file descriptors to
    the main process) loses its connection when the main process stops on an interruption: that is the expected
    end, not an error to print over the one-line message."""
    return issubclass(exc_type, (ConnectionError, EOFError))


def _quiet_when_the_main_process_hangs_up(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook`` of a worker: a lost connection (:func:`_hung_up`) unprinted, anything else
    reported as Python would."""
    if not _hung_up(args.exc_type):
        threading.__excepthook__(args)


def _quiet_hang_up_in_sys_excepthook(exc_type, exc, tb) -> None:
    """``sys.excepthook`` of a worker, the same rule: the resource sharer's thread catches its own errors and
    reports them through ``sys.excepthook``, not ``threading.excepthook``."""
    if not _hung_up(exc_type):
        sys.__excepthook__(exc_type, exc, tb)


def ignore_interruptions(worker_id: int) -> None:
    """``worker_init_fn``: leave Ctrl-C to the main process and end quietly on SIGTERM.

    The main process handles the interruption and stops the workers in order; a worker that died of the signal
    would turn it into "DataLoader worker exited unexpectedly", and one that ignored SIGTERM would hang the exit
    (multiprocessing stops leftover workers with SIGTERM), and a connection its threads lose as the main process
    stops is not printed as a traceback. Unblocks what :func:`interruptions_deferred` held back during the fork.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    threading.excepthook = _quiet_when_the_main_process_hangs_up
    sys.excepthook = _quiet_hang_up_in_sys_excepthook
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTIONS)


@contextlib.contextmanager
def interruptions_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while DataLoader workers are forked: ``with interruptions_deferred():
    batches = iter(loader)``; a signal that arrives meanwhile is delivered when the block ends.

    A KeyboardInterrupt raised halfway through starting the workers leaves a half-built iterator (an error when it
    is collected), and one raised inside a fork hook is printed as "Exception ignored" and lost. The workers are
    forked with the signals blocked, so that they ignore them (:func:`ignore_interruptions`) before they see them.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, 'pthread_sigmask'):
        yield  # signal handlers belong to the main thread; Windows has no signal masks and spawns workers
        return
    arrived = []
    handlers = {signum: signal.signal(signum, lambda number, frame: arrived.append(number))
                for signum in INTERRUPTIONS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTIONS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in arrived:
            signal.raise_signal(signum)


def test_loaders(dataset: ReIDDataset, transform: Callable, batch_size: int, workers: int = 0,
                 pin_memory: bool = False, **loader_args) -> Tuple[DataLoader, DataLoader]:
    """The query and the gallery loader of `dataset`: ``(images, pids, camids, paths)`` batches in the split's order,
    each image through `transform` (the test transform), as evaluation reads them."""
    return tuple(DataLoader(ImageDataset(items, transform), batch_size=batch_size, shuffle=False,
                            num_workers=workers, pin_memory=pin_memory, **loader_args)
                 for items in (dataset.query, dataset.gallery))


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
    common = dict(pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_interruptions if workers > 0 else None)
    train = DataLoader(ImageDataset(dataset.train, train_transform), batch_size=p * k, sampler=sampler,
                       drop_last=True, generator=torch.Generator().manual_seed(seed), num_workers=workers, **common)
    return ReIDLoaders(train, *test_loaders(dataset, test_transform, batch_size_test, workers, **common))
