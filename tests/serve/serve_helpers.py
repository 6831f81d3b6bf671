"""Helpers of the ``audio-ssl serve`` tests: test recordings (the tiny classifiers: ``helpers.train_tiny_classifier``)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

SR = 16000


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A noisy chirp [T, channels] (channel c scaled by 0.5 + c)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(len(t))
    return np.stack([mono * (0.5 + c) for c in range(channels)], axis=1).astype(np.float32)


def wav_bytes(seconds: float, rate: int = SR, channels: int = 1, fmt: str = "WAV", subtype: str | None = None,
              seed: int = 0) -> bytes:
    """A recording encoded in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, rate, channels, seed), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()
