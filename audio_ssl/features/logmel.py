"""Batched log-mel spectrogram front end that runs on the accelerator.

The CPU data workers only slice waveforms; the spectrogram is computed here, after the batch has been
moved to the device. The STFT, power and mel projection are always computed in float32 (autocast is
disabled inside ``forward``) so that the features are identical under ``bf16-mixed`` / ``16-mixed``
training. With the default arguments the output matches
``librosa.power_to_db(librosa.feature.melspectrogram(y, sr=16000, n_fft=1024, hop_length=512,
n_mels=128), ref=1.0, amin=1e-10, top_db=...)`` (librosa >= 0.10: centred frames, zero padding,
periodic Hann window, Slaney mel scale and Slaney area normalisation).
"""

from __future__ import annotations

from typing import Literal

import torch
import torchaudio
from torch import Tensor, nn

LogMode = Literal["db", "log"]
NormMode = Literal["none", "instance", "fixed"]

__all__ = ["LogMelSpectrogram"]


class LogMelSpectrogram(nn.Module):
    """Waveform batch ``[B, T]`` -> log-mel spectrogram ``[B, 1, n_mels, frames]`` (float32).

    Args:
        sample_rate: Sampling rate of the input waveforms in Hz.
        n_fft: FFT size.
        hop_length: Hop between frames in samples.
        win_length: Hann window length (``None``: ``n_fft``); shorter windows are zero-padded to
            ``n_fft`` in the centre, as in librosa.
        n_mels: Number of mel bands.
        f_min: Lowest mel filter edge in Hz.
        f_max: Highest mel filter edge in Hz (``None``: ``sample_rate / 2``).
        log: ``"db"``: ``10 * log10(max(power, amin))`` (librosa ``power_to_db`` with ``ref=1``), then
            optionally clamped to ``max - top_db`` per example; ``"log"``: natural ``log(power + eps)``.
        top_db: Dynamic range clamp per example for ``log="db"`` (``None`` disables it).
        amin: Floor of the power before ``log10`` for ``log="db"``.
        eps: Offset added to the power before ``log`` for ``log="log"``.
        normalize: ``"none"``; ``"instance"``: zero mean and unit variance per example (over mel bins
            and frames); ``"fixed"``: ``(x - mean) / std`` with dataset statistics.
        mean: Dataset mean for ``normalize="fixed"``.
        std: Dataset standard deviation for ``normalize="fixed"``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 512,
        win_length: int | None = None,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        log: LogMode = "db",
        top_db: float | None = 80.0,
        amin: float = 1e-10,
        eps: float = 1e-6,
        normalize: NormMode = "none",
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        f_max = sample_rate / 2 if f_max is None else f_max
        if sample_rate <= 0:
            raise ValueError(f"LogMelSpectrogram: sample_rate must be positive, got {sample_rate}")
        if n_fft <= 0 or hop_length <= 0:
            raise ValueError(
                f"LogMelSpectrogram: n_fft and hop_length must be positive, got n_fft={n_fft}, "
                f"hop_length={hop_length}"
            )
        if not 0 < win_length <= n_fft:
            raise ValueError(f"LogMelSpectrogram: win_length must be in (0, n_fft={n_fft}], got {win_length}")
        if not 0.0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(
                f"LogMelSpectrogram: need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
                f"got f_min={f_min}, f_max={f_max}"
            )
        if log not in ("db", "log"):
            raise ValueError(f"LogMelSpectrogram: log must be 'db' or 'log', got {log!r}")
        if normalize not in ("none", "instance", "fixed"):
            raise ValueError(
                f"LogMelSpectrogram: normalize must be 'none', 'instance' or 'fixed', got {normalize!r}"
            )
        if normalize == "fixed" and not std > 0:
            raise ValueError(f"LogMelSpectrogram: std must be positive for normalize='fixed', got {std}")
        if top_db is not None and top_db < 0:
            raise ValueError(f"LogMelSpectrogram: top_db must be non-negative or None, got {top_db}")

        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.log = log
        self.top_db = top_db
        self.amin = amin
        self.eps = eps
        self.normalize = normalize
        self.mean = mean
        self.std = std

        # Deterministic from the config, so kept out of the state dict (non-persistent) but still moved
        # with the module by ``.to(device)``.
        fbanks = torchaudio.functional.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            sample_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # [n_freqs, n_mels]
        self.register_buffer("mel_fbanks", fbanks.T.contiguous(), persistent=False)  # [n_mels, n_freqs]
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Number of STFT frames produced for a waveform of ``num_samples`` samples (centred frames)."""
        pad = 2 * (self.n_fft // 2)
        return 1 + (num_samples + pad - self.n_fft) // self.hop_length

    def power_mel(self, wave: Tensor) -> Tensor:
        """Mel power spectrogram ``[B, n_mels, frames]`` in float32 (no log, no normalisation)."""
        if wave.dim() != 2:
            raise ValueError(
                f"LogMelSpectrogram expects a waveform batch of shape [B, T], got shape {tuple(wave.shape)}"
            )
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window.float(),
                center=True,
                pad_mode="constant",
                normalized=False,
                onesided=True,
                return_complex=True,
            )  # [B, n_freqs, frames]
            power = spec.real.square() + spec.imag.square()  # 3x cheaper than abs()**2 on CPU
            return torch.matmul(self.mel_fbanks.float(), power)

    def forward(self, wave: Tensor) -> Tensor:
        """Waveforms ``[B, T]`` -> log-mel features ``[B, 1, n_mels, frames]`` in float32."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mel = self.power_mel(wave)
            if self.log == "db":
                x = 10.0 * torch.log10(mel.clamp_min(self.amin))
                if self.top_db is not None:
                    floor = x.amax(dim=(-2, -1), keepdim=True) - self.top_db
                    x = torch.maximum(x, floor)
            else:
                x = torch.log(mel + self.eps)

            if self.normalize == "instance":
                mu = x.mean(dim=(-2, -1), keepdim=True)
                sigma = x.std(dim=(-2, -1), keepdim=True)
                x = (x - mu) / (sigma + 1e-5)
            elif self.normalize == "fixed":
                x = (x - self.mean) / self.std
            return x.unsqueeze(1)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"win_length={self.win_length}, n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}, "
            f"log={self.log!r}, top_db={self.top_db}, normalize={self.normalize!r}"
        )

    @property
    def frames_per_second(self) -> float:
        """Frame rate of the output in Hz."""
        return self.sample_rate / self.hop_length
