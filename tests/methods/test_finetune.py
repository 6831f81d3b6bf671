"""FineTuneClassifier: the frozen probe (no gradient, eval mode), the learning rates of layer-wise decay, the BEATs
groups against the regex rules they replace, augmentation on the front end's output, and overfitting one batch."""

from __future__ import annotations

import math
import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hf_utils import save_tiny_hf_model
from method_utils import tone_clips

from audio_ssl.features.logmel import LogMelSpectrogram
from audio_ssl.methods.beats import BEATsClassifier
from audio_ssl.methods.finetune import FineTuneClassifier
from audio_ssl.models.beats import BEATs, BEATsConfig
from audio_ssl.models.hf_audio import HFAudioEncoder
from audio_ssl.models.resnet import AudioResNet
from audio_ssl.models.vit import SpectrogramTransformer
from audio_ssl.tools.make_beats_checkpoint import beats_config, make_beats_checkpoint
from audio_ssl.utils.optim import build_scheduler, layer_decay_groups

NO_AUG = dict(freq_mask=0, time_mask=0, mixup_prob=0.0, label_smoothing=0.0)


@pytest.fixture(scope="module")
def w2v_folder(tmp_path_factory):
    return save_tiny_hf_model("wav2vec2", tmp_path_factory.mktemp("hf") / "wav2vec2")


@pytest.fixture(scope="module")
def ast_folder(tmp_path_factory):
    return save_tiny_hf_model("ast", tmp_path_factory.mktemp("hf") / "ast")


def _lrs(groups: list[dict]) -> dict[int, float]:
    return {id(p): g["lr"] for g in groups for p in g["params"]}


# ------------------------------------------------------------------------------------------ frozen probe
def test_frozen_encoder_gets_no_gradient_and_stays_in_eval(w2v_folder):
    model = FineTuneClassifier(HFAudioEncoder(str(w2v_folder)), num_classes=4, freeze_encoder=True, **NO_AUG)
    model.train()
    assert model.training and model.head.training and not model.encoder.training
    assert not any(m.training for m in model.encoder.modules())
    batch = model.train_transform(tone_clips(batch=4))
    loss = model.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert [g["name"] for g in model.parameter_groups()] == ["head", "head.no_decay"]
    with torch.enable_grad():
        assert not model.encode(batch["spec"]).requires_grad  # no graph is built through the frozen encoder


# ------------------------------------------------------------------------------------------ learning rates
@pytest.mark.parametrize("kind", ["wav2vec2", "ast"])
def test_fine_tune_lrs_follow_layer_decay_exactly(kind, w2v_folder, ast_folder):
    folder = w2v_folder if kind == "wav2vec2" else ast_folder
    encoder = HFAudioEncoder(str(folder))
    decay, enc_lr, head_lr, depth = 0.6, 2e-4, 3e-3, encoder.num_layers
    model = FineTuneClassifier(encoder, num_classes=4, encoder_lr=enc_lr, head_lr=head_lr, layer_decay=decay,
                               weight_decay=0.05)
    groups = model.parameter_groups()
    lrs = _lrs(groups)
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())  # every trainable parameter, once
    for name, param in model.named_parameters():
        if name.startswith("head."):
            assert lrs[id(param)] == head_lr, name
        else:
            expected = enc_lr * decay ** (depth - encoder.layer_id(name.removeprefix("encoder.")))
            assert lrs[id(param)] == pytest.approx(expected, rel=1e-12), name
    decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert decays[id(params["encoder.model.encoder.layers.0.attention.q_proj.weight" if kind == "wav2vec2"
                            else "encoder.model.layers.0.attention.q_proj.weight"])] == 0.05
    assert all(decays[id(p)] == 0.0 for n, p in params.items() if n.endswith(".bias"))
    if kind == "ast":
        assert decays[id(params["encoder.model.embeddings.position_embeddings"])] == 0.0
    optimizer = model.configure_optimizers()["optimizer"]
    assert sorted({g["initial_lr"] for g in optimizer.param_groups}) == sorted(
        {head_lr} | {enc_lr * decay ** k for k in range(depth + 1)})


