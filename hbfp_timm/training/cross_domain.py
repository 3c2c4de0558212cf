"""Cross-domain evaluation in the trainer: ``--eval-data-root`` (repeatable) scores the model on other data sets at
every evaluation, beside the in-domain numbers (train on one data set, test on another).

Each extra folder is read before the first epoch (a missing or unreadable one stops the run at once), and is
scored on its query/gallery split with the run's metric, flip and precision
(`hbfp_timm.metrics.evaluation.evaluate`).
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..data import ReIDDataset, build_dataset, test_loaders
from ..data.transforms import build_test_transform
from ..metrics.evaluation import evaluate
from .config import TrainConfig, TrainSetupError

__all__ = ['read_eval_datasets', 'evaluate_cross_domain', 'cross_domain_line']

HEADLINE = ('rank1', 'rank5', 'rank10', 'mAP')


def read_eval_datasets(cfg: TrainConfig) -> List[Tuple[str, ReIDDataset]]:
    """``(root, data set)`` of every ``--eval-data-root``; one that cannot be read is a `TrainSetupError`."""
    sets = []
    for root in cfg.eval_data_roots:
        try:
            dataset = build_dataset(cfg.eval_dataset, root, with_train=False)  # query and gallery are enough
        except (FileNotFoundError, ValueError) as exc:
            raise TrainSetupError(f'eval_data_roots: {root} (read as {cfg.eval_dataset}): {exc}') from exc
        if not dataset.query or not dataset.gallery:
            raise TrainSetupError(f'eval_data_roots: {root} has no query or no gallery images to evaluate on')
        sets.append((str(root), dataset))
    return sets


def evaluate_cross_domain(model: nn.Module, sets: List[Tuple[str, ReIDDataset]], cfg: TrainConfig,
                          device: torch.device, amp_dtype: Optional[torch.dtype]) -> List[Dict[str, Any]]:
    """Rank-1/5/10 and mAP of `model` on each extra data set: ``[{'data_root', 'dataset', 'rank1', ...}]``."""
    transform = build_test_transform(tuple(cfg.img_size))
    rows = []
    for root, dataset in sets:
        query, gallery = test_loaders(dataset, transform, cfg.test_batch_size, cfg.workers,
                                      pin_memory=device.type == 'cuda')
        scores = evaluate(model, query, gallery, device, metric=cfg.metric, flip=cfg.flip_test,
                          amp=amp_dtype is not None, amp_dtype=amp_dtype)
        rows.append({'data_root': root, 'dataset': cfg.eval_dataset, **{k: scores[k] for k in HEADLINE},
                     'num_query': scores['num_query'], 'num_gallery': scores['num_gallery'],
                     'num_skipped_queries': scores['num_skipped_queries']})
    return rows


def cross_domain_line(rows: List[Dict[str, Any]]) -> str:
    """``'; on other data: NAME rank-1 a% mAP b%, ...'`` for the per-epoch log line ('' without extra data)."""
    if not rows:
        return ''
    return '; other data: ' + ', '.join(f"{Path(row['data_root']).name or row['data_root']} rank-1 "
                                        f"{row['rank1']:.2%} mAP {row['mAP']:.2%}" for row in rows)
