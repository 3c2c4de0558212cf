"""Trained weights in and out of the application (docs/design.md, "Hub and weights").

In: :func:`load_checkpoint` (a local file, safely and strictly), :func:`load_run` (a trainer's run folder),
(:mod:`.weights`). ``pretrained=True`` itself, and :func:`trained_input_size`, are the zoo's
(:mod:`hbfp_timm.models.pretrained`).

Out: :func:`save_pretrained` writes a Hub repository layout (``config.json``, ``model.safetensors``, ``README.md``
model card of :mod:`.model_card`) with timm's ``save_for_hf``; :func:`push_to_hub` uploads it (:mod:`.publish`).
:mod:`.paper` holds the numbers the paper reports, which cards and benchmarks set beside ours.

CLI, on the trainer's output directory (``results.json`` + ``model.safetensors``)::

    python -m hbfp_timm.hub save RUN_DIR OUT_DIR
    python -m hbfp_timm.hub push RUN_DIR --repo-id ORG/NAME [--private] [--token TOKEN]

timm has no plugin entry points: ``import hbfp_timm`` must run before ``timm.create_model`` names an HBFP
model, ``hf-hub:`` names included.
"""
from ..models.pretrained import CheckpointMismatchError, WeightsNotFoundError, check_state_dict, trained_input_size
from ..utils.files import MODEL_NAME, RESULTS_NAME
from .model_card import render_model_card
from .publish import push_to_hub, save_pretrained
from .weights import load_checkpoint, load_run

__all__ = [
    'MODEL_NAME', 'RESULTS_NAME', 'WeightsNotFoundError', 'CheckpointMismatchError', 'save_pretrained',
    'push_to_hub', 'load_checkpoint', 'load_run', 'render_model_card', 'check_state_dict', 'trained_input_size',
]
