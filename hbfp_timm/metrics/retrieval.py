"""Exact k-nearest-neighbour search of query descriptors in a gallery, in bounded memory.

`topk` is what `compute_distance_matrix` followed by a top-k would give, without the (num_query, num_gallery)
matrix: the gallery is read one block at a time (converted to float32 one block at a time, so a float16 or
bfloat16 gallery is never copied whole), each block's candidates are merged into the running k best, and the
extra memory is O(block_bytes + num_query x k). It runs wherever the query lives (CPU or an accelerator); a
gallery on the CPU is streamed to the device block by block, so it may be larger than the device's memory.

With faiss installed (``pip install hbfp-timm[faiss]``), ``backend='faiss'`` runs the same exact search
through a flat faiss index, and a faiss index given as the gallery (e.g. an IVF or PQ index built by the user
for galleries beyond memory) is searched as it is, with faiss's own (approximate) guarantees.
"""
import importlib.util
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..utils.progress import progress
from .distance import NORM_EPS, as_features, check_metric, gallery_statistic, ranking_scores, scores_to_distances

__all__ = ['topk', 'faiss_available']

ArrayLike = Union[np.ndarray, torch.Tensor]
# One block of float32 scores (query rows x gallery columns): large enough for efficient matrix products, and
# the extra memory of a search is a small multiple of it.
BLOCK_BYTES = 32 * 2 ** 20
GALLERY_BLOCK = 8192
FAISS_ADD_BLOCK = 65536
FAISS_QUERY_BLOCK = 1024  # queries per faiss search call, between two progress updates


def faiss_available() -> bool:
    """Whether the optional faiss package can be imported."""
    return importlib.util.find_spec('faiss') is not None


def _is_faiss_index(gallery) -> bool:
    return type(gallery).__module__.startswith('faiss')


def _merge(best_scores: torch.Tensor, best_indices: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor,
           k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    scores, indices = torch.cat([best_scores, scores], dim=1), torch.cat([best_indices, indices], dim=1)
    best_scores, order = scores.topk(min(k, scores.shape[1]), dim=1, largest=False, sorted=False)
    return best_scores, indices.gather(1, order)


@torch.no_grad()
def _topk_torch(query: torch.Tensor, gallery: torch.Tensor, k: int, metric: str, device: torch.device,
                block_bytes: int, show_progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running top-k of `ranking_scores` (the order of the distance), block by block over the gallery; the
    distances of the k winners are then completed from their scores (`scores_to_distances`), as
    `compute_distance_matrix` computes them."""
    num_q, num_g = query.shape[0], gallery.shape[0]
    query = query.to(device=device, dtype=torch.float32)
    query_sq_norm = query.pow(2).sum(dim=1)
    gallery_block = max(1, min(GALLERY_BLOCK, num_g))
    query_block = max(1, min(num_q, block_bytes // (4 * gallery_block)))
    best_scores = torch.full((num_q, 0), float('inf'), device=device)
    best_indices = torch.zeros((num_q, 0), dtype=torch.int64, device=device)
    buffer = torch.empty((query_block, gallery_block), device=device)
    bar = progress(total=num_g, desc='searching', unit='image', disable=not show_progress, leave=False)
    for g_start in range(0, num_g, gallery_block):
        block = gallery[g_start:g_start + gallery_block].to(device=device, dtype=torch.float32)
        block_stat = gallery_statistic(block, metric)
        block_k = min(k, len(block))
        new_scores, new_indices = [], []
        for q_start in range(0, num_q, query_block):
            rows = query[q_start:q_start + query_block]
            scores = buffer[:len(rows), :len(block)]
            ranking_scores(rows, block, metric, block_stat, out=scores)
            values, columns = scores.topk(block_k, dim=1, largest=False, sorted=False)
            new_scores.append(values)
            new_indices.append(columns + g_start)
        best_scores, best_indices = _merge(best_scores, best_indices, torch.cat(new_scores),
                                           torch.cat(new_indices), k)
        bar.update(len(block))
    bar.close()
    return scores_to_distances(best_scores, query_sq_norm, metric), best_indices


def _faiss_search(query: torch.Tensor, gallery, k: int, metric: str,
                  show_progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Search with faiss: a given index as it is, or an exact flat index built block by block."""
    import faiss

    query_np = np.ascontiguousarray(query.detach().to('cpu', torch.float32).numpy())
    if metric == 'cosine':
        query_np = query_np / np.maximum(np.linalg.norm(query_np, axis=1, keepdims=True), NORM_EPS)
    faiss_metric = faiss.METRIC_L2 if metric == 'euclidean' else faiss.METRIC_INNER_PRODUCT
    if _is_faiss_index(gallery):
        if gallery.metric_type != faiss_metric:
            needed = 'METRIC_L2' if metric == 'euclidean' else 'METRIC_INNER_PRODUCT (on unit vectors)'
            raise ValueError(f'metric={metric!r} needs a faiss index with {needed}, got metric_type '
                             f'{gallery.metric_type}')
        index = gallery
    else:
        dim = gallery.shape[1]
        if gallery.dtype in (torch.float16, torch.bfloat16):
            # Stored as float16 inside faiss: the gallery is never held in float32 as a whole.
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss_metric)
        else:
            index = faiss.IndexFlat(dim, faiss_metric)
        for start in range(0, gallery.shape[0], FAISS_ADD_BLOCK):
            block = gallery[start:start + FAISS_ADD_BLOCK].detach().to('cpu', torch.float32).numpy()
            if metric == 'cosine':
                block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), NORM_EPS)
            index.add(np.ascontiguousarray(block))
    if index.d != query_np.shape[1]:
        raise ValueError(f'query dim {query_np.shape[1]} differs from the faiss index dim {index.d}')
    parts = []
    bar = progress(total=len(query_np), desc='searching', unit='query', disable=not show_progress, leave=False)
    for start in range(0, len(query_np), FAISS_QUERY_BLOCK):
        parts.append(index.search(query_np[start:start + FAISS_QUERY_BLOCK], min(k, index.ntotal)))
        bar.update(len(parts[-1][0]))
    bar.close()
    scores, indices = (torch.from_numpy(np.concatenate([part[i] for part in parts])) for i in (0, 1))
    indices = indices.long()
    if faiss_metric == faiss.METRIC_L2:  # faiss returns squared L2 distances
        distances = scores.clamp_(min=0).sqrt_()
    else:  # inner products of unit vectors: cosine similarities
        distances = 1.0 - scores
    return distances, indices


