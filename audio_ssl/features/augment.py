"""Batch-level, vectorised augmentations that run on the accelerator.

Every module draws its randomness independently per example (except :class:`Mixup`, which draws one
mixing coefficient per batch, as in the original paper) and is active only in training mode: in eval
mode each one is the identity (``Mixup`` then returns one-hot targets). None of them loops over the
examples of a batch in Python.

Waveform augmentations take ``[B, T]`` (or ``[B, C, T]``) batches; spectrogram augmentations take
``[B, 1, F, T]`` batches, after normalisation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

__all__ = ["SpecAugment", "Mixup", "mix_batch", "RandomGain", "RandomTimeShift"]


class SpecAugment(nn.Module):
    """SpecAugment frequency and time masking with independent masks per example.

    Mask positions and widths are drawn by torchaudio's ``FrequencyMasking`` / ``TimeMasking`` with
    ``iid_masks=True``: each mask width is uniform in ``[0, freq_mask)`` (resp. ``time_mask``) and its
    start uniform over the valid range, independently for every example of a ``[B, 1, F, T]`` batch.

    Masked cells are filled with ``mask_value``: ``"mean"`` (default) fills each example with its own
    mean over ``(F, T)`` (computed before masking), so masking does not shift the example's level
    whether or not the features were normalised; a float fills with that constant (``0.0`` equals the
    mean for instance-normalised features). Apply it after normalisation.

    Args:
        freq_mask: Maximum width of a frequency mask in mel bins (0 disables frequency masking).
        time_mask: Maximum width of a time mask in frames (0 disables time masking).
        num_freq_masks: Number of frequency masks per example.
        num_time_masks: Number of time masks per example.
        mask_value: ``"mean"`` or a constant fill value.
        max_time_proportion: Upper bound on a time mask's width as a fraction of the frames
            (torchaudio's ``p``), useful for short clips.
    """

    def __init__(
        self,
        freq_mask: int = 30,
        time_mask: int = 80,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mask_value: float | Literal["mean"] = "mean",
        max_time_proportion: float = 1.0,
    ) -> None:
        super().__init__()
        if freq_mask < 0 or time_mask < 0:
            raise ValueError(
                f"SpecAugment: freq_mask and time_mask must be >= 0, got freq_mask={freq_mask}, "
                f"time_mask={time_mask}"
            )
        if num_freq_masks < 0 or num_time_masks < 0:
            raise ValueError(
                f"SpecAugment: num_freq_masks and num_time_masks must be >= 0, got {num_freq_masks}, "
                f"{num_time_masks}"
            )
        if not (mask_value == "mean" or isinstance(mask_value, (int, float))):
            raise ValueError(f"SpecAugment: mask_value must be 'mean' or a number, got {mask_value!r}")
        if not 0.0 <= max_time_proportion <= 1.0:
            raise ValueError(f"SpecAugment: max_time_proportion must be in [0, 1], got {max_time_proportion}")
        self.freq_mask = freq_mask
        self.time_mask = time_mask
        self.num_freq_masks = num_freq_masks
        self.num_time_masks = num_time_masks
        self.mask_value = mask_value
        self.freq_masking = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
        self.time_masking = torchaudio.transforms.TimeMasking(
            time_mask, iid_masks=True, p=max_time_proportion
        )

    def keep_mask(self, x: Tensor) -> Tensor:
        """Sample a float32 mask of the shape of ``x`` ``[B, 1, F, T]``: 1 keeps a cell, 0 masks it."""
        # Drawn on a float32 tensor of ones so that the integer positions are exact whatever x's dtype.
        keep = torch.ones(x.shape, device=x.device, dtype=torch.float32)
        for _ in range(self.num_freq_masks if self.freq_mask > 0 else 0):
            keep = self.freq_masking(keep, 0.0)
        for _ in range(self.num_time_masks if self.time_mask > 0 else 0):
            keep = self.time_masking(keep, 0.0)
        return keep

    def forward(self, x: Tensor) -> Tensor:
        """Mask a ``[B, 1, F, T]`` batch in training mode; identity in eval mode."""
        if x.dim() != 4:
            raise ValueError(f"SpecAugment expects a [B, C, F, T] batch, got shape {tuple(x.shape)}")
        if not self.training:
            return x
        keep = self.keep_mask(x).bool()
        if self.mask_value == "mean":
            fill = x.mean(dim=(-2, -1), keepdim=True)
        else:
            fill = torch.full_like(x[..., :1, :1], float(self.mask_value))
        return torch.where(keep, x, fill)

    def extra_repr(self) -> str:
        return (
            f"freq_mask={self.freq_mask}, time_mask={self.time_mask}, num_freq_masks={self.num_freq_masks}, "
            f"num_time_masks={self.num_time_masks}, mask_value={self.mask_value!r}"
        )


def mix_batch(
    x: Tensor, targets: Tensor, num_classes: int, lam: float, perm: Tensor
) -> tuple[Tensor, Tensor]:
    """Mix a batch with a permutation of itself.

    Returns ``lam * x + (1 - lam) * x[perm]`` and the matching soft targets
    ``lam * onehot(targets) + (1 - lam) * onehot(targets[perm])`` (float32, ``[B, num_classes]``).
    """
    onehot = F.one_hot(targets, num_classes).float()
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    soft = lam * onehot + (1.0 - lam) * onehot[perm]
    return x_mixed, soft


class Mixup(nn.Module):
    """Mixup on a batch (inputs of any shape ``[B, ...]``) with soft targets.

    With probability ``prob`` per training batch, draws ``lam ~ Beta(alpha, alpha)`` and mixes the batch
    with a random permutation of itself; otherwise (and always in eval mode) returns the inputs and
    one-hot targets. The soft targets go directly into
    ``F.cross_entropy(logits, soft_targets, label_smoothing=...)``, which equals
    ``lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm])`` because cross-entropy is linear in the
    target distribution.

    The coefficient and permutation of the last call are kept in ``last_lam`` (1.0 when not mixed) and
    ``last_perm`` (``None`` when not mixed) for logging.

    Args:
        alpha: Beta distribution concentration (> 0).
        prob: Probability of mixing a training batch, in ``[0, 1]``.
    """

    def __init__(self, alpha: float = 0.2, prob: float = 0.3) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"Mixup: alpha must be > 0, got {alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"Mixup: prob must be in [0, 1], got {prob}")
        self.alpha = alpha
        self.prob = prob
        self.last_lam: float = 1.0
        self.last_perm: Tensor | None = None

    def forward(self, x: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """Return ``(x_mixed, soft_targets [B, num_classes])`` for integer ``targets [B]``."""
        if targets.dim() != 1 or targets.dtype != torch.long:
            raise ValueError(
                f"Mixup expects integer class targets of shape [B] and dtype long, got shape "
                f"{tuple(targets.shape)} and dtype {targets.dtype}"
            )
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"Mixup: batch sizes differ: x has {x.shape[0]}, targets has {targets.shape[0]}")
        self.last_lam, self.last_perm = 1.0, None
        if not self.training or self.prob == 0.0 or torch.rand(()).item() >= self.prob:
            return x, F.one_hot(targets, num_classes).float()
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        perm = torch.randperm(x.shape[0], device=x.device)
        self.last_lam, self.last_perm = lam, perm
        return mix_batch(x, targets, num_classes, lam, perm)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, prob={self.prob}"


class RandomGain(nn.Module):
    """Random gain in dB, drawn uniformly in ``[min_db, max_db]`` per example, on ``[B, T]`` waveforms.

    Each example is amplified with probability ``p`` (otherwise left unchanged). Identity in eval mode.
    """

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0) -> None:
        super().__init__()
        if min_db > max_db:
            raise ValueError(f"RandomGain: min_db ({min_db}) must be <= max_db ({max_db})")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomGain: p must be in [0, 1], got {p}")
        self.min_db = min_db
        self.max_db = max_db
        self.p = p

    def forward(self, wave: Tensor) -> Tensor:
        """Scale each example of a ``[B, ...]`` waveform batch by its own random gain."""
        if not self.training:
            return wave
        batch = wave.shape[0]
        gain_db = torch.empty(batch, device=wave.device, dtype=torch.float32).uniform_(
            self.min_db, self.max_db
        )
        apply = torch.rand(batch, device=wave.device) < self.p
        gain_db = torch.where(apply, gain_db, torch.zeros_like(gain_db))
        scale = torch.pow(10.0, gain_db / 20.0).to(wave.dtype)
        return wave * scale.view(batch, *([1] * (wave.dim() - 1)))

    def extra_repr(self) -> str:
        return f"min_db={self.min_db}, max_db={self.max_db}, p={self.p}"


class RandomTimeShift(nn.Module):
    """Shift each waveform in time by its own random integer offset, vectorised with ``gather``.

    The shift ``s`` is uniform over ``{-max_shift, ..., max_shift}`` samples per example, where
    ``max_shift`` is ``max_seconds * sample_rate`` if ``max_seconds`` is given, else
    ``max_fraction * T``. ``mode="roll"`` rotates the signal (``torch.roll(x, s)`` per example);
    ``mode="zero"`` shifts it and fills the vacated samples with zeros. Identity in eval mode.

    Args:
        max_fraction: Largest shift as a fraction of the waveform length (used when ``max_seconds`` is None).
        max_seconds: Largest shift in seconds (needs ``sample_rate``).
        sample_rate: Sampling rate in Hz, for ``max_seconds``.
        mode: ``"roll"`` or ``"zero"``.
    """

    def __init__(
        self,
        max_fraction: float = 0.5,
        max_seconds: float | None = None,
        sample_rate: int | None = None,
        mode: Literal["roll", "zero"] = "roll",
    ) -> None:
        super().__init__()
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"RandomTimeShift: max_fraction must be in [0, 1], got {max_fraction}")
        if max_seconds is not None:
            if max_seconds < 0:
                raise ValueError(f"RandomTimeShift: max_seconds must be >= 0, got {max_seconds}")
            if sample_rate is None or sample_rate <= 0:
                raise ValueError(
                    f"RandomTimeShift: max_seconds={max_seconds} needs a positive sample_rate, got {sample_rate}"
                )
        if mode not in ("roll", "zero"):
            raise ValueError(f"RandomTimeShift: mode must be 'roll' or 'zero', got {mode!r}")
        self.max_fraction = max_fraction
        self.max_seconds = max_seconds
        self.sample_rate = sample_rate
        self.mode = mode

    def max_shift(self, num_samples: int) -> int:
        """Largest shift in samples for waveforms of ``num_samples`` samples."""
        if self.max_seconds is not None:
            assert self.sample_rate is not None
            limit = int(round(self.max_seconds * self.sample_rate))
        else:
            limit = int(self.max_fraction * num_samples)
        return min(limit, num_samples)

    @staticmethod
    def shift(wave: Tensor, shifts: Tensor, mode: Literal["roll", "zero"] = "roll") -> Tensor:
        """Shift example ``b`` of ``wave [B, ..., T]`` by ``shifts[b]`` samples along the last axis."""
        num_samples = wave.shape[-1]
        time = torch.arange(num_samples, device=wave.device)
        src = time.unsqueeze(0) - shifts.to(wave.device).long().unsqueeze(1)  # [B, T]: out[t] = x[t - s]
        view = (wave.shape[0], *([1] * (wave.dim() - 2)), num_samples)
        index = src.remainder(num_samples).view(view).expand_as(wave)
        out = torch.gather(wave, -1, index)
        if mode == "zero":
            valid = ((src >= 0) & (src < num_samples)).view(view)
            out = out * valid.to(out.dtype)
        return out

    def forward(self, wave: Tensor) -> Tensor:
        """Randomly shift each example of a ``[B, T]`` (or ``[B, C, T]``) batch."""
        if wave.dim() < 2:
            raise ValueError(f"RandomTimeShift expects a [B, T] batch, got shape {tuple(wave.shape)}")
        if not self.training:
            return wave
        limit = self.max_shift(wave.shape[-1])
        if limit == 0:
            return wave
        shifts = torch.randint(-limit, limit + 1, (wave.shape[0],), device=wave.device)
        return self.shift(wave, shifts, self.mode)

    def extra_repr(self) -> str:
        return (
            f"max_fraction={self.max_fraction}, max_seconds={self.max_seconds}, "
            f"sample_rate={self.sample_rate}, mode={self.mode!r}"
        )
