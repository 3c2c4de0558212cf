"""Evaluation engine: descriptor extraction over a data loader and query/gallery scoring.

The protocol itself (same-camera removal, junk, distractors, skipped queries) lives in
:mod:`hbfp_timm.metrics`; this module turns a model and two loaders into the numbers of Table 1.
"""
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .metrics import RankResult, compute_distance_matrix, evaluate_features_detailed, evaluate_rank_detailed
from .utils.progress import progress
from .reranking import re_ranking_features
from .retrieval import topk

__all__ = ['autocast_dtype', 'describe', 'describe_batch', 'extract_features', 'evaluate', 'score_features',
           'unwrap_model']

# CMC ranks reported by name in every result.
REPORTED_RANKS = (1, 5, 10)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def describe(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Test descriptors of an image batch, whether or not the model has an ID classifier.

    timm models give the descriptor through ``forward_head(..., pre_logits=True)``; that is what
    ``model(x)`` returns for a model built with ``num_classes=0``, and what a training model (which
    returns logits from ``forward``) must be asked for explicitly.

    Args:
        model: A timm-style model (``forward_features`` / ``forward_head``) or any module returning (B, D).
        images: (B, C, H, W) batch.

    Returns:
        (B, D) descriptors.
    """
    model = unwrap_model(model)
    if hasattr(model, 'forward_features') and hasattr(model, 'forward_head'):
        return model.forward_head(model.forward_features(images), pre_logits=True)
    return model(images)


def autocast_dtype(device_type: str, amp_dtype: Optional[torch.dtype] = None) -> torch.dtype:
    """The autocast dtype of an evaluation: ``amp_dtype`` when given, else float16 on CUDA, bfloat16 elsewhere."""
    if amp_dtype is not None:
        if amp_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f'amp_dtype: expected torch.float16 or torch.bfloat16, got {amp_dtype}')
        return amp_dtype
    return torch.float16 if device_type == 'cuda' else torch.bfloat16


@torch.no_grad()
def describe_batch(
        model: nn.Module,
        images: torch.Tensor,
        flip: bool = False,
        amp: bool = False,
        amp_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Float32 descriptors of a batch already on the model's device, optionally flip-averaged, under autocast.

    Args:
        model: The Re-ID model (see :func:`describe`), in the mode the caller wants (eval for test descriptors).
        images: (B, C, H, W) batch.
        flip: Average each descriptor with that of the horizontally mirrored image.
        amp: Run the forward under ``torch.autocast``.
        amp_dtype: Its dtype (the one the model was trained under, for instance); None: float16 on CUDA,
            bfloat16 on CPU.

    Returns:
        (B, D) float32 descriptors on the batch's device.
    """
    device_type = images.device.type
    dtype = autocast_dtype(device_type, amp_dtype)
    with torch.autocast(device_type=device_type, dtype=dtype, enabled=amp):
        descriptor = describe(model, images).float()
        if flip:
            descriptor = (descriptor + describe(model, images.flip(dims=[3])).float()) / 2
    return descriptor


@torch.no_grad()
def extract_features(
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        flip: bool = False,
        amp: bool = False,
        desc: str = 'features',
        amp_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Descriptors of every image of a loader, in loader order.

    The model is put in eval mode for the pass and returned to its previous mode afterwards.

    Args:
        model: The Re-ID model (see :func:`describe`).
        loader: Yields ``(images, pids, camids, ...)`` batches, as :class:`hbfp_timm.data.ImageDataset` does.
        device: Device to run the model on.
        flip: Average the descriptors of each image and its horizontal mirror.
        amp: Run the forward under ``torch.autocast``.
        desc: Label of the progress bar (a bar on a terminal, a line a minute in logs).
        amp_dtype: Autocast dtype; None: float16 on CUDA, bfloat16 on CPU.

    Returns:
        ``(features, pids, camids)``: a (N, D) float32 CPU tensor and two (N,) int64 arrays.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    features, pids, camids = [], [], []
    try:
        for batch in progress(loader, desc=desc, leave=False):
            if len(batch) < 3:
                raise ValueError(f'loader: expected (images, pids, camids, ...) batches, got {len(batch)} items')
            images = batch[0].to(device, non_blocking=True)
            features.append(describe_batch(model, images, flip=flip, amp=amp, amp_dtype=amp_dtype).cpu())
            pids.append(torch.as_tensor(batch[1]).reshape(-1))
            camids.append(torch.as_tensor(batch[2]).reshape(-1))
    finally:
        model.train(was_training)
    if not features:
        raise ValueError(f'loader: {desc} loader yielded no batches')
    return (torch.cat(features), torch.cat(pids).numpy().astype(np.int64),
            torch.cat(camids).numpy().astype(np.int64))


def _scores(result: RankResult, max_rank: int) -> Dict[str, Any]:
    """Named ranks, mAP and the CMC curve (fractions in [0, 1]) of one evaluation."""
    scores = {f'rank{k}': float(result.cmc[k - 1]) for k in REPORTED_RANKS}
    scores['mAP'] = float(result.mAP)
    scores['cmc'] = [float(v) for v in result.cmc[:max_rank]]
    scores['num_skipped_queries'] = int(result.num_skipped)
    return scores


def evaluate(
        model: nn.Module,
        query_loader: Iterable,
        gallery_loader: Iterable,
        device: torch.device,
        metric: str = 'euclidean',
        rerank: bool = False,
        flip: bool = False,
        max_rank: int = 50,
        amp: bool = False,
        keep_distmat: bool = False,
        keep_topk: int = 0,
        amp_dtype: Optional[torch.dtype] = None,
) -> Dict[str, Any]:
    """Rank-1/5/10, mAP and CMC of a model on a query/gallery split (Market-1501 protocol, single query).

    Scores come from the descriptors block by block (:func:`hbfp_timm.metrics.evaluate_features`), so the
    (num_query, num_gallery) distance matrix is only built when ``keep_distmat`` asks for it.

    Args:
        model: The Re-ID model (see :func:`describe`).
        query_loader: Query images, yielding ``(images, pids, camids, ...)``.
        gallery_loader: Gallery images, same format.
        device: Device to extract features on.
        metric: ``'euclidean'`` or ``'cosine'`` distance between descriptors.
        rerank: Also score k-reciprocal re-ranked distances (Zhong et al. 2017). The paper's numbers are
            without it, so the re-ranked scores go under their own key and never replace the plain ones.
        flip: Average each descriptor with that of the mirrored image.
        max_rank: Length of the returned CMC curve.
        amp: Extract features under autocast.
        keep_distmat: Also return the (num_query, num_gallery) distances under ``'distmat'`` (for ranked-list
            pictures).
        keep_topk: Also return each query's ``keep_topk`` nearest gallery items, (num_query, keep_topk) arrays
            under ``'topk_indices'`` and ``'topk_distances'``, without the whole matrix (0: not returned). These
            are plain nearest neighbours: the protocol's removals (same identity and camera, junk) are not
            applied to them.
        amp_dtype: Autocast dtype of the extraction; None: float16 on CUDA, bfloat16 on CPU.

    Returns:
        ``{'rank1', 'rank5', 'rank10', 'mAP'}`` (fractions), ``'cmc'`` (list of max_rank fractions),
        ``'num_query'``, ``'num_gallery'``, ``'num_skipped_queries'``, ``'metric'``, ``'flip'``; with
        ``rerank=True`` also ``'reranked'``: a dict with the same score keys for the re-ranked distances.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f'max_rank: expected a positive integer, got {max_rank!r}')
    if isinstance(keep_topk, bool) or not isinstance(keep_topk, int) or keep_topk < 0:
        raise ValueError(f'keep_topk: expected a non-negative integer, got {keep_topk!r}')
    q_feats, q_pids, q_camids = extract_features(model, query_loader, device, flip=flip, amp=amp,
                                                 amp_dtype=amp_dtype, desc='query')
    g_feats, g_pids, g_camids = extract_features(model, gallery_loader, device, flip=flip, amp=amp,
                                                 amp_dtype=amp_dtype, desc='gallery')
    results = score_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric=metric, rerank=rerank,
                             max_rank=max_rank, keep_distmat=keep_distmat)
    results['flip'] = flip
    if keep_topk:
        distances, indices = topk(q_feats, g_feats, k=keep_topk, metric=metric)
        results['topk_distances'], results['topk_indices'] = distances.numpy(), indices.numpy()
    return results


def score_features(
        q_feats: torch.Tensor,
        g_feats: torch.Tensor,
        q_pids: np.ndarray,
        g_pids: np.ndarray,
        q_camids: np.ndarray,
        g_camids: np.ndarray,
        metric: str = 'euclidean',
        rerank: bool = False,
        max_rank: int = 50,
        keep_distmat: bool = False,
) -> Dict[str, Any]:
    """The scores of :func:`evaluate` from descriptors already extracted (its arguments of the same names).

    Returns:
        ``{'rank1', 'rank5', 'rank10', 'mAP', 'cmc', 'num_query', 'num_gallery', 'num_skipped_queries',
        'metric'}``, ``'reranked'`` with ``rerank=True``, ``'distmat'`` with ``keep_distmat=True``.
    """
    # Rank-10 is always reported, so the curve is computed at least that long and cut to max_rank after.
    curve_length = max(max_rank, max(REPORTED_RANKS))
    ids = (q_pids, g_pids, q_camids, g_camids)
    if keep_distmat:
        distmat = compute_distance_matrix(q_feats, g_feats, metric=metric)
        result = evaluate_rank_detailed(distmat, *ids, max_rank=curve_length)
    else:
        result = evaluate_features_detailed(q_feats, g_feats, *ids, metric=metric, max_rank=curve_length)
    results: Dict[str, Any] = _scores(result, max_rank)
    results.update(num_query=len(q_pids), num_gallery=len(g_pids), metric=metric)
    if keep_distmat:
        results['distmat'] = distmat
    if rerank:
        reranked = re_ranking_features(q_feats, g_feats, metric=metric)
        results['reranked'] = _scores(evaluate_rank_detailed(reranked, *ids, max_rank=curve_length), max_rank)
    return results
