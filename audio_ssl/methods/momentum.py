"""A momentum teacher: a frozen copy of a network that follows it by an exponential moving average.

BYOL (Grill et al., 2020, eq. 1 and Sec. 3.2) updates its target network after every optimizer step as
``xi <- tau * xi + (1 - tau) * theta`` with ``tau`` raised from ``tau_base`` to 1 over training:
``tau_k = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2`` (:func:`cosine_momentum`). MoCo, DINO and
BYOL-A (Niizumi et al., 2021; a constant ``tau = 0.99``) use the same rule.

:class:`MomentumTeacher` holds the copy with gradients off and always in eval mode (no dropout; BatchNorm uses
its running statistics, which follow the student's by the same average). :func:`update_momentum` is the
update itself, usable on any two modules of the same architecture.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["MomentumTeacher", "cosine_momentum", "update_momentum"]


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``.

    ``base`` at step 0, ``final`` at ``step >= total_steps``; constant ``base`` when ``base == final``.
    Raises ValueError unless ``0 <= base <= final <= 1`` and ``total_steps >= 1``.
    """
    if not 0.0 <= base <= final <= 1.0:
        raise ValueError(f"cosine_momentum: need 0 <= base <= final <= 1, got base={base}, final={final}")
    if total_steps < 1:
        raise ValueError(f"cosine_momentum: total_steps must be >= 1, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, in place, for every parameter and every
    floating-point buffer (BatchNorm running statistics); other buffers (``num_batches_tracked``) are copied.

    The two modules must have the same parameter and buffer names (same architecture). Raises ValueError
    otherwise or when ``momentum`` is outside ``[0, 1]``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"update_momentum: momentum must be in [0, 1], got {momentum}")
    pairs = [(dict(student.named_parameters()), dict(teacher.named_parameters())),
             (dict(student.named_buffers()), dict(teacher.named_buffers()))]
    for source, target in pairs:
        if source.keys() != target.keys():
            raise ValueError("update_momentum: student and teacher differ in "
                             f"{sorted(source.keys() ^ target.keys())[:5]}")
        for name, t in target.items():
            s: Tensor = source[name]
            if t.is_floating_point():
                t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)
            else:
                t.copy_(s)


class MomentumTeacher(nn.Module):
    """A copy of ``student`` with gradients off, always in eval mode, updated by :meth:`update`.

    Args:
        student: the online network (copied at construction, so teacher and student start equal).
        base_momentum: ``tau_base`` of :func:`cosine_momentum` (0.99 in BYOL-A; 0.996 in BYOL).
        final_momentum: ``tau`` at the end of training (1.0 in BYOL; ``base_momentum`` for a constant rate).
        batch_statistics: normalise the teacher's BatchNorm layers with the statistics of the batch it is given
            instead of its running statistics (the copy is switched to train mode for the call only, still
            without gradients). BYOL and BYOL-A run their target network this way (Grill et al., 2020, and
            the BYOL-A reference code): running statistics averaged twice (by BatchNorm, then by the EMA) lag
            far behind the online network early in training.

    Calling the teacher runs the copy under ``torch.no_grad()``. Its weights are part of the owner's state dict
    (key prefix ``<attribute>.module.``), so a resumed run continues with the same teacher.
    """

    def __init__(self, student: nn.Module, base_momentum: float = 0.99, final_momentum: float = 1.0,
                 batch_statistics: bool = False):
        super().__init__()
        self.batch_statistics = bool(batch_statistics)
        cosine_momentum(0, 1, base_momentum, final_momentum)  # validates the range
        self.base_momentum, self.final_momentum = float(base_momentum), float(final_momentum)
        self.module = copy.deepcopy(student).requires_grad_(False).eval()
        self.momentum = self.base_momentum
        """The rate of the last :meth:`update` (``base_momentum`` before the first)."""

    def train(self, mode: bool = True) -> MomentumTeacher:
        """The teacher stays in eval mode whatever its owner's mode."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            if not self.batch_statistics:
                return self.module(*args, **kwargs)
            self.module.train()
            try:
                return self.module(*args, **kwargs)
            finally:
                self.module.eval()

    def update(self, student: nn.Module, step: int, total_steps: int) -> float:
        """One EMA step toward ``student`` at the scheduled rate for ``step`` of ``total_steps``; returns it."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        update_momentum(student, self.module, self.momentum)
        return self.momentum

    def extra_repr(self) -> str:
        return (f"base_momentum={self.base_momentum}, final_momentum={self.final_momentum}, "
                f"batch_statistics={self.batch_statistics}")
