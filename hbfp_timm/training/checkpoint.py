"""What a run writes, atomically (the resumable checkpoint, results, descriptor weights), reads back to resume, and
how large it is, said before the first epoch and after the last."""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..utils.files import MODEL_NAME, RESULTS_NAME, atomic_write, format_size
from .config import TrainSetupError

__all__ = [
    'CHECKPOINT_NAME', 'RESULTS_NAME', 'MODEL_NAME', 'BEST_MODEL_NAME', 'OUTPUT_NAMES', 'write_json',
    'descriptor_state_dict', 'save_descriptor_model', 'save_checkpoint', 'load_train_state', 'planned_outputs',
    'describe_outputs', 'resume_best_model',
]

CHECKPOINT_NAME = 'checkpoint.pt'
BEST_MODEL_NAME = 'best.safetensors'
OUTPUT_NAMES = (CHECKPOINT_NAME, RESULTS_NAME, MODEL_NAME, BEST_MODEL_NAME)


def write_json(path: Path, data: Dict[str, Any]) -> None:
    def write(tmp_name: str) -> None:
        with open(tmp_name, 'w') as tmp_file:
            json.dump(data, tmp_file, indent=2)
    atomic_write(path, write)


def descriptor_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict without the ID classifier: the weights of the Re-ID descriptor model
    (``timm.create_model(name, num_classes=0)``), as contiguous CPU tensors ready for safetensors.

    Args:
        model: A timm model; its ``pretrained_cfg['classifier']`` names the classifier module.

    Returns:
        Name -> tensor.
    """
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'classifier')
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
            if not name.startswith(classifier + '.')}


def save_descriptor_model(model: nn.Module, path: Path, metadata: Dict[str, str]) -> None:
    state = descriptor_state_dict(model)
    atomic_write(path, lambda tmp_name: save_file(state, tmp_name, metadata=metadata))


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    atomic_write(path, lambda tmp_name: torch.save(state, tmp_name))


def load_train_state(path_or_dir: str, model_name: Optional[str] = None) -> Dict[str, Any]:
    """Read the resumable train state (`checkpoint.pt`: model, optimizer, scheduler, RNGs, results) written by
    :func:`train` (memory-mapped), checking its model name when given. Weights files go through
    `hbfp_timm.hub.load_checkpoint` instead."""
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainSetupError(f'resume: {path} does not exist (expected {CHECKPOINT_NAME} or the folder holding it)')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as exc:  # unpickling reports many error types; all mean "not our checkpoint"
        raise TrainSetupError(f'resume: cannot read {path} as a training checkpoint ({exc})') from exc
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'epoch' not in checkpoint:
        raise TrainSetupError(f'resume: {path} is not a checkpoint written by hbfp_timm.train')
    if model_name is not None and checkpoint.get('model_name') != model_name:
        raise TrainSetupError(f'resume: {path} holds a {checkpoint.get("model_name")!r} model, not {model_name!r}')
    return checkpoint


def _saved_epoch(path: Path) -> Optional[int]:
    """The epoch recorded in the metadata of a descriptor weights file; None where it is missing or unreadable."""
    try:
        with safe_open(str(path), 'pt') as weights:
            return int((weights.metadata() or {})['epoch'])
    except Exception:  # a missing, truncated or foreign file: it holds no epoch of this run
        return None


def resume_best_model(resume_folder: Path, output: Path, best: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Line up ``best.safetensors`` with the resumed checkpoint's record of its best evaluation, and return the
    record the run goes on with.

    The resumed run compares its evaluations with the checkpoint's best, so its output folder must hold that
    evaluation's weights. Resuming into another ``--output`` copies them there. A best model of an evaluation made
    after the checkpoint was written (a run stopped between the two, or ``--checkpoint-every`` above
    ``--eval-every``) belongs to epochs that the resumed run trains again: it is removed from the resumed folder,
    and the best evaluation is then tracked from the resumed epochs on (each is said in one line).

    Args:
        resume_folder: The folder of the checkpoint being resumed.
        output: The resumed run's output folder (``resume_folder`` itself or another).
        best: The checkpoint's best evaluation (``results['best']``), or None if it has none.

    Returns:
        ``best``, or None when its weights are gone.

    Raises:
        TrainSetupError: The weights cannot be copied into ``output``.
    """
    source = resume_folder / BEST_MODEL_NAME
    in_place = resume_folder.absolute().resolve() == output.absolute().resolve()
    saved = _saved_epoch(source) if source.is_file() else None
    if best is not None and saved == best['epoch']:
        if not in_place:
            try:
                atomic_write(output / BEST_MODEL_NAME, lambda tmp_name: shutil.copyfile(source, tmp_name))
            except OSError as exc:
                raise TrainSetupError(f'output: cannot copy {source} ({exc.strerror or exc})') from None
            tqdm.write(f'copied {source} (the best evaluation so far, epoch {saved}) to {output}')
        return best
    if in_place and source.is_file():
        source.unlink()
        tqdm.write(f'removed {source}: it holds epoch {saved if saved is not None else "?"}, not the checkpoint\'s '
                   f'best evaluation, and the resumed run trains those epochs again')
    if best is not None:
        tqdm.write(f'note: the weights of the best evaluation so far (epoch {best["epoch"]}) are not in '
                   f'{resume_folder}; {BEST_MODEL_NAME} will hold the best of the evaluations from here on')
    return None


def _tensor_bytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def planned_outputs(model: nn.Module, folder: Path, checkpoint_every: int) -> str:
    """One line: where the run writes, which files and about how large, and a warning if the disk is too full.

    Args:
        model: The model being trained (its size sets the sizes of the files).
        folder: The output folder.
        checkpoint_every: Epochs between two checkpoints.
    """
    descriptor = _tensor_bytes(descriptor_state_dict(model).values())
    # Adam keeps two moments per trainable weight next to the model's own state.
    checkpoint = _tensor_bytes(model.state_dict().values()) + 2 * _tensor_bytes(
        p for p in model.parameters() if p.requires_grad)
    every = 'every epoch' if checkpoint_every == 1 else f'every {checkpoint_every} epochs'
    line = (f'writing to {folder}: {CHECKPOINT_NAME} ~{format_size(checkpoint)} ({every}), {MODEL_NAME} '
            f'~{format_size(descriptor)} (at the end), {BEST_MODEL_NAME} ~{format_size(descriptor)} (best '
            f'evaluation), {RESULTS_NAME} (every epoch)')
    # A rewrite holds the old and the new checkpoint at once.
    needed = 2 * checkpoint + 2 * descriptor
    free = shutil.disk_usage(folder).free
    if free < needed:
        line += f'; warning: only {format_size(free)} free there, about {format_size(needed)} needed'
    return line


def describe_outputs(folder: Path) -> str:
    """One line naming the run's output files in ``folder`` with their sizes."""
    files = [folder / name for name in (CHECKPOINT_NAME, MODEL_NAME, BEST_MODEL_NAME, RESULTS_NAME)
             if (folder / name).is_file()]
    return f'wrote {folder}: ' + ', '.join(f'{path.name} {format_size(path.stat().st_size)}' for path in files)
