"""BEATs: official parameter names, a literal re-derivation of the official maths, masks, checkpoints."""

from __future__ import annotations

import functools
import hashlib
import http.server
import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

from audio_ssl.models.beats import (
    BEATs,
    BEATsCheckpointError,
    BEATsConfig,
    load_beats_checkpoint,
    relative_position_bucket,
    save_beats_checkpoint,
)
from audio_ssl.utils.download import DownloadError

# Small versions of the released architecture (post-norm, DeepNorm, gated relative positions, projection)
# and of the other branch of the official code (pre-norm, no gate, no projection, odd kernel, ReLU).
TINY_ITER3 = dict(
    input_patch_size=16, embed_dim=32, conv_bias=False, encoder_layers=2, encoder_embed_dim=64,
    encoder_ffn_embed_dim=128, encoder_attention_heads=4, activation_fn="gelu",
    layer_wise_gradient_decay_ratio=0.6, layer_norm_first=False, deep_norm=True, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, conv_pos=16,
    conv_pos_groups=4, relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True,
    finetuned_model=False, predictor_dropout=0.0, predictor_class=527,
)
TINY_PRENORM = dict(
    TINY_ITER3, embed_dim=64, conv_bias=True, layer_norm_first=True, deep_norm=False, gru_rel_pos=False,
    conv_pos=15, activation_fn="relu", encoder_layers=3,
)


def _model(cfg: dict[str, Any] = TINY_ITER3, seed: int = 0, perturb: bool = True) -> BEATs:
    """Random tiny model; ``perturb`` moves the parameters off their (partly constant) initial values."""
    torch.manual_seed(seed)
    model = BEATs(BEATsConfig.from_dict(cfg))
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(torch.randn_like(p) * (0.2 if "grep_a" in name or "norm" in name else 0.05))
    return model.eval()


def _waves(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, samples, generator=gen) * 2 - 1) * 0.3


def _tail_mask(samples: int, valid: list[int]) -> torch.Tensor:
    return torch.arange(samples)[None, :] >= torch.tensor(valid)[:, None]


# ---------------------------------------------------------------------------------------------------------
# A literal, loop-and-bmm re-derivation of the official BEATs forward pass from a state dict
# ---------------------------------------------------------------------------------------------------------


def _ref_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    half = num_buckets // 2
    bucket = half if offset > 0 else 0
    n, max_exact = abs(offset), half // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
    return bucket + min(large, half - 1)


def _ref_group_all(mask: torch.Tensor, length: int) -> torch.Tensor:
    group = mask.size(1) // length
    return torch.stack([mask[:, j * group : (j + 1) * group].all(dim=1) for j in range(length)], dim=1)


