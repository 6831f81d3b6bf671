"""Self-describing checkpoints and portable recipes: the default data location and its one-line error,
checkpoints that ``classify`` and ``probe`` use alone, W&B/CSV logs that follow a run across resume and
``test``, a stable W&B id for CV summaries, the top-level help, ``--version`` and short config errors."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import exit_code_and_output

from audio_ssl.cli import _without_wandb_if_missing, build_cli, main
from audio_ssl.data import ESC50DataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "supervised_cpu.yaml"


def small_args(esc50_root, cache_dir, run_dir: Path, loggers: list[dict]) -> list[str]:
    return ["--config", str(CONFIG), "--data.init_args.data_dir", str(esc50_root),
            "--data.init_args.cache_dir", str(cache_dir), "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "8", "--data.init_args.clip_seconds", "1.0",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.init_args.encoder.init_args.widths", "[4, 8, 8, 8]",
            "--checkpoint.dirpath", str(run_dir / "checkpoints"), "--trainer.logger", json.dumps(loggers)]


def loggers_for(run_dir: Path) -> list[dict]:
    return [{"class_path": "lightning.pytorch.loggers.WandbLogger",
             "init_args": {"project": "audio-ssl-test", "save_dir": str(run_dir), "offline": True}},
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir), "name": "csv"}}]


def finish_wandb():
    import wandb

    wandb.finish()


def run_main(argv, capsys) -> tuple[int, str, str]:
    return exit_code_and_output(main, argv, capsys)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, esc50_root, cache_dir):
    """A run folder after ``fit`` (1 epoch, test fold 5) and ``test`` of its last.ckpt, W&B offline + CSV."""
    run_dir = tmp_path_factory.mktemp("described")
    args = small_args(esc50_root, cache_dir, run_dir, loggers_for(run_dir))
    build_cli(["fit", *args])
    finish_wandb()
    build_cli(["test", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    finish_wandb()
    return run_dir, args


# ---------------------------------------------------------------------------------------------- data location
def test_recipes_name_no_machine_specific_data_folder():
    for path in sorted((ROOT / "experiments").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        data = config.get("data") or {}
        assert "data_dir" not in (data.get("init_args") or {}), f"{path.name} sets data_dir"


def test_default_data_dir_and_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AUDIO_SSL_DATA", str(tmp_path / "datasets"))
    assert ESC50DataModule().data_dir == tmp_path / "datasets" / "esc50"
    assert ESC50DataModule(data_dir=str(tmp_path / "x")).data_dir == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["fit", "--config", str(CONFIG), "--trainer.logger", "false",
                             "--trainer.accelerator", "cpu"], capsys)
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and "Traceback" not in err and len(lines) == 1
    assert str(tmp_path / "datasets" / "esc50" / "meta" / "esc50.csv") in lines[0]
    assert "--data.init_args.data_dir" in lines[0] and "AUDIO_SSL_DATA" in lines[0] and "download" in lines[0]


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_describes_its_data_model_and_source(fitted, esc50_root):
    run_dir, _ = fitted
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    meta = checkpoint["audio_ssl"]
    names = sorted(set(row["category"] for row in csv.DictReader(open(esc50_root / "meta" / "esc50.csv"))),
                   key=lambda n: next(int(r["target"]) for r in csv.DictReader(open(esc50_root / "meta" / "esc50.csv"))
                                      if r["category"] == n))
    data = meta["data"]
    assert data["class_names"] == names and data["num_classes"] == 5 and data["dataset"] == "esc50"
    assert (data["test_fold"], data["val_fold"], data["train_folds"], data["transductive"]) == (5, None, [1, 2, 3, 4],
                                                                                               False)
    assert (data["sample_rate"], data["clip_seconds"], data["batch_size"]) == (16000, 1.0, 8)
    assert data["data_dir"] == str(Path(esc50_root).absolute())
    assert meta["method"].endswith("SupervisedClassifier") and meta["num_classes"] == 5
    assert meta["model_config"]["init_args"]["encoder"]["init_args"]["widths"] == [4, 8, 8, 8]
    assert meta["frontend"]["init_args"]["n_mels"] == 64 and meta["frontend"]["init_args"]["sample_rate"] == 16000
    assert len(meta["git_commit"]) == 40 and meta["audio_ssl_version"]
    assert meta["wandb_run_id"] == json.loads((run_dir / "logger_ids.json").read_text())["wandb_id"]


def test_classify_from_the_checkpoint_alone(fitted, esc50_root, tmp_path, capsys):
    run_dir, _ = fitted
    moved = tmp_path / "elsewhere"  # the data folder is not needed: copy two clips, no metadata
    moved.mkdir()
    clips = sorted((Path(esc50_root) / "audio").iterdir())[:2]
    for clip in clips:
        (moved / clip.name).write_bytes(clip.read_bytes())
    code, out, err = run_main(["classify", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), str(moved)],
                              capsys)
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    names = checkpoint["audio_ssl"]["data"]["class_names"]
    assert len(rows) == 2 and all(r["pred_name"] == names[int(r["pred"])] for r in rows)
    assert all(r["end"] == "1.0" for r in rows)  # windows of the checkpoint's clip length


def test_classify_without_description_asks_for_the_config(fitted, tmp_path, capsys):
    run_dir, _ = fitted
    bare = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del bare["audio_ssl"]
    torch.save(bare, tmp_path / "old.ckpt")
    code, _, err = run_main(["classify", "--checkpoint", str(tmp_path / "old.ckpt"), str(tmp_path)], capsys)
    assert code == 2 and "pass --config" in err and len(err.strip().splitlines()) == 1


def test_probe_from_the_checkpoint_alone_warns_about_seen_folds(fitted, esc50_root, cache_dir, tmp_path, capsys):
    run_dir, _ = fitted
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    settings = tmp_path / "probe.yaml"
    settings.write_text("probe:\n  C: 1.0\n  max_iter: 100\n  device: cpu\n")
    code, out, err = run_main(["probe", "--checkpoint", ckpt, "--probe", str(settings), "--cache-dir", str(cache_dir)],
                              capsys)
    result = json.loads(out)
    assert code == 0 and result["test_fold"] == 5 and result["pretraining_saw_test_fold"] is False
    assert "warning" not in err and 0.0 <= result["pretrained"]["acc"] <= 1.0
    code, out, err = run_main(["probe", "--checkpoint", ckpt, "--probe", str(settings), "--test-fold", "2",
                               "--cache-dir", str(cache_dir)], capsys)
    assert code == 0 and json.loads(out)["pretraining_saw_test_fold"] is True
    assert "saw test fold 2" in err and "train folds [1, 2, 3, 4]" in err
    # a fold the dataset does not have: --test-fold named, not the checkpoint
    code, _, err = run_main(["probe", "--checkpoint", ckpt, "--test-fold", "7"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--test-fold 7 is out of range" in err and "folds 1..5" in err and "cannot rebuild" not in err
    # a missing data folder: one line that says how to point at it (not a class-count mismatch)
    code, _, err = run_main(["probe", "--checkpoint", ckpt, "--data-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "--data-dir" in err and str(tmp_path / "none") in err and "--encoder-only" not in err


# ---------------------------------------------------------------------------------------------- loggers
def wandb_run_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def run_id(run_folder: Path) -> str:
    """The W&B run id of an offline run folder: offline-run-<date>_<time>-<id>[-<n>]."""
    return run_folder.name.split("-")[3]


def test_test_after_fit_continues_the_wandb_run_and_csv_version(fitted, esc50_root, cache_dir):
    run_dir, args = fitted
    runs = wandb_run_dirs(run_dir)
    assert len(runs) == 2 and len({run_id(r) for r in runs}) == 1  # fit + test: one run id
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    assert any(r.get("val/acc") for r in rows) and any(r.get("test/acc") for r in rows)  # fit rows kept
    record = (runs[0] / f"run-{run_id(runs[0])}.wandb").read_bytes()
    for key in (b"test_fold", b"train_folds", b"batch_size", b"AudioResNet", b"n_mels", b"git_commit"):
        assert key in record, key  # the resolved config: data, folds, encoder, front end, source


def test_fresh_fit_starts_a_new_run_and_a_resumable_one_continues(tmp_path, esc50_root, cache_dir):
    args = small_args(esc50_root, cache_dir, tmp_path, loggers_for(tmp_path))
    first = build_cli(args, run=False)  # built for a program (as cv does): resumes only if last.ckpt exists
    second = build_cli(args, run=False)
    assert second.trainer.loggers[0].version != first.trainer.loggers[0].version
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    resumed = build_cli(args, run=False)
    assert resumed.trainer.loggers[0].version == second.trainer.loggers[0].version
    assert type(resumed.trainer.loggers[1]).__name__ == "AppendingCSVLogger"
    assert resumed.trainer.loggers[1].version == second.trainer.loggers[1].version


def test_cv_summary_run_id_is_stable(tmp_path, monkeypatch):
    from audio_ssl.evaluation.tracking import _log_to_wandb

    run_dir, other = tmp_path / "results" / "cvrun", tmp_path / "results" / "other"
    for value in (1.0, 2.0):
        _log_to_wandb("cvrun", "audio-ssl-test", "cvrun-summary", "cv-summary", run_dir,
                      lambda active, v=value: active.log({"x": v}))
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({run_id(p) for p in runs}) == 1
    _log_to_wandb("cvrun", "audio-ssl-test", "cvrun-summary", "cv-summary", other, lambda active: None)
    (other_run,) = (other / "wandb").glob("offline-run-*")
    assert run_id(other_run) != run_id(runs[0])


def test_wandb_logger_dropped_with_a_warning_when_wandb_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    specs = [{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {}},
             {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}]
    with pytest.warns(UserWarning, match="wandb is not installed"):
        kept = _without_wandb_if_missing(specs)
    assert [s["class_path"] for s in kept] == ["lightning.pytorch.loggers.CSVLogger"]
    with pytest.warns(UserWarning):
        assert _without_wandb_if_missing(specs[0]) is False


def test_importing_the_cli_does_not_import_wandb():
    import subprocess

    code = "import sys, audio_ssl.cli, audio_ssl.tools.classify, audio_ssl.tools.probe; print('wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------- the command
def test_top_level_help_and_version(capsys):
    code, out, _ = run_main([], capsys)
    assert code == 0
    for command in ("fit", "validate", "test", "predict", "demo", "cv", "reproduce", "results", "probe", "classify",
                    "make-beats-checkpoint"):
        assert f"  {command} " in out
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.startswith("audio-ssl 0.1.0") and "git " in out


def test_config_errors_are_short_and_args_do_not_warn(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["audio-ssl", "fit", "--config", str(CONFIG)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_main(["fit", "--config", str(CONFIG), "--model.init_args.lr", "abc"], capsys)
    assert not [w for w in caught if "args parameter" in str(w.message)]
    assert code == 2 and "usage:" not in err
    assert err.splitlines() == [err.splitlines()[0], "see audio-ssl fit --help"]
    assert '"lr"' in err and "abc" in err
    code, _, err = run_main(["fit", "--config", str(CONFIG), "--data.init_args.test_fold", "9"], capsys)
    assert code == 2 and err.strip().splitlines() == ["audio-ssl fit: error: test_fold=9 is out of range: esc50 has "
                                                      "folds 1..5", "see audio-ssl fit --help"]


def test_probe_encoder_only_refuses_an_encoder_on_other_features(fitted, esc50_root, cache_dir, tmp_path, capsys):
    """``probe --encoder-only`` puts the checkpoint's encoder into the --config model: a front end at another hop is
    refused before any embedding, naming both values (the same encoder and front end are probed)."""
    run_dir, _ = fitted
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    settings = tmp_path / "probe.yaml"
    settings.write_text("probe:\n  C: 1.0\n  max_iter: 50\n  device: cpu\n")
    base = ["probe", "--checkpoint", ckpt, "--config", str(CONFIG), "--encoder-only", "--probe", str(settings),
            "--data-dir", str(esc50_root), "--cache-dir", str(cache_dir),
            "--data.init_args.clip_seconds", "1.0", "--model.init_args.encoder.init_args.widths", "[4, 8, 8, 8]"]
    code, _, err = run_main([*base, "--model.init_args.frontend.init_args.hop_length", "256"], capsys)
    assert code == 2 and "frontend.hop_length: checkpoint 512, this model 256" in err and ckpt in err
    code, out, _ = run_main(base, capsys)
    assert code == 0 and 0.0 <= json.loads(out)["pretrained"]["acc"] <= 1.0
