"""``audio-ssl cv`` under DDP (2 gloo processes, ``--trainer.strategy ddp``) on folds of 15 clips, which 2 ranks
cannot split evenly: it finishes (no two ranks writing one file, no collective inside a rank-zero block) and
every metric and every per-clip prediction equals a single-process evaluation of the same weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = ROOT / "experiments" / "supervised_cpu.yaml"
FOLDS = (1, 2)


def cv_command(out: Path, name: str, data: Path, cache: Path, devices: int) -> list[str]:
    command = [sys.executable, "-m", "audio_ssl.cli", "cv", "--config", str(SUPERVISED), "--folds", "1,2",
               "--name", name, "--out", str(out), "--no-wandb", "--no-analysis",
               "--data.init_args.data_dir", str(data), "--data.init_args.cache_dir", str(cache),
               "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
               "--data.init_args.eval_batch_size", "4", "--data.init_args.clip_seconds", "0.5",
               "--trainer.max_epochs", "1", "--model.init_args.encoder.init_args.widths", "[8, 8, 16, 16]",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
               "--trainer.accelerator", "cpu", "--trainer.devices", str(devices)]
    return command + (["--trainer.strategy", "ddp"] if devices > 1 else [])


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.mark.ddp
def test_two_rank_cv_equals_one_rank_evaluation_of_the_same_weights(tmp_path):
    from audio_ssl.data.synthetic import make_synthetic_esc50

    data, cache = tmp_path / "esc50", tmp_path / "cache"
    make_synthetic_esc50(data, num_classes=5, clips_per_class=15, seconds=0.5, seed=4)  # 15 clips per fold
    out = tmp_path / "results"
    run(cv_command(out, "two", data, cache, devices=2))
    # The same weights evaluated in one process: fit_stage loads a fold's final.ckpt instead of training.
    for fold in FOLDS:
        (out / "one" / f"fold{fold}").mkdir(parents=True)
        shutil.copy(out / "two" / f"fold{fold}" / "final.ckpt", out / "one" / f"fold{fold}" / "final.ckpt")
    run(cv_command(out, "one", data, cache, devices=1))

    for fold in FOLDS:
        results = [json.loads((out / name / f"fold{fold}" / "result.json").read_text())["variants"]["default"]
                   for name in ("two", "one")]
        assert set(results[0]["metrics"]) == {"acc", "f1_macro"}
        assert results[0]["metrics"] == results[1]["metrics"], fold  # exactly, not approximately
        two, one = (pd.read_csv(out / name / f"predictions/fold{fold}.csv") for name in ("two", "one"))
        assert len(two) == 15 and two["file"].is_unique
        pd.testing.assert_frame_equal(two, one, check_exact=False, rtol=1e-5)
        # what Lightning logged for the test fold on 2 ranks is the same number
        logged = pd.read_csv(next((out / "two" / f"fold{fold}").glob("csv/version_*/metrics.csv")))
        test_acc = logged["test/acc"].dropna()
        assert len(test_acc) == 1 and test_acc.iloc[0] == pytest.approx(results[1]["metrics"]["acc"], abs=1e-12)
    summaries = [json.loads((out / name / "summary.json").read_text()) for name in ("two", "one")]
    assert summaries[0]["variants"]["default"]["metrics"] == summaries[1]["variants"]["default"]["metrics"]
    assert summaries[0]["bookkeeping_ok"]
    assert not list((out / "two").rglob("*.tmp"))  # no temporary file left behind by a rank
