"""The export-friendly front ends equal the FFT ones: conv-DFT log-mel vs LogMelSpectrogram (torch.stft), batched
conv-DFT Kaldi fbank vs torchaudio.compliance.kaldi.fbank per clip (BEATs' front end)."""

from __future__ import annotations

import pytest
import torch

from audio_ssl.export.frontends import ConvKaldiFbank, ConvLogMelSpectrogram, export_frontend
from audio_ssl.features.fbank import BEATsFbank, beats_fbank
from audio_ssl.features.logmel import LogMelSpectrogram
from audio_ssl.methods.beats import BEATsFbankFrontend


def _waves(batch: int, samples: int, scale: float = 0.3) -> torch.Tensor:
    return scale * torch.randn(batch, samples, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs", [
    {},
    {"n_fft": 512, "hop_length": 256, "n_mels": 32, "normalize": "instance"},
    {"n_fft": 400, "win_length": 300, "hop_length": 160, "n_mels": 64, "log": "log", "top_db": None},
    {"sample_rate": 22050, "n_fft": 1024, "hop_length": 441, "n_mels": 40, "f_min": 50.0, "normalize": "fixed",
     "mean": -30.0, "std": 20.0},
])
@pytest.mark.parametrize("samples", [16000, 1234])
def test_conv_logmel_equals_stft(kwargs, samples):
    reference = LogMelSpectrogram(**kwargs)
    conv = export_frontend(reference)
    assert isinstance(conv, ConvLogMelSpectrogram)
    wave = _waves(3, samples)
    expected, got = reference(wave), conv(wave)
    assert got.shape == expected.shape == (3, 1, reference.n_mels, reference.num_frames(samples))
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(scale))
    torch.testing.assert_close(conv.power_mel(wave), reference.power_mel(wave), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("samples", [400, 16000, 16123])
@pytest.mark.parametrize("scale", [0.3, 1e-3])
def test_conv_kaldi_fbank_equals_torchaudio(samples, scale):
    wave = _waves(4, samples, scale)
    conv = export_frontend(BEATsFbankFrontend())
    assert isinstance(conv, ConvKaldiFbank) and conv.n_fft == 512
    expected, got = beats_fbank(wave), conv(wave)
    assert got.shape == expected.shape == (4, conv.num_frames(samples), 128)
    assert (got - expected).abs().max() < 1e-4  # normalised log-mel units (~1 per 13 dB)


def test_conv_kaldi_fbank_other_settings():
    fbank = BEATsFbank(sample_rate=8000, num_mel_bins=40, frame_length_ms=32.0, frame_shift_ms=8.0, mean=1.0, std=2.0)
    wave = _waves(2, 8000)
    expected = beats_fbank(wave, 8000, 40, 32.0, 8.0, 1.0, 2.0)
    assert ConvKaldiFbank.like(fbank).n_fft == 256
    assert (ConvKaldiFbank.like(fbank)(wave) - expected).abs().max() < 1e-4


def test_errors():
    with pytest.raises(ValueError, match="no export-friendly equivalent of the front end torch.nn.modules.linear.Identity"):
        export_frontend(torch.nn.Identity())
    with pytest.raises(ValueError, match="shorter than one 25.0 ms fbank window"):
        ConvKaldiFbank()(torch.zeros(1, 399))
    with pytest.raises(ValueError, match=r"shape \[B, T\]"):
        ConvLogMelSpectrogram()(torch.zeros(16000))
