"""What a run checks and builds before its first epoch, so that a problem costs seconds rather than an epoch:
the output folder (and an earlier run in it), the data set and its images, the model (weights, input size) and a
resumed checkpoint's fit.
"""
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from ..data import ReIDDataset, build_dataset
from ..data.checks import find_unreadable_images
from ..metrics.verification import THRESHOLDS_NAME
from ..models.checks import model_args_error
from ..models.pretrained import CheckpointMismatchError, check_state_dict, offline_if_hub_unreachable
from ..utils.files import OutputWriteError, check_writable_folder, format_size, remove_stale_temporaries
from .checkpoint import CHECKPOINT_NAME, MODEL_NAME, OUTPUT_NAMES
from .config import TrainConfig, TrainSetupError

__all__ = [
    'RUN_FILES', 'output_dir', 'missing_folders', 'remove_created_folders', 'folders_removed_on_failure',
    'check_no_earlier_run', 'remove_earlier_outputs', 'prepare_output', 'read_dataset', 'check_identities',
    'check_queries', 'check_images', 'build_model', 'check_input_size', 'check_resume_fits', 'resume_folder',
]

# Unreadable images named in the error line; the rest are counted.
MAX_NAMED_IMAGES = 3
# The files of a run folder that go with its weights: the trainer's outputs, and the "same person" thresholds that
# python -m hbfp_timm.evaluate --calibrate may have put beside them (search --same-person reads them from there).
RUN_FILES = (*OUTPUT_NAMES, THRESHOLDS_NAME)


def output_dir(cfg: TrainConfig) -> Path:
    """``--output``; else the folder of ``--resume``; else ``runs/<model>_<dataset>``."""
    if cfg.output:
        return Path(cfg.output).expanduser()
    if cfg.resume:
        return resume_folder(cfg.resume)
    return Path('runs') / f'{cfg.model}_{cfg.dataset}'


def resume_folder(resume: str) -> Path:
    """The run folder of a ``--resume`` value: the folder itself, or the folder of the checkpoint file named."""
    path = Path(resume).expanduser()
    return path if path.is_dir() else path.parent


