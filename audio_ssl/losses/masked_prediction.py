"""Masked-prediction objective (HuBERT / BEATs style): classify discrete targets at masked frames.

The model predicts a distribution over ``K`` codebook entries for each of ``N`` positions; only the
positions hidden from the encoder (``mask == True``) contribute to the loss and accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_prediction_loss", "masked_accuracy"]


def _select_masked(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, caller: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and return ``(logits[mask] [M, K], targets[mask] [M])``."""
    if logits.ndim != 3:
        raise ValueError(f"{caller}: logits must have shape [B, N, K], got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"{caller}: targets must have shape [B, N] = {tuple(logits.shape[:2])}, got {tuple(targets.shape)}"
        )
    if mask.shape != logits.shape[:2]:
        raise ValueError(
            f"{caller}: mask must have shape [B, N] = {tuple(logits.shape[:2])}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"{caller}: mask must be a bool tensor, got dtype {mask.dtype}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"{caller}: targets must be an integer (long) tensor, got dtype {targets.dtype}")

    num_classes = logits.shape[-1]
    sel_logits, sel_targets = logits[mask], targets[mask].long()
    # One host sync for both checks; targets at unmasked positions may hold anything (e.g. -100).
    n_masked, n_bad = torch.stack(
        [mask.sum(), ((sel_targets < 0) | (sel_targets >= num_classes)).sum()]
    ).tolist()
    if n_masked == 0:
        raise ValueError(f"{caller}: mask selects no position (all {mask.numel()} entries are False)")
    if n_bad:
        bad = sel_targets[(sel_targets < 0) | (sel_targets >= num_classes)]
        raise ValueError(
            f"{caller}: {n_bad} masked targets are outside [0, {num_classes - 1}] "
            f"(K = {num_classes} classes), e.g. {bad[:5].tolist()}"
        )
    return sel_logits, sel_targets


def masked_prediction_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions only, averaged over the masked positions.

    Args:
        logits: ``[B, N, K]`` unnormalised scores over ``K`` target classes.
        targets: ``[B, N]`` integer class indices; values at unmasked positions are ignored.
        mask: ``[B, N]`` bool, ``True`` where the position was masked and must be predicted.

    Raises:
        ValueError: on shape mismatch, if no position is masked, or if a masked target is outside
            ``[0, K)``.
    """
    sel_logits, sel_targets = _select_masked(logits, targets, mask, "masked_prediction_loss")
    return F.cross_entropy(sel_logits, sel_targets)


@torch.no_grad()
def masked_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, top_k: int = 1
) -> torch.Tensor:
    """Fraction of masked positions whose target is among the ``top_k`` highest logits.

    Same arguments and checks as :func:`masked_prediction_loss`; returns a detached float scalar.
    """
    sel_logits, sel_targets = _select_masked(logits, targets, mask, "masked_accuracy")
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"masked_accuracy: top_k must be in [1, K = {logits.shape[-1]}], got {top_k}")
    top = sel_logits.topk(top_k, dim=-1).indices
    return (top == sel_targets.unsqueeze(-1)).any(dim=-1).float().mean()
