"""BEATsClassifier (frozen probe / differential-lr fine-tune), its parameter groups, and the cached probe."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from audio_ssl.data.esc50 import ESC50DataModule
from audio_ssl.evaluation.beats_probe import RANDOM_SEED, beats_probe_task, random_init_copy, run_beats_probe
from audio_ssl.evaluation.embeddings import EmbeddingCache
from audio_ssl.evaluation.fold import FoldContext
from audio_ssl.evaluation.probe import ProbeConfig
from audio_ssl.evaluation.registry import get_pipeline
from audio_ssl.methods.beats import BEATsClassifier, masked_mean
from audio_ssl.models.beats import BEATs, BEATsCheckpointError, BEATsConfig, save_beats_checkpoint
from audio_ssl.tools.make_beats_checkpoint import beats_config, ensure_tiny_checkpoint, make_beats_checkpoint
from audio_ssl.utils.optim import layer_decay_groups

NO_AUG = dict(freq_mask=0, time_mask=0, mixup_prob=0.0, label_smoothing=0.0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_beats_checkpoint(tmp_path_factory.mktemp("beats") / "tiny.pt", size="tiny")


@pytest.fixture(scope="session")
def tiny_ft_ckpt(tmp_path_factory) -> Path:
    return make_beats_checkpoint(tmp_path_factory.mktemp("beats") / "tiny_ft.pt", size="tiny", finetuned=True,
                                 num_classes=6)


def _waves(batch: int, samples: int = 16000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, samples, generator=gen) * 2 - 1) * 0.3


def _tones(labels: list[int], samples: int = 16000, seed: int = 0) -> torch.Tensor:
    """One noisy tone per clip whose frequency is set by the label: separable classes."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    waves = [0.3 * torch.sin(2 * math.pi * 250 * 2 ** (y * 0.75) * t) for y in labels]
    return torch.stack(waves) + 0.01 * torch.randn(len(labels), samples, generator=gen)


def _batch(labels: list[int], samples: int = 16000) -> dict:
    return {"audio": _tones(labels, samples), "label": torch.tensor(labels), "index": torch.arange(len(labels))}