def _sort_by_distance(distances: torch.Tensor, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ascending distance, equal distances by gallery index."""
    by_index = indices.argsort(dim=1)
    distances, indices = distances.gather(1, by_index), indices.gather(1, by_index)
    order = distances.argsort(dim=1, stable=True)
    return distances.gather(1, order), indices.gather(1, order)


def topk(
        query: ArrayLike,
        gallery,
        k: int = 10,
        metric: str = 'euclidean',
        device: Optional[Union[str, torch.device]] = None,
        backend: str = 'torch',
        block_bytes: int = BLOCK_BYTES,
        show_progress: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery items of each query, exactly, without the whole distance matrix.

    Args:
        query: (num_query, dim) descriptors (tensor on any device, or array).
        gallery: (num_gallery, dim) descriptors (tensor or array; float32, float16 or bfloat16 stay as they are
            and are converted one block at a time), or a faiss index.
        k: neighbours per query; fewer when the gallery is smaller.
        metric: 'euclidean' (L2 distance) or 'cosine' (1 - cosine similarity), as `compute_distance_matrix`.
        device: where to compute; default the query's device. A CPU gallery is streamed to it block by block.
        backend: 'torch' (exact, blockwise) or 'faiss' (exact flat index; needs faiss). A faiss index given
            as `gallery` is always searched with faiss.
        block_bytes: size of one block of float32 scores (query rows x gallery columns).
        show_progress: show the progress on stderr (`hbfp_timm.utils.progress`: a bar on a terminal, a line a
            minute in a log).

    Returns:
        ``(distances, indices)``: (num_query, min(k, num_gallery)) float32 distances, ascending, and int64
        gallery indices. Returned items at equal distances come in gallery order (which of several items tied
        at the k-th distance makes the cut is unspecified). On `device` for the torch backend, on the CPU for
        faiss; an approximate faiss index may return index -1 where it found fewer than k items.
    """
    check_metric(metric)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f'k must be a positive integer, got {k!r}')
    if backend not in ('torch', 'faiss'):
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    query = as_features(query, 'query', dtype=None)
    if _is_faiss_index(gallery) or backend == 'faiss':
        if not faiss_available():
            raise ImportError("backend='faiss' needs the faiss package: pip install hbfp-timm[faiss]")
        if not _is_faiss_index(gallery):
            gallery = as_features(gallery, 'gallery', dtype=None)
            _check_dims(query, gallery)
        return _sort_by_distance(*_faiss_search(query, gallery, int(k), metric, show_progress))
    gallery = as_features(gallery, 'gallery', dtype=None)
    _check_dims(query, gallery)
    device = torch.device(device) if device is not None else query.device
    return _sort_by_distance(*_topk_torch(query, gallery, int(k), metric, device, block_bytes, show_progress))


def _check_dims(query: torch.Tensor, gallery: torch.Tensor) -> None:
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f'query dim {query.shape[1]} differs from gallery dim {gallery.shape[1]}')
    if gallery.shape[0] == 0:
        raise ValueError('gallery is empty: nothing to search')
