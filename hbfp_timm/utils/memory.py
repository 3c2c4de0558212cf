"""What a training step keeps in memory between forward and backward, counted exactly and independently of the
allocator and the device: how gradient checkpointing (``model.set_grad_checkpointing()``) is measured."""
from typing import Any, Callable, Tuple

import torch
import torch.nn as nn

__all__ = ['saved_activation_bytes']


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> Tuple[int, torch.Tensor]:
    """Run ``forward()`` (which returns a loss) and backward, and count the bytes autograd kept in between.

    Args:
        model: The model whose parameters and buffers are not counted (they are kept anyway).
        forward: Computes the loss of one step with ``model``.

    Returns:
        (bytes of every distinct storage saved for backward, parameters and buffers excluded; the loss).
    """
    parameters = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    loss.backward()
    return sum(kept.values()), loss
