"""Contrastive views: crops are windows of the clip, each augmentation's range and per-example randomness,
the strength knob (0 = views differ by their crops only), resized crop against F.interpolate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from audio_ssl.features import LogMelSpectrogram
from audio_ssl.features.views import (
    ViewAugmentation,
    crop_windows,
    derangement,
    mix_in,
    resized_crop,
    sample_crop_starts,
    sample_resized_crop_params,
    spec_mask,
    window_energy,
)

SR = 16000
ONLY_CROP = dict(gain_db=0.0, mix_prob=0.0, time_shift=0.0, freq_mask=0.0, time_mask=0.0, rrc_prob=0.0)


def noise(batch=8, samples=SR, seed=0):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed)) * 0.1


def frontend():
    return LogMelSpectrogram(sample_rate=SR, n_fft=512, hop_length=256, n_mels=32, normalize="instance")


def db(x: torch.Tensor) -> torch.Tensor:
    return 20 * torch.log10(x)


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean(-1).sqrt()


# ----------------------------------------------------------------------------- crops


def test_crops_are_contiguous_windows_of_their_own_clip():
    batch, total, length = 16, 1000, 300
    wave = torch.arange(total).float() + 10_000 * torch.arange(batch).float()[:, None]
    torch.manual_seed(0)
    aug = ViewAugmentation(sample_rate=1000, crop_seconds=0.3)
    crops, starts = aug.crop(wave)
    assert crops.shape == (batch, length)
    assert torch.all(crops.diff(dim=1) == 1)  # contiguous
    clip = torch.div(crops[:, 0], 10_000, rounding_mode="floor")
    assert torch.equal(clip, torch.arange(batch).float())  # from its own clip
    offset = crops[:, 0] - 10_000 * clip
    assert torch.equal(offset.long(), starts) and starts.min() >= 0 and starts.max() <= total - length
    assert len(set(starts.tolist())) > batch // 2  # per-example offsets
    torch.testing.assert_close(crop_windows(wave, starts, length)[3], wave[3, starts[3]: starts[3] + length])


def test_strength_zero_views_are_plain_crops_through_the_front_end():
    wave, fe = noise(), frontend()
    aug = ViewAugmentation(sample_rate=SR, crop_seconds=0.5, strength=0.0)
    torch.manual_seed(3)
    view = aug(wave, fe)
    torch.manual_seed(3)  # the crop offsets are the only randomness at strength 0: replay them
    _, starts = aug.crop(wave)
    crops = torch.stack([wave[b, s: s + SR // 2] for b, s in enumerate(starts.tolist())])
    assert torch.equal(aug.augment_waveform(crops), crops)
    torch.testing.assert_close(view, fe(crops))


def test_strength_zero_without_crop_gives_identical_views():
    wave, fe = noise(), frontend()
    aug = ViewAugmentation(sample_rate=SR, crop_seconds=None, strength=0.0)
    torch.manual_seed(0)
    v1, v2 = aug(wave, fe), aug(wave, fe)
    assert torch.equal(v1, v2)
    torch.testing.assert_close(v1, fe(wave))


def test_default_views_differ_from_each_other_and_per_example():
    wave, fe = noise(), frontend()
    aug = ViewAugmentation(sample_rate=SR, crop_seconds=0.5)
    torch.manual_seed(0)
    v1, v2 = aug(wave, fe), aug(wave, fe)
    assert v1.shape == v2.shape == fe(wave[:, : SR // 2]).shape
    assert (v1 - v2).abs().flatten(1).mean(1).min() > 0.1  # every clip's two views differ


def test_crop_longer_than_clip_names_the_setting():
    with pytest.raises(ValueError, match="crop_seconds=2"):
        ViewAugmentation(sample_rate=SR, crop_seconds=2.0).crop(noise())


def test_energy_check_avoids_silent_windows():
    wave = torch.zeros(64, 4000)
    wave[:, 3000:] = torch.randn(64, 1000)  # the sound is only in the last quarter
    torch.manual_seed(0)
    plain = sample_crop_starts(wave, 1000)
    torch.manual_seed(0)
    checked = sample_crop_starts(wave, 1000, tries=8, min_energy=0.5)
    energy = lambda s: window_energy(wave, s[:, None], 1000)[:, 0]  # noqa: E731
    assert (energy(plain) == 0).float().mean() > 0.5  # most uniform crops miss the sound
    assert (energy(checked) > 0).float().mean() > 0.85  # 8 tries miss with probability (2/3)^8 = 4%
    assert checked.max() <= 3000


def test_window_energy_matches_direct_sum():
    wave = noise(3, 500)
    starts = torch.tensor([[0, 10], [5, 200], [400, 1]])
    expected = torch.stack([torch.stack([wave[b, s: s + 100].double().square().mean() for s in row])
                            for b, row in enumerate(starts.tolist())])
    torch.testing.assert_close(window_energy(wave, starts, 100), expected)


# ----------------------------------------------------------------------------- waveform augmentations


def test_gain_within_range_per_example_and_scaled_by_strength():
    wave = noise(64)
    for strength, bound in [(1.0, 6.0), (0.5, 3.0)]:
        aug = ViewAugmentation(sample_rate=SR, crop_seconds=None, strength=strength, **{**ONLY_CROP, "gain_db": 6.0})
        torch.manual_seed(0)
        gain = db(rms(aug.augment_waveform(wave)) / rms(wave))
        assert gain.abs().max() <= bound + 1e-4
        assert gain.max() > 0.6 * bound and gain.min() < -0.6 * bound  # spread over the range


@pytest.mark.parametrize("n", [2, 3, 10])
def test_derangement_has_no_fixed_points(n: int):
    for seed in range(20):
        torch.manual_seed(seed)
        perm = derangement(n)
        assert sorted(perm.tolist()) == list(range(n))
        assert torch.all(perm != torch.arange(n))


def test_derangement_needs_two_items():
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1)


def test_mix_in_sets_the_relative_level():
    wave, partner = noise(4, seed=1), noise(4, seed=2) * 3
    level = torch.tensor([-20.0, -10.0, 0.0, float("-inf")])
    out = mix_in(wave, partner, level)
    added = out - wave
    torch.testing.assert_close(db(rms(added[:3]) / rms(wave[:3])), level[:3], atol=1e-3, rtol=0)
    assert torch.equal(out[3], wave[3])
    assert torch.equal(mix_in(torch.zeros(1, 100), partner[:1, :100], torch.zeros(1)), torch.zeros(1, 100))


@pytest.mark.parametrize(("strength", "low", "high"), [(1.0, -20.0, -10.0), (2.0, -20 + 6.0206, -10 + 6.0206)])
def test_background_is_another_clip_of_the_batch_at_low_level(strength, low, high):
    wave = noise(32, 4000)
    aug = ViewAugmentation(sample_rate=SR, crop_seconds=None, strength=strength, **{**ONLY_CROP, "mix_prob": 1.0})
    torch.manual_seed(0)
    added = aug.augment_waveform(wave) - wave
    # Identify the mixed-in clip: the added signal is a scaled copy of exactly one other clip.
    coef = (added @ wave.T) / wave.square().sum(1)  # least-squares scale of each clip in `added`
    partner = coef.abs().argmax(1)
    assert torch.all(partner != torch.arange(32))
    residual = added - coef.gather(1, partner[:, None]) * wave[partner]
    assert residual.abs().max() < 1e-5
    level = db(rms(added) / rms(wave))
    assert level.min() >= low - 1e-3 and level.max() <= high + 1e-3
    assert level.max() - level.min() > 5  # per-example levels


def test_time_shift_is_a_bounded_circular_shift():
    wave = noise(16, 1000)
    aug = ViewAugmentation(sample_rate=1000, crop_seconds=None, **{**ONLY_CROP, "time_shift": 0.1})
    torch.manual_seed(0)
    out = aug.augment_waveform(wave)
    shifts = []
    for b in range(16):
        matches = [s for s in range(-100, 101) if torch.equal(out[b], torch.roll(wave[b], s))]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 8


# ----------------------------------------------------------------------------- spectrogram augmentations


def test_resized_crop_identity_parameters():
    spec = torch.randn(3, 1, 16, 40)
    params = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
    torch.testing.assert_close(resized_crop(spec, params), spec, atol=1e-5, rtol=0)


def test_resized_crop_equals_interpolating_the_region():
    gen = torch.Generator().manual_seed(0)
    spec = torch.randn(2, 1, 16, 40, generator=gen)
    # Example 0: frequency rows 4..11 (8 of 16), time columns 10..29 (20 of 40); example 1: rows 0..7, cols 20..39.
    regions = [(4, 8, 10, 20), (0, 8, 20, 20)]
    params = torch.tensor([[w / 40, h / 16, -1 + (2 * t0 + w) / 40, -1 + (2 * f0 + h) / 16]
                           for f0, h, t0, w in regions])
    out = resized_crop(spec, params)
    for b, (f0, h, t0, w) in enumerate(regions):
        ref = F.interpolate(spec[b: b + 1, :, f0: f0 + h, t0: t0 + w], size=(16, 40), mode="bilinear",
                            align_corners=False)[0]
        # Only the outermost rows/columns differ (true neighbours vs. repeated border of the region).
        torch.testing.assert_close(out[b, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_resized_crop_parameters_stay_inside_and_in_range():
    torch.manual_seed(0)
    params = sample_resized_crop_params(4000, (0.3, 0.9), (0.5, 2.0))
    t, f, tc, fc = params.unbind(1)
    assert torch.all(t <= 1) and torch.all(f <= 1)
    assert torch.all(tc.abs() <= 1 - t + 1e-6) and torch.all(fc.abs() <= 1 - f + 1e-6)
    unclipped = (t < 1) & (f < 1)
    area, aspect = (t * f)[unclipped], (t / f)[unclipped]
    assert area.min() >= 0.3 - 1e-5 and area.max() <= 0.9 + 1e-5
    assert aspect.min() >= 0.5 - 1e-5 and aspect.max() <= 2.0 + 1e-5
    assert area.std() > 0.1  # per-example draws
    torch.manual_seed(0)
    half = sample_resized_crop_params(4000, (0.3, 0.9), (0.5, 2.0), p=0.5)
    identity = (half == torch.tensor([1.0, 1.0, 0.0, 0.0])).all(1).float().mean()
    assert 0.45 < identity < 0.55


def test_spec_mask_fills_with_example_mean_and_respects_widths():
    torch.manual_seed(0)
    spec = torch.randn(64, 1, 32, 50) + torch.arange(64).float()[:, None, None, None]
    out = spec_mask(spec, freq_width=8, time_width=10, num_freq_masks=1, num_time_masks=1)
    changed = out != spec
    mean = spec.mean(dim=(-2, -1), keepdim=True)
    assert torch.all(out[changed] == mean.expand_as(spec)[changed])
    masked_rows = (changed.all(dim=3)).sum(dim=(1, 2))  # fully masked mel bins per example
    masked_cols = (changed.all(dim=2)).sum(dim=(1, 2))
    assert masked_rows.max() < 8 and masked_cols.max() < 10
    assert len(set(masked_rows.tolist())) > 3 and len(set(masked_cols.tolist())) > 3


def test_strength_scales_the_spectrogram_ranges():
    aug = ViewAugmentation(sample_rate=SR, rrc_scale=(0.5, 0.9), rrc_ratio=(0.5, 2.0))
    assert aug.effective_rrc() == ((0.5, 0.9), pytest.approx((0.5, 2.0)))
    aug.strength = 0.5
    scale, ratio = aug.effective_rrc()
    assert scale == pytest.approx((0.75, 0.95)) and ratio == pytest.approx((math.sqrt(0.5), math.sqrt(2.0)))
    aug.strength = 0.0
    assert aug.effective_rrc() is None
    spec = torch.randn(4, 1, 32, 50)
    assert torch.equal(aug.augment_spectrogram(spec), spec)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(strength=-1.0), "strength"),
        (dict(rrc_scale=(0.5, 1.5)), "rrc_scale"),
        (dict(rrc_ratio=(1.2, 2.0)), "rrc_ratio"),
        (dict(mix_db=(-10.0, -20.0)), "mix_db"),
        (dict(mix_prob=1.5), "mix_prob"),
        (dict(crop_seconds=0.0), "crop_seconds"),
        (dict(gain_db=-1.0), "gain_db"),
    ],
)
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewAugmentation(**kwargs)