def missing_folders(folder: Path) -> List[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: the folders a run will create."""
    folder = Path(folder).expanduser().absolute()
    missing = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def remove_created_folders(folders: Sequence[Path]) -> None:
    """Remove the folders a failed run created (:func:`missing_folders`) that it left empty, deepest first; a
    folder that holds anything stays, with its parents."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: something was written there
            return


@contextlib.contextmanager
def folders_removed_on_failure(folder: Path) -> Iterator[None]:
    """A block that will write into ``folder``: if it fails (any exception, Ctrl-C included), the folders it
    created for it (:func:`missing_folders`, taken on entry) are removed where it left them empty."""
    created = missing_folders(folder)
    try:
        yield
    except BaseException:
        remove_created_folders(created)
        raise


def _resumes_in_place(cfg: TrainConfig, folder: Path) -> bool:
    """Whether the run continues the checkpoint of ``folder`` itself (``--resume`` names that folder)."""
    if not cfg.resume:
        return False
    return resume_folder(cfg.resume).absolute().resolve() == folder.absolute().resolve()


def check_no_earlier_run(cfg: TrainConfig, folder: Path) -> None:
    """Refuse an output folder that holds another run (the command line's rule, lifted by ``--overwrite``): its
    weights would be replaced, and a ``thresholds.json`` calibrated for them would stand beside the new ones.
    Continuing the folder's own checkpoint (``--resume`` of that folder) is not another run.

    Raises:
        TrainSetupError: ``folder`` holds files of an earlier run (:data:`RUN_FILES`); the line names them.
    """
    found = [name for name in RUN_FILES if (folder / name).is_file()]
    if not found or _resumes_in_place(cfg, folder):
        return
    run = ('a finished run' if MODEL_NAME in found else 'an unfinished run' if CHECKPOINT_NAME in found
           else 'files of an earlier run')
    continued = f'--resume {folder} to continue it, ' if CHECKPOINT_NAME in found and not cfg.resume else ''
    raise TrainSetupError(f'output: {folder} already holds {run} ({", ".join(found)}); pass {continued}--overwrite '
                          f'to replace it, or choose another folder')


def remove_earlier_outputs(folder: Path, cfg: TrainConfig) -> None:
    """Once the checks have passed, remove what an earlier run left in the output folder that the weights this run
    writes would contradict, and say so: all of :data:`RUN_FILES` for a new run (no earlier weights, results or
    checkpoint beside the new ones, even if this run stops early), only ``thresholds.json`` when the run
    continues the folder's own checkpoint (its thresholds were calibrated for the weights trained further now).

    Raises:
        TrainSetupError: A file cannot be removed.
    """
    in_place = _resumes_in_place(cfg, folder)
    removed = []
    for name in (THRESHOLDS_NAME,) if in_place else RUN_FILES:
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise TrainSetupError(f'output: cannot remove {folder / name} of the earlier run '
                                  f'({exc.strerror or exc})') from None
        removed.append(name)
    if removed:
        why = ('its thresholds were calibrated for the weights before this resume' if in_place
               else 'this run replaces the earlier one')
        tqdm.write(f'removed {", ".join(removed)} from {folder}: {why}'
                   + ('; calibrate again with python -m hbfp_timm.evaluate --calibrate' if THRESHOLDS_NAME in removed
                      else ''))


def prepare_output(folder: Path, remove_stale: bool = True) -> None:
    """Make sure the run can write its outputs, and clear temporaries left by a killed run.

    Args:
        folder: The output folder, created if missing.
        remove_stale: Remove temporaries of the run's outputs that no running process writes (the process that
            writes the outputs does; every process checks that the folder is writable, so that all stop alike).

    Raises:
        TrainSetupError: The folder is a file, cannot be created or is not writable.
    """
    try:
        check_writable_folder(folder)
    except OutputWriteError as exc:
        raise TrainSetupError(f'output: {exc.strerror}') from None
    if not remove_stale:
        return
    removed, size = remove_stale_temporaries(folder, OUTPUT_NAMES)
    if removed:
        tqdm.write(f'removed {len(removed)} temporary file{"s" if len(removed) > 1 else ""} ({format_size(size)}) '
                   f'left in {folder} by an interrupted run')


def read_dataset(cfg: TrainConfig) -> ReIDDataset:
    """The data set of ``cfg``; a missing or malformed one is a :class:`TrainSetupError` naming the path."""
    try:
        return build_dataset(cfg.dataset, cfg.data_root)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainSetupError(f'data_root: {exc}') from exc


def check_identities(dataset: ReIDDataset, cfg: TrainConfig) -> None:
    """Refuse PK batches of more identities than the training split has (P = batch_size / num_instances).

    Raises:
        TrainSetupError: Too few training identities, naming ``batch_size`` and the largest that fits.
    """
    num_pids, per_batch = dataset.num_train_pids, cfg.batch_size // cfg.num_instances
    if num_pids >= per_batch:
        return
    fits = (f'expected batch_size at most {num_pids} x num_instances = {num_pids * cfg.num_instances}'
            if num_pids >= 2 else 'PK batches need at least two training identities')
    raise TrainSetupError(
        f'batch_size: {cfg.dataset} at {cfg.data_root} has {num_pids} training '
        f'identit{"y" if num_pids == 1 else "ies"}, too few for batches of P={per_batch} identities (batch_size '
        f'{cfg.batch_size} / num_instances {cfg.num_instances}); {fits}')


def check_queries(dataset: ReIDDataset, field: str, name: str) -> Optional[str]:
    """Whether the evaluation of ``dataset`` will score anything: the Market-1501 protocol scores a query only
    against gallery images of its identity from another camera (a camera-less list's images are each their own
    camera), and skips a query without one.

    Args:
        dataset: The data set read (its query and gallery splits).
        field: The field that named the data (``'data_root'``, ``'eval_data_roots'``), for the error.
        name: The data, for the messages (``'image_lists at /data/mine'``).

    Returns:
        A line counting the queries every evaluation will skip, or None when every query has a match.

    Raises:
        TrainSetupError: No query has one: every evaluation would fail after its epochs of training.
    """
    cameras: Dict[int, set] = {}
    for _, pid, camid in dataset.gallery:
        cameras.setdefault(pid, set()).add(camid)
    unmatched = sum(not cameras.get(pid, set()) - {camid} for _, pid, camid in dataset.query)
    num_query = len(dataset.query)
    if unmatched == num_query:
        raise TrainSetupError(
            f'{field}: {name}: none of the {num_query} queries has a gallery image of its identity from another '
            f'camera, which the evaluation protocol needs to score it; expected query and gallery of the same '
            f'identities (check that they come from the same split)')
    if unmatched:
        return (f'{unmatched} of the {num_query} queries of {name} have no gallery image of their identity from '
                f'another camera: every evaluation skips them (the Market-1501 protocol)')
    return None


def check_images(dataset: ReIDDataset, full: bool, rank: int, world_size: int) -> Tuple[int, float]:
    """Look for unusable images of every split (see :mod:`hbfp_timm.data.checks`), each process a share.

    Returns:
        The number of images checked and the seconds it took.

    Raises:
        TrainSetupError: Some images are empty, truncated, undecodable or too large; the line names the first.
    """
    start = time.perf_counter()
    paths = sorted({path for items in (dataset.train, dataset.query, dataset.gallery) for path, _, _ in items})
    problems = find_unreadable_images(paths[rank::world_size], full=full, show_progress=full and rank == 0)
    if world_size > 1:
        gathered: List[Any] = [None] * world_size
        dist.all_gather_object(gathered, problems)
        problems = sorted(problem for share in gathered for problem in share)
    if problems:
        named = '; '.join(f'{path} ({reason})' for path, reason in problems[:MAX_NAMED_IMAGES])
        more = f'; and {len(problems) - MAX_NAMED_IMAGES} more' if len(problems) > MAX_NAMED_IMAGES else ''
        raise TrainSetupError(
            f'data_root: {len(problems)} of {len(paths)} images cannot be used: {named}{more}; remove or replace them '
            f'({"every image was decoded" if full else "--check-images decodes every image to find all problems"})')
    return len(paths), time.perf_counter() - start


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``timm.create_model`` of ``cfg``; weights that cannot be had fail at once with the ways out.

    Raises:
        TrainSetupError: Bad ``model_args`` (``in_chans`` other than 3 among them: the images are RGB), unreadable
            ``backbone_weights``, or ImageNet weights that are neither cached nor downloadable.
    """
    if 'num_classes' in cfg.model_args:
        raise TrainSetupError('model_args: num_classes is set by the trainer (one class per training identity); drop '
                              '--model-arg num_classes')
    if cfg.model_args.get('in_chans', 3) != 3:
        raise TrainSetupError(f'model_args: in_chans={cfg.model_args["in_chans"]!r}, but the trainer reads every image '
                              f'as RGB (3 channels); drop --model-arg in_chans')
    kwargs = dict(cfg.model_args)
    kwargs.setdefault('pretrained_backbone', cfg.pretrained_backbone)
    if cfg.backbone_weights is not None:
        kwargs['backbone_weights'] = cfg.backbone_weights
    downloads = kwargs['pretrained_backbone'] and cfg.backbone_weights is None
    try:
        if not downloads:
            return timm.create_model(cfg.model, num_classes=num_classes, **kwargs)
        with offline_if_hub_unreachable() as offline:
            if offline:
                tqdm.write('the Hugging Face Hub is not reachable (or HF_HUB_OFFLINE is set): looking for the '
                           'backbone weights in the local cache only')
            return timm.create_model(cfg.model, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise TrainSetupError(model_args_error(cfg.model, exc, cfg.model_args)) from exc
    except ValueError as exc:
        if cfg.backbone_weights is not None and str(exc).startswith('backbone_weights: '):
            raise TrainSetupError(str(exc)) from exc  # the --backbone-weights file, not a --model-arg
        raise TrainSetupError(f'model_args: cannot build {cfg.model} with {cfg.model_args} ({exc})') from exc
    except OSError as exc:
        if downloads:
            raise TrainSetupError(
                f'pretrained backbone weights for {cfg.model} could not be loaded ({type(exc).__name__}: '
                f'{str(exc).splitlines()[0] if str(exc) else ""}); offline, pass --backbone-weights FILE (a '
                f'local ImageNet checkpoint) or --no-pretrained-backbone') from exc
        raise TrainSetupError(f'backbone_weights: cannot load {cfg.backbone_weights} ({exc})') from exc


@torch.no_grad()
def check_input_size(model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """Run the model once on one blank image of ``cfg.img_size``, so that a size the model cannot take (or a
    constructor argument that only fails in the forward pass) stops the run before any data is loaded.

    Raises:
        TrainSetupError: The forward pass refused the input.
    """
    height, width = cfg.img_size
    was_training = model.training
    model.eval()  # no batch statistics, no dropout: the probe changes nothing in the model or the RNG streams
    try:
        model(torch.zeros(1, getattr(model, "in_chans", 3), height, width, device=device))
    except (ValueError, RuntimeError) as exc:
        raise TrainSetupError(f'img_size: {cfg.model} cannot run on {height}x{width} images '
                              f'({str(exc).strip().splitlines()[0]})') from exc
    finally:
        model.train(was_training)


def _differences(saved: Dict[str, Any], asked: Dict[str, Any]) -> str:
    """``'hierarchical default -> False, perception_dim 16 -> default'`` (checkpoint -> this run)."""
    def shown(arguments: Dict[str, Any], key: str) -> str:
        return repr(arguments[key]) if key in arguments else 'default'

    absent = object()
    return ', '.join(f'{key} {shown(saved, key)} -> {shown(asked, key)}'
                     for key in sorted(set(saved) | set(asked)) if saved.get(key, absent) != asked.get(key, absent))


def check_resume_fits(checkpoint: Dict[str, Any], cfg: TrainConfig, dataset: ReIDDataset, model: nn.Module) -> None:
    """Refuse to continue a checkpoint that is complete, or with another model, input size or other identities,
    saying what differs.

    Raises:
        TrainSetupError: No epochs left, or ``model_args``, the input size, the number of training identities or
            the state dict differ.
    """
    done = int(checkpoint['epoch'])
    if done >= cfg.epochs:
        raise TrainSetupError(f'resume: the checkpoint has already completed {done} epoch{"" if done == 1 else "s"}; '
                              f'pass --epochs greater than {done} to train further')
    saved_cfg = json.loads(checkpoint['config'])
    saved_args = saved_cfg.get('model_args', {})
    asked_args = json.loads(json.dumps(cfg.model_args))  # tuples as lists, as the checkpoint stores them
    if saved_args != asked_args:
        raise TrainSetupError(
            f'resume: {cfg.resume} was trained with other model arguments (checkpoint -> this run: '
            f'{_differences(saved_args, asked_args)}); '
            f'a run continues only with its own: drop --model-arg to continue it, or start a new run with another '
            f'--output')
    saved_size = tuple(saved_cfg.get('img_size', cfg.img_size))
    if saved_size != tuple(cfg.img_size):
        raise TrainSetupError(
            f'resume: {cfg.resume} was trained on {saved_size[0]}x{saved_size[1]} images but this run asks for '
            f'{cfg.img_size[0]}x{cfg.img_size[1]}; a run continues only at its own input size: drop --img-size to '
            f'continue it, or start a new run with another --output')
    saved_pids = json.loads(checkpoint['results']).get('num_train_pids')
    if saved_pids is not None and saved_pids != dataset.num_train_pids:
        raise TrainSetupError(
            f'resume: {cfg.resume} was trained on {saved_pids} identities ({saved_cfg.get("dataset")} at '
            f'{saved_cfg.get("data_root")}) but {cfg.dataset} at {cfg.data_root} has {dataset.num_train_pids}; its '
            f'classifier fits only its own identities: resume on the same data, or start a new run with another '
            f'--output')
    try:
        check_state_dict(model, checkpoint['model'], f'resume: {cfg.resume}')
    except CheckpointMismatchError as exc:
        raise TrainSetupError(str(exc)) from None
