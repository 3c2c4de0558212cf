"""Hugging Face Hub: pretrained Re-ID weights in, checkpoints and model cards out (docs/design.md, "Hub and weights").

Out: :func:`save_pretrained` writes a Hub repository layout (``config.json``, ``model.safetensors``,
``README.md`` model card) with timm's own ``save_for_hf``, so that ``timm.create_model("hf-hub:ORG/NAME",
pretrained=True)`` and ``timm.create_model("local-dir:PATH", pretrained=True)`` rebuild the model with its
constructor arguments; :func:`push_to_hub` uploads the same files in one commit.

In: ``pretrained=True`` loads through timm's hub path (huggingface_hub, its cache, ``HF_HUB_OFFLINE``). The model
factory routes that load through :func:`explain_pretrained_errors` (a missing repository becomes one clear error
naming the two ways out) and :func:`check_pretrained_state_dict` (a checkpoint that does not fit is refused with
its mismatched keys). :func:`load_checkpoint` loads a local file the same safe way: safetensors, or
``torch.load(weights_only=True)``, never an arbitrary pickle.

CLI, on the trainer's output directory (``results.json`` + ``model.safetensors``)::

    python -m hbfp_timm.hub save RUN_DIR OUT_DIR
    python -m hbfp_timm.hub push RUN_DIR --repo-id ORG/NAME [--private] [--token TOKEN]

timm has no plugin entry points: ``import hbfp_timm`` must run before ``timm.create_model`` names an HBFP
model, ``hf-hub:`` names included.
"""
import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, \
    RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import get_session
from safetensors import SafetensorError, safe_open
from timm.models import load_state_dict, resolve_pretrained_cfg, save_for_hf

from .utils.files import MODEL_NAME, RESULTS_NAME, follow_umask
from .model_card import architecture, check_results, render_model_card

__all__ = [
    'MODEL_NAME', 'RESULTS_NAME', 'WeightsNotFoundError', 'CheckpointMismatchError', 'save_pretrained',
    'push_to_hub', 'load_checkpoint', 'load_run', 'render_model_card', 'check_state_dict',
    'check_pretrained_state_dict', 'explain_pretrained_errors', 'hub_reachable', 'offline_if_hub_unreachable',
    'trained_input_size', 'main',
]

HUB_LAYOUT = ('config.json', MODEL_NAME, 'README.md')
CHECKPOINT_SUFFIXES = ('.safetensors', '.pt', '.pth', '.bin')
# Benchmark module that reproduces each data set's Table 1 column (docs/design.md, "Public API").
BENCHMARK_OF_DATASET = {
    'market1501': 'benchmarks.market', 'dukemtmc': 'benchmarks.duke',
    'cuhk03_labeled': 'benchmarks.cuhk03', 'cuhk03_detected': 'benchmarks.cuhk03',
}
# Constructor arguments that fetch ImageNet weights for the backbone. An export already holds the trained
# backbone, so they are written as "off": otherwise loading it would first download (or, offline, fail to find)
# ImageNet weights that the checkpoint then overwrites.
BACKBONE_WEIGHT_ARGS = {'pretrained_backbone': False, 'backbone_weights': None}
MAX_LISTED_KEYS = 3


class WeightsNotFoundError(FileNotFoundError):
    """``pretrained=True`` found no weights for an HBFP model (missing Hub repository, offline without cache)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or tensor shapes do not match the model it is loaded into."""


# --- reaching the Hub ------------------------------------------------------------------------------------
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


# --- loading ---------------------------------------------------------------------------------------------
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


def _file_metadata(path: Union[str, Path]) -> Dict[str, str]:
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
    the classifier is then left out of the comparison.

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
    holds = _file_metadata(cfg['file']).get('architecture') if cfg.get('file') else None
    check_state_dict(model, state_dict, str(source), ignore_prefixes=ignore, holds=holds)
    return state_dict


def _name_with_tag(variant: str, cfg: Any) -> str:
    return f'{variant}.{cfg.tag}' if cfg.tag else variant


def _ways_out(name: str, cfg: Any) -> str:
    from .models.registry import BUNDLED_WEIGHTS, DEFAULT_REID_MODEL
    benchmark = BENCHMARK_OF_DATASET.get(cfg.tag or '', 'benchmarks.market')
    shipped = (f'The package file {BUNDLED_WEIGHTS[name]} is missing from this installation: reinstall hbfp-timm.'
               if name in BUNDLED_WEIGHTS else f'Trained weights ship for {DEFAULT_REID_MODEL} (CUHK03, 128x64).')
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
            f'{name}: no pretrained weights could be loaded because {_why(exc, repo, cfg.hf_hub_filename or MODEL_NAME)}. '
            f'{_ways_out(name, cfg)}') from None