def _train_steps(model: BEATsClassifier, batch: dict, steps: int) -> list[float]:
    """Plain optimisation loop through the module's own hooks and optimizer (constant lr)."""
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    model.train()
    losses = []
    for _ in range(steps):
        b = model.on_after_batch_transfer({k: v.clone() for k, v in batch.items()}, 0)
        loss = F.cross_entropy(model(b["spec"]), b["target"], label_smoothing=model.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _lr_of(groups: list[dict]) -> dict[int, float]:
    lrs: dict[int, float] = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in lrs, "parameter in two groups"
            lrs[id(p)] = g["lr"]
    return lrs


# ---------------------------------------------------------------------------------------------- parameter groups
def test_groups_carry_encoder_and_head_lrs(tiny_ft_ckpt: Path) -> None:
    model = BEATsClassifier(str(tiny_ft_ckpt), num_classes=5, encoder_lr=1e-5, head_lr=1e-3, weight_decay=0.05)
    lrs = _lr_of(model.parameter_groups())
    for name, p in model.named_parameters():
        if name.startswith("encoder.predictor."):
            assert id(p) not in lrs and not p.requires_grad  # the AudioSet predictor never trains
        elif name.startswith("encoder."):
            assert lrs[id(p)] == 1e-5, name
        else:
            assert name.startswith("head.") and lrs[id(p)] == 1e-3, name
    decays = {g["name"]: g["weight_decay"] for g in model.parameter_groups()}
    assert decays == {"head": 0.05, "head.no_decay": 0.0, "encoder": 0.05, "encoder.no_decay": 0.0}
    # The optimizer (and the cosine schedule with warm-up) starts from these lrs.
    optimizer = model.configure_optimizers()["optimizer"]
    assert sorted({g["initial_lr"] for g in optimizer.param_groups}) == [1e-5, 1e-3]


def test_layer_decay_gives_the_exact_per_layer_lrs(tiny_ckpt: Path) -> None:
    decay, enc, num_layers = 0.5, 1e-4, 3
    model = BEATsClassifier(str(tiny_ckpt), num_classes=5, encoder_lr=enc, head_lr=1e-3, layer_decay=decay)
    lrs = _lr_of(model.parameter_groups())
    front = ("patch_embedding.", "layer_norm.", "post_extract_proj.", "encoder.pos_conv.", "encoder.layer_norm.")
    for name, p in model.named_parameters():
        if name.startswith("head."):
            expected = 1e-3
        elif name.removeprefix("encoder.").startswith(front) or "relative_attention_bias" in name:
            expected = enc * decay**num_layers  # the smallest: the front of the network
        else:
            layer = int(name.split(".")[3])  # encoder.encoder.layers.{i}.
            expected = enc * decay ** (num_layers - 1 - layer)
        assert lrs[id(p)] == pytest.approx(expected, rel=1e-12), name
    assert len(lrs) == sum(1 for p in model.parameters() if p.requires_grad)


def test_layer_decay_prenorm_final_norm_is_top_layer() -> None:
    cfg = dict(beats_config("tiny").to_dict(), layer_norm_first=True, deep_norm=False)
    model = BEATs(BEATsConfig.from_dict(cfg))
    lrs = _lr_of(layer_decay_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.1))
    params = dict(model.named_parameters())
    assert lrs[id(params["encoder.layer_norm.weight"])] == 1.0
    assert lrs[id(params["encoder.layers.2.fc1.weight"])] == 1.0
    assert lrs[id(params["encoder.layers.0.fc1.weight"])] == pytest.approx(0.01)
    assert lrs[id(params["patch_embedding.weight"])] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_groups(model, 1.0, 0.0, layer_decay=1.5)


# ---------------------------------------------------------------------------------------------- modes
def _fit(model: BEATsClassifier, esc50_root: Path, cache_dir: Path, tmp_path: Path, steps: int) -> L.Trainer:
    class RecordModes(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            module.modes.append((module.training, module.encoder.training))

    model.modes = []
    dm = ESC50DataModule(str(esc50_root), test_fold=1, batch_size=4, num_workers=0, clip_seconds=1.0,
                         cache_dir=str(cache_dir))
    trainer = L.Trainer(max_steps=steps, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[RecordModes()])
    trainer.fit(model, datamodule=dm)
    return trainer


def test_frozen_probe_never_updates_the_encoder(tiny_ckpt, esc50_root, cache_dir, tmp_path) -> None:
    model = BEATsClassifier(str(tiny_ckpt), num_classes=5, freeze_encoder=True, head_lr=1e-2, **NO_AUG)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert {g["name"] for g in model.parameter_groups()} == {"head", "head.no_decay"}
    trainer = _fit(model, esc50_root, cache_dir, tmp_path, steps=3)
    assert trainer.global_step == 3
    assert model.modes and all(mode == (True, False) for mode in model.modes)  # encoder in eval while training
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    # The Lightning checkpoint rebuilds the module from its hyper-parameters.
    last = next(tmp_path.rglob("*.ckpt"))
    reloaded = BEATsClassifier.load_from_checkpoint(last, map_location="cpu")
    assert reloaded.freeze_encoder and torch.equal(reloaded.head.linear.weight, model.head.linear.weight)


def test_finetune_updates_encoder_and_head(tiny_ckpt: Path) -> None:
    torch.manual_seed(0)
    model = BEATsClassifier(str(tiny_ckpt), num_classes=4, encoder_lr=1e-3, head_lr=1e-3, scheduler="constant",
                            **NO_AUG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model, _batch([0, 1, 2, 3]), steps=2)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable <= changed  # every encoder layer, the front, and the head moved


def test_overfits_one_batch_in_finetune_mode(tiny_ckpt: Path) -> None:
    torch.manual_seed(0)
    model = BEATsClassifier(str(tiny_ckpt), num_classes=4, encoder_lr=3e-4, head_lr=3e-3, scheduler="constant",
                            layer_decay=0.8, weight_decay=0.0, **NO_AUG)
    batch = _batch([0, 1, 2, 3, 0, 1, 2, 3])
    losses = _train_steps(model, batch, steps=40)
    assert losses[-1] < 0.05 < losses[0]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.predict_proba(batch["audio"]).argmax(1), batch["label"])


