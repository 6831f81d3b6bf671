"""Tests for spectrogram patchify / unpatchify and the patch grid convention."""

import pytest
import torch

from audio_ssl.tokenizers.patches import as_patch_size, crop_to_patch_grid, grid_shape, patchify, unpatchify


@pytest.mark.parametrize("patch_size", [16, (16, 16), (8, 4), (16, 2)])
def test_round_trip_exact(patch_size):
    p_f, p_t = as_patch_size(patch_size)
    spec = torch.randn(3, 1, 4 * p_f, 5 * p_t)
    patches = patchify(spec, patch_size)
    assert patches.shape == (3, 20, p_f * p_t)
    assert torch.equal(unpatchify(patches, (4, 5), patch_size), spec)


def test_round_trip_multichannel():
    spec = torch.randn(2, 3, 32, 48)
    patches = patchify(spec, 16)
    assert patches.shape == (2, 6, 3 * 256)
    assert torch.equal(unpatchify(patches, grid_shape(32, 48, 16), 16, channels=3), spec)


def test_frequency_major_order_and_content():
    # each value encodes its (f, t) position, so we can check which region each patch holds
    n_f, n_t, p_f, p_t = 3, 4, 2, 5
    f = torch.arange(n_f * p_f).view(-1, 1)
    t = torch.arange(n_t * p_t).view(1, -1)
    spec = (1000 * f + t).float().view(1, 1, n_f * p_f, n_t * p_t)
    patches = patchify(spec, (p_f, p_t))
    for i_f in range(n_f):
        for i_t in range(n_t):
            n = i_f * n_t + i_t
            region = spec[0, 0, i_f * p_f : (i_f + 1) * p_f, i_t * p_t : (i_t + 1) * p_t]
            assert torch.equal(patches[0, n], region.reshape(-1))


def test_matches_conv_patch_embedding():
    """patchify + linear == Conv2d(stride=kernel).flatten(2): token order matches a ViT patch embed."""
    torch.manual_seed(0)
    spec = torch.randn(2, 1, 64, 48)
    conv = torch.nn.Conv2d(1, 8, kernel_size=(16, 8), stride=(16, 8), bias=False)
    expected = conv(spec).flatten(2).transpose(1, 2)  # [B, N, D]
    got = patchify(spec, (16, 8)) @ conv.weight.view(8, -1).T
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_remainder_is_cropped():
    spec = torch.randn(2, 1, 70, 37)
    assert grid_shape(70, 37, 16) == (4, 2)
    patches = patchify(spec, 16)
    assert patches.shape == (2, 8, 256)
    assert torch.equal(patches, patchify(spec[..., :64, :32], 16))
    assert torch.equal(unpatchify(patches, (4, 2), 16), spec[..., :64, :32])
    assert torch.equal(crop_to_patch_grid(spec, 16), spec[..., :64, :32])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="smaller than one patch"):
        patchify(torch.randn(1, 1, 8, 100), 16)
    with pytest.raises(ValueError, match=r"\[B, C, F, T\]"):
        patchify(torch.randn(1, 64, 100), 16)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(torch.randn(1, 7, 256), (2, 4), 16)
    with pytest.raises(ValueError, match="patch_size"):
        as_patch_size((16, 16, 16))
    with pytest.raises(ValueError, match="positive"):
        as_patch_size(0)
