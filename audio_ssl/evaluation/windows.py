"""Scoring audio of any length with a fixed-length clip model: overlapping windows, mean of their probabilities.

A model trained on clips of ``window`` samples sees a long recording as windows that start every ``hop``
samples; when the last of these ends before the recording does, one more window aligned to the end is
added, so every sample is seen and no window of a long recording is padded. A recording shorter than one
window is zero-padded at the end to one window (as the evaluation loaders pad short clips). The clip-level
prediction is the mean of the windows' class probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["StreamScores", "score_long_audio", "score_stream", "sliding_windows", "window_starts"]


def _check_sizes(window: int, hop: int) -> None:
    for name, value in (("window", window), ("hop", hop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive number of samples, got {value!r}")


def window_starts(length: int, window: int, hop: int) -> np.ndarray:
    """Start samples [N] of the windows that cover ``length`` samples (see the module docstring).

    ``window_starts(100, 40, 20) -> [0, 20, 40, 60]``; ``window_starts(110, 40, 20) -> [0, 20, 40, 60, 70]``;
    ``window_starts(10, 40, 20) -> [0]``. With ``hop > window`` the windows leave gaps between them.
    """
    _check_sizes(window, hop)
    if length <= 0:
        raise ValueError(f"cannot place windows on an empty signal (length={length})")
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < length:
        starts = np.append(starts, length - window)
    return starts


def _as_tensor(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    wave = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape [T], got shape {tuple(wave.shape)}")
    return wave.float()


def _gather(wave: torch.Tensor, starts: np.ndarray, window: int) -> torch.Tensor:
    """Windows [len(starts), window] of ``wave``, zero-padded where a window runs past the end."""
    if len(wave) < window:
        wave = torch.nn.functional.pad(wave, (0, window - len(wave)))
    return torch.stack([wave[s : s + window] for s in starts.tolist()])


def sliding_windows(wave: np.ndarray | torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """All windows of a mono waveform [T] as one float32 tensor [N, window] (see :func:`window_starts`)."""
    wave = _as_tensor(wave)
    return _gather(wave, window_starts(len(wave), window, hop), window)


def score_long_audio(
    fn: Callable[[torch.Tensor], torch.Tensor],
    wave: np.ndarray | torch.Tensor,
    window: int,
    hop: int,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities of a recording of any length.

    Args:
        fn: maps a batch of windows [B, window] (float32, on ``device``) to probabilities [B, C].
        wave: mono waveform [T] at the model's sample rate.
        window, hop: window length and hop in samples.
        batch_size: windows per call of ``fn`` (windows are cut batch by batch, so an hour of audio never
            sits in memory as N overlapping copies).
        device: where the batches go before ``fn`` (default: stay on the CPU).

    Returns:
        ``(mean_probs [C], window_probs [N, C], starts [N])`` as numpy arrays (float32, float32, int64):
        the mean over windows, each window's probabilities and each window's start sample.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    wave = _as_tensor(wave)
    starts = window_starts(len(wave), window, hop)
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            batch = _gather(wave, starts[i : i + batch_size], window)
            if device is not None:
                batch = batch.to(device)
            probs = fn(batch)
            if probs.ndim != 2 or probs.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"the scoring function returned shape {tuple(probs.shape)} for {batch.shape[0]} windows; "
                    "expected [windows, classes]"
                )
            outputs.append(probs.detach().float().cpu())
    window_probs = torch.cat(outputs).numpy()
    return window_probs.mean(axis=0), window_probs, starts


class StreamScores(NamedTuple):
    """What :func:`score_stream` returns (numpy arrays)."""

    mean_probs: np.ndarray
    """[C] float32: mean of the windows' probabilities."""
    window_probs: np.ndarray | None
    """[N, C] float32 per window, or ``None`` unless ``keep_windows``."""
    starts: np.ndarray
    """[N] int64 start sample of each window."""
    length: int
    """Samples in the signal."""


def score_stream(
    fn: Callable[[torch.Tensor], torch.Tensor],
    blocks: Iterable[np.ndarray],
    window: int,
    hop: int,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    keep_windows: bool = True,
    on_block: Callable[[int], None] | None = None,
) -> StreamScores:
    """:func:`score_long_audio` for a signal that arrives in blocks, without ever holding it whole.

    The windows, their grouping into batches and the result are those of ``score_long_audio`` on the
    concatenated blocks (the same :func:`window_starts`, including the window aligned to the end and the
    zero-padded single window of a short signal); the mean is accumulated in float64.

    Args:
        fn: maps a batch of windows [B, window] (float32, on ``device``) to probabilities [B, C].
        blocks: mono float32 blocks [n] (any sizes, empty ones allowed) in order.
        window, hop: window length and hop in samples.
        batch_size: windows per call of ``fn``.
        device: where the batches go before ``fn`` (default: stay on the CPU).
        keep_windows: keep each window's probabilities (memory ``N * C`` floats; the mean needs only ``C``).
        on_block: called with the number of samples of each block once it has been consumed (progress).

    Memory: at most ``max(window, hop) + batch_size * window`` samples plus one block, whatever the length.

    Raises:
        ValueError: bad sizes, an empty signal, or ``fn`` returning a shape other than [B, C].
    """
    _check_sizes(window, hop)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    buffer = np.zeros(0, np.float32)  # samples [buffer_start, total) still needed by a window
    buffer_start = total = next_start = 0
    batch: list[np.ndarray] = []
    starts: list[int] = []
    kept: list[np.ndarray] = []
    total_probs: np.ndarray | None = None

    def run(views: list[np.ndarray]) -> None:
        nonlocal total_probs
        windows = torch.from_numpy(np.stack(views))
        if device is not None:
            windows = windows.to(device)
        with torch.inference_mode():
            probs = fn(windows)
        if probs.ndim != 2 or probs.shape[0] != windows.shape[0]:
            raise ValueError(f"the scoring function returned shape {tuple(probs.shape)} for {windows.shape[0]} "
                             "windows; expected [windows, classes]")
        probs = probs.detach().float().cpu().numpy()
        total_probs = probs.sum(0, dtype=np.float64) + (0.0 if total_probs is None else total_probs)
        if keep_windows:
            kept.append(probs)

    def emit(start: int, piece: np.ndarray) -> None:
        starts.append(start)
        batch.append(piece)
        if len(batch) == batch_size:
            run(batch)
            batch.clear()

    for block in blocks:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        buffer = np.concatenate([buffer, block]) if len(buffer) else block.copy()
        total += len(block)
        while next_start + window <= total:
            offset = next_start - buffer_start
            emit(next_start, buffer[offset : offset + window].copy())
            next_start += hop
        keep_from = max(buffer_start, min(next_start, total - window))  # the last window may end-align
        buffer, buffer_start = buffer[keep_from - buffer_start :], keep_from
        if on_block is not None:
            on_block(len(block))
    if total == 0:
        raise ValueError(f"cannot place windows on an empty signal (length={total})")
    if total < window:  # one window, zero-padded at the end
        emit(0, np.concatenate([buffer, np.zeros(window - total, np.float32)]))
    elif starts[-1] + window < total:  # one more window aligned to the end
        emit(total - window, buffer[len(buffer) - window :].copy())
    if batch:
        run(batch)
    mean = (total_probs / len(starts)).astype(np.float32)
    window_probs = np.concatenate(kept) if keep_windows else None
    return StreamScores(mean, window_probs, np.asarray(starts, dtype=np.int64), total)