def test_augmentation_only_in_training(tiny_ckpt: Path) -> None:
    model = BEATsClassifier(str(tiny_ckpt), num_classes=4, freq_mask=20, time_mask=30, mixup_alpha=1.0,
                            mixup_prob=1.0)
    batch = _batch([0, 1, 2, 3])
    clean = model.frontend(batch["audio"])
    model.eval()
    out = model.on_after_batch_transfer(dict(batch), 0)
    assert torch.equal(out["spec"], clean) and "target" not in out
    model.train()
    torch.manual_seed(1)
    out = model.on_after_batch_transfer(dict(batch), 0)
    assert out["spec"].shape == clean.shape and not torch.allclose(out["spec"], clean)
    lam, perm = model.mixup.last_lam, model.mixup.last_perm
    assert perm is not None and lam < 1
    onehot = F.one_hot(batch["label"], 4).float()
    torch.testing.assert_close(out["target"], lam * onehot + (1 - lam) * onehot[perm])
    # With mixup off, SpecAugment masks whole mel bins and whole frames of the [B, frames, mels] fbank
    # (it runs on the [B, 1, mels, frames] view) and fills them with each clip's mean.
    model.mixup.prob = 0.0
    torch.manual_seed(2)
    masked = model.on_after_batch_transfer(dict(batch), 0)["spec"]
    diff = masked != clean
    assert diff.all(dim=1).any() and diff.all(dim=2).any()
    fill = clean.mean(dim=(1, 2), keepdim=True).expand_as(clean)
    torch.testing.assert_close(masked[diff], fill[diff])


def test_fbank_once_and_pooling_over_valid_tokens(tiny_ckpt: Path) -> None:
    model = BEATsClassifier(str(tiny_ckpt), num_classes=4, layers=[0, -1]).eval()
    audio = _waves(2, 24000)
    pad = torch.zeros(2, 24000, dtype=torch.bool)
    pad[1, 9000:] = True
    with torch.no_grad():
        emb = model.embed(audio, pad)
        fbank, frame_mask = model.encoder.frontend(audio, pad)
        out = model.encoder.extract_features(fbank, frame_mask, output_hidden_states=True)
    assert emb.shape == (2, 2 * 64) and model.embedding_dim == 128
    valid = int((~out.padding_mask[1]).sum())
    assert 0 < valid < out.padding_mask.size(1)
    torch.testing.assert_close(emb[1, 64:], out.hidden_states[3][1, ~out.padding_mask[1]].mean(0))
    torch.testing.assert_close(emb[1, :64], out.hidden_states[0][1, ~out.padding_mask[1]].mean(0))
    torch.testing.assert_close(emb[0, 64:], out.features[0].mean(0))
    # The batch hook's fbank is the encoder's own front end: forward(spec) == head(embed(audio)).
    with torch.no_grad():
        spec = model.eval_transform({"audio": audio})["spec"]
        torch.testing.assert_close(model(spec), model.head(model.embed(audio)))
    torch.testing.assert_close(masked_mean(out.features, None), out.features.mean(1))


