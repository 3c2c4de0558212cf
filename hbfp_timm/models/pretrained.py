"""Loading the zoo's pretrained weights: timm's ``pretrained=True`` made safe and clear for the HBFP models.

The model factory (:mod:`.registry`) routes timm's load through :func:`explain_pretrained_errors` (a missing or
unreachable Hub repository becomes one :class:`WeightsNotFoundError` naming the ways out) and
:func:`check_pretrained_state_dict` (a checkpoint that does not fit is refused with its mismatched keys,
:func:`check_state_dict`), inside :func:`offline_if_hub_unreachable` (one short probe instead of
huggingface_hub's retries when there is no network). Writing weights and model cards is the application's
(:mod:`hbfp_timm.hub`).
"""
import contextlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from safetensors import SafetensorError, safe_open
from timm.models import resolve_pretrained_cfg

from ..utils.files import MODEL_NAME, RESULTS_NAME

__all__ = [
    'WeightsNotFoundError', 'CheckpointMismatchError', 'hub_reachable', 'offline_if_hub_unreachable',
    'check_state_dict', 'check_pretrained_state_dict', 'explain_pretrained_errors', 'file_metadata',
    'trained_input_size',
]

# Benchmark module that reproduces each data set's Table 1 column (docs/design.md, "Public API").
BENCHMARK_OF_DATASET = {
    'market1501': 'benchmarks.market', 'dukemtmc': 'benchmarks.duke',
    'cuhk03_labeled': 'benchmarks.cuhk03', 'cuhk03_detected': 'benchmarks.cuhk03',
}
MAX_LISTED_KEYS = 3


class WeightsNotFoundError(FileNotFoundError):
    """``pretrained=True`` found no weights for an HBFP model (missing Hub repository, offline without cache)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or tensor shapes do not match the model it is loaded into."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``HF_ENDPOINT``, through the usual proxy variables) answers within
    ``timeout`` seconds; one request, no retries."""
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # requests, httpx and socket errors alike (huggingface_hub's HTTP client varies by version)
        return False
    return True


@contextlib.contextmanager
def offline_if_hub_unreachable(timeout: float = 3.0) -> Iterator[bool]:
    """Inside the block, use only the local Hugging Face cache when the Hub cannot be reached.

    Without a network huggingface_hub retries every download for about 50 s before it falls back on its cache
    or fails; one probe of at most ``timeout`` seconds decides instead, and the block then runs as under
    ``HF_HUB_OFFLINE=1``: cached weights load at once, missing ones fail at once. Nothing is probed when
    ``HF_HUB_OFFLINE`` is already set.

    Yields:
        True when the block runs offline.
    """
    if constants.HF_HUB_OFFLINE or hub_reachable(timeout):
        yield bool(constants.HF_HUB_OFFLINE)
        return
    constants.HF_HUB_OFFLINE = True  # read by huggingface_hub at every request
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False



def check_state_dict(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        source: str,
        ignore_prefixes: Sequence[str] = (),
        holds: Optional[str] = None,
) -> None:
    """Refuse a state dict that does not fit ``model``, saying what the file holds and listing what differs.

    Args:
        model: The model the weights are meant for.
        state_dict: The checkpoint's tensors.
        source: Where the weights come from (a path or a Hub id), named in the error.
        ignore_prefixes: Key prefixes left out of the comparison (a classifier that timm drops on purpose).
        holds: The architecture the file says it holds (its safetensors metadata), when known.

    Raises:
        CheckpointMismatchError: missing, unexpected or shape-mismatched keys, the first few of each listed, on
            one line.
    """
    def kept(keys):
        return {k for k in keys if not k.startswith(tuple(ignore_prefixes))}

    expected = model.state_dict()
    missing = sorted(kept(expected) - set(state_dict))
    unexpected = sorted(kept(state_dict) - set(expected))
    shapes = [
        f'{k} checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}'
        for k in sorted(kept(set(expected) & set(state_dict)))
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        f'{label} ({len(items)}): {_listing(items)}'
        for label, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes))
        if items
    ]
    if problems:
        arch = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
        what = f'{holds} weights' if holds else 'a checkpoint'
        raise CheckpointMismatchError(
            f'{source}: holds {what} ({len(state_dict)} tensors) that do not match {arch} as built '
            f'({len(expected)} tensors; check the model name and its constructor arguments) - ' + '; '.join(problems))



