"""Device choice and torchrun / DistributedDataParallel setup of the trainer."""
import os
from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import TrainSetupError

__all__ = ['BranchForward', 'resolve_device', 'init_distributed']


class BranchForward(nn.Module):
    """Makes ``forward_branches`` the ``forward`` of a module, so DistributedDataParallel sees the training
    forward pass (DDP only synchronises gradients of passes that go through its own ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.forward_branches(images)



def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TrainSetupError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from exc
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise TrainSetupError(f'device: {name!r} requested but CUDA is not available')
        if device.index is None:
            device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> Tuple[bool, int, int, int]:
    """(we_initialised_it, rank, world_size, local_rank); joins the torchrun process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if dist.is_available() and dist.is_initialized():
        return False, dist.get_rank(), dist.get_world_size(), local_rank
    if world_size <= 1:
        return False, 0, 1, local_rank
    use_cuda = torch.cuda.is_available() and device_name != 'cpu'
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return True, dist.get_rank(), dist.get_world_size(), local_rank