def test_without_layer_decay_every_encoder_parameter_gets_encoder_lr(w2v_folder):
    model = FineTuneClassifier(HFAudioEncoder(str(w2v_folder)), num_classes=4, encoder_lr=1e-5, head_lr=1e-3)
    groups = model.parameter_groups()
    assert [g["name"] for g in groups] == ["head", "head.no_decay", "encoder", "encoder.no_decay"]
    assert {g["lr"] for g in groups if g["name"].startswith("encoder")} == {1e-5}


def test_layer_decay_needs_an_encoder_that_states_its_depth():
    flat = torch.nn.Flatten()
    flat.out_dim = 8  # an encoder that does not state its depth (no num_layers, no layer_id)
    with pytest.raises(ValueError, match=r"layer_decay=0.7 needs an encoder with num_layers and layer_id\(param_name\); Flatten"):
        FineTuneClassifier(flat, layer_decay=0.7)
    with pytest.raises(ValueError, match="does not take lr"):
        FineTuneClassifier(AudioResNet(arch="resnet10"), lr=0.1)
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        FineTuneClassifier(AudioResNet(arch="resnet10"), layer_decay=0.0)


# ------------------------------------------------------------------------------------------ BEATs
_OLD_FRONT = re.compile(r"^(patch_embedding|layer_norm|post_extract_proj|encoder\.pos_conv|"
                        r"encoder\.layers\.\d+\.self_attn\.relative_attention_bias)\.")
_OLD_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


def _old_beats_groups(model: BEATs, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """The regex rules BEATsClassifier used before the layer ids moved to the model (the reference)."""

    def layer_id(name: str) -> int:
        if name.startswith("encoder.layer_norm."):
            return model.num_layers if model.cfg.layer_norm_first else 0
        if _OLD_FRONT.match(name):
            return 0
        return int(_OLD_LAYER.match(name).group(1)) + 1

    def no_decay(name, param):
        return param.ndim <= 1 or name.endswith(".bias") or any(
            k in name for k in ("relative_attention_bias", "grep_a", "weight_g"))

    groups: dict = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or name.startswith("predictor."):
            continue
        depth = layer_id(name) if layer_decay is not None else model.num_layers
        scale = layer_decay ** (model.num_layers - depth) if layer_decay is not None else 1.0
        nd = no_decay(name, param)
        if (depth, nd) not in groups:
            label = "" if layer_decay is None else (".front" if depth == 0 else f".layer{depth - 1}")
            groups[(depth, nd)] = {"name": f"encoder{label}{'.no_decay' if nd else ''}", "params": [],
                                   "lr": lr * scale, "lr_scale": scale, "weight_decay": 0.0 if nd else weight_decay}
        groups[(depth, nd)]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def _same_groups(new: list[dict], old: list[dict]) -> None:
    assert [g["name"] for g in new] == [g["name"] for g in old]
    for a, b in zip(new, old):
        assert a["lr"] == b["lr"] and a["lr_scale"] == b["lr_scale"] and a["weight_decay"] == b["weight_decay"]
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]], a["name"]


@pytest.mark.parametrize("layer_decay", [None, 0.65])
@pytest.mark.parametrize("finetuned", [False, True])
def test_beats_groups_equal_the_regex_rules_they_replace(layer_decay, finetuned, tmp_path):
    ckpt = make_beats_checkpoint(tmp_path / "tiny.pt", size="tiny", finetuned=finetuned, num_classes=6)
    model = BEATsClassifier(str(ckpt), num_classes=5, encoder_lr=1e-4, head_lr=1e-3, layer_decay=layer_decay,
                            weight_decay=0.02)
    groups = model.parameter_groups()
    assert [g["name"] for g in groups[:2]] == ["head", "head.no_decay"]
    _same_groups(groups[2:], _old_beats_groups(model.encoder, 1e-4, 0.02, layer_decay))


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_prenorm_beats_groups_equal_the_regex_rules(layer_decay):
    cfg = dict(beats_config("tiny").to_dict(), layer_norm_first=True, deep_norm=False)
    model = BEATs(BEATsConfig.from_dict(cfg))
    _same_groups(layer_decay_groups(model, 1.0, 0.1, layer_decay), _old_beats_groups(model, 1.0, 0.1, layer_decay))
    assert model.layer_id("encoder.layer_norm.weight") == model.num_layers
    with pytest.raises(ValueError, match="not a parameter"):
        model.layer_id("encoder.layers.7.fc1.weight")


