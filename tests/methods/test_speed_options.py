"""The speed options of every method (``channels_last``, ``fused_optimizer``, ``compile``): each gives the plain
step's numbers, keeps the checkpoint's keys, and bad values are refused; the CLI takes them from a recipe."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_utils import common_args

from audio_ssl.cli import build_cli
from audio_ssl.features import LogMelSpectrogram
from audio_ssl.methods import SimCLR, SupervisedClassifier
from audio_ssl.models import AudioResNet
from audio_ssl.models.vit import SpectrogramTransformer
from audio_ssl.utils.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[2]


def tiny(**kwargs) -> SupervisedClassifier:
    torch.manual_seed(0)
    defaults = dict(
        encoder=AudioResNet(arch="resnet10", widths=(4, 8, 8, 8)),
        frontend=LogMelSpectrogram(n_fft=256, hop_length=128, n_mels=16),
        num_classes=3, dropout=0.0, label_smoothing=0.0, freq_mask=0, time_mask=0, mixup_prob=0.0,
        scheduler="none", lr=1e-2,
    )
    defaults.update(kwargs)
    return SupervisedClassifier(**defaults)


def batch(size=4, samples=4000, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"audio": 0.1 * torch.randn(size, samples, generator=g), "label": torch.arange(size) % 3,
            "index": torch.arange(size)}


def train_steps(model: SupervisedClassifier, steps: int = 2) -> list[torch.Tensor]:
    """``steps`` plain training steps on fixed batches (no Trainer); the logits of each step. Compare models
    with SGD: Adam divides by the gradient's root mean square, so a gradient that is zero up to float rounding
    becomes a full ``lr`` step of either sign, and two exact-up-to-rounding runs part after one step."""
    optimizer = model.configure_optimizers()
    model.train()
    logits = []
    for step in range(steps):
        data = model.on_after_batch_transfer(batch(seed=step), 0)
        out = model(data["spec"])
        loss = F.cross_entropy(out, data["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logits.append(out.detach())
    return logits


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, **tol) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)  # same keys, same order
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key, **tol)


def test_channels_last_trains_like_the_plain_model():
    plain, fast = tiny(optimizer="sgd"), tiny(optimizer="sgd", channels_last=True)
    fast.apply_speed_options()
    fast.apply_speed_options()  # idempotent: one input hook, not two
    convs = [m for m in fast.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()  # NHWC, not the default NCHW
    assert len(fast.encoder._forward_pre_hooks) == 1
    seen = []
    convs[-1].register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    # oneDNN on CPU: channels_last is exact up to the order of float sums
    for a, b in zip(train_steps(plain), train_steps(fast)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert seen and all(seen)  # the feature maps really are NHWC (the option is in force, not a no-op)
    assert_same_weights(fast, plain, rtol=1e-5, atol=1e-5)


def test_channels_last_refuses_an_encoder_that_is_not_convolutional():
    encoder = SpectrogramTransformer(n_mels=16, max_frames=64, patch_size=16, embed_dim=8, depth=1, num_heads=2)
    model = SimCLR(encoder=encoder, frontend=LogMelSpectrogram(n_fft=256, hop_length=128, n_mels=16),
                   num_classes=3, channels_last=True)
    with pytest.raises(ValueError, match=r"channels_last=true applies to convolutional encoders.*"
                                         r"SpectrogramTransformer is not one"):
        model.apply_speed_options()


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_fused_optimizer_takes_the_same_steps(name):
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(3)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    results = []
    for fused in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = build_optimizer(name, [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0,
                                                               "lars_exclude": True}], 1e-2, 0.1, fused=fused)
        assert bool(opt.defaults.get("fused")) is fused
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, weights[0] if a.ndim == 2 else weights[1])  # the steps moved the weights


def test_fused_optimizer_setting_reaches_the_optimizer():
    assert tiny(fused_optimizer=True).configure_optimizers().defaults["fused"] is True
    assert not tiny(fused_optimizer=False).configure_optimizers().defaults.get("fused")
    model = tiny(fused_optimizer="auto")
    assert not model.use_fused_optimizer()  # the parameters are on the CPU: auto keeps the usual optimizer
    assert not model.configure_optimizers().defaults.get("fused")
    assert not tiny(fused_optimizer="auto", optimizer="lars").use_fused_optimizer()


@pytest.mark.parametrize("kwargs, message", [
    ({"fused_optimizer": True, "optimizer": "lars"}, r"optimizer='lars' has no fused implementation"),
    ({"fused_optimizer": "always"}, r"fused_optimizer must be true, false or 'auto', got 'always'"),
    ({"channels_last": "yes"}, r"channels_last must be true or false, got 'yes'"),
    ({"compile": 1}, r"compile must be true or false, got 1"),
    ({"compile_mode": "fastest"}, r"compile_mode='fastest' is not one of default, reduce-overhead"),
])
def test_bad_speed_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_fused_lars_is_refused_by_the_optimizer_factory():
    with pytest.raises(ValueError, match="lars has no fused implementation"):
        build_optimizer("lars", [{"params": [torch.nn.Parameter(torch.ones(2))]}], 0.1, 0.0, fused=True)


def test_compile_is_in_place_and_keeps_the_checkpoint_keys():
    plain, fast = tiny(), tiny(compile=True, compile_mode="reduce-overhead")
    encoder = fast.encoder
    fast.apply_speed_options()  # torch.compile is lazy: nothing is compiled before the first call
    assert fast.encoder is encoder and encoder._compiled_call_impl is not None
    assert list(fast.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefix


@pytest.mark.slow  # inductor compiles the forward and backward graphs: 30-60 s on one CPU core
def test_compile_gives_the_eager_numbers_and_a_round_trip_checkpoint(tmp_path):
    """One training step of a compiled encoder: the logits within 1e-5 and the gradients within float rounding
    of the eager model's (the fused kernels sum in another order; later steps drift apart as any two runs
    that differ by rounding do); its weights file loads strictly into an eager model."""
    torch._dynamo.reset()
    plain, fast = tiny(optimizer="sgd"), tiny(optimizer="sgd", compile=True)
    fast.apply_speed_options()
    logits = []
    for model in (plain, fast):
        model.train()
        data = model.on_after_batch_transfer(batch(), 0)
        out = model(data["spec"])
        F.cross_entropy(out, data["label"]).backward()
        logits.append(out.detach())
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    torch.save(fast.state_dict(), tmp_path / "weights.pt")
    restored = tiny()  # an eager model reads the compiled model's weights strictly
    restored.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    for key, value in fast.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    torch._dynamo.reset()


def test_cli_takes_the_speed_options_and_the_checkpoint_reloads(esc50_root, cache_dir, tmp_path, monkeypatch):
    """A recipe with ``--model.init_args.channels_last true`` and a fused optimizer trains through the Trainer
    (setup puts channels_last in force), and its checkpoint rebuilds an eager, contiguous model strictly."""
    from audio_ssl.methods.base import BaseMethod

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(ROOT / "experiments" / "supervised_cpu.yaml"),
            *common_args(esc50_root, cache_dir, tmp_path), "--trainer.max_steps", "2", "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "0", "--model.init_args.encoder.init_args.widths", "[4, 8, 8, 8]",
            "--model.init_args.channels_last", "true", "--model.init_args.fused_optimizer", "true"]
    cli = build_cli(args)
    model = cli.model
    assert model.use_channels_last and model.fused_optimizer is True
    conv = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert cli.trainer.optimizers[0].defaults["fused"] is True
    reloaded = BaseMethod.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert reloaded.use_channels_last and not reloaded._speed_options_applied  # stated, applied by a Trainer only
    assert_same_weights(reloaded, copy.deepcopy(model).cpu())


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("false", False)])
def test_cli_reads_fused_optimizer_auto_and_false(value, expected):
    cli = build_cli(["--config", str(ROOT / "experiments" / "supervised_cpu.yaml"), "--trainer.logger", "false",
                     "--model.init_args.fused_optimizer", value, "--model.init_args.compile", "true",
                     "--model.init_args.compile_mode", "max-autotune"], run=False)
    assert cli.model.fused_optimizer == expected and type(cli.model.fused_optimizer) is type(expected)
    assert cli.model.compile_encoder is True and cli.model.compile_mode == "max-autotune"


def test_channels_last_reaches_the_teacher_and_keeps_the_loss():
    """BYOL-A: every network but the front end is converted (the momentum teacher too), and one training step
    (same views: same seed) gives the plain model's loss and gradients."""
    import warnings

    from method_utils import tone_clips

    from audio_ssl.features.views import BYOLAViews
    from audio_ssl.methods import BYOLA

    def build(**kwargs):
        torch.manual_seed(0)
        return BYOLA(encoder=AudioResNet(arch="resnet10", widths=(4, 8, 8, 8)), num_classes=4,
                     frontend=LogMelSpectrogram(n_fft=256, hop_length=128, n_mels=16),
                     views=BYOLAViews(crop_seconds=0.25, memory_size=8), proj_hidden_dim=16, proj_dim=8,
                     pred_hidden_dim=16, scheduler="none", **kwargs)

    plain, fast = build(), build(channels_last=True)
    fast.apply_speed_options()
    teacher_convs = [m for m in fast.teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    assert teacher_convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in teacher_convs)
    audio = tone_clips(4, 8000, 0, 16000)
    losses = []
    for model in (plain, fast):
        model.train()
        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging is a no-op
            loss = model.training_step(model.on_after_batch_transfer(dict(audio), 0), 0)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        if a.grad is not None:  # sums of B x F x T products in another order: 1e-3 of the scale (a bias before
            # BatchNorm has a zero gradient up to rounding, hence the 1e-6 floor)
            scale = a.grad.abs().max().item()
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-3 * scale + 1e-6,
                                       msg=lambda m, name=name: f"{name}: {m}")
