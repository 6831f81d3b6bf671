"""BYOL-A: the loss against a plain reference, the exact EMA update and its schedule, the teacher's frozen eval
mode, BYOL-A's views (log-mixup-exp, virtual random resize crop, post-normalisation), overfitting one batch, a
short Lightning fit, and two gloo processes equal to one process on the concatenated batch."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from ddp_utils import run_distributed
from method_utils import tone_clips
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from audio_ssl.data import ESC50DataModule
from audio_ssl.features import BYOLAViews, LogMelSpectrogram
from audio_ssl.features.views import log_mixup_exp, resized_crop, sample_virtual_crop_params
from audio_ssl.losses import byol_loss
from audio_ssl.methods import BYOLA
from audio_ssl.methods.momentum import cosine_momentum, update_momentum
from audio_ssl.models import AudioResNet

SR = 16000


def tiny_byola(**kwargs) -> BYOLA:
    torch.manual_seed(0)
    defaults = dict(
        encoder=AudioResNet(arch="resnet10", widths=(8, 8, 16, 16)),
        frontend=LogMelSpectrogram(sample_rate=SR, n_fft=512, hop_length=256, n_mels=32, normalize="instance"),
        views=BYOLAViews(crop_seconds=0.5, memory_size=16), num_classes=4, proj_hidden_dim=32, proj_dim=16,
        pred_hidden_dim=32, scheduler="none", optimizer="adamw", lr=3e-3, knn_k=3,
    )
    defaults.update(kwargs)
    return BYOLA(**defaults)


def clips(batch=8, samples=SR, seed=0):
    return tone_clips(batch, samples, seed, SR)


# ----------------------------------------------------------------------------- the loss


def test_byol_loss_equals_the_mean_squared_distance_of_normalised_vectors():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    reference = np.mean([np.sum((pi / np.linalg.norm(pi) - zi / np.linalg.norm(zi)) ** 2)
                         for pi, zi in zip(p.numpy(), z.numpy())])
    assert byol_loss(p, z).item() == pytest.approx(reference, rel=1e-6)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)
    z.requires_grad_(True)
    p.requires_grad_(True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None  # the target carries no gradient
    with pytest.raises(ValueError, match="B, D"):
        byol_loss(torch.randn(4, 3), torch.randn(4, 2))


# ----------------------------------------------------------------------------- the momentum teacher


def test_update_momentum_is_exact_for_parameters_and_running_statistics():
    student, teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4),
                                                                                      nn.BatchNorm1d(4))
    student(torch.randn(5, 3))  # running statistics differ now
    student[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_momentum(student, teacher, 0.9)
    for name, value in teacher.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[name] + 0.1 * student.state_dict()[name]
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-7, msg=name)
    assert teacher[1].num_batches_tracked.item() == 7
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(student, teacher, 1.5)
    with pytest.raises(ValueError, match="differ"):
        update_momentum(student, nn.Sequential(nn.Linear(3, 4)), 0.5)


def test_cosine_momentum_rises_from_base_to_final():
    assert cosine_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(250, 100, 0.996, 1.0) == pytest.approx(1.0)
    values = [cosine_momentum(k, 10, 0.9, 1.0) for k in range(11)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert cosine_momentum(37, 100, 0.99, 0.99) == 0.99  # BYOL-A: constant
    with pytest.raises(ValueError):
        cosine_momentum(0, 10, 0.99, 0.9)


def test_teacher_has_no_gradients_and_stays_in_eval_mode():
    model = tiny_byola().train()
    assert not model.teacher.module.training and model.encoder.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert not model.teacher.module.training
    out = model.teacher(torch.randn(2, 1, 32, 20))
    assert out.shape == (2, 16) and not out.requires_grad
    torch.testing.assert_close(model.teacher.module[0].stem[0].weight, model.encoder.stem[0].weight)  # starts equal
    with torch.no_grad():
        model.encoder.stem[0].weight.add_(1.0)
    model.teacher.update(model.student(), step=0, total_steps=10)  # tau = 0.99
    torch.testing.assert_close(model.teacher.module[0].stem[0].weight,
                               model.encoder.stem[0].weight - 0.99)


def test_teacher_with_batch_statistics_normalises_by_the_batch_and_returns_to_eval():
    from torch import nn

    from audio_ssl.methods.momentum import MomentumTeacher

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    x = torch.randn(16, 4) * 5 + 3
    by_batch, by_running = MomentumTeacher(student, batch_statistics=True), MomentumTeacher(student)
    out = by_batch(x)
    # batch statistics: every feature of the output has mean 0 and (biased) variance 1 over the batch
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    assert not by_batch.module.training and not out.requires_grad
    expected = student[1].eval()(student[0](x)).detach()  # running statistics (0 and 1 at the start)
    torch.testing.assert_close(by_running(x), expected)
    assert not torch.allclose(out, expected)
    from audio_ssl.methods import BYOLA

    assert isinstance(tiny_byola(), BYOLA) and tiny_byola().teacher.batch_statistics


# ----------------------------------------------------------------------------- the views


def test_log_mixup_exp_matches_the_linear_domain_mixture():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 1, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 1, 4, 5, generator=g,
                                                                                  dtype=torch.float64)
    ratio = torch.tensor([0.0, 0.25, 0.39], dtype=torch.float64)
    expected = np.log((1 - ratio.numpy()[:, None, None, None]) * np.exp(x.numpy())
                      + ratio.numpy()[:, None, None, None] * np.exp(y.numpy()))
    np.testing.assert_allclose(log_mixup_exp(x, y, ratio).numpy(), expected, rtol=1e-12)


def test_virtual_crop_of_the_whole_spectrogram_is_the_identity_and_zooming_out_pads_with_zeros():
    spec = torch.randn(2, 1, 8, 12)
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)
    torch.testing.assert_close(resized_crop(spec, identity, padding_mode="zeros"), spec)
    params = sample_virtual_crop_params(500, (0.6, 1.5), (0.6, 1.5), (1.0, 1.5))
    time_frac, freq_frac, time_c, freq_c = params.unbind(1)
    assert freq_frac.max() <= 1.0 and time_frac.max() <= 1.5 and time_frac.min() >= 0.6
    assert (freq_c.abs() <= 1.0 - freq_frac + 1e-6).all() and (time_c.abs() <= 1.5 - time_frac + 1e-6).all()
    zoom_out = torch.tensor([[1.5, 1.0, 0.0, 0.0]])
    out = resized_crop(torch.ones(1, 1, 8, 12), zoom_out, padding_mode="zeros")
    assert out[..., 0].abs().max() < 0.5 and out[..., 6].min() == 1.0  # zeros at the time edges, the clip inside


def test_byola_views_share_one_crop_fill_the_memory_only_in_training_and_are_standardised():
    views = BYOLAViews(sample_rate=SR, crop_seconds=0.5, memory_size=10)
    frontend = LogMelSpectrogram(sample_rate=SR, n_fft=512, hop_length=256, n_mels=32, normalize="instance")
    audio = clips(6)["audio"]
    v1, v2 = views.pair(audio, frontend)
    assert v1.shape == v2.shape == (6, 1, 32, frontend.num_frames(SR // 2)) and not torch.allclose(v1, v2)
    assert v1.mean().abs() < 1e-4 and (v1.std() - 1).abs() < 1e-3  # post-normalisation over the batch
    assert views.memory.shape == (6, 1, 32, frontend.num_frames(SR // 2))
    views.pair(audio, frontend)
    assert len(views.memory) == 10  # the newest memory_size clips
    views.eval()
    views.pair(audio, frontend)
    assert len(views.memory) == 10
    no_aug = BYOLAViews(sample_rate=SR, crop_seconds=None, mixup_ratio=0.0, freq_scale=(1, 1), time_scale=(1, 1),
                        virtual_scale=(1, 1), post_norm=False)
    a, b = no_aug.pair(audio, frontend)
    torch.testing.assert_close(a, frontend(audio))
    torch.testing.assert_close(b, frontend(audio))
    with pytest.raises(ValueError, match="built for 8000 Hz"):
        BYOLAViews(sample_rate=8000).bind(SR)


# ----------------------------------------------------------------------------- the method


def test_embed_is_the_online_encoder_and_probe_gradients_stay_out_of_it():
    model = tiny_byola().train()
    audio = clips()["audio"]
    model.eval()
    torch.testing.assert_close(model.embed(audio), model.encoder(model.frontend(audio)))
    model.train()
    batch = model.on_after_batch_transfer(dict(clips()), 0)
    model.log_metrics = lambda *a, **k: None  # type: ignore[method-assign]
    params = list(model.encoder.parameters())
    torch.manual_seed(3)
    total = torch.autograd.grad(model.training_step(batch, 0), params)
    torch.manual_seed(3)
    loss, _ = model.byol_step(batch["view1"], batch["view2"])
    for a, b in zip(total, torch.autograd.grad(loss, params)):
        torch.testing.assert_close(a, b)


def test_overfits_one_batch_with_the_teacher_following():
    model = tiny_byola(online_probe=False, knn_k=0).train()
    torch.manual_seed(1)
    view1, view2 = model.views.pair(clips()["audio"], model.frontend)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(60):
        loss, _ = model.byol_step(view1, view2)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.teacher.update(model.student(), step, 60)
    assert losses[0] > 1.0 and losses[-1] < 0.1 * losses[0]


def test_short_fit_logs_the_monitors_and_moves_the_teacher(esc50_root, cache_dir, tmp_path):
    data = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, batch_size=8, num_workers=0,
                           cache_dir=str(cache_dir))
    model = tiny_byola(num_classes=5)
    start = model.teacher.module[0].stem[0].weight.clone()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ["train/loss_epoch", "train/momentum_epoch", "val/loss", "val/online_probe_acc", "val/knn_acc"]:
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert model._teacher_step == trainer.global_step == trainer.num_training_batches  # one EMA step per step
    assert not torch.equal(model.teacher.module[0].stem[0].weight, start)
    assert not model.teacher.module.training


# ----------------------------------------------------------------------------- two gloo processes

WORLD, N_LOCAL = 2, 4


class _Step(nn.Module):
    def __init__(self, method: BYOLA):
        super().__init__()
        self.method = method

    def forward(self, view1, view2):
        return self.method.byol_step(view1, view2)[0]


def _ddp_worker(rank: int, world: int, view1: torch.Tensor, view2: torch.Tensor, state: dict) -> dict:
    model = tiny_byola(online_probe=False, knn_k=0).double().train()
    model.load_state_dict(state)
    model.convert_sync_batchnorm("cpu")
    ddp = DistributedDataParallel(_Step(model))
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    loss = ddp(view1[sl], view2[sl])
    loss.backward()  # averaged over ranks
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    model.teacher.update(model.student(), 0, 10)
    return {"loss": loss.detach(), "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
            "teacher": {k: v.clone() for k, v in model.teacher.state_dict().items()}}


@pytest.mark.ddp
def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch():
    model = tiny_byola(online_probe=False, knn_k=0).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(2)
    view1, view2 = (v.double() for v in model.views.pair(clips(WORLD * N_LOCAL)["audio"].double(), model.frontend))

    results = run_distributed(_ddp_worker, world_size=WORLD, args=(view1, view2, state), timeout_s=60)

    loss, _ = model.byol_step(view1, view2)
    loss.backward()
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    assert not torch.allclose(results[0]["loss"], results[1]["loss"])
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == results[0]["grads"].keys() and not any(k.startswith("teacher.") for k in grads)
    for name, g in grads.items():
        for r in results:
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-7, atol=1e-10, msg=name)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    model.teacher.update(model.student(), 0, 10)
    for name, value in model.teacher.state_dict().items():
        for r in results:
            torch.testing.assert_close(r["teacher"][name], value, msg=name)
    assert math.isfinite(loss.item())
