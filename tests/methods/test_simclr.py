"""SimCLR: views on the device, overfitting one batch, probes that never reach the encoder, LARS and lr
scaling, seeded validation views, SyncBatchNorm, a short Lightning fit, and exactness under 2-process DDP."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from ddp_utils import run_distributed
from method_utils import tone_clips
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from audio_ssl.data import ESC50DataModule
from audio_ssl.features import LogMelSpectrogram, ViewAugmentation
from audio_ssl.methods import SimCLR
from audio_ssl.models import AudioResNet
from audio_ssl.utils.distributed import CrossProcessBatchNorm, convert_sync_batchnorm

SR = 16000


def tiny_simclr(**kwargs) -> SimCLR:
    torch.manual_seed(0)
    defaults = dict(
        encoder=AudioResNet(arch="resnet10", widths=(8, 8, 16, 16)),
        frontend=LogMelSpectrogram(sample_rate=SR, n_fft=512, hop_length=256, n_mels=32, normalize="instance"),
        num_classes=4, views=ViewAugmentation(crop_seconds=0.5), proj_hidden_dim=32, proj_dim=16, scheduler="none",
        optimizer="adamw",
        lr=3e-3, knn_k=3,
    )
    defaults.update(kwargs)
    return SimCLR(**defaults)


def clips(batch=8, samples=SR, seed=0):
    return tone_clips(batch, samples, seed, SR)


def capture_logs(model: SimCLR) -> list[tuple[str, dict]]:
    logged: list[tuple[str, dict]] = []
    model.log_metrics = lambda stage, metrics, batch_size, **kw: logged.append(  # type: ignore[method-assign]
        (stage, {k: float(v) for k, v in metrics.items()}))
    return logged


# ----------------------------------------------------------------------------- device-side views


def test_train_transform_builds_two_views_and_eval_keeps_the_plain_front_end():
    model = tiny_simclr().train()
    batch = clips()
    out = model.on_after_batch_transfer(dict(batch), 0)
    frames = model.frontend.num_frames(SR // 2)
    assert out["view1"].shape == out["view2"].shape == (8, 1, 32, frames)
    assert not torch.allclose(out["view1"], out["view2"])
    assert "spec" not in out and torch.equal(out["label"], batch["label"])
    model.eval()
    out = model.on_after_batch_transfer(dict(batch), 0)
    torch.testing.assert_close(out["spec"], model.frontend(batch["audio"]))


def test_embed_is_the_encoder_without_projection():
    model = tiny_simclr().eval()
    audio = clips()["audio"]
    emb = model.embed(audio)
    assert emb.shape == (8, model.encoder.out_dim)
    torch.testing.assert_close(emb, model.encoder(model.frontend(audio)))
    assert model.projector.out_dim == 16 and model.projector.in_dim == model.encoder.out_dim


def test_default_projector_is_512_512_128_with_batchnorm():
    model = SimCLR(num_classes=5)
    layers = [m for m in model.projector.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.ReLU))]
    assert [type(m).__name__ for m in layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (512, 512, 128)
    assert model.criterion.temperature == 0.5 and model.criterion.gather_distributed
    assert model.online_probe is not None and model.online_probe.in_features == 512


def test_overfits_one_batch_to_the_nt_xent_minimum():
    n, temperature = 8, 0.5
    model = tiny_simclr(temperature=temperature, online_probe=False).train()
    torch.manual_seed(1)
    view1, view2 = model.make_views(clips(n)["audio"])  # fixed, differently augmented views
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        out, _ = model.contrastive_step(view1, view2)
        first = first if first is not None else out.loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    # Minimum: positives coincide and the n clips form a regular simplex (negatives at cosine -1/(n-1)).
    minimum = math.log1p((2 * n - 2) * math.exp((-1 / (n - 1) - 1) / temperature))
    assert first > minimum + 1.0
    assert out.loss.item() < minimum + 0.1
    assert out.top1.item() == 1.0


def test_online_probe_gradients_never_reach_the_encoder():
    model = tiny_simclr().train()
    batch = model.on_after_batch_transfer(clips(), 0)
    capture_logs(model)
    _, h = model.contrastive_step(batch["view1"], batch["view2"])
    probe_loss = model.monitor_step(h, batch["label"], "train")
    encoder_params = list(model.encoder.parameters()) + list(model.projector.parameters())
    grads = torch.autograd.grad(probe_loss, encoder_params + list(model.online_probe.parameters()), allow_unused=True)
    assert all(g is None for g in grads[: len(encoder_params)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(encoder_params):])

    # The full training loss (contrastive + probe) gives the encoder exactly the contrastive gradient.
    torch.manual_seed(5)
    total = model.training_step(batch, 0)
    total_grads = torch.autograd.grad(total, encoder_params)
    torch.manual_seed(5)
    out, _ = model.contrastive_step(batch["view1"], batch["view2"])
    for a, b in zip(total_grads, torch.autograd.grad(out.loss, encoder_params)):
        torch.testing.assert_close(a, b)


def test_training_step_logs_loss_and_contrastive_accuracy():
    model = tiny_simclr().train()
    logged = capture_logs(model)
    batch = model.on_after_batch_transfer(clips(), 0)
    model.training_step(batch, 0)
    train = {k: v for stage, m in logged if stage == "train" for k, v in m.items()}
    assert {"loss", "contrastive_top1", "contrastive_top5", "online_probe_acc", "online_probe_loss"} <= set(train)
    assert 0 <= train["contrastive_top1"] <= train["contrastive_top5"] <= 1
    assert model.knn.bank is None and not model.knn.queries  # the bank is built from clean clips at validation


def test_validation_views_are_seeded_and_leave_the_global_rng_alone():
    model = tiny_simclr().eval()
    logged = capture_logs(model)
    batch = model.on_after_batch_transfer(clips(), 0)
    torch.manual_seed(123)
    model.validation_step(batch, 0)
    after = torch.rand(1)
    model.validation_step(batch, 0)
    model.validation_step(batch, 1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # validation consumed no global randomness
    val = [m for stage, m in logged if stage == "val" and "loss" in m]
    assert val[0] == val[1] and val[0]["loss"] != val[2]["loss"]
    assert {"online_probe_acc", "contrastive_top1"} <= {k for _, m in logged for k in m}


# ----------------------------------------------------------------------------- optimisation


def test_lars_step_matches_hand_computation():
    lr, wd, momentum, eta, probe_lr = 0.5, 1e-3, 0.9, 0.02, 0.1
    model = tiny_simclr(optimizer="lars", lr=lr, weight_decay=wd, momentum=momentum, probe_lr=probe_lr)
    optimizer = model.configure_optimizers()
    conv = model.encoder.stem[0].weight
    bn = model.encoder.stem[1].weight
    probe = model.online_probe.weight
    names = {g["name"] for g in optimizer.param_groups}
    assert names == {"main", "online_probe"}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    gen = torch.Generator().manual_seed(0)
    start = {p: p.detach().clone() for p in (conv, bn, probe)}
    grads = [{p: torch.randn(p.shape, generator=gen) for p in model.parameters()} for _ in range(2)]

    expected = {p: start[p].clone() for p in start}
    buffers: dict = {}
    for step_grads in grads:
        for p in model.parameters():
            p.grad = step_grads[p].clone()
        optimizer.step()
        for p in start:
            g = step_grads[p]
            if p is conv:  # weights: weight decay, then the layer-wise trust ratio
                g = g + wd * expected[p]
                g = g * eta * expected[p].norm() / g.norm()
            buffers[p] = g if p not in buffers else momentum * buffers[p] + g
            expected[p] = expected[p] - (probe_lr if p is probe else lr) * buffers[p]
    for p in start:
        torch.testing.assert_close(p.detach(), expected[p], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(conv.detach(), start[conv])


def test_adamw_groups_exclude_biases_and_norms_from_weight_decay():
    model = tiny_simclr(optimizer="adamw", lr=1e-3, weight_decay=1e-4, probe_lr=2e-3)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_id[id(model.encoder.stem[0].weight)]["weight_decay"] == 1e-4
    assert by_id[id(model.encoder.stem[1].bias)]["weight_decay"] == 0.0
    assert by_id[id(model.projector.net[-1].bias)]["weight_decay"] == 0.0
    probe = by_id[id(model.online_probe.weight)]
    assert probe["name"] == "online_probe" and probe["lr"] == 2e-3 and probe["weight_decay"] == 0.0
    assert len(by_id) == len(list(model.parameters()))


def test_lr_scales_with_global_batch_and_warms_up_then_decays():
    model = tiny_simclr(optimizer="lars", lr=0.3, scale_lr_with_batch=True, scheduler="cosine",
                       warmup_fraction=0.1, probe_lr=0.1)
    model._trainer = SimpleNamespace(world_size=4, accumulate_grad_batches=2, estimated_stepping_batches=100,
                                     datamodule=SimpleNamespace(batch_size=64))
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    peak = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert peak["main"] == pytest.approx(0.3 * 4 * 2 * 64 / 256)  # global batch 512
    assert peak["online_probe"] == pytest.approx(0.1)  # the probe is not scaled
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.6 / 10) and lrs[9] == pytest.approx(0.6)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3  # cosine to zero


# ----------------------------------------------------------------------------- SyncBatchNorm


def test_convert_sync_batchnorm_keeps_state_and_single_process_output():
    model = tiny_simclr().train()
    spec = torch.randn(6, 1, 32, 20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model.projector(model.encoder(spec))
    model.load_state_dict(before)  # undo the running-statistics update
    model.convert_sync_batchnorm("cpu")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is CrossProcessBatchNorm for m in norms)
    assert model.state_dict().keys() == before.keys()
    torch.testing.assert_close(model.projector(model.encoder(spec)), expected)
    assert isinstance(convert_sync_batchnorm(nn.BatchNorm1d(3), "cpu"), CrossProcessBatchNorm)
    assert type(convert_sync_batchnorm(nn.BatchNorm2d(3), "cuda")) is nn.SyncBatchNorm


def test_sync_batchnorm_is_converted_only_when_distributed():
    model = tiny_simclr()
    def fake_trainer(world_size, device):
        return SimpleNamespace(world_size=world_size, strategy=SimpleNamespace(root_device=torch.device(device)))

    synced = (nn.SyncBatchNorm, CrossProcessBatchNorm)
    model._trainer = fake_trainer(1, "cpu")
    model.setup("fit")
    assert not any(isinstance(m, synced) for m in model.modules())
    model._trainer = fake_trainer(2, "cpu")
    model.setup("fit")
    assert any(isinstance(m, CrossProcessBatchNorm) for m in model.modules())
    gpu = tiny_simclr()
    gpu._trainer = fake_trainer(2, "cuda")
    gpu.setup("fit")
    assert any(type(m) is nn.SyncBatchNorm for m in gpu.modules())
    off = tiny_simclr(sync_batchnorm=False)
    off._trainer = fake_trainer(2, "cpu")
    off.setup("fit")
    assert not any(isinstance(m, synced) for m in off.modules())


# ----------------------------------------------------------------------------- Lightning


def test_short_fit_logs_every_monitor(esc50_root, cache_dir, tmp_path):
    data = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, batch_size=8, num_workers=0,
                           cache_dir=str(cache_dir))
    model = tiny_simclr(num_classes=5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ["train/loss_epoch", "train/contrastive_top1_epoch", "train/contrastive_top5_epoch", "val/loss",
                "val/contrastive_top1", "val/online_probe_acc", "val/knn_acc"]:
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 <= metrics["val/knn_acc"] <= 1


# ----------------------------------------------------------------------------- two gloo processes

WORLD, N_LOCAL = 2, 4


class _Step(nn.Module):
    """What Lightning's DDP wrapper routes ``forward`` to: the contrastive part of a training step."""

    def __init__(self, method: SimCLR):
        super().__init__()
        self.method = method

    def forward(self, view1: torch.Tensor, view2: torch.Tensor):
        out, _ = self.method.contrastive_step(view1, view2)
        return out.loss, out.top1