def test_head_norm_is_per_layer(tiny_ckpt: Path) -> None:
    model = BEATsClassifier(str(tiny_ckpt), num_classes=3, layers=[1, 2], dropout=0.0).eval()
    pooled = torch.randn(2, 128)
    halves = [F.layer_norm(pooled[:, :64], (64,)), F.layer_norm(pooled[:, 64:], (64,))]
    expected = model.head.linear(torch.cat(halves, 1))  # LayerNorm starts at weight 1, bias 0
    torch.testing.assert_close(model.head(pooled), expected)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_checkpoint_is_a_clear_error(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BEATs_iter3_plus_AS2M.pt"):
        BEATsClassifier()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        BEATsClassifier(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="encoder_lr and head_lr"):
        BEATsClassifier(str(tiny_ckpt), lr=0.1)
    with pytest.raises(ValueError, match=r"layers \[4\] out of range.*3 layers"):
        BEATsClassifier(str(tiny_ckpt), layers=[4])


def test_cli_without_checkpoint_names_the_official_file(esc50_root, cache_dir, tmp_path, monkeypatch) -> None:
    from audio_ssl.cli import build_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["audio-ssl"])
    config = Path(__file__).resolve().parents[2] / "experiments" / "beats_finetune.yaml"
    args = ["--config", str(config), "--data.init_args.data_dir", str(esc50_root),
            "--data.init_args.cache_dir", str(cache_dir), "--trainer.accelerator", "cpu",
            "--trainer.logger", "false"]
    with pytest.raises(ValueError, match="--model.init_args.checkpoint.*BEATs_iter3_plus_AS2M.pt"):
        build_cli(args, run=False)


def test_wrong_key_set_is_named(tmp_path: Path) -> None:
    model = BEATs(beats_config("tiny"))
    path = save_beats_checkpoint(model, tmp_path / "bad.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model"]["encoder.layers.1.fc2.bias"]
    ckpt["model"]["head.weight"] = torch.zeros(2)
    torch.save(ckpt, path)
    with pytest.raises(BEATsCheckpointError, match=r"bad\.pt.*missing keys.*layers\.1\.fc2\.bias.*head\.weight"):
        BEATsClassifier(str(path))


# ---------------------------------------------------------------------------------------------- cached probe
def test_features_are_extracted_once_then_read_from_cache(tiny_ckpt, esc50_root, cache_dir, tmp_path) -> None:
    dm = ESC50DataModule(str(esc50_root), test_fold=1, num_workers=0, clip_seconds=1.0, cache_dir=str(cache_dir))
    dm.prepare_data()
    model = BEATsClassifier(str(tiny_ckpt), num_classes=5, freeze_encoder=True)
    fold1 = dm.split([1], random_crop=False)
    first = EmbeddingCache(model, tmp_path, "beats", batch_size=4).features(fold1)
    assert first.computed and first.path.exists() and first.features.shape == (len(fold1), 64)
    with torch.no_grad():
        expected = model.embed(torch.stack([fold1[i]["audio"] for i in range(len(fold1))]))
    np.testing.assert_allclose(first.features, expected.numpy(), rtol=1e-4, atol=1e-5)

    def fail(*args, **kwargs):
        raise AssertionError("the encoder ran although the features are cached")

    model.embed = fail
    second = EmbeddingCache(model, tmp_path, "beats", batch_size=4).features(fold1)
    assert not second.computed and second.path == first.path
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.labels, fold1.labels)
    # Other layers (even under the same weights' hash) or another clip subset get their own file.
    other_layers = BEATsClassifier(str(tiny_ckpt), num_classes=5, freeze_encoder=True, layers=[1, 3])
    same_weights = EmbeddingCache(model, tmp_path, "beats").weights
    cache = EmbeddingCache(other_layers, tmp_path, "beats", weights=same_weights)
    assert cache.path(first.files, fold1.clip_samples, 16000) != first.path
    with pytest.raises(AssertionError, match="encoder ran"):
        EmbeddingCache(model, tmp_path, "beats").features(Subset(fold1, [0, 1]))


