"""Kaldi-compatible log-mel filter banks, as the BEATs models expect them.

BEATs (Chen et al., 2022, https://arxiv.org/abs/2212.09058) was pre-trained on 128-bin Kaldi fbanks of
16 kHz audio scaled to the int16 range, with a 25 ms window and a 10 ms hop, normalised with a single
global mean (15.41663) and *twice* the global standard deviation (6.55582). :class:`BEATsFbank` reproduces
that front end with :func:`torchaudio.compliance.kaldi.fbank` and maps a waveform padding mask to a frame
padding mask the way the official code does.

Padding masks follow the fairseq convention used by BEATs: ``True`` marks a *padded* position.
"""

from __future__ import annotations

import torch
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

__all__ = [
    "BEATS_FBANK_MEAN",
    "BEATS_FBANK_STD",
    "BEATsFbank",
    "beats_fbank",
    "reduce_padding_mask",
]

#: Global fbank statistics used by the official BEATs preprocessing (``BEATs.preprocess``).
BEATS_FBANK_MEAN: float = 15.41663
BEATS_FBANK_STD: float = 6.55582


def reduce_padding_mask(padding_mask: Tensor, length: int) -> Tensor:
    """Shrink a ``[B, T]`` padding mask to ``[B, length]`` like BEATs' ``forward_padding_mask``.

    The trailing ``T % length`` positions are dropped, the rest is split into ``length`` equal groups,
    and a group counts as padded only when *all* its positions are padded.
    """
    if padding_mask.dim() != 2:
        raise ValueError(f"padding_mask must have shape [batch, time], got {tuple(padding_mask.shape)}")
    if length <= 0 or padding_mask.size(1) < length:
        raise ValueError(f"cannot reduce a padding mask of length {padding_mask.size(1)} to length {length}")
    usable = padding_mask.size(1) - padding_mask.size(1) % length
    return padding_mask[:, :usable].reshape(padding_mask.size(0), length, -1).all(dim=-1)


def beats_fbank(
    waveforms: Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    mean: float = BEATS_FBANK_MEAN,
    std: float = BEATS_FBANK_STD,
) -> Tensor:
    """Normalised Kaldi fbanks of a batch of waveforms ``[B, T]`` in [-1, 1]; returns ``[B, frames, mels]``.

    Each clip goes through :func:`torchaudio.compliance.kaldi.fbank` on its own (the Kaldi routine works on
    one channel), always in float32, after scaling to the int16 range (``* 2**15``). The result is
    ``(fbank - mean) / (2 * std)`` as in the official BEATs code.
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must have shape [batch, samples], got {tuple(waveforms.shape)}")
    window = int(sample_rate * frame_length_ms / 1000)
    if waveforms.size(1) < window:
        raise ValueError(
            f"clips of {waveforms.size(1)} samples are shorter than one {frame_length_ms} ms fbank window "
            f"({window} samples at {sample_rate} Hz)"
        )
    device_type = waveforms.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        scaled = waveforms.float() * 2**15
        fbanks = [
            kaldi.fbank(
                clip.unsqueeze(0),
                num_mel_bins=num_mel_bins,
                sample_frequency=sample_rate,
                frame_length=frame_length_ms,
                frame_shift=frame_shift_ms,
            )
            for clip in scaled
        ]
        return (torch.stack(fbanks) - mean) / (2 * std)


class BEATsFbank(nn.Module):
    """BEATs front end: waveform ``[B, T]`` (+ optional sample padding mask) -> fbank ``[B, frames, mels]``.

    The module has no parameters or buffers, so it can sit inside a model without changing its state dict.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        mean: float = BEATS_FBANK_MEAN,
        std: float = BEATS_FBANK_STD,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.mean = mean
        self.std = std

    def num_frames(self, num_samples: int) -> int:
        """Number of fbank frames for a clip of ``num_samples`` samples (Kaldi ``snip_edges=True``)."""
        window = int(self.sample_rate * self.frame_length_ms / 1000)
        shift = int(self.sample_rate * self.frame_shift_ms / 1000)
        return 0 if num_samples < window else 1 + (num_samples - window) // shift

    def forward(self, waveforms: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Return ``(fbank [B, frames, mels], frame padding mask [B, frames] or None)``.

        ``padding_mask`` is ``[B, T]`` with ``True`` on padded samples; it is reduced to frames with
        :func:`reduce_padding_mask` (a frame is padded only if all its samples are).
        """
        fbank = beats_fbank(
            waveforms,
            sample_rate=self.sample_rate,
            num_mel_bins=self.num_mel_bins,
            frame_length_ms=self.frame_length_ms,
            frame_shift_ms=self.frame_shift_ms,
            mean=self.mean,
            std=self.std,
        )
        if padding_mask is not None:
            if padding_mask.shape != waveforms.shape:
                raise ValueError(
                    f"padding_mask shape {tuple(padding_mask.shape)} does not match waveforms shape "
                    f"{tuple(waveforms.shape)}"
                )
            padding_mask = reduce_padding_mask(padding_mask.bool(), fbank.size(1))
        return fbank, padding_mask

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, "
            f"frame_length_ms={self.frame_length_ms}, frame_shift_ms={self.frame_shift_ms}, "
            f"mean={self.mean}, std={self.std}"
        )
