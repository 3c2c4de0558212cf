"""Tests of hbfp_timm.metrics.retrieval.topk: parity with the whole distance matrix, blockwise paths, low-precision
galleries, ties, the faiss backend, progress and bad input."""
import io
import sys

import numpy as np
import pytest
import torch

from hbfp_timm.metrics import retrieval
from hbfp_timm.metrics.distance import compute_distance_matrix
from hbfp_timm.metrics.retrieval import topk

from conftest import DEVICES

# faiss is an optional extra: the test install has it (CI runs these), a machine without it skips only these tests.
needs_faiss = pytest.mark.skipif(
    not retrieval.faiss_available(),
    reason='faiss is an optional extra (pip install "hbfp-timm[faiss]"), not installed here')


def _naive(query, gallery, k, metric):
    distances = torch.from_numpy(compute_distance_matrix(query, gallery, metric=metric))
    return distances.topk(min(k, gallery.shape[0]), dim=1, largest=False)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 gallery rows, so that a few hundred rows already take many blocks."""
    monkeypatch.setattr(retrieval, 'GALLERY_BLOCK', 64)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
@pytest.mark.parametrize('block_bytes', [4 * 64, 4 * 64 * 7, 2 ** 30])  # 1 and 7 query rows per block, or all
def test_equals_the_top_k_of_the_whole_distance_matrix(small_blocks, metric, block_bytes):
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(23, 12, generator=generator), torch.randn(1000, 12, generator=generator)
    distances, indices = topk(query, gallery, k=9, metric=metric, device='cpu', block_bytes=block_bytes)
    expected_distances, expected_indices = _naive(query, gallery, 9, metric)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    torch.testing.assert_close(distances, expected_distances, rtol=0, atol=2e-6)
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_a_low_precision_gallery_is_searched_as_its_stored_values(small_blocks, dtype):
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(10, 16, generator=generator)
    gallery = torch.randn(500, 16, generator=generator).to(dtype)
    distances, indices = topk(query, gallery, k=5, device='cpu')
    expected_distances, expected_indices = _naive(query, gallery.float(), 5, 'euclidean')
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    torch.testing.assert_close(distances, expected_distances, rtol=0, atol=2e-6)


@pytest.mark.parametrize('device', DEVICES)
def test_a_float16_gallery_held_on_each_device_gives_the_exact_top_k(small_blocks, device):
    """On CUDA the search runs on the device (the float16 gallery stays there); results come back on the CPU."""
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(10, 16, generator=generator)
    gallery = torch.randn(500, 16, generator=generator).half()
    distances, indices = topk(query, gallery.to(device), k=5, device=device)
    expected_distances, expected_indices = _naive(query, gallery.float(), 5, 'euclidean')
    assert distances.device.type == indices.device.type == 'cpu'
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    torch.testing.assert_close(distances, expected_distances, rtol=0, atol=1e-4)


def test_numpy_inputs_and_a_gallery_smaller_than_k():
    rng = np.random.default_rng(2)
    query, gallery = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    distances, indices = topk(query, gallery, k=10, device='cpu')
    assert distances.shape == indices.shape == (3, 5)
    expected = np.linalg.norm(query[:, None] - gallery[None], axis=2)
    np.testing.assert_allclose(distances.numpy(), np.sort(expected, axis=1), atol=1e-5)
    np.testing.assert_array_equal(indices.numpy(), np.argsort(expected, axis=1))


def test_equal_distances_come_in_gallery_order(small_blocks):
    point, other = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 5.0])
    gallery = torch.stack([other] * 70 + [point] * 3 + [other] * 70 + [point] * 2)  # ties across blocks
    distances, indices = topk(point[None], gallery, k=6, device='cpu')
    assert indices[0, :5].tolist() == [70, 71, 72, 143, 144]
    assert distances[0, :5].tolist() == [0.0] * 5
    assert distances[0, 5] == pytest.approx(5.0)


@needs_faiss
@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_faiss_backend_equals_the_torch_backend(metric):
    generator = torch.Generator().manual_seed(3)
    query, gallery = torch.randn(15, 32, generator=generator), torch.randn(3000, 32, generator=generator)
    torch_distances, torch_indices = topk(query, gallery, k=8, metric=metric, device='cpu')
    faiss_distances, faiss_indices = topk(query, gallery, k=8, metric=metric, backend='faiss')
    torch.testing.assert_close(faiss_indices, torch_indices, rtol=0, atol=0)
    torch.testing.assert_close(faiss_distances, torch_distances, rtol=0, atol=1e-5)


@needs_faiss
def test_faiss_backend_keeps_a_half_gallery_in_half_precision():
    generator = torch.Generator().manual_seed(4)
    query, gallery = torch.randn(6, 16, generator=generator), torch.randn(400, 16, generator=generator).half()
    distances, indices = topk(query, gallery, k=5, backend='faiss')
    expected_distances, expected_indices = _naive(query, gallery.float(), 5, 'euclidean')
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    torch.testing.assert_close(distances, expected_distances, rtol=0, atol=1e-5)


@needs_faiss
def test_a_users_faiss_index_is_searched_as_it_is():
    import faiss
    rng = np.random.default_rng(5)
    gallery = rng.standard_normal((300, 8)).astype(np.float32)
    index = faiss.IndexFlatL2(8)
    index.add(gallery)
    distances, indices = topk(gallery[:4] + 0.2, index, k=3)
    assert indices[:, 0].tolist() == [0, 1, 2, 3]
    expected_distances, expected_indices = _naive(gallery[:4] + 0.2, gallery, 3, 'euclidean')
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    torch.testing.assert_close(distances, expected_distances, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="metric='cosine' needs a faiss index with METRIC_INNER_PRODUCT"):
        topk(gallery[:4], index, k=3, metric='cosine')


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(k=0), ValueError, 'k must be a positive integer'),
    (dict(metric='l1'), ValueError, "metric must be 'euclidean' or 'cosine'"),
    (dict(backend='annoy'), ValueError, "backend must be 'torch' or 'faiss'"),
    (dict(gallery=torch.zeros(5, 3)), ValueError, 'query dim 4 differs from gallery dim 3'),
    (dict(gallery=torch.zeros(0, 4)), ValueError, 'gallery is empty'),
    (dict(query=torch.zeros(4)), ValueError, 'query must be 2-D'),
])
def test_bad_input_is_a_clear_error(kwargs, error, message):
    args = dict(query=torch.zeros(2, 4), gallery=torch.zeros(5, 4))
    args.update(kwargs)
    with pytest.raises(error, match=message):
        topk(**args)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@needs_faiss
def test_both_backends_show_their_progress_and_faiss_searches_the_queries_in_blocks(monkeypatch):
    """A search of 20,000 queries in 300,000 descriptors took minutes and showed nothing meanwhile."""
    generator = torch.Generator().manual_seed(5)
    query, gallery = torch.randn(15, 32, generator=generator), torch.randn(3000, 32, generator=generator)
    monkeypatch.setattr(retrieval, 'GALLERY_BLOCK', 1000)
    monkeypatch.setattr(retrieval, 'FAISS_QUERY_BLOCK', 4)  # 4 faiss searches, the last one of 3 queries
    shown = {}
    for backend in ('torch', 'faiss'):
        monkeypatch.setattr(sys, 'stderr', _Terminal())
        shown[backend] = topk(query, gallery, k=8, backend=backend, show_progress=True), sys.stderr.getvalue()
    (torch_distances, torch_indices), torch_bar = shown['torch']
    (faiss_distances, faiss_indices), faiss_bar = shown['faiss']
    torch.testing.assert_close(faiss_indices, torch_indices, rtol=0, atol=0)
    torch.testing.assert_close(faiss_distances, torch_distances, rtol=0, atol=1e-5)
    assert 'searching: ' in torch_bar and '/3000 ' in torch_bar  # gallery images
    assert 'searching: ' in faiss_bar and '/15 ' in faiss_bar  # queries
