"""Feature extraction (hbfp_timm.inference.features) and evaluation (hbfp_timm.metrics.evaluation) on models and
loaders whose answers are known."""
import pytest
import timm
import torch
import torch.nn as nn

import hbfp_timm  # noqa: F401  (registers the hbfp_* models)
from hbfp_timm.inference.features import autocast_dtype, extract_features
from hbfp_timm.metrics.evaluation import evaluate

from conftest import DEVICES


class LeftHalfMean(nn.Module):
    """Descriptor = per-channel mean of the left half of the image: mirror-asymmetric on purpose."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[..., : images.shape[-1] // 2].mean(dim=(2, 3))


def _batches(images: torch.Tensor, pids, camids, batch_size: int):
    pids, camids = torch.tensor(pids), torch.tensor(camids)
    return [(images[i:i + batch_size], pids[i:i + batch_size], camids[i:i + batch_size])
            for i in range(0, len(images), batch_size)]


def test_flip_averaging_of_an_asymmetric_descriptor_gives_the_whole_image_mean():
    images = torch.rand(5, 3, 8, 6)
    loader = _batches(images, [1, 2, 3, 4, 5], [0, 1, 0, 1, 0], batch_size=2)
    plain, pids, camids = extract_features(LeftHalfMean(), loader, 'cpu', flip=False)
    flipped, _, _ = extract_features(LeftHalfMean(), loader, 'cpu', flip=True)
    torch.testing.assert_close(plain, images[..., :3].mean(dim=(2, 3)))
    # Left half of the mirror = right half of the image, so the average covers the whole image.
    torch.testing.assert_close(flipped, images.mean(dim=(2, 3)))
    assert pids.tolist() == [1, 2, 3, 4, 5] and camids.tolist() == [0, 1, 0, 1, 0]
    assert plain.dtype == torch.float32 and plain.device.type == 'cpu'


def test_extract_features_of_an_hbfp_model_with_classifier_returns_descriptors_and_restores_train_mode():
    torch.manual_seed(0)
    model = timm.create_model('hbfp_resnet18', num_classes=7)
    images = torch.randn(3, 3, 64, 32)
    loader = _batches(images, [1, 2, 3], [0, 0, 1], batch_size=2)
    model.train()
    features, _, _ = extract_features(model, loader, 'cpu', flip=True)
    assert model.training
    model.eval()
    with torch.no_grad():
        descriptor = model.forward_head(model.forward_features(images), pre_logits=True)
        mirrored = model.forward_head(model.forward_features(images.flip(3)), pre_logits=True)
    assert features.shape == (3, model.num_features)
    torch.testing.assert_close(features, (descriptor + mirrored) / 2, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(descriptor, mirrored, atol=1e-3)  # the flip really changed something


def _toy_split():
    """Features worked out by hand (the model is the identity on 2-d "images").

    Gallery: g0 pid 1 cam 1 at (0, 0); g1 pid 2 cam 1 at (1, 0); g2 pid 2 cam 0 at (3, 0); g3 pid 3 cam 0 at (0, 5).
    q0 (pid 1, cam 0) at (0.1, 0): nearest is g0, a match -> rank 1, AP 1.
    q1 (pid 2, cam 0) at (0.2, 0): g0 (wrong id), then g1 (match); g2 is same id + same camera, removed ->
        first match at rank 2, AP 1/2.
    q2 (pid 3, cam 0) at (0, 4): its only gallery image g3 shares its camera -> skipped.
    """
    gallery = _batches(torch.tensor([[0., 0.], [1., 0.], [3., 0.], [0., 5.]]), [1, 2, 2, 3], [1, 1, 0, 0], 3)
    query = _batches(torch.tensor([[0.1, 0.], [0.2, 0.], [0., 4.]]), [1, 2, 3], [0, 0, 0], 2)
    return query, gallery


def test_evaluate_on_a_hand_worked_split():
    query, gallery = _toy_split()
    results = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3)
    assert results['rank1'] == pytest.approx(0.5)
    assert results['rank5'] == pytest.approx(1.0) and results['rank10'] == pytest.approx(1.0)
    assert results['mAP'] == pytest.approx(0.75)
    assert results['cmc'] == pytest.approx([0.5, 1.0, 1.0])
    assert (results['num_query'], results['num_gallery'], results['num_skipped_queries']) == (3, 4, 1)
    assert 'reranked' not in results and 'distmat' not in results


def test_evaluate_can_return_the_distances_behind_the_scores():
    query, gallery = _toy_split()
    results = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3, keep_distmat=True)
    assert results['distmat'].shape == (3, 4)
    # q1 at (0.2, 0) against the gallery (0, 0), (1, 0), (3, 0), (0, 5).
    assert results['distmat'][1] == pytest.approx([0.2, 0.8, 2.8, (0.04 + 25) ** 0.5], abs=1e-5)


def test_evaluate_keeps_reranked_scores_apart_from_the_plain_ones():
    query, gallery = _toy_split()
    plain = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3)
    both = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3, rerank=True)
    reranked = both.pop('reranked')
    assert both == plain
    assert set(reranked) == {'rank1', 'rank5', 'rank10', 'mAP', 'cmc', 'num_skipped_queries'}
    assert 0.0 <= reranked['mAP'] <= 1.0 and len(reranked['cmc']) == 3


def test_evaluate_rejects_a_bad_max_rank():
    query, gallery = _toy_split()
    with pytest.raises(ValueError, match='max_rank'):
        evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=0)


def test_scores_without_the_distance_matrix_equal_those_with_it():
    query, gallery = _toy_split()
    blockwise = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3)
    whole = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3, keep_distmat=True)
    whole.pop('distmat')
    assert blockwise == whole


def test_evaluate_can_return_each_querys_nearest_gallery_items():
    query, gallery = _toy_split()
    results = evaluate(nn.Identity(), query, gallery, 'cpu', max_rank=3, keep_topk=2)
    # q1 at (0.2, 0): g0 at 0.2, then g1 at 0.8; q2 at (0, 4): g3 at 1, then g0 at 4.
    assert results['topk_indices'].tolist() == [[0, 1], [0, 1], [3, 0]]
    assert results['topk_distances'][1] == pytest.approx([0.2, 0.8], abs=1e-5)
    assert results['topk_distances'][2] == pytest.approx([1.0, 4.0], abs=1e-5)
    with pytest.raises(ValueError, match='keep_topk'):
        evaluate(nn.Identity(), query, gallery, 'cpu', keep_topk=-1)


class AutocastProbe(nn.Module):
    """Records the autocast state its forward runs under; the descriptor is its input (as nn.Identity)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device_type = images.device.type
        enabled = torch.is_autocast_enabled(device_type)
        self.seen.append(torch.get_autocast_dtype(device_type) if enabled else None)
        return images