# ------------------------------------------------------------------------------------------ augmentation
def test_spec_augment_masks_time_major_fbanks_and_refuses_waveforms(ast_folder, w2v_folder):
    model = FineTuneClassifier(HFAudioEncoder(str(ast_folder)), num_classes=4, freq_mask=4, time_mask=10,
                               mixup_prob=0.0).train()
    batch = model.train_transform(tone_clips(batch=2))
    clean = model.frontend(tone_clips(batch=2)["audio"])
    assert batch["spec"].shape == clean.shape == (2, 64, 16)
    changed = batch["spec"] != clean
    assert changed.any() and not changed.all()


def test_spectrogram_masks_on_a_waveform_model_are_refused_at_construction(w2v_folder):
    encoder = HFAudioEncoder(str(w2v_folder))
    with pytest.raises(ValueError, match=r"freq_mask=0/time_mask=10 mask a spectrogram, but the encoder "
                                         r"HFAudioEncoder .*wav2vec2 is a wav2vec2 model that takes the waveform: "
                                         r"set --model.init_args.freq_mask 0 --model.init_args.time_mask 0"):
        FineTuneClassifier(encoder, num_classes=4, time_mask=10)
    assert FineTuneClassifier(encoder, num_classes=4, **NO_AUG).frontend.outputs_waveform


# ------------------------------------------------------------------------------------------ learning
def test_fine_tune_overfits_one_batch(w2v_folder):
    torch.manual_seed(0)
    model = FineTuneClassifier(HFAudioEncoder(str(w2v_folder)), num_classes=4, encoder_lr=1e-3, head_lr=1e-2,
                               layer_decay=0.8, weight_decay=0.0, **NO_AUG).train()
    encoder_start = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameter_groups())
    batch = tone_clips(batch=8, num_classes=4)
    spec = model.frontend(batch["audio"])
    for _ in range(60):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(spec), batch["label"])
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model.predict_proba(batch["audio"]).argmax(1) == batch["label"]).all()
        assert F.cross_entropy(model(spec), batch["label"]) < 0.05
    moved = [n for n, p in model.encoder.named_parameters() if not torch.equal(p, encoder_start[n])]
    assert len(moved) == len(encoder_start)  # the encoder was fine-tuned, not only the head


# ------------------------------------------------------------------------------------------ freeze phase
class _Snapshots(L.Callback):
    """The encoder's state (weights and BatchNorm statistics), its mode and every group's lr at each epoch's end."""

    def __init__(self):
        self.states, self.modes, self.lrs = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(pl_module.encoder.training)
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.encoder.state_dict().items()})


def test_freeze_phase_trains_only_the_head_then_the_encoder_with_its_own_warmup(tmp_path):
    """freeze_encoder_epochs=2 of 4: through epochs 0-1 the encoder's weights and BatchNorm statistics are exactly
    those it started with, it stays in eval mode and its lr is 0 while the head's warms up; from epoch 2 it trains,
    its lr rising from 0 by the same linear warm-up the head had at step 0 (then cosine)."""
    torch.manual_seed(0)
    encoder = AudioResNet(arch="resnet10", widths=[4, 8, 8, 8])
    model = FineTuneClassifier(encoder, num_classes=4, freeze_encoder_epochs=2, encoder_lr=1e-3, head_lr=1e-2,
                               scheduler="cosine", warmup_fraction=0.25, frontend=LogMelSpectrogram(n_mels=32),
                               **NO_AUG)
    start = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    batches = [tone_clips(batch=4, seed=i, num_classes=4) for i in range(2)]  # 2 steps per epoch, 8 in all
    snaps = _Snapshots()
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[snaps], default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    for epoch in (0, 1):
        for key, value in start.items():
            assert torch.equal(snaps.states[epoch][key], value), (epoch, key)
    changed = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(snaps.states[3][k], v)]
    assert "stem.0.weight" in changed and "stem.1.running_mean" in changed
    assert snaps.modes == [False] * 4 + [True] * 4
    warm = 2  # warmup_fraction 0.25 of 8 steps
    head = [lrs["head"] for lrs in snaps.lrs]
    enc = [lrs["encoder"] for lrs in snaps.lrs]
    assert head[:warm] == pytest.approx([1e-2 * (s + 1) / warm for s in range(warm)])
    assert enc[:4] == [0.0] * 4
    assert enc[4:4 + warm] == pytest.approx([1e-3 * (s + 1) / warm for s in range(warm)])
    assert enc[4 + warm] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0 / 2)))
    assert enc[7] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 2)))