def test_cached_probe_over_folds(tiny_ckpt, esc50_root, cache_dir, tmp_path) -> None:
    dm = ESC50DataModule(str(esc50_root), num_workers=0, clip_seconds=1.0, cache_dir=str(cache_dir))
    probe = ProbeConfig(C=[0.1, 1.0], embed_batch_size=5, device="cpu")
    outputs = run_beats_probe(str(tiny_ckpt), dm, test_folds=[1, 2], probe=probe, feature_cache_dir=tmp_path)
    assert set(outputs) == {1, 2} and all(set(o) == {"pretrained", "random_init"} for o in outputs.values())
    # Each of the 5 folds (10 clips each) went through each encoder exactly once over both held-out folds.
    for variant in ("pretrained", "random_init"):
        assert outputs[1][variant].description.details["clips_embedded"] == 50
        assert outputs[2][variant].description.details["clips_embedded"] == 0
        assert len(list(tmp_path.glob(f"{variant}-*.npz"))) == 5
    for fold, variants in outputs.items():
        for out in variants.values():
            details = out.description.details
            assert details["train_folds"] == [f for f in range(1, 6) if f != fold]
            assert len(out.predictions) == 10 and 0.0 <= out.metrics["acc"] <= 1.0
            assert details["probe_C"] in (0.1, 1.0) and set(details["probe_C_scores"]) == {"0.1", "1"}
            assert out.description.dataset.num_clips == 50 and out.description.epochs == 0
            json.dumps(details)
        assert variants["random_init"].description.pretraining_data == "none"
        assert str(tiny_ckpt) in variants["pretrained"].description.pretraining_data
    assert outputs[1]["pretrained"].description.details["weights_hash"] != \
        outputs[1]["random_init"].description.details["weights_hash"]
    again = run_beats_probe(str(tiny_ckpt), dm, test_folds=[2], probe=probe, feature_cache_dir=tmp_path)
    assert again[2]["pretrained"].description.details["clips_embedded"] == 0
    assert again[2]["pretrained"].metrics == outputs[2]["pretrained"].metrics
    # The cross-validation runner's task (pipeline: beats_probe) reads the same cache.
    config = {"checkpoint": str(tiny_ckpt), "feature_cache_dir": str(tmp_path),
              "probe": {"C": [0.1, 1.0], "embed_batch_size": 5, "device": "cpu"},
              "data": {"class_path": "audio_ssl.data.ESC50DataModule",
                       "init_args": {"data_dir": str(esc50_root), "clip_seconds": 1.0, "num_workers": 0,
                                     "cache_dir": str(cache_dir)}}}
    task = get_pipeline("beats_probe")(FoldContext(config, 1, tmp_path / "work"))
    assert task["pretrained"].description.details["clips_embedded"] == 0
    assert task["pretrained"].metrics == outputs[1]["pretrained"].metrics
    assert task["random_init"].metrics == outputs[1]["random_init"].metrics
    with pytest.raises(ValueError, match="'checkpoint:'.*BEATs_iter3_plus_AS2M.pt"):
        beats_probe_task(FoldContext({**config, "checkpoint": None}, 1, tmp_path))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layer'\] for pipeline beats_probe"):
        beats_probe_task(FoldContext({**config, "layer": [1]}, 1, tmp_path))


def test_random_init_control_is_beats_own_initialisation(tiny_ckpt) -> None:
    model = BEATsClassifier(str(tiny_ckpt), num_classes=5, freeze_encoder=True)
    state = torch.get_rng_state()
    control = random_init_copy(model)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    torch.manual_seed(RANDOM_SEED)
    reference = BEATs(model.encoder.cfg).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in control.encoder.state_dict().items())
    pretrained = torch.load(tiny_ckpt, weights_only=True)["model"]
    assert any(not torch.equal(v, pretrained[k]) for k, v in control.encoder.state_dict().items() if k in pretrained)
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in control.head.state_dict().items())


def test_ensure_tiny_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    path.write_bytes(b"not a checkpoint")
    assert ensure_tiny_checkpoint(path) == path
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["cfg"] == beats_config("tiny").to_dict()
    stamp = path.stat().st_mtime_ns
    ensure_tiny_checkpoint(path)
    assert path.stat().st_mtime_ns == stamp  # an existing tiny checkpoint is kept
