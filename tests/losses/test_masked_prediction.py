"""Masked-prediction loss and accuracy: reference values, unmasked positions ignored, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from audio_ssl.losses import masked_accuracy, masked_prediction_loss

B, N, K = 3, 7, 5


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N, K, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, K, (B, N), generator=gen)
    mask = torch.rand(B, N, generator=gen) < 0.5
    mask[0, 0] = True
    mask[1, 1] = False
    return logits, targets, mask


def reference_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over masked positions of -log softmax(logits)[target], written out with loops."""
    terms = []
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if mask[b, i]:
                row = logits[b, i].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                terms.append(log_z - row[targets[b, i]])
    return sum(terms) / len(terms)


def reference_accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, k: int) -> float:
    hits = total = 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if mask[b, i]:
                order = sorted(range(logits.shape[2]), key=lambda c: -logits[b, i, c].item())
                hits += int(targets[b, i]) in order[:k]
                total += 1
    return hits / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_reference(seed: int) -> None:
    logits, targets, mask = _batch(seed)
    loss = masked_prediction_loss(logits, targets, mask)
    assert loss.item() == pytest.approx(reference_loss(logits, targets, mask), rel=1e-12)


def test_unmasked_positions_are_ignored() -> None:
    logits, targets, mask = _batch()
    logits.requires_grad_()
    loss = masked_prediction_loss(logits, targets, mask)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.all(grad[~mask] == 0) and torch.any(grad[mask] != 0)

    # Arbitrary logits and (even invalid) targets at unmasked positions change nothing.
    logits2 = logits.detach().clone()
    logits2[~mask] = torch.randn(int((~mask).sum()), K, dtype=torch.float64) * 100
    targets2 = targets.clone()
    targets2[~mask] = -100
    assert masked_prediction_loss(logits2, targets2, mask).item() == loss.item()
    for k in (1, 3):
        assert masked_accuracy(logits2, targets2, mask, top_k=k) == masked_accuracy(
            logits, targets, mask, top_k=k
        )

    # Changing a masked target does change the loss.
    targets3 = targets.clone()
    targets3[0, 0] = (targets3[0, 0] + 1) % K
    assert masked_prediction_loss(logits, targets3, mask).item() != pytest.approx(loss.item())


def test_mean_over_masked_positions_not_batch() -> None:
    # One masked position with uniform logits: loss is exactly log K regardless of B * N.
    logits = torch.zeros(B, N, K, dtype=torch.float64)
    targets = torch.zeros(B, N, dtype=torch.long)
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[2, 3] = True
    assert masked_prediction_loss(logits, targets, mask).item() == pytest.approx(math.log(K), rel=1e-14)


@pytest.mark.parametrize("k", [1, 2, K])
def test_accuracy_matches_reference(k: int) -> None:
    logits, targets, mask = _batch(3)
    acc = masked_accuracy(logits, targets, mask, top_k=k)
    assert acc.item() == pytest.approx(reference_accuracy(logits, targets, mask, k))
    if k == K:
        assert acc.item() == 1.0


def test_perfect_predictions() -> None:
    targets = torch.randint(0, K, (B, N))
    logits = torch.nn.functional.one_hot(targets, K).double() * 50.0
    mask = torch.ones(B, N, dtype=torch.bool)
    assert masked_accuracy(logits, targets, mask).item() == 1.0
    assert masked_prediction_loss(logits, targets, mask).item() < 1e-18


def test_int32_targets_accepted() -> None:
    logits, targets, mask = _batch()
    torch.testing.assert_close(
        masked_prediction_loss(logits, targets.int(), mask), masked_prediction_loss(logits, targets, mask)
    )


def test_no_masked_position_raises() -> None:
    logits, targets, _ = _batch()
    with pytest.raises(ValueError, match="no position"):
        masked_prediction_loss(logits, targets, torch.zeros(B, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="no position"):
        masked_accuracy(logits, targets, torch.zeros(B, N, dtype=torch.bool))


@pytest.mark.parametrize(
    ("logits", "targets", "mask", "error", "match"),
    [
        (
            torch.randn(B, N),
            torch.zeros(B, N, dtype=torch.long),
            torch.ones(B, N, dtype=torch.bool),
            ValueError,
            "logits",
        ),
        (
            torch.randn(B, N, K),
            torch.zeros(B, N + 1, dtype=torch.long),
            torch.ones(B, N, dtype=torch.bool),
            ValueError,
            "targets",
        ),
        (
            torch.randn(B, N, K),
            torch.zeros(B, N, dtype=torch.long),
            torch.ones(B, 1, dtype=torch.bool),
            ValueError,
            "mask",
        ),
        (torch.randn(B, N, K), torch.zeros(B, N, dtype=torch.long), torch.ones(B, N), TypeError, "bool"),
        (torch.randn(B, N, K), torch.zeros(B, N), torch.ones(B, N, dtype=torch.bool), TypeError, "integer"),
        (
            torch.randn(B, N, K),
            torch.full((B, N), K),
            torch.ones(B, N, dtype=torch.bool),
            ValueError,
            r"outside \[0, 4\]",
        ),
        (
            torch.randn(B, N, K),
            torch.full((B, N), -1),
            torch.ones(B, N, dtype=torch.bool),
            ValueError,
            "outside",
        ),
    ],
)
def test_bad_inputs_raise(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        masked_prediction_loss(logits, targets, mask)


def test_bad_top_k_raises() -> None:
    logits, targets, mask = _batch()
    with pytest.raises(ValueError, match="top_k"):
        masked_accuracy(logits, targets, mask, top_k=K + 1)