def _ref_attention(cfg: dict, sd: dict, p: str, x: torch.Tensor, mask: torch.Tensor | None,
                   pos_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fairseq-style attention on ``x [T, B, C]`` with the official 1/32 pre-scaling + max-subtraction trick."""
    length, batch, dim = x.shape
    heads = cfg["encoder_attention_heads"]
    hd = dim // heads
    if cfg["relative_position_embedding"] and pos_bias is None:
        table = sd[f"{p}relative_attention_bias.weight"]
        idx = torch.tensor([[_ref_bucket(k - q, cfg["num_buckets"], cfg["max_distance"]) for k in range(length)]
                            for q in range(length)])
        pos_bias = table[idx].permute(2, 0, 1).unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * heads, length, length)
    scaling, alpha = hd**-0.5, 32
    q = F.linear(x, sd[f"{p}q_proj.weight"], sd[f"{p}q_proj.bias"]) * scaling / alpha
    k = F.linear(x, sd[f"{p}k_proj.weight"], sd[f"{p}k_proj.bias"])
    v = F.linear(x, sd[f"{p}v_proj.weight"], sd[f"{p}v_proj.bias"])
    q, k, v = (t.reshape(length, batch * heads, hd).transpose(0, 1) for t in (q, k, v))
    w = torch.bmm(q, k.transpose(1, 2))
    w = (w - w.max(dim=-1, keepdim=True).values) * alpha
    if mask is not None:
        w = w.view(batch, heads, length, length).masked_fill(mask[:, None, None, :], float("-inf"))
        w = w.view(batch * heads, length, length)
    if pos_bias is not None:
        bias = pos_bias
        if cfg["gru_rel_pos"]:
            query = q.view(batch, heads, length, hd) * alpha / scaling
            g = F.linear(query, sd[f"{p}grep_linear.weight"], sd[f"{p}grep_linear.bias"])
            gate_a, gate_b = torch.sigmoid(g.view(batch, heads, length, 2, 4).sum(-1)).chunk(2, dim=-1)
            gate = gate_a * (gate_b * sd[f"{p}grep_a"] - 1.0) + 2.0
            bias = gate.view(batch * heads, length, 1) * pos_bias
        w = w + bias
    out = torch.bmm(F.softmax(w, dim=-1), v).transpose(0, 1).reshape(length, batch, dim)
    return F.linear(out, sd[f"{p}out_proj.weight"], sd[f"{p}out_proj.bias"]), pos_bias


def _ref_forward(cfg: dict, sd: dict, waves: torch.Tensor,
                 wave_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    fbank = torch.stack([kaldi.fbank(w[None] * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25,
                                     frame_shift=10) for w in waves])
    fbank = (fbank - 15.41663) / (2 * 6.55582)
    mask = None if wave_mask is None else _ref_group_all(wave_mask, fbank.size(1))
    patch = cfg["input_patch_size"]
    x = F.conv2d(fbank.unsqueeze(1), sd["patch_embedding.weight"], sd.get("patch_embedding.bias"), stride=patch)
    x = x.reshape(x.size(0), x.size(1), -1).transpose(1, 2)
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"])
    if mask is not None:
        mask = _ref_group_all(mask, x.size(1))
    if "post_extract_proj.weight" in sd:
        x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    dim = x.size(-1)
    if mask is not None:
        x = x.clone()
        x[mask] = 0
    kernel = cfg["conv_pos"]
    weight = torch._weight_norm(sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"], 2)
    conv = F.conv1d(x.transpose(1, 2), weight, sd["encoder.pos_conv.0.bias"], padding=kernel // 2,
                    groups=cfg["conv_pos_groups"])
    if kernel % 2 == 0:
        conv = conv[:, :, :-1]
    x = x + F.gelu(conv).transpose(1, 2)
    if not cfg["layer_norm_first"]:
        x = F.layer_norm(x, (dim,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    x = x.transpose(0, 1)
    act = {"gelu": lambda t: F.gelu(t.float()).type_as(t), "relu": F.relu}[cfg["activation_fn"]]
    scale = (2 * cfg["encoder_layers"]) ** 0.25 if cfg["deep_norm"] else 1.0
    pos_bias = None
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."

        def ln(t: torch.Tensor, name: str, p: str = p) -> torch.Tensor:
            return F.layer_norm(t, (dim,), sd[f"{p}{name}.weight"], sd[f"{p}{name}.bias"])

        def ffn(t: torch.Tensor, p: str = p) -> torch.Tensor:
            t = act(F.linear(t, sd[f"{p}fc1.weight"], sd[f"{p}fc1.bias"]))
            return F.linear(t, sd[f"{p}fc2.weight"], sd[f"{p}fc2.bias"])

        if cfg["layer_norm_first"]:
            a, pos_bias = _ref_attention(cfg, sd, p + "self_attn.", ln(x, "self_attn_layer_norm"), mask, pos_bias)
            x = x + a
            x = x + ffn(ln(x, "final_layer_norm"))
        else:
            a, pos_bias = _ref_attention(cfg, sd, p + "self_attn.", x, mask, pos_bias)
            x = ln(x * scale + a, "self_attn_layer_norm")
            x = ln(x * scale + ffn(x), "final_layer_norm")
    x = x.transpose(0, 1)
    if cfg["layer_norm_first"]:
        x = F.layer_norm(x, (dim,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    return x, mask


@pytest.mark.parametrize("cfg", [TINY_ITER3, TINY_PRENORM], ids=["iter3", "prenorm"])
def test_matches_reference_maths(cfg: dict) -> None:
    model = _model(cfg)
    waves = _waves(3, 24000)
    mask = _tail_mask(24000, [24000, 15000, 8000])
    sd = model.state_dict()
    with torch.no_grad():
        for wave_mask in (None, mask):
            out = model(waves, wave_mask)
            ref, ref_mask = _ref_forward(cfg, sd, waves, wave_mask)
            torch.testing.assert_close(out.features, ref, rtol=1e-4, atol=1e-4)
            if wave_mask is None:
                assert out.padding_mask is None
            else:
                assert torch.equal(out.padding_mask, ref_mask) and ref_mask[2].any()


def test_relative_position_bucket_matches_definition() -> None:
    for num_buckets, max_distance in ((32, 64), (320, 800)):
        got = relative_position_bucket(1, 2 * max_distance + 1, num_buckets, max_distance)[0]
        offsets = range(2 * max_distance + 1)
        want = torch.tensor([_ref_bucket(o, num_buckets, max_distance) for o in offsets])
        assert torch.equal(got, want)
        neg = relative_position_bucket(2 * max_distance + 1, 1, num_buckets, max_distance)[:, 0]
        assert torch.equal(neg, torch.tensor([_ref_bucket(-o, num_buckets, max_distance) for o in offsets]))
    full = relative_position_bucket(5, 5, 320, 800)
    assert full[2, 2] == 0 and full[2, 3] == 161 and full[3, 2] == 1
    assert relative_position_bucket(1, 5000, 320, 800)[0, -1] == 319  # far right: last bucket
    assert relative_position_bucket(5000, 1, 320, 800)[-1, 0] == 159  # far left: last bucket of the left half


# ---------------------------------------------------------------------------------------------------------
# Parameter names and shapes of the official checkpoints
# ---------------------------------------------------------------------------------------------------------


def _official_keys(layers: int, finetuned: bool) -> set[str]:
    keys = {"patch_embedding.weight", "layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight",
            "post_extract_proj.bias", "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v",
            "encoder.pos_conv.0.bias", "encoder.layer_norm.weight", "encoder.layer_norm.bias"}
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj", "grep_linear"):
            keys |= {f"{p}self_attn.{proj}.weight", f"{p}self_attn.{proj}.bias"}
        keys |= {f"{p}self_attn.grep_a", f"{p}self_attn.relative_attention_bias.weight"}
        for mod in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
            keys |= {f"{p}{mod}.weight", f"{p}{mod}.bias"}
    if finetuned:
        keys |= {"predictor.weight", "predictor.bias"}
    return keys


@pytest.mark.parametrize("finetuned", [False, True])
def test_official_key_names_and_shapes(finetuned: bool) -> None:
    with torch.device("meta"):
        model = BEATs(BEATsConfig.iter3(finetuned_model=finetuned))
    sd = model.state_dict()
    assert set(sd) == _official_keys(12, finetuned)
    assert len(sd) == 250 + 2 * finetuned
    shapes = {
        "patch_embedding.weight": (512, 1, 16, 16),
        "post_extract_proj.weight": (768, 512),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (768, 48, 128),
        "encoder.layers.11.self_attn.relative_attention_bias.weight": (320, 12),
        "encoder.layers.1.self_attn.grep_linear.weight": (8, 64),
        "encoder.layers.3.self_attn.grep_a": (1, 12, 1, 1),
        "encoder.layers.0.fc1.weight": (3072, 768),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    if finetuned:
        assert tuple(sd["predictor.weight"].shape) == (527, 768)
    n_params = sum(p.numel() for p in model.parameters())  # shared position table counted once
    assert 90_000_000 < n_params < 91_000_000


def test_relative_position_table_is_shared() -> None:
    model = _model()
    tables = [layer.self_attn.relative_attention_bias for layer in model.encoder.layers]
    assert all(t is tables[0] for t in tables)
    no_gate = BEATs(BEATsConfig.from_dict(TINY_PRENORM)).state_dict()
    assert not any("grep" in k for k in no_gate) and "post_extract_proj.weight" not in no_gate
    assert "patch_embedding.bias" in no_gate


def test_weight_norm_parametrisation() -> None:
    conv = _model().encoder.pos_conv[0]
    expected = torch._weight_norm(conv.weight_v, conv.weight_g, 2)
    torch.testing.assert_close(conv.weight, expected)
    # Fresh init: g is the norm of v, so the effective weight equals v.
    fresh = BEATs(BEATsConfig.from_dict(TINY_ITER3)).encoder.pos_conv[0]
    torch.testing.assert_close(fresh.weight, fresh.weight_v)


# ---------------------------------------------------------------------------------------------------------
# Shapes, batching, padding
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [2800, 16000, 40000, 80000])
def test_output_shapes(samples: int) -> None:
    model = _model()
    with torch.no_grad():
        out = model(_waves(2, samples), output_hidden_states=True)
    frames = 1 + (samples - 400) // 160
    tokens = (frames // 16) * 8
    assert out.features.shape == (2, tokens, model.out_dim) and model.out_dim == 64
    assert model.num_tokens(samples) == tokens and out.patch_grid == (frames // 16, 8)
    assert out.hidden_states is not None and len(out.hidden_states) == 3
    assert all(h.shape == out.features.shape for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], out.features)  # post-norm: last layer output is the output


def test_too_short_clip_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 16 frames"):
        _model()(_waves(1, 2700))


def test_batched_equals_per_clip() -> None:
    model = _model()
    waves = _waves(3, 16000)
    with torch.no_grad():
        batched = model(waves).features
        single = torch.cat([model(w[None]).features for w in waves])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_all_valid_mask_equals_no_mask() -> None:
    model = _model()
    waves = _waves(2, 16000)
    with torch.no_grad():
        plain = model(waves)
        masked = model(waves, torch.zeros(2, 16000, dtype=torch.bool))
    assert torch.equal(plain.features, masked.features)
    assert masked.padding_mask is not None and not masked.padding_mask.any()


def test_padding_of_one_clip_never_changes_another() -> None:
    model = _model()
    waves = _waves(2, 24000)
    with torch.no_grad():
        ref = model(waves[:1]).features[0]
        outs = [model(waves, _tail_mask(24000, [24000, n])) for n in (20000, 12000, 4000)]
    for out in outs:
        torch.testing.assert_close(out.features[0], ref, rtol=1e-5, atol=1e-5)
    # ... while the padded clip's valid tokens do depend on how much of it is padding.
    assert not torch.allclose(outs[0].features[1, :8], outs[1].features[1, :8])


def test_padded_keys_are_ignored() -> None:
    """Changing the content of fully padded tokens leaves the valid tokens' features unchanged."""
    model = _model()
    fbank, _ = model.frontend(_waves(1, 24000))
    frames = fbank.size(1)
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[:, 64:] = True  # patch rows 4.. of 9 are padding; the reduction maps tokens >= 32 to padding
    noisy = fbank.clone()
    noisy[:, 64:] = torch.randn_like(noisy[:, 64:]) * 5
    with torch.no_grad():
        a = model.extract_features(fbank, mask)
        b = model.extract_features(noisy, mask)
    valid = ~a.padding_mask[0]
    assert int(valid.sum()) == 32
    torch.testing.assert_close(a.features[0, valid], b.features[0, valid], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Training-time behaviour
# ---------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_same_gradients() -> None:
    waves = _waves(2, 16000)
    grads = []
    for ckpt in (False, True):
        model = _model().train()
        model.set_gradient_checkpointing(ckpt)
        assert model.gradient_checkpointing is ckpt
        model(waves).features.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_layer_wise_gradient_decay() -> None:
    """Every path from the patch embedding crosses all L gradient multipliers: its gradient scales by r**L."""
    fbank, _ = _model().frontend(_waves(1, 16000))
    grads = []
    for ratio in (1.0, 0.6):
        model = _model(dict(TINY_ITER3, layer_wise_gradient_decay_ratio=ratio))
        model.extract_features(fbank).features.sum().backward()
        grads.append(model.patch_embedding.weight.grad)
    torch.testing.assert_close(grads[1], grads[0] * 0.6**2, rtol=1e-4, atol=1e-7)


def test_layerdrop_skips_layers_in_training_only() -> None:
    model = _model(dict(TINY_ITER3, encoder_layerdrop=1.0))
    fbank, _ = model.frontend(_waves(1, 16000))
    with torch.no_grad():
        dropped = model.train().extract_features(fbank, output_hidden_states=True)
        kept = model.eval().extract_features(fbank, output_hidden_states=True)
    assert torch.equal(dropped.features, dropped.hidden_states[0])
    assert not torch.allclose(kept.features, kept.hidden_states[0])


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


def test_config_round_trip_and_defaults(caplog: pytest.LogCaptureFixture) -> None:
    cfg = BEATsConfig.from_dict(dict(TINY_ITER3, some_training_flag=3))
    assert cfg.extra == {"some_training_flag": 3} and "some_training_flag" in caplog.text
    assert cfg.to_dict() == dict(TINY_ITER3, some_training_flag=3)
    partial = BEATsConfig.from_dict({"input_patch_size": 16})
    assert partial.max_distance == 1280 and partial.embed_dim == 512 and not partial.deep_norm  # official defaults
    assert BEATsConfig.iter3().max_distance == 800


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"input_patch_size": -1}, "input_patch_size"),
        ({"encoder_attention_heads": 5}, "encoder_embed_dim"),
        ({"activation_fn": "swish"}, "activation_fn"),
        ({"deep_norm": True, "layer_norm_first": True}, "deep_norm"),
        ({"encoder_layers": "2"}, "encoder_layers"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_config_errors_name_the_field(override: dict, match: str) -> None:
    with pytest.raises((ValueError, BEATsCheckpointError), match=match):
        BEATsConfig.from_dict(dict(TINY_ITER3, **override))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = save_beats_checkpoint(model, tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"cfg", "model"} and raw["cfg"] == TINY_ITER3
    loaded = load_beats_checkpoint(path)
    assert not loaded.training and loaded.label_dict is None
    assert loaded.weights_source == str(path.resolve()) and model.weights_source == "random init"
    assert loaded.describe() == f"BEATs {TINY_ITER3['encoder_layers']} layers x {TINY_ITER3['encoder_embed_dim']}"
    waves = _waves(2, 16000)
    with torch.no_grad():
        assert torch.equal(model(waves).features, loaded(waves).features)


def test_finetuned_checkpoint_predictor_and_labels(tmp_path: Path) -> None:
    cfg = dict(TINY_ITER3, finetuned_model=True, predictor_class=5)
    model = _model(cfg)
    model.label_dict = {i: f"/m/label{i}" for i in range(5)}
    loaded = load_beats_checkpoint(save_beats_checkpoint(model, tmp_path / "ft.pt"))
    assert loaded.label_dict == model.label_dict
    waves = _waves(2, 24000)
    mask = _tail_mask(24000, [24000, 9000])
    with torch.no_grad():
        probs = loaded.predict(waves, mask)
        out = loaded(waves, mask)
        logits = F.linear(out.features, model.state_dict()["predictor.weight"], model.state_dict()["predictor.bias"])
    keep = (~out.padding_mask).float().unsqueeze(-1)
    expected = torch.sigmoid((logits * keep).sum(1) / keep.sum(1))
    assert probs.shape == (2, 5)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs[0], torch.sigmoid(logits[0].mean(0)))
    with pytest.raises(RuntimeError, match="no predictor"):
        _model().clip_logits(out.features)