def file_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The metadata of a safetensors file (the trainer's and release files name ``architecture`` and
    ``img_size``); empty for other files and for files it cannot read."""
    if not str(path).endswith('.safetensors'):
        return {}
    try:
        with safe_open(str(path), framework='pt') as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError):
        return {}


def _listing(items: List[str]) -> str:
    shown = ', '.join(items[:MAX_LISTED_KEYS])
    return shown + (f', ... and {len(items) - MAX_LISTED_KEYS} more' if len(items) > MAX_LISTED_KEYS else '')


def check_pretrained_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn`` of the HBFP models: :func:`check_state_dict` before timm loads the weights.

    When the model's ``num_classes`` differs from the checkpoint's, timm drops the classifier and loads the rest;
    the classifier is then left out of the comparison. When the model takes another number of input channels
    (``in_chans``), the first convolution's weight (``first_conv``) may differ in its input channels alone: timm
    adapts it after this check, as for its own models.

    Args:
        state_dict: The pretrained tensors timm is about to load.
        model: The freshly built model (its ``pretrained_cfg`` names the source).

    Returns:
        ``state_dict``, unchanged.
    """
    cfg = model.pretrained_cfg
    source = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or 'pretrained weights'
    classifier = cfg.get('classifier') or 'classifier'
    ignore = (classifier + '.',) if getattr(model, 'num_classes', None) != cfg.get('num_classes') else ()
    holds = file_metadata(cfg['file']).get('architecture') if cfg.get('file') else None
    first_conv = f"{cfg.get('first_conv')}.weight"
    expected = model.state_dict().get(first_conv)
    given = state_dict.get(first_conv)
    if expected is not None and given is not None and given.shape[1] != expected.shape[1] \
            and given.shape[:1] + given.shape[2:] == expected.shape[:1] + expected.shape[2:]:
        state_dict = {key: value for key, value in state_dict.items() if key != first_conv}
        check_state_dict(model, state_dict, str(source), ignore_prefixes=ignore + (first_conv,), holds=holds)
        return {**state_dict, first_conv: given}
    check_state_dict(model, state_dict, str(source), ignore_prefixes=ignore, holds=holds)
    return state_dict


def _name_with_tag(variant: str, cfg: Any) -> str:
    return f'{variant}.{cfg.tag}' if cfg.tag else variant


def _ways_out(name: str, cfg: Any) -> str:
    from .registry import BUNDLED_WEIGHTS, DEFAULT_REID_MODEL  # the registry builds on this module
    benchmark = BENCHMARK_OF_DATASET.get(cfg.tag or '', 'benchmarks.market')
    bundled = BUNDLED_WEIGHTS.get(name)
    if bundled is None:
        shipped = f'Trained weights ship for {DEFAULT_REID_MODEL} (CUHK03, 128x64).'
    elif not bundled.is_file():
        shipped = f'The package file {bundled} is missing from this installation: reinstall hbfp-timm.'
    else:  # the caller pointed the shipped tag at another Hub repository
        shipped = f'{name} ships in the package ({bundled.name}): without an hf_hub_id overlay it loads from there.'
    return (
        f'{shipped} Own weights: the commands take '
        f'--model RUN_DIR or --checkpoint FILE; Python takes '
        f"pretrained_cfg_overlay=dict(file='RUN_DIR/model.safetensors'); train them with python -m {benchmark} "
        f'--train (or python -m hbfp_timm.train)')


