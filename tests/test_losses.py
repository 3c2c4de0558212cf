"""Batch-hard triplet loss (Eq. 7) and the summed HBFP loss."""
import itertools

import pytest
import timm
import torch

import hbfp_timm  # noqa: F401  (registers the models)
from hbfp_timm.training.losses import BatchHardTripletLoss, HBFPLoss, pairwise_euclidean


def _brute_force_triplet(features, targets, margin):
    """Eq. 7 by enumeration: for each anchor, the farthest positive and the nearest negative."""
    losses = []
    for a in range(len(targets)):
        pos = [torch.dist(features[a], features[p]) for p in range(len(targets)) if p != a and targets[p] == targets[a]]
        neg = [torch.dist(features[a], features[n]) for n in range(len(targets)) if targets[n] != targets[a]]
        losses.append(torch.relu(max(pos) - min(neg) + margin))
    return torch.stack(losses).mean()


def test_triplet_loss_on_a_hand_made_batch():
    # Two identities on a line: id 0 at x=0 and x=1, id 1 at x=1.2 and x=3.
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.2, 0.0], [3.0, 0.0]])
    targets = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1.0, neg 1.2 -> 0.1; anchor 1: pos 1.0, neg 0.2 -> 1.1
    # anchor 2: pos 1.8, neg 0.2 -> 1.9; anchor 3: pos 1.8, neg 2.0 -> 0.1
    expected = torch.tensor((0.1 + 1.1 + 1.9 + 0.1) / 4)
    torch.testing.assert_close(BatchHardTripletLoss(margin=0.3)(features, targets), expected)


def test_triplet_loss_matches_brute_force_on_random_pk_batch():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(12, 5, generator=gen)
    targets = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    expected = _brute_force_triplet(features, targets, 0.3)
    torch.testing.assert_close(BatchHardTripletLoss(0.3)(features, targets), expected)


@pytest.mark.parametrize('seed', range(20))
def test_pairwise_euclidean_matches_cdist_and_has_finite_gradient_on_the_diagonal(seed):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    dist = pairwise_euclidean(x)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(dist[off_diagonal], torch.cdist(x, x)[off_diagonal], atol=1e-4, rtol=1e-4)
    # |a|^2 + |a|^2 - 2 a.a cancels to float32 rounding noise (a few ulp of |a|^2), whose root is ~1e-3 |a|.
    assert (dist.diagonal() <= 2e-3 * x.detach().norm(dim=1) + 1e-6).all()
    dist.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_loss_needs_pk_batches():
    with pytest.raises(ValueError, match='every identity at least twice'):
        BatchHardTripletLoss()(torch.randn(3, 2), torch.tensor([0, 1, 1]))


def test_hbfp_loss_sums_triplet_and_label_smoothed_id_over_branches():
    torch.manual_seed(0)
    model = timm.create_model('hbfp_resnet18', num_classes=4).train()
    x = torch.randn(8, 3, 64, 32)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    outputs = model.forward_branches(x)
    total, parts = HBFPLoss(margin=0.3, label_smoothing=0.3)(outputs, targets)
    triplet = sum(_brute_force_triplet(f.detach(), targets, 0.3) for f in outputs.pooled)
    num_classes = 4
    smoothed = torch.full((8, num_classes), 0.3 / num_classes)  # Eq. 9
    smoothed[torch.arange(8), targets] = 1 - (num_classes - 1) / num_classes * 0.3
    identity = sum((-smoothed * logit.detach().log_softmax(dim=1)).sum(dim=1).mean() for logit in outputs.logits)
    torch.testing.assert_close(parts['triplet'], triplet, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts['id'], identity, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(total.detach(), triplet + identity, rtol=1e-4, atol=1e-4)


def test_hbfp_loss_decreases_on_a_fixed_tiny_batch():
    torch.manual_seed(0)
    model = timm.create_model('hbfp_resnet18', num_classes=4).train()
    x = torch.randn(8, 3, 64, 32)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    criterion = HBFPLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    losses = []
    for _ in range(5):
        total, _ = criterion(model.forward_branches(x), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize('weights', list(itertools.product([0.0, 1.0], repeat=2))[1:])
def test_hbfp_loss_terms_can_be_switched_off(weights):
    triplet_weight, id_weight = weights
    model = timm.create_model('hbfp_resnet18', num_classes=2).eval()
    outputs = model.forward_branches(torch.randn(4, 3, 32, 32))
    _, parts = HBFPLoss(triplet_weight=triplet_weight, id_weight=id_weight)(outputs, torch.tensor([0, 0, 1, 1]))
    assert ('triplet' in parts) == bool(triplet_weight) and ('id' in parts) == bool(id_weight)
