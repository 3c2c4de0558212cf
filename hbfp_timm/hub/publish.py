"""Checkpoints out: a Hugging Face Hub repository layout (:func:`save_pretrained`) and its upload
(:func:`push_to_hub`), built on timm's own ``save_for_hf``.

:func:`save_pretrained` writes ``config.json``, ``model.safetensors`` and a ``README.md`` model card, so that
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` and ``timm.create_model("local-dir:PATH",
pretrained=True)`` rebuild the model with its constructor arguments; :func:`push_to_hub` uploads the same files in
one commit.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import timm
import torch.nn as nn
from huggingface_hub import HfApi, constants
from safetensors import SafetensorError

from ..models.pretrained import hub_reachable
from ..utils.files import MODEL_NAME, follow_umask, output_write_error
from .model_card import architecture, check_results, render_model_card
from .weights import BACKBONE_WEIGHT_ARGS

try:  # timm >= 1.0.31: create_model records the constructor arguments; save_for_hf takes data_config
    from timm.models import get_model_args, save_for_hf
except ImportError:  # an older timm: the rest of hbfp_timm still imports and works; publishing says what it needs
    get_model_args = save_for_hf = None

__all__ = ['HUB_LAYOUT', 'save_pretrained', 'push_to_hub']

HUB_LAYOUT = ('config.json', MODEL_NAME, 'README.md')


def _check_timm() -> None:
    if get_model_args is None:
        raise ImportError(f'publishing needs timm >= 1.0.31 (timm.models.get_model_args, save_for_hf(data_config=)); '
                          f'timm {timm.__version__} is installed: pip install -U "timm>=1.0.31"')


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
        license: The licence identifier, on the card and in ``config.json``'s ``pretrained_cfg``.

    Returns:
        ``directory`` as a Path.

    Raises:
        ImportError: timm is older than 1.0.31 (nothing is written).
        OutputWriteError: a file could not be written (a full disk, a read-only folder); the files already in
            ``directory`` are left as they were.
    """
    _check_timm()
    arch = architecture(model)
    results = check_results(results, arch)
    directory = Path(directory)
    recorded = get_model_args(model)  # what timm.create_model was given
    export_args = {k: v for k, v in BACKBONE_WEIGHT_ARGS.items() if recorded.get(k) not in (None, v)}
    # The card's licence in config.json too: the registered variant's (the shipped CUHK03 weights' 'other') would
    # otherwise stand there beside another one on the card.
    source_cfg = {'tag': results['dataset'] if results else None, 'license': license}
    data_config = None
    if results and results.get('img_size'):
        data_config = {'input_size': (model.in_chans, *results['img_size'])}
    card = render_model_card(model, results, repo_id, notes, license)
    try:  # written in a staging folder inside `directory`, then moved into place: a failed write replaces nothing
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix='.hub-save.', suffix='.tmp', dir=directory))
    except OSError as exc:
        raise output_write_error(directory, exc) from None
    try:
        save_for_hf(model, staging, model_config={'pretrained_cfg': source_cfg}, model_args=export_args,
                    safe_serialization=True, data_config=data_config)
        if results and results.get('thresholds'):
            # timm reads config.json's architecture, pretrained_cfg and model_args only; the "same person"
            # thresholds travel beside them (hbfp_timm.metrics.verification.stored_thresholds reads them back).
            config_path = staging / 'config.json'
            config = json.loads(config_path.read_text(encoding='utf-8'))
            config['reid_thresholds'] = results['thresholds']
            config_path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
        (staging / 'README.md').write_text(card, encoding='utf-8')
        for name in HUB_LAYOUT:
            follow_umask(staging / name)  # safetensors writes its file readable by the owner only
        for name in HUB_LAYOUT:
            os.replace(staging / name, directory / name)
    except (OSError, SafetensorError) as exc:  # a full disk, a read-only folder: one line naming the folder
        raise output_write_error(directory, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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

    Raises:
        ConnectionError: The Hub does not answer (no network, a proxy or firewall in the way); nothing is uploaded.
            Under ``HF_HUB_OFFLINE=1`` huggingface_hub's own ``OfflineModeIsEnabled`` says so instead.
        ImportError: timm is older than 1.0.31; nothing is created or uploaded.
    """
    _check_timm()
    # Without a network the HTTP client's own connection error (not an OSError with huggingface_hub >= 1) would
    # escape as a traceback: one short probe says it first.
    if not constants.HF_HUB_OFFLINE and not hub_reachable():
        raise ConnectionError(f'{repo_id}: cannot reach the Hugging Face Hub at {constants.ENDPOINT} (no network, '
                              'or a proxy or firewall in the way); nothing was uploaded. python -m hbfp_timm.hub save '
                              'writes the same files to a folder, to upload later')
    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, results, repo_id=repo_id, notes=notes, license=license)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(commit.commit_url)

