"""The supervised classifier: device-side transforms, overfitting one batch, TTA (augmented and shifted views),
the gain that instance normalisation would undo, the OneCycle schedule and the recipes' time masks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_utils import lightning_configs, merged, run_id

from audio_ssl.features import LogMelSpectrogram
from audio_ssl.methods import FineTuneClassifier, SupervisedClassifier
from audio_ssl.models import AudioResNet
from audio_ssl.utils.optim import build_scheduler


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
    frontend = LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32)  # no instance normalisation: gain allowed
    model = tiny_model(freq_mask=8, time_mask=8, mixup_prob=1.0, gain_db=6.0, time_shift=0.3,
                       frontend=frontend).eval()
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


def test_tta_shift_averages_evenly_spaced_circular_shifts():
    model = tiny_model(tta_views=4, tta="shift").eval()
    audio = waveforms()["audio"]
    n = audio.shape[1]
    expected = torch.stack(
        [F.softmax(model(model.frontend(torch.roll(audio, s, -1))), 1) for s in (0, n // 4, n // 2, 3 * n // 4)]
    ).mean(0)
    torch.testing.assert_close(model.predict_proba(audio), expected)
    model.tta_views = 1
    torch.testing.assert_close(model.predict_proba(audio), F.softmax(model(model.frontend(audio)), 1))


def reference_view(model: SupervisedClassifier, audio: torch.Tensor, view: int, seed: int) -> torch.Tensor:
    """View ``view`` of the augmented TTA written out plainly: numpy draws, a roll, masks cell by cell."""
    rng = np.random.default_rng([seed, view])
    u_shift = rng.random()
    freq = [(rng.random(), rng.random()) for _ in range(model.spec_augment.num_freq_masks)]
    time = [(rng.random(), rng.random()) for _ in range(model.spec_augment.num_time_masks)]
    n = audio.shape[1]
    limit = int(model.time_shift * n)
    shift = int(np.floor(u_shift * (2 * limit + 1))) - limit
    spec = model.frontend(torch.roll(audio, shift, -1)).clone()
    mean = spec.mean(dim=(-2, -1))
    for axis, pairs, max_width in ((2, freq, model.spec_augment.freq_mask), (3, time, model.spec_augment.time_mask)):
        size = spec.shape[axis]
        for u, v in pairs:
            width = u * min(max_width, size)
            start = int(v * (size - width))
            for i in range(start, start + int(width)):
                index = [slice(None)] * 4
                index[axis] = i
                spec[tuple(index)] = mean[:, :, None]
    return spec


def test_tta_augment_averages_seeded_training_augmentations():
    model = tiny_model(tta_views=5, time_shift=0.25, freq_mask=8, time_mask=10, num_time_masks=2,
                       tta_seed=3).eval()
    audio = waveforms()["audio"]
    plain = F.softmax(model(model.frontend(audio)), 1)
    with torch.no_grad():
        views = model.tta_inputs(audio)
        torch.testing.assert_close(views[0], model.frontend(audio))  # view 0 is the clean clip
        for v in range(1, 5):
            torch.testing.assert_close(views[v], reference_view(model, audio, v, seed=3))
        probs = model.predict_proba(audio)
        expected = torch.stack([F.softmax(model(reference_view(model, audio, v, 3) if v else model.frontend(audio)),
                                          1) for v in range(5)]).mean(0)
    torch.testing.assert_close(probs, expected)
    assert probs.shape == (8, 4) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(8))
    assert (probs - plain).abs().max() > 1e-3  # the views change the prediction
    torch.manual_seed(123)
    again = model.predict_proba(audio)
    torch.testing.assert_close(again, probs, rtol=0, atol=0)  # deterministic: the global RNG plays no part
    torch.testing.assert_close(model.predict_proba(audio[:3]), probs[:3])  # a clip's views do not depend on its batch
    model.tta_views = 1
    torch.testing.assert_close(model.predict_proba(audio), plain)


def test_tta_augment_masks_stay_within_the_training_widths():
    model = tiny_model(tta_views=40, freq_mask=6, time_mask=9).eval()
    spec = model.frontend(waveforms()["audio"])
    widths = []
    for v in range(1, 40):
        masked = (model._tta_mask(spec, model.tta_view_draws(v)) != spec)[0, 0]  # [F, T]
        widths.append((int(masked.all(dim=1).sum()), int(masked.all(dim=0).sum())))  # masked bins, frames
    assert max(f for f, _ in widths) == 5 and max(t for _, t in widths) == 8  # widths < freq_mask, time_mask


def test_tta_options_are_checked():
    with pytest.raises(ValueError, match="tta_views must be >= 1, got 0"):
        tiny_model(tta_views=0)
    with pytest.raises(ValueError, match="tta must be 'augment' or 'shift', got 'roll'"):
        tiny_model(tta_views=2, tta="roll")
    with pytest.raises(ValueError, match="tta_seed must be >= 0, got -1"):
        tiny_model(tta_views=2, tta="shift", tta_seed=-1)
    with pytest.raises(ValueError, match="time_shift, freq_mask and time_mask are all 0"):
        tiny_model(tta_views=2)  # tiny_model trains without masks or shifts: nothing to draw views from
    tiny_model(tta_views=2, tta="shift")


# ----------------------------------------------------------------------------- gain and instance normalisation


def test_gain_leaves_an_instance_normalised_log_mel_unchanged():
    frontend = LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32, normalize="instance")
    audio = waveforms()["audio"]
    base = frontend(audio)
    for db in (-6.0, -3.0, 6.0):
        assert (frontend(audio * 10 ** (db / 20)) - base).abs().max() < 1e-4
    raw = LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32)  # without normalisation: +6 dB = +6 dB
    torch.testing.assert_close(raw(audio * 10 ** (6 / 20)) - raw(audio), torch.full_like(base, 6.0), atol=1e-3,
                               rtol=0)


def test_gain_with_an_instance_normalised_front_end_is_refused():
    with pytest.raises(ValueError, match=r"gain_db=6.0 has no effect with the front end LogMelSpectrogram "
                                         r"\(normalize='instance'\)"):
        tiny_model(gain_db=6.0)
    encoder = AudioResNet(arch="resnet10", widths=(8, 8, 16, 16))
    with pytest.raises(ValueError, match=r"FineTuneClassifier: gain_db=3.0 has no effect"):
        FineTuneClassifier(encoder=encoder, num_classes=4, gain_db=3.0,
                           frontend=LogMelSpectrogram(n_mels=32, normalize="instance"))
    with pytest.raises(ValueError, match="gain_db must be >= 0"):
        tiny_model(gain_db=-1.0)
    tiny_model(gain_db=6.0, frontend=LogMelSpectrogram(n_mels=32, normalize="fixed", mean=-30.0, std=20.0))


# ----------------------------------------------------------------------------- OneCycle


def onecycle_lrs(total: int, lr: float = 5e-4, max_lr: float = 2e-3, **kwargs) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler("onecycle", optimizer, total_steps=total, warmup_fraction=0.1, max_lr=max_lr, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return lrs


def test_onecycle_starts_at_max_lr_over_div_factor_peaks_at_max_lr_and_ends_lower_still():
    for lr in (5e-4, 1e-3):  # the optimizer's lr does not set the start
        lrs = onecycle_lrs(100, lr=lr)
        assert lrs[0] == pytest.approx(2e-3 / 25)
        assert max(lrs) == pytest.approx(2e-3, rel=1e-3) and lrs.index(max(lrs)) in (9, 10)
        assert lrs[-1] == pytest.approx(2e-3 / (25 * 1e4), rel=0.05)
    lrs = onecycle_lrs(100, div_factor=4.0, final_div_factor=100.0)
    assert lrs[0] == pytest.approx(5e-4) and lrs[-1] == pytest.approx(2e-3 / 400, rel=0.05)
    with pytest.raises(ValueError, match="div_factor and final_div_factor must be > 0"):
        onecycle_lrs(10, div_factor=0.0)


def test_the_method_builds_onecycle_from_max_lr_and_div_factor():
    model = tiny_model(scheduler="onecycle", max_lr=2e-3, div_factor=25.0)
    config = model.configure_optimizers()  # no trainer: 1000 steps
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3 / 25] * 2)
    assert schedule.total_steps == 1000 and [g["max_lr"] for g in optimizer.param_groups] == [2e-3] * 2


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
    assert used[0] == pytest.approx(4e-3 / 25)  # starts at max_lr / div_factor, whatever the optimizer's lr
    assert all(0 <= lr <= 4e-3 * (1 + 1e-9) for lr in used)  # never negative, never above the peak
    if total_steps >= 10:  # long enough for both phases: warm-up to the peak within 10%, then annealed to ~0
        peak = max(used)
        assert peak == pytest.approx(4e-3, rel=0.01) and used.index(peak) <= round(0.1 * total_steps)
        assert all(a >= b for a, b in zip(used[used.index(peak):], used[used.index(peak) + 1:]))
        assert used[-1] < 0.05 * 4e-3


# ----------------------------------------------------------------------------- the recipes' time masks


KALDI_FBANK_FRAMES = {"audio_ssl.methods.BEATsClassifier", "audio_ssl.models.HFAudioEncoder"}
"""Front ends of 25 ms windows every 10 ms at 16 kHz (BEATs' fbank, AST's feature extractor): 1 + (T - 400) // 160."""