def trained_input_size(path: Union[str, Path]) -> Optional[Tuple[int, int]]:
    """The (height, width) a weights file was trained at, when it says so: the ``img_size`` in its safetensors
    metadata (the trainer's and the release files), else the ``results.json`` of its run folder, else the
    ``config.json`` of its Hub folder; None when nothing says."""
    path = Path(path)
    sizes = []
    try:
        sizes.append(json.loads(_file_metadata(path).get('img_size', 'null')))
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


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a local checkpoint into ``model`` safely and strictly.

    Args:
        model: The model, built with the architecture and constructor arguments the checkpoint was saved from.
        path: A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` file read with ``torch.load(weights_only=True)``
            (a plain state dict, or one under a ``state_dict``/``model`` key).

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` has an unsupported suffix.
        CheckpointMismatchError: keys or shapes differ from the model's, listed.
    """
    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{path}: expected a checkpoint file ending in {', '.join(CHECKPOINT_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint file not found')
    # timm's loader: safetensors, or torch.load(weights_only=True) with the usual wrapper keys unwrapped.
    state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    check_state_dict(model, state_dict, str(path), holds=_file_metadata(path).get('architecture'))
    model.load_state_dict(state_dict, strict=True)
    return model


# --- saving and pushing ----------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: Union[str, Path],
                    results: Optional[Mapping[str, Any]] = None, repo_id: Optional[str] = None,
                    notes: Optional[str] = None, license: str = 'apache-2.0') -> Path:
    """Write a Hugging Face Hub repository layout: ``config.json``, ``model.safetensors``, ``README.md``.

    Built on timm's ``save_for_hf`` with ``safe_serialization=True`` (timm's default also writes a pickle
    ``pytorch_model.bin``; this never does). ``config.json`` holds the architecture and the constructor
    arguments the model was created with, so ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` and
    ``timm.create_model("local-dir:DIRECTORY", pretrained=True)`` rebuild it.

    Args:
        model: An HBFP model built with ``timm.create_model`` (it records the architecture and arguments).
        directory: Output folder, created if needed.
        results: The trainer's results (``dataset``, ``metrics`` as fractions in [0, 1], ``img_size`` [H, W]) for
            the model card's ``model-index``, and optionally ``thresholds`` (a record of
            :mod:`hbfp_timm.metrics.verification`, stored in ``config.json`` as ``reid_thresholds``); None for weights
            without evaluation.
        repo_id: Hub repository the card's usage snippet names (``push_to_hub`` sets it).
        notes: Markdown for the card's "About these weights" section (see :func:`render_model_card`).
        license: The card's licence identifier.

    Returns:
        ``directory`` as a Path.
    """
    arch = architecture(model)
    results = check_results(results, arch)
    directory = Path(directory)
    recorded = getattr(model, '_model_args', {})  # what timm.create_model was given
    export_args = {k: v for k, v in BACKBONE_WEIGHT_ARGS.items() if recorded.get(k) not in (None, v)}
    source_cfg = {'tag': results['dataset'] if results else None}
    data_config = None
    if results and results.get('img_size'):
        data_config = {'input_size': (model.in_chans, *results['img_size'])}
    save_for_hf(model, directory, model_config={'pretrained_cfg': source_cfg}, model_args=export_args,
                safe_serialization=True, data_config=data_config)
    if results and results.get('thresholds'):
        # timm reads config.json's architecture, pretrained_cfg and model_args only; the "same person" thresholds
        # travel beside them (hbfp_timm.metrics.verification.stored_thresholds reads them back).
        config_path = directory / 'config.json'
        config = json.loads(config_path.read_text(encoding='utf-8'))
        config['reid_thresholds'] = results['thresholds']
        config_path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
    (directory / 'README.md').write_text(render_model_card(model, results, repo_id, notes, license), encoding='utf-8')
    for name in HUB_LAYOUT:
        follow_umask(directory / name)  # safetensors writes its file readable by the owner only
    return directory


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        results: Optional[Mapping[str, Any]] = None,
        private: bool = False,
        token: Optional[str] = None,
        commit_message: str = 'Add HBFP-Net Re-ID weights',
        notes: Optional[str] = None,
        license: str = 'apache-2.0',
) -> str:
    """Upload the :func:`save_pretrained` layout to a Hub model repository (created if missing) in one commit.

    This follows timm's ``push_to_hf_hub`` (create the repository, ``save_for_hf``, ``upload_folder``) but
    writes our model card every time: timm's version writes a generic image-classification README only when
    the repository has none, so the card would never carry the ``model-index`` of a new run.

    Args:
        model: An HBFP model built with ``timm.create_model``.
        repo_id: ``ORG/NAME`` of the Hub repository.
        results: The trainer's results for the model card (see :func:`save_pretrained`).
        private: Create the repository as private.
        token: Hub token; None uses the locally saved token or ``HF_TOKEN``.
        commit_message: Message of the upload commit.
        notes: Markdown for the card's "About these weights" section.
        license: The card's licence identifier.

    Returns:
        The URL of the commit.
    """
    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, results, repo_id=repo_id, notes=notes, license=license)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(commit.commit_url)


# --- trainer output and CLI ------------------------------------------------------------------------------
def load_run(run: Union[str, Path]) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the trained model of a trainer run directory, in eval mode.

    Args:
        run: The run directory (``results.json`` + ``model.safetensors``), or a ``.safetensors`` file inside one.

    Returns:
        ``(model, results)``.

    Raises:
        FileNotFoundError: the directory, ``results.json`` or the weights file is missing.
        ValueError: ``results.json`` is not valid JSON or lacks what the model card needs.
    """
    run = Path(run)
    weights = run if run.suffix == '.safetensors' else run / MODEL_NAME
    results_path = weights.parent / RESULTS_NAME
    if not weights.parent.is_dir():
        raise FileNotFoundError(f'{weights.parent}: run directory not found; expected the trainer\'s --output folder')
    if not results_path.is_file():
        raise FileNotFoundError(
            f'{results_path}: not found; expected the trainer\'s results.json (model, model_args, dataset, img_size, '
            f'metrics) in the run directory')
    try:
        results = json.loads(results_path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f'{results_path}: not valid JSON ({exc})') from None
    arch = results.get('model') if isinstance(results, dict) else None
    if not isinstance(arch, str) or not arch.startswith('hbfp_') or not timm.is_model(arch):
        raise ValueError(f"{results_path}: 'model' must name a registered HBFP model such as 'hbfp_resnet50', got {arch!r}")
    check_results(results, arch, source=str(results_path))
    if not weights.is_file():
        raise FileNotFoundError(f'{weights}: weights not found; expected the trainer\'s {MODEL_NAME} next to {RESULTS_NAME}')
    # The checkpoint holds every weight, so no ImageNet backbone weights are fetched first.
    model_args = dict(results.get('model_args', {}), num_classes=0, **BACKBONE_WEIGHT_ARGS)
    model = timm.create_model(arch, pretrained=False, **model_args)
    load_checkpoint(model, weights)
    return model.eval(), results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hbfp_timm.hub {save,push}``; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog='python -m hbfp_timm.hub',
        description='Export a trained HBFP-Net run (results.json + model.safetensors) as a Hugging Face Hub '
                    'repository: config.json, model.safetensors and a README.md model card.')
    commands = parser.add_subparsers(dest='command', required=True)
    save = commands.add_parser('save', help='write the Hub layout to a local folder (loadable with local-dir:)')
    save.add_argument('run', help='trainer output directory (or the .safetensors file inside it)')
    save.add_argument('out', help='output folder')
    push = commands.add_parser('push', help='upload the Hub layout to a Hub model repository')
    push.add_argument('run', help='trainer output directory (or the .safetensors file inside it)')
    push.add_argument('--repo-id', required=True, help='ORG/NAME of the Hub repository, created if missing')
    push.add_argument('--private', action='store_true', help='create the repository as private')
    push.add_argument('--token', default=None, help='Hub token (default: saved login or HF_TOKEN)')
    push.add_argument('--commit-message', default='Add HBFP-Net Re-ID weights')
    for command in (save, push):
        command.add_argument('--notes', metavar='FILE.md', help="markdown added to the model card (comparisons, "
                                                                "seeds, the data set's terms)")
        command.add_argument('--dataset', metavar='NAME',
                             help="the data set's name on the card and in the tag, instead of the trainer's reader "
                                  "name (e.g. cuhk03 for a folder read as market_layout)")
        command.add_argument('--thresholds', metavar='FILE',
                             help='"same person" thresholds (thresholds.json of python -m hbfp_timm.evaluate '
                                  "--calibrate) stored in config.json and on the card (default: the run folder's "
                                  'thresholds.json, when there is one)')
        command.add_argument('--license', default='apache-2.0',
                             help="the card's licence identifier (%(default)s; 'other' for weights bound by a data "
                                  "set's terms)")
    args = parser.parse_args(argv)
    try:
        notes = Path(args.notes).read_text(encoding='utf-8') if args.notes else None
        model, results = load_run(args.run)
        if args.dataset:
            results = dict(results, dataset=args.dataset)
        from .metrics.verification import THRESHOLDS_NAME, read_thresholds  # builds on the registry, as this module does
        run_folder = Path(args.run).parent if Path(args.run).suffix == '.safetensors' else Path(args.run)
        thresholds = args.thresholds or (run_folder / THRESHOLDS_NAME if (run_folder / THRESHOLDS_NAME).is_file()
                                         else None)
        if thresholds:
            results = dict(results, thresholds=read_thresholds(thresholds))
        if args.command == 'save':
            print(save_pretrained(model, args.out, results, notes=notes, license=args.license))
        else:
            print(push_to_hub(model, args.repo_id, results, private=args.private, token=args.token,
                              commit_message=args.commit_message, notes=notes, license=args.license))
    except (OSError, ValueError, CheckpointMismatchError, HfHubHTTPError) as exc:  # OSError: a full disk too
        print(f'{parser.prog}: error: {exc}', file=sys.stderr)
        from .commands import exit_code  # the commands' rule; commands builds on this module, so imported here
        return exit_code(exc)  # 2: a missing run file, bad results; 1: the disk or the Hub failed
    return 0


if __name__ == '__main__':
    sys.exit(main())
