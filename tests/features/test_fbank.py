"""BEATs fbank front end against torchaudio's Kaldi fbank and a by-hand padding-mask reduction."""

from __future__ import annotations

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from audio_ssl.features.fbank import (
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    BEATsFbank,
    beats_fbank,
    reduce_padding_mask,
)


def _waves(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, samples, generator=gen) * 2 - 1) * 0.5


def test_official_constants() -> None:
    assert BEATS_FBANK_MEAN == 15.41663
    assert BEATS_FBANK_STD == 6.55582


@pytest.mark.parametrize("samples", [400, 16000, 24321])
def test_matches_kaldi_fbank_per_clip(samples: int) -> None:
    waves = _waves(3, samples)
    fbank, mask = BEATsFbank()(waves)
    assert mask is None
    expected_frames = 1 + (samples - 400) // 160
    assert fbank.shape == (3, expected_frames, 128)
    assert BEATsFbank().num_frames(samples) == expected_frames
    for i in range(3):
        ref = kaldi.fbank(waves[i : i + 1] * 32768, num_mel_bins=128, sample_frequency=16000,
                          frame_length=25, frame_shift=10)
        ref = (ref - 15.41663) / (2 * 6.55582)
        torch.testing.assert_close(fbank[i], ref, rtol=0, atol=0)


def test_clips_are_independent_and_float32_under_autocast() -> None:
    waves = _waves(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = beats_fbank(waves.bfloat16())
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched[1:], beats_fbank(waves[1:].bfloat16().float()), rtol=0, atol=0)


def test_custom_normalisation() -> None:
    waves = _waves(1, 4000)
    raw = beats_fbank(waves, mean=0.0, std=0.5)  # (x - 0) / 1 = raw log-mel
    torch.testing.assert_close(beats_fbank(waves), (raw - 15.41663) / (2 * 6.55582))


def _reference_reduce(mask: torch.Tensor, length: int) -> torch.Tensor:
    group = mask.size(1) // length
    out = torch.zeros(mask.size(0), length, dtype=torch.bool)
    for b in range(mask.size(0)):
        for j in range(length):
            out[b, j] = bool(mask[b, j * group : (j + 1) * group].all())
    return out


@pytest.mark.parametrize(("samples", "valid"), [(16000, [16000, 9000, 1]), (24321, [24321, 12000, 20000])])
def test_frame_padding_mask(samples: int, valid: list[int]) -> None:
    waves = _waves(len(valid), samples)
    mask = torch.arange(samples)[None, :] >= torch.tensor(valid)[:, None]
    fbank, frame_mask = BEATsFbank()(waves, mask)
    assert frame_mask is not None and frame_mask.shape == fbank.shape[:2]
    assert torch.equal(frame_mask, _reference_reduce(mask, fbank.size(1)))
    assert not frame_mask[0].any()  # fully valid clip
    # A frame is padded only when every sample of its group is padding, so padding starts late enough.
    group = samples // fbank.size(1)
    for row, n in zip(frame_mask, valid):
        first_padded = int((~row).sum())
        assert row[first_padded:].all() and not row[:first_padded].any()
        assert first_padded == min(-(-n // group), fbank.size(1))


def test_reduce_padding_mask_extremes() -> None:
    assert not reduce_padding_mask(torch.zeros(2, 100, dtype=torch.bool), 7).any()
    assert reduce_padding_mask(torch.ones(2, 100, dtype=torch.bool), 7).all()
    with pytest.raises(ValueError, match="cannot reduce"):
        reduce_padding_mask(torch.zeros(1, 5, dtype=torch.bool), 6)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        BEATsFbank()(torch.zeros(16000))
    with pytest.raises(ValueError, match="shorter than one"):
        BEATsFbank()(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="does not match waveforms shape"):
        BEATsFbank()(torch.zeros(2, 1000), torch.zeros(2, 999, dtype=torch.bool))


def test_no_state() -> None:
    assert BEATsFbank().state_dict() == {}
