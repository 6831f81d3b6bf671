"""SpectrogramTransformer: shapes, patch order against patchify, positional embeddings, mask token, patchout."""

from __future__ import annotations

import pytest
import torch

from audio_ssl.models.vit import SpectrogramTransformer, sincos_2d
from audio_ssl.tokenizers.patches import patchify


def tiny(**kwargs) -> SpectrogramTransformer:
    torch.manual_seed(0)
    defaults = dict(n_mels=32, max_frames=64, patch_size=8, embed_dim=32, depth=2, num_heads=4, drop_path=0.0)
    defaults.update(kwargs)
    return SpectrogramTransformer(**defaults)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_shapes_and_mean_pooling(pos_embed):
    model = tiny(pos_embed=pos_embed).eval()
    spec = torch.randn(3, 1, 32, 45)  # 45 frames: 5 time patches, 5 frames cropped
    with torch.no_grad():
        feats = model.forward_features(spec)
        emb = model(spec)
    assert model.grid(spec) == (4, 5)
    assert feats.shape == (3, 20, 32) and model.out_dim == 32
    torch.testing.assert_close(emb, feats.mean(1))


def test_patch_embedding_order_matches_patchify():
    """Token n is the linear map of patch n of ``patchify`` (frequency-major order)."""
    model = tiny()
    spec = torch.randn(2, 1, 32, 40)
    tokens = model.patch_embed(spec).flatten(2).transpose(1, 2)
    weight = model.patch_embed.weight.reshape(model.embed_dim, -1)  # [D, C * p_f * p_t]
    expected = patchify(spec, 8) @ weight.T + model.patch_embed.bias
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_learned_position_is_frequency_plus_time():
    model = tiny()
    pos = model.position_embedding(4, 5).view(4, 5, -1)
    torch.testing.assert_close(pos[2, 3], model.freq_embed[2] + model.time_embed[3])
    with pytest.raises(ValueError, match="n_mels"):
        model.grid(torch.randn(1, 1, 48, 40))
    with pytest.raises(ValueError, match="max_frames"):
        model.grid(torch.randn(1, 1, 32, 80))


def test_sincos_is_distinct_per_position():
    pos = sincos_2d(4, 6, 32)
    assert pos.shape == (24, 32)
    dists = torch.cdist(pos, pos) + torch.eye(24) * 1e3
    assert dists.min() > 0.1
    # the first half depends only on the frequency row, the second only on the time column
    torch.testing.assert_close(pos.view(4, 6, 32)[:, 0, :16], pos.view(4, 6, 32)[:, 5, :16])
    torch.testing.assert_close(pos.view(4, 6, 32)[0, :, 16:], pos.view(4, 6, 32)[3, :, 16:])


def test_mask_token_replaces_masked_patches_only():
    model = tiny().eval()
    spec = torch.randn(2, 1, 32, 40)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, [1, 7]] = True
    plain, masked = model.embed_patches(spec), model.embed_patches(spec, mask)
    torch.testing.assert_close(masked[~mask], plain[~mask])
    pos = model.position_embedding(4, 5)
    torch.testing.assert_close(masked[0, 7], model.mask_token + pos[7])
    # the masked input changes the content of the hidden patch without changing the output's shape
    spec2 = spec.clone()
    spec2[0, :, 0:8, 8:16] += 5.0  # patch (0, 1) = token 1
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(spec, mask), model.forward_features(spec2, mask))
        assert not torch.allclose(model.forward_features(spec), model.forward_features(spec2))


def test_patchout_only_in_training():
    model = tiny(patchout=0.5)
    spec = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(spec), model.forward_features(spec).mean(1))
        model.train()
        torch.manual_seed(1)
        a = model(spec)
        torch.manual_seed(2)
        b = model(spec)
    assert a.shape == (2, 32) and not torch.allclose(a, b)


def test_drop_path_and_gradients():
    model = tiny(drop_path=0.5, dropout=0.1).train()
    spec = torch.randn(4, 1, 32, 40)
    model(spec).pow(2).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n != "mask_token"]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="num_heads"):
        tiny(embed_dim=30, num_heads=4)