def masked_recipes() -> list:
    out = []
    for configs in lightning_configs():
        model = merged(configs).get("model") or {}
        if str(model.get("class_path", "")).split(".")[-1] in ("SupervisedClassifier", "FineTuneClassifier",
                                                              "BEATsClassifier"):
            out.append(configs)
    return out


@pytest.mark.parametrize("configs", masked_recipes(), ids=run_id)
def test_the_largest_time_mask_covers_at_most_a_fifth_of_a_5s_clip(configs):
    """The published recipe masks < 80 of its 431 frames (18.3%); every classifier recipe, resolved (stated
    values, else the class defaults), masks at most 20% of the frames of a 5 s clip at its data's sample rate."""
    from pydoc import locate

    config = merged(configs)
    model, data = config["model"], config["data"]["init_args"]
    cls = locate(model["class_path"])
    args = model.get("init_args") or {}
    default = inspect.signature(cls.__init__).parameters["time_mask"].default
    time_mask, num = args.get("time_mask", default), args.get("num_time_masks", 1)
    if not time_mask or not num:
        return
    samples = round(data.get("clip_seconds", 5.0) * data.get("sample_rate", 16000))
    assert samples == 5 * 16000, "the recipes are stated for 5 s clips at 16 kHz"
    frontend = args.get("frontend")
    if frontend is not None:
        assert frontend["class_path"].endswith("LogMelSpectrogram"), frontend["class_path"]
        frames = LogMelSpectrogram(**(frontend.get("init_args") or {})).num_frames(samples)
    else:
        encoder = (args.get("encoder") or {}).get("class_path", model["class_path"])
        assert encoder in KALDI_FBANK_FRAMES | {model["class_path"]}, f"frames of {encoder}'s front end?"
        frames = 1 + (samples - 400) // 160
    largest = num * (time_mask - 1)  # torchaudio draws each width uniformly in [0, time_mask): at most time_mask - 1
    assert largest / frames <= 0.20, f"{run_id(configs)}: {largest} of {frames} frames"
