"""NT-Xent (normalised temperature-scaled cross-entropy), the SimCLR contrastive loss.

For a batch of ``N`` pairs ``(z1[i], z2[i])`` the ``2N`` projections are L2-normalised; each one is
an anchor whose positive is the other view of the same clip and whose negatives are the remaining
``2N - 2`` projections. With ``W`` DDP processes and ``gather_distributed=True`` the candidates are
the ``2 N W`` projections of all processes (gathered with gradients), so every anchor sees
``2 N W - 1`` candidates: one positive and ``2 N W - 2`` negatives.

DDP and the mean over anchors
-----------------------------
Each process averages the loss over its *local* ``2N`` anchors. The gather's backward pass sums the
gradients of all ranks' losses into the local inputs, so after backward the parameter gradient on
rank ``r`` is ``d(sum_r' L_r') / d theta`` restricted to the data of rank ``r``. DDP all-reduces
those gradients and divides by ``W``, which gives ``d(mean_r' L_r') / d theta``: exactly the
gradient of one process running the loss on the concatenated ``W N`` pairs (equal local batch
sizes assumed, which ``DistributedSampler`` guarantees). The logged local loss averaged over
ranks (``sync_dist=True``) is the global loss as well.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl.utils.distributed import gather_with_grad, rank, world_size

__all__ = ["NTXentOutput", "nt_xent", "NTXentLoss"]


class NTXentOutput(NamedTuple):
    """Loss and contrastive retrieval accuracy of the positive among all candidates.

    ``top1`` / ``top5`` are the fractions of local anchors whose positive ranks first / within
    the first five of the ``2 N_global - 1`` candidates (self excluded). Ties count against the
    positive: a negative scoring exactly as high as the positive pushes it down one place.
    """

    loss: torch.Tensor
    top1: torch.Tensor
    top5: torch.Tensor


def _check_inputs(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> None:
    if z1.ndim != 2 or z2.ndim != 2:
        raise ValueError(
            f"nt_xent expects z1 and z2 of shape [N, D], got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}"
        )
    if z1.shape != z2.shape:
        raise ValueError(f"nt_xent: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must have the same shape")
    if z1.shape[0] == 0:
        raise ValueError("nt_xent: got an empty batch (N = 0)")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"nt_xent: temperature must be a finite positive number, got {temperature!r}")


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    gather_distributed: bool = True,
    return_accuracy: bool = False,
) -> torch.Tensor | NTXentOutput:
    """NT-Xent loss of two views' projections.

    Args:
        z1: ``[N, D]`` projections of the first view (normalised here, any scale is fine).
        z2: ``[N, D]`` projections of the second view; row ``i`` is the positive of ``z1[i]``.
        temperature: softmax temperature ``tau`` applied to cosine similarities.
        gather_distributed: under ``torch.distributed``, use the projections of all processes as
            negatives (gradients flow back to their owners). Ignored in a single process.
        return_accuracy: also return top-1 / top-5 accuracy of the positive (see ``NTXentOutput``).

    Returns:
        The scalar loss (mean over the local ``2N`` anchors), or ``NTXentOutput(loss, top1, top5)``
        when ``return_accuracy`` is true. The similarities are computed in at least float32, even
        under autocast, as low temperatures magnify rounding errors.
    """
    _check_inputs(z1, z2, temperature)
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = torch.promote_types(z1.dtype, torch.float32)  # float16/bfloat16 -> float32, float64 kept
        z1 = F.normalize(z1.to(dtype), dim=1)
        z2 = F.normalize(z2.to(dtype), dim=1)

        if gather_distributed and world_size() > 1:
            z1_all, z2_all, offset = gather_with_grad(z1), gather_with_grad(z2), rank() * n
        else:
            z1_all, z2_all, offset = z1, z2, 0
        n_global = z1_all.shape[0]

        anchors = torch.cat([z1, z2], dim=0)  # [2N, D]
        candidates = torch.cat([z1_all, z2_all], dim=0)  # [2N_global, D]: view 1 of all ranks, then view 2
        logits = anchors @ candidates.T / temperature  # [2N, 2N_global]

        # Global candidate index of each local anchor itself and of its positive.
        local = torch.arange(n, device=z1.device) + offset
        self_idx = torch.cat([local, local + n_global])
        pos_idx = torch.cat([local + n_global, local])
        rows = torch.arange(2 * n, device=z1.device)
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
        self_mask[rows, self_idx] = True
        logits = logits.masked_fill(self_mask, float("-inf"))

        loss = F.cross_entropy(logits, pos_idx)
    if not return_accuracy:
        return loss

    with torch.no_grad():
        pos_logit = logits[rows, pos_idx].unsqueeze(1)
        # Number of negatives scoring at least as high as the positive (the positive itself is removed).
        place = (logits >= pos_logit).sum(dim=1) - 1
        top1 = (place < 1).float().mean()
        top5 = (place < 5).float().mean()
    return NTXentOutput(loss, top1, top5)


class NTXentLoss(nn.Module):
    """Module wrapper of :func:`nt_xent` (SimCLR loss), with negatives gathered across DDP ranks.

    Args:
        temperature: softmax temperature ``tau``.
        gather_distributed: use the projections of all processes as negatives under DDP.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"NTXentLoss: temperature must be a finite positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, return_accuracy: bool = False
    ) -> torch.Tensor | NTXentOutput:
        """See :func:`nt_xent`."""
        return nt_xent(z1, z2, self.temperature, self.gather_distributed, return_accuracy)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