def test_wrong_keys_are_named(tmp_path: Path) -> None:
    sd = _model().state_dict()
    sd["encoder.extra_thing.weight"] = torch.zeros(1)
    del sd["encoder.layers.1.self_attn.grep_a"]
    sd["encoder.layers.0.fc2.weight"] = torch.zeros(3, 3)
    torch.save({"cfg": TINY_ITER3, "model": sd}, tmp_path / "bad.pt")
    with pytest.raises(BEATsCheckpointError) as err:
        load_beats_checkpoint(tmp_path / "bad.pt")
    msg = str(err.value)
    assert "encoder.extra_thing.weight" in msg and "encoder.layers.1.self_attn.grep_a" in msg
    assert "encoder.layers.0.fc2.weight has shape (3, 3)" in msg and "bad.pt" in msg


def test_unshared_position_tables_are_rejected(tmp_path: Path) -> None:
    sd = {k: v.clone() for k, v in _model().state_dict().items()}
    sd["encoder.layers.1.self_attn.relative_attention_bias.weight"] += 1
    torch.save({"cfg": TINY_ITER3, "model": sd}, tmp_path / "unshared.pt")
    with pytest.raises(BEATsCheckpointError, match="relative_attention_bias.weight differs"):
        load_beats_checkpoint(tmp_path / "unshared.pt")


