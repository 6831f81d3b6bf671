"""Window placement and windowed scoring against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio_ssl.evaluation.windows import score_long_audio, score_stream, sliding_windows, window_starts


@pytest.mark.parametrize(
    ("length", "window", "hop", "expected"),
    [
        (100, 40, 20, [0, 20, 40, 60]),  # windows end exactly at the end
        (110, 40, 20, [0, 20, 40, 60, 70]),  # one more window aligned to the end
        (40, 40, 10, [0]),
        (10, 40, 20, [0]),  # shorter than a window: one (padded) window
        (100, 30, 50, [0, 50, 70]),  # hop > window leaves gaps but still reaches the end
    ],
)
def test_window_starts(length, window, hop, expected):
    assert window_starts(length, window, hop).tolist() == expected


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="hop"):
        window_starts(100, 10, 0)
    with pytest.raises(ValueError, match="window"):
        window_starts(100, -1, 5)
    with pytest.raises(ValueError, match="empty"):
        window_starts(0, 10, 5)
    with pytest.raises(ValueError, match="mono"):
        sliding_windows(np.zeros((2, 100)), 10, 5)


def test_sliding_windows_slices_and_pads():
    wave = np.arange(11, dtype=np.float32)
    assert sliding_windows(wave, 4, 3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [7, 8, 9, 10]]
    assert sliding_windows(wave[:3], 5, 2).tolist() == [[0, 1, 2, 0, 0]]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_score_long_audio_is_the_mean_over_windows(batch_size):
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(1000).astype(np.float32)
    weights = torch.from_numpy(rng.standard_normal((64, 3)).astype(np.float32))

    def fn(batch: torch.Tensor) -> torch.Tensor:  # a fixed "model": energy profile of the window -> softmax
        profile = batch.reshape(len(batch), 64, -1).pow(2).mean(-1)
        return torch.softmax(profile @ weights, dim=1)

    mean, per_window, starts = score_long_audio(fn, wave, 256, 200, batch_size=batch_size)
    assert starts.tolist() == [0, 200, 400, 600, 744]
    by_hand = [fn(torch.from_numpy(wave[s : s + 256])[None])[0].numpy() for s in (0, 200, 400, 600, 744)]
    np.testing.assert_allclose(per_window, np.stack(by_hand), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, np.mean(by_hand, axis=0), rtol=1e-5, atol=1e-6)
    assert mean.sum() == pytest.approx(1.0, abs=1e-5)


def test_score_long_audio_checks_the_output_shape():
    with pytest.raises(ValueError, match="expected \\[windows, classes\\]"):
        score_long_audio(lambda b: b.sum(1), np.zeros(100), 10, 10)


def test_score_stream_equals_score_long_audio_for_any_blocks():
    """Random lengths, window/hop sizes (hop above and below the window), batch sizes and block cuts
    (empty blocks included): the same windows, the same per-window and mean probabilities."""
    rng = np.random.default_rng(0)
    weights = torch.randn(40, 6)

    def fn(x):
        return torch.softmax(x[:, :40] @ weights + x.sum(1, keepdim=True), dim=1)

    for _ in range(200):
        length, window = int(rng.integers(1, 500)), int(rng.integers(40, 100))
        hop, batch = int(rng.integers(1, 150)), int(rng.integers(1, 5))
        wave = rng.standard_normal(length).astype(np.float32)
        blocks = np.split(wave, np.sort(rng.integers(0, length, int(rng.integers(0, 8)))))
        seen = []
        mean, per_window, starts = score_long_audio(fn, wave, window, hop, batch)
        got = score_stream(fn, iter(blocks), window, hop, batch, on_block=seen.append)
        assert got.starts.tolist() == starts.tolist() and got.length == length == sum(seen)
        np.testing.assert_allclose(got.window_probs, per_window, atol=1e-6)
        np.testing.assert_allclose(got.mean_probs, mean, atol=1e-6)
    without = score_stream(fn, [wave], 50, 10, keep_windows=False)
    assert without.window_probs is None and without.mean_probs.shape == (6,)
    with pytest.raises(ValueError, match="empty"):
        score_stream(fn, [np.zeros(0, np.float32)], 50, 10)
