"""LogMelSpectrogram against librosa, shapes, dtype under autocast, batching and normalisation."""

import librosa
import numpy as np
import pytest
import torch

from audio_ssl.features.logmel import LogMelSpectrogram

SR = 16000


def _waves(num_samples: int = SR) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(num_samples) / SR
    return np.stack(
        [
            0.1 * rng.standard_normal(num_samples),
            0.5 * np.sin(2 * np.pi * 440.0 * t),
            0.3 * np.sin(2 * np.pi * 3000.0 * t) + 0.01 * rng.standard_normal(num_samples),
        ]
    ).astype(np.float32)


def _librosa_db(y: np.ndarray, top_db: float | None, **kw) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=kw.get("sr", SR),
        n_fft=kw.get("n_fft", 1024),
        hop_length=kw.get("hop_length", 512),
        win_length=kw.get("win_length"),
        n_mels=kw.get("n_mels", 128),
        fmin=kw.get("fmin", 0.0),
        fmax=kw.get("fmax"),
        power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=top_db)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"n_fft": 400, "hop_length": 160, "win_length": 320, "n_mels": 64, "fmin": 50.0, "fmax": 7000.0},
    ],
)
def test_matches_librosa(kw):
    waves = _waves()
    module = LogMelSpectrogram(
        sample_rate=SR,
        n_fft=kw.get("n_fft", 1024),
        hop_length=kw.get("hop_length", 512),
        win_length=kw.get("win_length"),
        n_mels=kw.get("n_mels", 128),
        f_min=kw.get("fmin", 0.0),
        f_max=kw.get("fmax"),
        top_db=None,
    )
    out = module(torch.from_numpy(waves))
    for i, y in enumerate(waves):
        ref = _librosa_db(y, top_db=None, **kw)
        got = out[i, 0].numpy()
        assert got.shape == ref.shape
        # Bins above -80 dB and within 80 dB of the example's peak (below that float32 FFT noise dominates).
        keep = (ref > -80.0) & (ref > ref.max() - 80.0)
        assert keep.mean() > 0.1  # a pure sine leaves few bins in range
        assert np.abs(got - ref)[keep].max() < 0.01


def test_top_db_matches_librosa():
    waves = _waves()
    out = LogMelSpectrogram(top_db=80.0)(torch.from_numpy(waves))
    for i, y in enumerate(waves):
        ref = _librosa_db(y, top_db=80.0)
        got = out[i, 0].numpy()
        assert got.min() >= got.max() - 80.0 - 1e-4
        assert np.abs(got - ref).max() < 0.05
    # The sine has a > 80 dB range before clamping, so the clamp must be active there.
    assert np.isclose(out[1, 0].min().item(), out[1, 0].max().item() - 80.0, atol=1e-4)


def test_shapes_and_num_frames():
    module = LogMelSpectrogram(n_mels=64, hop_length=160, n_fft=400)
    for num_samples in (400, 1599, 1600, 16000, 16001):
        out = module(torch.randn(2, num_samples))
        assert out.shape == (2, 1, 64, module.num_frames(num_samples))
        assert module.num_frames(num_samples) == 1 + num_samples // 160
    assert module.frames_per_second == 100.0


def test_float32_under_bf16_autocast():
    module = LogMelSpectrogram()
    wave = torch.randn(2, 8000)
    ref = module(wave)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = module(wave.bfloat16())
    assert out.dtype == torch.float32
    # Only the bf16 rounding of the input waveform differs (~0.4% amplitude -> < 0.1 dB typically).
    assert (out - ref).abs().median() < 0.1
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out32 = module(wave)
    torch.testing.assert_close(out32, ref)


def test_batched_equals_per_item():
    module = LogMelSpectrogram(normalize="instance")
    wave = torch.randn(4, 12000)
    batched = module(wave)
    single = torch.cat([module(w.unsqueeze(0)) for w in wave])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-5)


def test_log_and_normalisation_modes():
    wave = torch.randn(3, 8000)
    power = LogMelSpectrogram().power_mel(wave).unsqueeze(1)
    torch.testing.assert_close(LogMelSpectrogram(log="log", eps=1e-6)(wave), torch.log(power + 1e-6))
    db = LogMelSpectrogram(top_db=None)(wave)
    torch.testing.assert_close(db, 10 * torch.log10(power.clamp_min(1e-10)))
    inst = LogMelSpectrogram(normalize="instance")(wave)
    torch.testing.assert_close(inst.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(inst.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    fixed = LogMelSpectrogram(normalize="fixed", mean=-20.0, std=5.0)(wave)
    torch.testing.assert_close(fixed, (LogMelSpectrogram()(wave) + 20.0) / 5.0)


def test_buffers_move_and_are_not_persistent():
    module = LogMelSpectrogram(n_mels=32)
    assert module.mel_fbanks.shape == (32, 513)
    assert "mel_fbanks" not in module.state_dict()
    module = module.to(torch.float64)
    assert module.mel_fbanks.dtype == torch.float64
    assert module(torch.randn(1, 4000)).dtype == torch.float32


def test_bad_input_raises():
    module = LogMelSpectrogram()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        module(torch.randn(2, 1, 4000))
    with pytest.raises(ValueError, match="normalize"):
        LogMelSpectrogram(normalize="global")
    with pytest.raises(ValueError, match="f_max"):
        LogMelSpectrogram(f_max=9000.0)