CODE_RAN: list[str] = []


def _side_effect() -> dict:
    CODE_RAN.append("pickle executed code")
    return {}


class _Payload:
    def __reduce__(self) -> tuple:
        return (_side_effect, ())


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"cfg": TINY_ITER3, "model": _model().state_dict(), "extra": _Payload()}, path)
    with pytest.raises(BEATsCheckpointError, match=r"refusing to load .*evil\.pt"):
        load_beats_checkpoint(path)
    assert CODE_RAN == []


def test_malformed_files(tmp_path: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BEATsCheckpointError, match="garbage.pt"):
        load_beats_checkpoint(tmp_path / "garbage.pt")
    torch.save({"model": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(BEATsCheckpointError, match=r"'cfg' and 'model'.*\['model'\]"):
        load_beats_checkpoint(tmp_path / "nocfg.pt")
    with pytest.raises(FileNotFoundError, match=r"not found at .*missing\.pt.*put it at"):
        load_beats_checkpoint(tmp_path / "missing.pt")


def test_local_checksum(tmp_path: Path) -> None:
    path = save_beats_checkpoint(_model(), tmp_path / "tiny.pt")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(load_beats_checkpoint(path, sha256=digest), BEATs)
    with pytest.raises(BEATsCheckpointError, match="checksum mismatch"):
        load_beats_checkpoint(path, sha256="0" * 64)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    _CountingHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_CountingHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_url_download_once_with_checksum(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    model = _model()
    digest = hashlib.sha256(save_beats_checkpoint(model, root / "BEATs_tiny.pt").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    url = f"{base}/BEATs_tiny.pt?token=abc"
    first = load_beats_checkpoint(url, cache_dir=cache, sha256=digest)
    second = load_beats_checkpoint(url, cache_dir=cache, sha256=digest)
    assert len(_CountingHandler.requests) == 1 and (cache / "BEATs_tiny.pt").is_file()
    waves = _waves(1, 8000)
    with torch.no_grad():
        assert torch.equal(first(waves).features, model(waves).features)
        assert torch.equal(second(waves).features, model(waves).features)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        load_beats_checkpoint(f"{base}/BEATs_tiny.pt", cache_dir=tmp_path / "other", sha256="0" * 64)
    assert not (tmp_path / "other" / "BEATs_tiny.pt").exists()


def test_unreachable_url_gives_offline_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"offline.*place it at .*BEATs_iter3\.pt"):
        load_beats_checkpoint(f"http://127.0.0.1:{port}/BEATs_iter3.pt", cache_dir=cache)
    assert not any(cache.glob("*.pt"))


def test_bf16_autocast_runs_and_stays_close() -> None:
    model = _model()
    waves = _waves(2, 16000)
    mask = _tail_mask(16000, [16000, 9000])
    with torch.no_grad():
        ref = model(waves, mask).features
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(waves, mask).features
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