@pytest.mark.parametrize('amp, amp_dtype, expected', [
    (False, None, None),
    (True, None, torch.bfloat16),  # the default off CUDA
    (True, torch.float16, torch.float16),  # e.g. the trainer's float16 on an older GPU
    (True, torch.bfloat16, torch.bfloat16),
])
def test_evaluation_runs_under_the_autocast_dtype_it_is_given(amp, amp_dtype, expected):
    query, gallery = _toy_split()
    probe = AutocastProbe()
    evaluate(probe, query, gallery, 'cpu', max_rank=3, amp=amp, amp_dtype=amp_dtype)
    assert probe.seen and set(probe.seen) == {expected}


def test_evaluation_refuses_an_autocast_dtype_that_is_not_half_precision():
    query, gallery = _toy_split()
    with pytest.raises(ValueError, match='amp_dtype: expected torch.float16 or torch.bfloat16, got torch.float64'):
        evaluate(AutocastProbe(), query, gallery, 'cpu', amp=True, amp_dtype=torch.float64)


@pytest.mark.parametrize('native_bf16, expected', [(True, torch.bfloat16), (False, torch.float16)])
def test_the_default_autocast_dtype_is_bfloat16_where_the_device_has_it(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: native_bf16)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla V100')
    assert autocast_dtype('cuda') == expected and autocast_dtype('cpu') == torch.bfloat16
    assert autocast_dtype('cuda', torch.float16) == torch.float16
    if not native_bf16:
        with pytest.raises(ValueError, match='amp_dtype: Tesla V100 has no native bfloat16'):
            autocast_dtype('cuda', torch.bfloat16)


@pytest.mark.parametrize('device', DEVICES)
def test_evaluation_on_each_device_runs_under_its_default_autocast_and_scores_the_same(device):
    query, gallery = _toy_split()
    probe = AutocastProbe()
    results = evaluate(probe, query, gallery, device, max_rank=3, amp=True)
    assert set(probe.seen) == {autocast_dtype(device)}
    assert results['rank1'] == pytest.approx(0.5) and results['mAP'] == pytest.approx(0.75)  # as on CPU, by hand