def _ddp_worker(rank: int, world: int, view1: torch.Tensor, view2: torch.Tensor, state: dict) -> dict:
    torch.set_num_threads(1)
    model = tiny_simclr(online_probe=False, knn_k=0).double().train()
    model.load_state_dict(state)
    model.convert_sync_batchnorm("cpu")
    ddp = DistributedDataParallel(_Step(model))
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)  # each rank gets different clips
    loss, top1 = ddp(view1[sl], view2[sl])
    loss.backward()  # DDP averages the gradients over ranks here
    return {"loss": loss.detach(), "top1": top1,
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers() if "running" in k}}


@pytest.mark.ddp
def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch():
    model = tiny_simclr(online_probe=False, knn_k=0).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(2)
    view1, view2 = (v.double() for v in model.make_views(clips(WORLD * N_LOCAL)["audio"]))

    results = run_distributed(_ddp_worker, world_size=WORLD, args=(view1, view2, state), timeout_s=60)

    out, _ = model.contrastive_step(view1, view2)  # one process, plain BatchNorm, all 2 x 8 views
    out.loss.backward()
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), out.loss.detach())
    torch.testing.assert_close(torch.stack([r["top1"] for r in results]).mean(), out.top1)
    assert not torch.allclose(results[0]["loss"], results[1]["loss"])  # the ranks had different data
    for name, p in model.named_parameters():
        for r in results:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-7, atol=1e-10, msg=name)
    for name, b in model.named_buffers():
        if "running" in name:  # synchronised running statistics
            torch.testing.assert_close(results[0]["buffers"][name], b, msg=name)
    assert max(p.grad.abs().max() for p in model.encoder.parameters()) > 1e-4
