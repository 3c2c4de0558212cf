"""Deployment export of an eval-mode model: ``torch.export`` programs and ONNX files.

Re-id models are usually deployed as a graph that maps an image batch to descriptors: what the eval forward of
a model without an ID classifier returns (``num_classes=0``, as `hbfp_timm.FeatureExtractor` builds it). A model
with one (``num_classes > 0``, as trained) returns its class scores from ``forward``, and so does its graph;
``model.reset_classifier(0)`` first makes it return the descriptor.

Every layer of HBFP-Net traces: BFP is convolutions, batched matmuls and softmax; generalized pooling switches
to a plain comparison + MatMul formulation while being compiled or exported (see
:func:`hbfp_timm.layers.generalized_pool2d`), so there is no sort, ``searchsorted`` or custom autograd function
in the graph.

ONNX export uses torch's ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``), which needs
the ``onnx`` and ``onnxscript`` packages; checking the file with ONNX Runtime needs ``onnxruntime``.
"""
import importlib.util
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram

__all__ = ['export_program', 'export_onnx', 'ONNX_PACKAGES']

ONNX_PACKAGES = ('onnx', 'onnxscript')


def _check_batch(batch_size: int, dynamic_batch: bool) -> None:
    """The example batch: positive, and 2 or more for a dynamic batch (torch.export specialises a batch of 1 to
    the constant 1, and then refuses the dynamic dimension with a constraint violation)."""
    least = 2 if dynamic_batch else 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < least:
        raise ValueError(f'batch_size: expected an integer >= {least} for the example input'
                         + (' of a dynamic batch (the exported graph still takes any batch; dynamic_batch=False '
                            'fixes the batch size instead)' if dynamic_batch else '') + f', got {batch_size!r}')


def _example_input(model: nn.Module, img_size: Optional[Tuple[int, int]], batch_size: int) -> torch.Tensor:
    if img_size is None:
        img_size = tuple(getattr(model, 'pretrained_cfg', {}).get('input_size', (3, 384, 128))[1:])
    in_chans = getattr(model, 'in_chans', 3)
    device = next(model.parameters()).device
    return torch.randn(batch_size, in_chans, *img_size, device=device)


def _output_name(model: nn.Module) -> str:
    """What the eval forward returns: class scores where the model has an ID classifier (timm's ``num_classes``),
    else the descriptor."""
    return 'logits' if getattr(model, 'num_classes', 0) else 'descriptor'


def export_program(
        model: nn.Module,
        img_size: Optional[Tuple[int, int]] = None,
        batch_size: int = 2,
        dynamic_batch: bool = True,
) -> ExportedProgram:
    """Capture the eval-mode model with ``torch.export`` (the graph the ONNX exporter translates).

    The model is put in eval mode (BatchNorm uses its running statistics, as in deployment).

    Args:
        model: An HBFP-Net or any timm model.
        img_size: (H, W) of the example input; default the model's ``pretrained_cfg`` input size.
        batch_size: Batch size of the example input (2 or more with ``dynamic_batch``, so that the batch is not
            specialised).
        dynamic_batch: Export the batch dimension as dynamic.

    Returns:
        The exported program; ``program.module()(x)`` runs it.

    Raises:
        ValueError: ``batch_size`` below 2 with ``dynamic_batch`` (below 1 without).
    """
    _check_batch(batch_size, dynamic_batch)
    model.eval()
    example = _example_input(model, img_size, batch_size)
    dynamic_shapes = {'x': {0: Dim('batch', min=1, max=65536)}} if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def export_onnx(
        model: nn.Module,
        path: Union[str, Path],
        img_size: Optional[Tuple[int, int]] = None,
        batch_size: int = 2,
        dynamic_batch: bool = True,
        opset_version: Optional[int] = None,
) -> Path:
    """Export the eval-mode model to an ONNX file: input ``images`` (B, 3, H, W), output what the model's
    ``forward`` returns: ``descriptor`` (B, D) for a model without ID classifier (``num_classes=0``), ``logits``
    (B, num_classes) for one with it (module doc).

    Args:
        model: An HBFP-Net or any timm model; put in eval mode.
        path: Output ``.onnx`` file.
        img_size: (H, W) of the example input; default the model's ``pretrained_cfg`` input size.
        batch_size: Batch size of the example input (2 or more with ``dynamic_batch``).
        dynamic_batch: Make the batch dimension dynamic in the ONNX graph.
        opset_version: ONNX opset; default the exporter's.

    Returns:
        The path written.

    Raises:
        ImportError: When ``onnx`` or ``onnxscript`` is not installed (the exporter needs both).
        ValueError: ``path`` is a folder or lies under a file, or ``batch_size`` is below 2 with ``dynamic_batch``;
            both before any export work.
    """
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f'export_onnx needs the packages {", ".join(ONNX_PACKAGES)} (missing: {", ".join(missing)}); '
            f'install them with `pip install {" ".join(ONNX_PACKAGES)}` (and onnxruntime to run the file)')
    _check_batch(batch_size, dynamic_batch)
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f'path: {path} is a folder; expected the .onnx file to write')
    in_the_way = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if in_the_way is not None:
        raise ValueError(f'path: {path} cannot be written: {in_the_way} is a file, not a folder')
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = _example_input(model, img_size, batch_size)
    dynamic_shapes = {'x': {0: Dim('batch', min=1, max=65536)}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
            input_names=['images'], output_names=[_output_name(model)], opset_version=opset_version)
    return path
