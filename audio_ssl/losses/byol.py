"""The BYOL objective (Grill et al., 2020, "Bootstrap your own latent", eq. 2), used by BYOL-A.

For online predictions ``p`` and target projections ``z`` of the other view, the loss is the mean squared
distance of the L2-normalised vectors, ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``, averaged over the batch; the
method symmetrises it by swapping the views (``L = l(p1, z2) + l(p2, z1)``, BYOL eq. 3). The target carries no
gradient. The loss is a per-example mean, so under DDP the gradient averaged over equal per-process batches
equals one process on the concatenated batch (no gathering needed).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["byol_loss"]


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``mean_b (2 - 2 cos(prediction[b], target[b]))`` for ``prediction`` and ``target`` ``[B, D]``; a scalar
    in ``[0, 4]``. ``target`` is detached. Raises ValueError on shapes that differ or are not 2-D."""
    if prediction.dim() != 2 or prediction.shape != target.shape:
        raise ValueError(f"byol_loss expects two [B, D] tensors of one shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    cos = (F.normalize(prediction.float(), dim=1) * F.normalize(target.detach().float(), dim=1)).sum(1)
    return (2 - 2 * cos).mean()
