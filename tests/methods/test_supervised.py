"""The supervised classifier: device-side transforms, overfitting one batch, TTA and optimisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audio_ssl.features import LogMelSpectrogram
from audio_ssl.methods import SupervisedClassifier
from audio_ssl.models import AudioResNet


def tiny_model(**kwargs) -> SupervisedClassifier:
    torch.manual_seed(0)
    defaults = dict(
        encoder=AudioResNet(arch="resnet18", widths=(8, 16, 16, 32)),
        frontend=LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32, normalize="instance"),
        num_classes=4, dropout=0.0, label_smoothing=0.0, freq_mask=0, time_mask=0, mixup_prob=0.0,
        scheduler="none", lr=3e-3,
    )
    defaults.update(kwargs)
    return SupervisedClassifier(**defaults)


def waveforms(batch=8, samples=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    labels = torch.arange(batch) % 4
    freqs = 300.0 * (1 + labels.float())[:, None]
    audio = 0.5 * torch.sin(2 * torch.pi * freqs * t) + 0.05 * torch.randn(batch, samples, generator=g)
    return {"audio": audio, "label": labels, "index": torch.arange(batch)}


def test_eval_transform_is_the_plain_front_end():
    model = tiny_model(freq_mask=8, time_mask=8, mixup_prob=1.0, gain_db=6.0, time_shift=0.3).eval()
    batch = waveforms()
    out = model.on_after_batch_transfer(dict(batch), 0)
    torch.testing.assert_close(out["spec"], model.frontend(batch["audio"]))
    assert "target" not in out


def test_augmentations_only_in_training():
    model = tiny_model(freq_mask=8, time_mask=8, mixup_prob=1.0).train()
    batch = waveforms()
    out = model.on_after_batch_transfer(dict(batch), 0)
    assert not torch.allclose(out["spec"], model.frontend(batch["audio"]))
    assert out["target"].shape == (8, 4)
    torch.testing.assert_close(out["target"].sum(1), torch.ones(8))


def test_overfits_one_batch():
    model = tiny_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = waveforms()
    for _ in range(60):
        b = model.on_after_batch_transfer(dict(batch), 0)
        loss = model.training_step(b, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    assert (model.predict_proba(batch["audio"]).argmax(1) == batch["label"]).all()


def test_tta_averages_shifted_views():
    model = tiny_model(tta_views=4).eval()
    audio = waveforms()["audio"]
    n = audio.shape[1]
    expected = torch.stack(
        [F.softmax(model(model.frontend(torch.roll(audio, s, -1))), 1) for s in (0, n // 4, n // 2, 3 * n // 4)]
    ).mean(0)
    torch.testing.assert_close(model.predict_proba(audio), expected)
    model.tta_views = 1
    torch.testing.assert_close(model.predict_proba(audio), F.softmax(model(model.frontend(audio)), 1))


def test_tta_views_must_be_positive():
    with pytest.raises(ValueError, match="tta_views must be >= 1, got 0"):
        tiny_model(tta_views=0)


def test_onecycle_schedule_peaks_at_max_lr():
    model = tiny_model(scheduler="onecycle", lr=5e-4, max_lr=2e-3, warmup_fraction=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    from audio_ssl.utils.optim import build_scheduler

    sched = build_scheduler("onecycle", optimizer, total_steps=100, warmup_fraction=0.1, max_lr=2e-3)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4)
    assert max(lrs) == pytest.approx(2e-3, rel=1e-3) and lrs.index(max(lrs)) in (9, 10)
    assert lrs[-1] < 1e-6


def test_parameter_groups_exclude_norms_from_weight_decay():
    model = tiny_model(weight_decay=0.05)
    groups = model.parameter_groups()
    decays = {g["weight_decay"] for g in groups}
    assert decays == {0.05, 0.0}
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)
    assert all(p.ndim == 1 for p in no_decay["params"])


def test_init_encoder_from_checkpoint(tmp_path):
    source = tiny_model()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "pre.ckpt")
    target = tiny_model(init_encoder_from=str(tmp_path / "pre.ckpt"))
    torch.manual_seed(1)
    target.encoder.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    target.setup("fit")
    for (name, a), b in zip(source.encoder.state_dict().items(), target.encoder.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    other = tiny_model(encoder=AudioResNet(arch="resnet10", widths=(8, 16, 16, 32)),
                       init_encoder_from=str(tmp_path / "pre.ckpt"))
    with pytest.raises(ValueError, match="do not match this encoder; missing .*unexpected"):
        other.setup("fit")


def test_float16_batches_become_float32_on_the_device():
    model = tiny_model().eval()
    batch = waveforms()
    batch["audio"] = batch["audio"].half()
    out = model.on_after_batch_transfer(batch, 0)
    assert out["audio"].dtype == torch.float32 and out["spec"].dtype == torch.float32


@pytest.mark.parametrize("total_steps", [1, 2, 3, 10, 11])
def test_onecycle_short_runs(total_steps):
    from audio_ssl.utils.optim import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler("onecycle", optimizer, total_steps=total_steps, warmup_fraction=0.1, max_lr=4e-3)
    used = []  # the lr of each optimizer step
    for _ in range(total_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    assert used[0] == pytest.approx(1e-3)  # starts at max_lr / div_factor = the configured lr
    assert all(0 <= lr <= 4e-3 * (1 + 1e-9) for lr in used)  # never negative, never above the peak
    if total_steps >= 10:  # long enough for both phases: warm-up to the peak within 10%, then annealed to ~0
        peak = max(used)
        assert peak == pytest.approx(4e-3, rel=0.01) and used.index(peak) <= round(0.1 * total_steps)
        assert all(a >= b for a, b in zip(used[used.index(peak):], used[used.index(peak) + 1:]))
        assert used[-1] < 0.05 * 4e-3