def test_freeze_phase_is_checked():
    encoder = AudioResNet(arch="resnet10", widths=[4, 8, 8, 8])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="freeze_encoder_epochs must be an integer >= 0"):
            FineTuneClassifier(encoder, num_classes=4, freeze_encoder_epochs=bad)
    with pytest.raises(ValueError, match="0 with freeze_encoder: true"):
        FineTuneClassifier(encoder, num_classes=4, freeze_encoder=True, freeze_encoder_epochs=2)
    model = FineTuneClassifier(encoder, num_classes=4, freeze_encoder_epochs=2, scheduler="onecycle")
    groups = [dict(g, start_step=3) if g["name"].startswith("encoder") else g for g in model.parameter_groups()]
    optimizer = torch.optim.AdamW(groups)
    with pytest.raises(ValueError, match="only scheduler=cosine implements, got scheduler='onecycle'"):
        build_scheduler("onecycle", optimizer, 10)
    with pytest.raises(ValueError, match="starts at step 12, outside the schedule's 0..9"):
        build_scheduler("cosine", torch.optim.AdamW([dict(g, start_step=12) for g in model.parameter_groups()]), 10)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_the_package_encoders_state_their_depth_for_layer_decay(kind):
    """AudioResNet: stem 0, stage i at i + 1 (4 stages); SpectrogramTransformer: patch embedding, positions and
    mask token 0, block i at i + 1, final norm at depth, positions and mask token without weight decay."""
    if kind == "resnet":
        encoder = AudioResNet(arch="resnet10", widths=[4, 8, 8, 8])
        depths = {"stem.0.weight": 0, "stem.1.bias": 0, "stages.0.0.conv1.weight": 1, "stages.3.0.bn2.weight": 4}
    else:
        encoder = SpectrogramTransformer(n_mels=32, max_frames=64, patch_size=16, embed_dim=16, depth=3, num_heads=2)
        depths = {"patch_embed.weight": 0, "freq_embed": 0, "time_embed": 0, "mask_token": 0,
                  "blocks.0.attn.qkv.weight": 1, "blocks.2.mlp.0.weight": 3, "norm.weight": 3}
    model = FineTuneClassifier(encoder, num_classes=4, encoder_lr=1e-3, head_lr=1e-2, layer_decay=0.5,
                               weight_decay=0.05, frontend=LogMelSpectrogram(n_mels=32), **NO_AUG)
    groups = model.parameter_groups()
    lrs, decays = _lrs(groups), {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(encoder.named_parameters())
    assert set(depths) <= set(params)
    for name, depth in depths.items():
        assert lrs[id(params[name])] == pytest.approx(1e-3 * 0.5 ** (encoder.num_layers - depth)), name
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())
    if kind == "vit":
        assert [decays[id(params[k])] for k in ("freq_embed", "time_embed", "blocks.0.attn.qkv.weight")] == [0, 0, 0.05]
    with pytest.raises(ValueError, match="is not a parameter"):
        encoder.layer_id("head.weight")


def test_freeze_phase_over_several_processes_needs_ddp_to_accept_unused_parameters():
    """Frozen-encoder epochs give the encoder no gradient, which DDP refuses by default: setup says which strategy
    to use, and accepts one that finds unused parameters (and a single process)."""
    from types import SimpleNamespace

    model = FineTuneClassifier(AudioResNet(arch="resnet10", widths=[4, 8, 8, 8]), num_classes=4,
                               freeze_encoder_epochs=1, frontend=LogMelSpectrogram(n_mels=32), **NO_AUG)
    model._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(_ddp_kwargs={}))
    with pytest.raises(ValueError, match="set --trainer.strategy ddp_find_unused_parameters_true"):
        model.setup("fit")
    model._trainer.strategy._ddp_kwargs = {"find_unused_parameters": True}
    model.setup("fit")
    model._trainer = SimpleNamespace(world_size=1, strategy=SimpleNamespace())
    model.setup("fit")
