"""Distances between Re-ID descriptors, computed block by block into a preallocated output.

Shared by every module of :mod:`hbfp_timm.metrics` (ranking, evaluation, re-ranking, retrieval, verification), and
through them by the commands: one definition of the Euclidean and cosine distances, so that chunked and whole-matrix
computations agree.
"""
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = ['METRICS', 'as_features', 'check_metric', 'compute_distance_matrix', 'distance_block', 'gallery_statistic',
           'query_and_gallery', 'ranking_scores', 'scores_to_distances']

ArrayLike = Union[np.ndarray, torch.Tensor]
METRICS = ('euclidean', 'cosine')
# Smallest norm a cosine distance divides by, as in torch.nn.functional.normalize: a zero vector has
# similarity 0 to everything (distance 1) instead of NaN.
NORM_EPS = 1e-12


def check_metric(metric: str) -> None:
    """Raise ValueError unless `metric` is one of `METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


def as_features(features: ArrayLike, name: str, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
    """A 2-D floating tensor (num_items, dim); `dtype` None keeps a floating input's own dtype (no copy)."""
    tensor = torch.as_tensor(features)
    if tensor.ndim != 2:
        raise ValueError(f'{name} must be 2-D (num_items, dim), got shape {tuple(tensor.shape)}')
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return tensor if dtype is None else tensor.to(dtype)


def query_and_gallery(q_feats: ArrayLike, g_feats: ArrayLike, metric: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery descriptors as float32 tensors on the query's device, checked: a known `metric`, 2-D
    inputs of one dimension (errors name ``q_feats`` / ``g_feats``)."""
    check_metric(metric)
    query = as_features(q_feats, 'q_feats')
    gallery = as_features(g_feats, 'g_feats').to(query.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f'q_feats dim {query.shape[1]} differs from g_feats dim {gallery.shape[1]}')
    return query, gallery


def gallery_statistic(gallery: torch.Tensor, metric: str) -> torch.Tensor:
    """What `distance_block` needs of each gallery row: its squared norm (euclidean) or inverse norm (cosine)."""
    squared_norm = gallery.float().pow(2).sum(dim=1)
    if metric == 'euclidean':
        return squared_norm
    return squared_norm.sqrt_().clamp_(min=NORM_EPS).reciprocal_()


@torch.no_grad()
def distance_block(
        query: torch.Tensor,
        gallery: torch.Tensor,
        metric: str,
        gallery_stat: torch.Tensor,
        out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Distances of a query block to a gallery block, float32, written into `out` when given.

    Euclidean: ``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))`` (rounding can make the square slightly negative for
    near-equal vectors). Cosine: ``1 - q.g / (|q| |g|)``, in [0, 2]. The gallery is never normalised or
    copied as a whole: the norms scale the product in place.

    Args:
        query: (B, dim) float32.
        gallery: (G, dim) float32, same device.
        metric: 'euclidean' or 'cosine'.
        gallery_stat: `gallery_statistic(gallery, metric)`.
        out: optional (B, G) float32 tensor on the same device.

    Returns:
        (B, G) float32 distances (`out` if given).
    """
    return scores_to_distances(ranking_scores(query, gallery, metric, gallery_stat, out=out),
                               query.pow(2).sum(dim=1), metric)


def ranking_scores(query: torch.Tensor, gallery: torch.Tensor, metric: str, gallery_stat: torch.Tensor,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scores that order each query's row as its distances do, without the query's own constant: euclidean
    ``|g|^2 - 2 q.g`` (the squared distance minus ``|q|^2``), cosine ``-q.g / |g|`` (the cosine distance minus one,
    times ``|q|``). What a top-k search ranks; :func:`scores_to_distances` completes the distances of the winners."""
    if metric == 'euclidean':
        return torch.addmm(gallery_stat[None, :], query, gallery.t(), alpha=-2.0, out=out)
    return torch.mm(query, gallery.t(), out=out).mul_(gallery_stat[None, :]).neg_()


def scores_to_distances(scores: torch.Tensor, query_sq_norm: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances from :func:`ranking_scores` (in place), given each query's squared norm (B,)."""
    if metric == 'euclidean':
        return scores.add_(query_sq_norm[:, None]).clamp_(min=0).sqrt_()
    query_inv_norm = query_sq_norm.sqrt().clamp_(min=NORM_EPS).reciprocal_()
    return scores.mul_(query_inv_norm[:, None]).add_(1.0)


@torch.no_grad()
def compute_distance_matrix(
        query_features: ArrayLike,
        gallery_features: ArrayLike,
        metric: str = 'euclidean',
        chunk_size: int = 4096,
) -> np.ndarray:
    """Pairwise distances between query and gallery descriptors.

    The whole (num_query, num_gallery) matrix is allocated; see `hbfp_timm.metrics.evaluate_features` and
    `hbfp_timm.metrics.retrieval.topk` for evaluation and search without it.

    Args:
        query_features: (num_query, dim) tensor or array.
        gallery_features: (num_gallery, dim) tensor or array, same dim.
        metric: 'euclidean' (the L2 distance, not squared) or 'cosine' (1 - cosine similarity, in [0, 2]).
        chunk_size: number of query rows computed at once (bounds memory on an accelerator).

    Returns:
        (num_query, num_gallery) float32 numpy array.
    """
    check_metric(metric)
    query = as_features(query_features, 'query_features')
    gallery = as_features(gallery_features, 'gallery_features').to(query.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f'query_features dim {query.shape[1]} differs from gallery_features dim {gallery.shape[1]}')
    stat = gallery_statistic(gallery, metric)
    out = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    out_tensor = torch.from_numpy(out)
    for start in range(0, query.shape[0], chunk_size):
        block = query[start:start + chunk_size]
        if block.device.type == 'cpu':  # straight into the result, no temporary
            distance_block(block, gallery, metric, stat, out=out_tensor[start:start + len(block)])
        else:
            out_tensor[start:start + len(block)] = distance_block(block, gallery, metric, stat).cpu()
    return out
