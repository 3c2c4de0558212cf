"""Device choice and torchrun / DistributedDataParallel setup of the trainer."""
import os
from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from ..utils.devices import check_device, visible_gpus
from .config import TrainSetupError

__all__ = ['BranchForward', 'resolve_device', 'check_processes_per_gpu', 'init_distributed']


class BranchForward(nn.Module):
    """Makes ``forward_branches`` the ``forward`` of a module, so DistributedDataParallel sees the training
    forward pass (DDP only synchronises gradients of passes that go through its own ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.forward_branches(images)


def resolve_device(name: str, local_rank: int) -> torch.device:
    """The device of this process: ``name`` checked (:func:`~hbfp_timm.utils.devices.check_device`), ``'auto'``
    resolved, and ``'cuda'`` made ``cuda:<local_rank>``; a GPU becomes torch's current one.

    Raises:
        TrainSetupError: An unknown name, CUDA asked for but absent, or a GPU index that is not visible.
    """
    try:
        device = check_device(name, default_index=local_rank)
    except ValueError as exc:
        raise TrainSetupError(str(exc)) from None
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    return device


def check_processes_per_gpu(device_name: str, local_rank: int) -> None:
    """Refuse more training processes on this machine than visible GPUs, in every process alike.

    torchrun sets ``LOCAL_WORLD_SIZE``; checking it (rather than each process its own ``LOCAL_RANK``) makes every
    process stop with the same line before any of them waits for the others in ``init_process_group``.

    Raises:
        TrainSetupError: The processes would each need a GPU of their own and there are too few.
    """
    uses_cuda = (device_name == 'auto' and torch.cuda.is_available()) or device_name == 'cuda'
    if not uses_cuda:
        return
    processes = int(os.environ.get('LOCAL_WORLD_SIZE', local_rank + 1))
    count = torch.cuda.device_count()
    if processes > count:
        raise TrainSetupError(
            f'device: {processes} training processes run on this machine (torchrun --nproc-per-node) but '
            f'{visible_gpus()}; start one process per GPU (torchrun --nproc-per-node {count}), or train on CPU '
            f'with --device cpu')


def init_distributed(device_name: str) -> Tuple[bool, int, int, int]:
    """(we_initialised_it, rank, world_size, local_rank); joins the torchrun process group when WORLD_SIZE > 1.

    Raises:
        TrainSetupError: More processes than GPUs on this machine (checked before joining the group).
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if dist.is_available() and dist.is_initialized():
        return False, dist.get_rank(), dist.get_world_size(), local_rank
    if world_size <= 1:
        return False, 0, 1, local_rank
    check_processes_per_gpu(device_name, local_rank)
    use_cuda = torch.cuda.is_available() and device_name != 'cpu'
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return True, dist.get_rank(), dist.get_world_size(), local_rank