def _why(exc: BaseException, repo: str, filename: str) -> str:
    if isinstance(exc, RepositoryNotFoundError):  # also GatedRepoError
        return f"the Hub repository '{repo}' does not exist (or is private and no valid token was given)"
    if isinstance(exc, RevisionNotFoundError):
        return f"the Hub repository '{repo}' has no such revision"
    if isinstance(exc, (OfflineModeIsEnabled, FileNotFoundError)):  # LocalEntryNotFoundError is both kinds
        return (f"'{filename}' of '{repo}' is not in the local Hugging Face cache and the Hub cannot be reached "
                f'(HF_HUB_OFFLINE=1 or no network)')
    if isinstance(exc, EntryNotFoundError):
        return f"the Hub repository '{repo}' has no file '{filename}'"
    status = getattr(getattr(exc, 'response', None), 'status_code', None)
    return f"the Hub answered {f'HTTP {status}' if status else type(exc).__name__} for '{repo}'"


@contextlib.contextmanager
def explain_pretrained_errors(
        variant: str,
        pretrained_cfg: Optional[Union[str, Dict[str, Any]]] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
) -> Iterator[None]:
    """Turn a failed ``pretrained=True`` load of an HBFP model into one clear :class:`WeightsNotFoundError`.

    A tag whose weights are neither bundled nor cached fails on a Hub repository that does not exist or cannot be
    reached; the error names the model and tag, why, and the ways out, instead of a wall of HTTP tracebacks. A model
    with no weight source at all, or a ``file`` overlay that does not exist, fails before the model is built.

    Args:
        variant: Registered model name, e.g. ``hbfp_resnet50``.
        pretrained_cfg: What the factory got: a tag, a cfg dict (``hf-hub:`` names) or None (default tag).
        pretrained_cfg_overlay: The caller's overlay (``hf_hub_id=``, ``file=``).

    Raises:
        WeightsNotFoundError: no weights could be found; chained to nothing (``from None``).
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    name = _name_with_tag(variant, cfg)
    if cfg.file and cfg.source != 'local-dir' and not Path(cfg.file).is_file():  # local-dir: file is a folder
        raise WeightsNotFoundError(
            f"{name}: pretrained_cfg_overlay file '{cfg.file}' does not exist; expected a .safetensors "
            f'(or .pt/.pth) state dict of {variant}')
    if not (cfg.file or cfg.hf_hub_id or cfg.url or cfg.state_dict):
        need = ('a GPU training run on Market-1501 (500 epochs at 384x128)' if variant == 'hbfp_resnet50'
                else 'a training run')
        raise WeightsNotFoundError(
            f'{name}: no trained Re-ID weights exist for this model yet; they need {need}; pretrained=False '
            f'(--untrained in the commands) builds it untrained. {_ways_out(name, cfg)}')
    try:
        yield
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as exc:
        repo = cfg.hf_hub_id or '?'
        raise WeightsNotFoundError(
            f'{name}: no pretrained weights could be loaded because '
            f'{_why(exc, repo, cfg.hf_hub_filename or MODEL_NAME)}. '
            f'{_ways_out(name, cfg)}') from None


def trained_input_size(path: Union[str, Path]) -> Optional[Tuple[int, int]]:
    """The (height, width) a weights file was trained at, when it says so: the ``img_size`` in its safetensors
    metadata (the trainer's and the release files), else the ``results.json`` of its run folder, else the
    ``config.json`` of its Hub folder; None when nothing says."""
    path = Path(path)
    sizes = []
    try:
        sizes.append(json.loads(file_metadata(path).get('img_size', 'null')))
    except json.JSONDecodeError:
        pass
    for name, key in ((RESULTS_NAME, ('img_size',)), ('config.json', ('pretrained_cfg', 'input_size'))):
        try:
            value = json.loads((path.parent / name).read_text(encoding='utf-8'))
            for part in key:
                value = value.get(part) if isinstance(value, dict) else None
            sizes.append(value[-2:] if isinstance(value, list) else None)
        except (OSError, ValueError):
            continue
    for size in sizes:
        if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
            return int(size[0]), int(size[1])
    return None
