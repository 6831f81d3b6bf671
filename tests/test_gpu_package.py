"""The GPU package (benchmarks/gpu): the code imports without wandb and librosa (absent on the GPU machine), the data
splits into parts that rebuild the dataset, and run_reproduce.sh --smoke runs end to end twice, the second call
resuming (~2 min: kept in CI so the GPU package cannot rot between the sessions that have a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"


def hidden_env(packages: str = "wandb,librosa") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(GPU / "hide"), str(ROOT), env.get("PYTHONPATH", "")])
    env["AUDIO_SSL_HIDE_PACKAGES"] = packages
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_imports_without_wandb_and_librosa():
    code = """
import importlib.util, sys
import audio_ssl.cli, audio_ssl.tools.cv, audio_ssl.evaluation.runner, audio_ssl.evaluation.summary
import audio_ssl.tools.reproduce, audio_ssl.evaluation.tta
import audio_ssl.evaluation.pipelines, audio_ssl.evaluation.baselines, audio_ssl.evaluation.analysis
from audio_ssl.data import ESC50DataModule, UrbanSound8KDataModule
from audio_ssl.methods import SupervisedClassifier
import audio_ssl.methods.simclr, audio_ssl.methods.masked, audio_ssl.methods.beats
from lightning.pytorch.loggers.wandb import _WANDB_AVAILABLE
from torchmetrics.utilities.imports import _LIBROSA_AVAILABLE
assert not _WANDB_AVAILABLE and not _LIBROSA_AVAILABLE, "the packages are not hidden"
assert importlib.util.find_spec("torch") is not None
try:
    import wandb  # noqa: F401
    raise SystemExit("wandb imported although hidden")
except ModuleNotFoundError:
    pass
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("wandb", "librosa"))
assert not loaded, loaded
print("IMPORTS_OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], env=hidden_env(), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTS_OK" in proc.stdout


def test_pack_esc50_parts_rebuild_the_dataset(esc50_root, tmp_path):
    out = tmp_path / "parts"
    proc = subprocess.run([sys.executable, str(GPU / "pack_esc50.py"), "--data-dir", str(esc50_root),
                           "--out", str(out), "--max-mib", "0.2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    parts = sorted(out.glob("part*"))
    manifest = json.loads((out / "part1" / "PARTS.json").read_text())
    assert manifest["num_parts"] == len(parts) >= 2
    assert (out / "part1" / "meta" / "esc50.csv").is_file()
    assert not any((p / "meta").exists() for p in parts[1:])
    rebuilt = sorted(f.relative_to(p).as_posix() for p in parts for f in p.rglob("*") if f.is_file())
    original = sorted(f.relative_to(esc50_root).as_posix() for f in esc50_root.rglob("*") if f.is_file())
    assert sorted(set(rebuilt) - {"PARTS.json"}) == original
    assert len(rebuilt) == len(set(rebuilt))  # no file in two parts
    for p in parts:
        assert sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) <= 0.2 * 1024 * 1024
    assert manifest["total_audio_files"] == len(list((esc50_root / "audio").iterdir()))


def test_wheels_list_is_pinned_from_the_lock():
    lock = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==")
            lock[name.strip().lower()] = version.strip()
    wheels = [line.strip() for line in (GPU / "wheels.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert wheels
    for req in wheels:
        name, version = req.split("==")
        assert lock.get(name.lower()) == version, f"{req} is not the locked version ({lock.get(name.lower())})"


def test_run_reproduce_smoke_twice(tmp_path):
    """The whole GPU script on CPU, called twice as on a warm machine: synthetic data split into parts and
    reassembled, the cache built, `audio-ssl reproduce --smoke --gpu-rows` (a supervised row with its TTA re-test
    and a pretrain-then-probe row; the CPU-only baseline row left out), results packed into OUT. The second
    call finds the data assembled and every row finished: it trains nothing and packs the same results."""
    import tarfile

    from helpers import tiny_reproduce_rows

    rows = tiny_reproduce_rows(tmp_path)
    work = tmp_path / "work"
    env = {**hidden_env(""), "WORK": str(work), "PYTHON": sys.executable}
    env.pop("AUDIO_SSL_HIDE_PACKAGES")  # the script hides wandb and librosa itself in --smoke
    runs = []
    for call in (1, 2):
        out = tmp_path / f"out{call}"
        proc = subprocess.run(["bash", str(GPU / "run_reproduce.sh"), "--smoke", "--rows-file", str(rows)],
                              cwd=ROOT, env={**env, "OUT": str(out)}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == ["reproduce_summary.json", "reproduce_summary.md",
                                                         "results.tar.gz", "run.log", "timings.json"]
        runs.append((out, proc.stdout))
    (first, _), (second, log) = runs
    stages = {s["stage"]: s for s in json.loads((first / "timings.json").read_text())["stages"]}
    assert all(stages[name]["rc"] == "0" for name in ("make_data", "assemble", "cache", "reproduce"))
    assert "stage assemble: skipped" in log
    logs = sorted(work.glob("logs/reproduce-*.log"))
    assert len(logs) == 2
    text = logs[1].read_text()
    assert "fold 1 already finished" in text and ": running " not in text  # the cv runner started no fold
    summary = json.loads((second / "reproduce_summary.json").read_text())
    status = {e["run"]: e["status"] for e in summary["rows"]}
    assert status == {"sup": "complete", "sup_tta2": "complete", "simclr_probe": "complete",
                      "mfcc": "not started"}  # gpu: false, left to the CPU machine
    assert summary["invocation"]["smoke"] and summary["invocation"]["budget_s"] < 470
    assert not list(work.rglob("fold*/result.json.*"))
    with tarfile.open(second / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "results/sup/summary.json" in names and "results/sup_tta2/summary.json" in names
    assert "results/simclr_probe/fold3/result.json" in names and "results/reproduce_summary.json" in names
    assert not [n for n in names if n.endswith(".ckpt") or "/embeddings/" in n or "/cache/" in n]
