"""The Lightning CLI end to end: every config parses and runs fast_dev_run, a real short fit, W&B offline,
resume from last.ckpt, and resume after SIGKILL mid-epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from audio_ssl.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = Path(__file__).resolve().parent / "fast_dev_run"


def lightning_configs() -> list[Path]:
    """Every experiment YAML that the Lightning CLI runs (pipeline configs have their own tests)."""
    return [p for p in sorted((ROOT / "experiments").glob("*.yaml"))
            if "pipeline" not in (yaml.safe_load(p.read_text()) or {})]


CONFIGS = lightning_configs()


def small_overrides(config: Path) -> list[str]:
    """Extra CLI arguments that make a recipe small enough for a CPU test (the architecture family kept):
    ``tests/fast_dev_run/<config stem>.json`` holds a JSON list of arguments."""
    path = OVERRIDES / f"{config.stem}.json"
    return json.loads(path.read_text()) if path.exists() else []


def common_args(esc50_root, cache_dir, tmp_path, batch_size=4):
    return [
        "--data.init_args.data_dir", str(esc50_root),
        "--data.init_args.cache_dir", str(cache_dir),
        "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", str(batch_size),
        "--data.init_args.clip_seconds", "1.0",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false",
        "--checkpoint.dirpath", str(tmp_path / "checkpoints"),
        "--trainer.logger", json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": str(tmp_path), "name": "csv"}}]),
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_prints(config, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "model:" in printed and "data:" in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_fast_dev_run(config, esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if config.stem.startswith("beats_"):  # the overrides point at a tiny random checkpoint in the official format
        from audio_ssl.tools.make_beats_checkpoint import ensure_tiny_checkpoint

        ensure_tiny_checkpoint()
    args = ["fit", "--config", str(config), *common_args(esc50_root, cache_dir, tmp_path),
            "--trainer.fast_dev_run", "true", *small_overrides(config)]
    cli = build_cli(args)
    assert cli.trainer.state.finished
    assert cli.model.num_classes == 5  # linked from the data module


def fit_args(config, esc50_root, cache_dir, tmp_path, epochs):
    return ["--config", str(config), *common_args(esc50_root, cache_dir, tmp_path, batch_size=8),
            "--trainer.max_epochs", str(epochs),
            "--model.init_args.encoder.init_args.widths", "[8, 16, 16, 32]",
            "--trainer.log_every_n_steps", "1"]


def test_short_fit_learns_synthetic_classes(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    cli = build_cli(fit_args(config, esc50_root, cache_dir, tmp_path, epochs=12), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule)[0]
    assert result["test/acc"] > 0.5  # 5 classes: chance is 0.2
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert list(tmp_path.rglob("test_confusion_matrix.png"))


def test_wandb_offline_run_directory(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = ["test", *fit_args(config, esc50_root, cache_dir, tmp_path, epochs=1)]
    args[args.index("--trainer.logger") + 1] = json.dumps([{
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "audio-ssl-test", "save_dir": str(tmp_path), "offline": True}}])
    build_cli(args)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].rglob("*.wandb"))  # the run file `wandb sync` uploads later
    assert list(runs[0].rglob("*confusion_matrix*.png"))


class StopAfterEpochs(L.Callback):
    """Ends fit early, as an interrupted job would, leaving last.ckpt from the last finished epoch."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_from_last_checkpoint(esc50_root, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=3)
    first = build_cli(args, run=False)
    first.trainer.callbacks.append(StopAfterEpochs(2))
    first.trainer.fit(first.model, datamodule=first.datamodule)
    steps_per_epoch = first.trainer.global_step // 2
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    second = build_cli(["fit", *args, "--ckpt_path", "last"])
    assert second.trainer.current_epoch == 3
    assert second.trainer.global_step == 3 * steps_per_epoch  # continued, not restarted


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from audio_ssl.cli import build_cli

    class KillMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    cli = build_cli(sys.argv[1:], run=False)
    if "KILL_AT_STEP" in os.environ:
        cli.trainer.callbacks.append(KillMidEpoch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=os.environ.get("CKPT"))
    print("FINISHED", cli.trainer.current_epoch, cli.trainer.global_step)
    """
)


def test_sigkill_mid_epoch_then_resume_finishes(esc50_root, cache_dir, tmp_path):
    config = ROOT / "experiments" / "supervised_cpu.yaml"
    args = fit_args(config, esc50_root, cache_dir, tmp_path, epochs=3) + ["--checkpoint.every_n_train_steps", "2"]
    script = tmp_path / "run.py"
    script.write_text(KILLER)
    env = dict(os.environ, KILL_AT_STEP="7", PYTHONPATH=str(ROOT))  # 5 steps per epoch: mid epoch 2
    killed = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6  # saved mid-epoch, before the kill
    env = dict(os.environ, CKPT="last", PYTHONPATH=str(ROOT))
    resumed = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "FINISHED 3 15" in resumed.stdout
