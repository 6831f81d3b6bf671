"""Folds at once: ``audio-ssl cv --parallel N`` (one process per fold) and ``--launcher submitit`` (its local
executor here) give the same per-fold results as the sequential run, skip finished folds, train a stage the
folds share once, report a failed fold with its log while the others finish, and refuse DDP inside parallel
folds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import exit_code_and_output, tiny_cv_overrides

from audio_ssl.evaluation.launchers import ProcessLauncher, SubmititLauncher, default_threads
from audio_ssl.evaluation.runner import FoldJob, FoldsFailed, launch_folds, run_cv
from audio_ssl.tools.cv import main as cv_main

ROOT = Path(__file__).resolve().parents[2]
SUPERVISED = ROOT / "experiments" / "supervised_cpu.yaml"
FOLDS = [1, 2]
TIMINGS: dict[str, float] = {}


def timed(label: str, **kwargs) -> dict:
    start = time.perf_counter()
    summary = run_cv(SUPERVISED, folds=FOLDS, wandb=False, analyze=False, **kwargs)
    TIMINGS[label] = time.perf_counter() - start
    print(f"{label}: {TIMINGS[label]:.1f} s for folds {FOLDS}")
    return summary


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("cv-parallel")


@pytest.fixture(scope="module")
def sequential(results, esc50_root, cache_dir):
    """The reference: folds 1 and 2 of the tiny supervised config, one after the other in this process (one
    torch thread, as every fold process below gets)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = timed("sequential", name="seq", out=results, overrides=tiny_cv_overrides(esc50_root, cache_dir))
    finally:
        torch.set_num_threads(threads)
    return summary, results / "seq"


def assert_same_summary(run_dir: Path, reference: Path, summary: dict, reference_summary: dict) -> None:
    """Same predictions (every value, every clip), same fold metrics, same summary metrics, and the summary on
    disk is the one returned."""
    for fold in FOLDS:
        got, want = (pd.read_csv(d / "predictions" / f"fold{fold}.csv") for d in (run_dir, reference))
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["variants"] == json.loads(json.dumps(summary["variants"]))
    got, want = (pd.read_csv(d / "folds.csv").drop(columns=["wall_time_s"], errors="ignore")
                 for d in (run_dir, reference))
    metric_columns = [c for c in want.columns if c in ("fold", "variant", "acc", "f1_macro", "acc_top5")]
    assert len(metric_columns) >= 3
    pd.testing.assert_frame_equal(got[metric_columns], want[metric_columns], check_exact=True)
    assert summary["variants"]["default"]["metrics"] == reference_summary["variants"]["default"]["metrics"]
    assert summary["folds"] == FOLDS and summary["bookkeeping_ok"]


class Recorder:
    """A launcher that runs nothing and keeps the jobs it was given."""

    def __init__(self):
        self.jobs = []

    def launch(self, jobs):
        self.jobs += list(jobs)
        return {}


def test_parallel_folds_equal_sequential_a_failed_fold_is_reported_and_finished_folds_are_skipped(
        sequential, results, esc50_root, cache_dir, capsys):
    """``audio-ssl cv --parallel 3`` over folds 1-3, fold 3 damaged: folds 1 and 2 finish with the sequential
    run's results, fold 3 is reported with the end of its log, exit status 1, no summary. The same command on
    folds 1 and 2 then launches nothing and writes the sequential run's summary."""
    reference_summary, reference = sequential
    overrides = tiny_cv_overrides(esc50_root, cache_dir)
    run_dir = results / "par"
    damaged = run_dir / "fold3" / "checkpoints" / "last.ckpt"  # fold 3 resumes from a checkpoint that is not one
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    argv = ["--config", str(SUPERVISED), "--name", "par", "--out", str(results), "--no-wandb", "--no-analysis",
            "--parallel", "3", "--threads-per-fold", "1", *overrides]
    start = time.perf_counter()
    code, out, err = exit_code_and_output(cv_main, [*argv, "--folds", "1,2,3"], capsys)
    print(f"--parallel 3 (folds 1, 2 and the damaged 3): {time.perf_counter() - start:.1f} s")
    assert code == 1
    assert "fold 3 failed: exit status 1" in err and "fold 1 failed" not in err and "fold 2 failed" not in err
    log_text = (run_dir / "logs" / "fold3.log").read_text()
    assert str(run_dir / "logs" / "fold3.log") in err and log_text.rstrip().splitlines()[-1] in err  # its tail
    assert log_text.count("Traceback") == 1 and "fold 3 of par failed" in log_text
    assert not (run_dir / "fold3" / "result.json").exists() and not (run_dir / "summary.json").exists()
    for fold in FOLDS:  # the others finished, each in its own process with one thread, logged in its own file
        text = (run_dir / "logs" / f"fold{fold}.log").read_text()
        assert f"fold {fold} of par" in text and "1 torch threads" in text
        got, want = (pd.read_csv(d / "predictions" / f"fold{fold}.csv") for d in (run_dir, reference))
        pd.testing.assert_frame_equal(got, want, check_exact=True)  # every value of every clip

    recorder = Recorder()  # folds 1 and 2 again: nothing to launch; the summary is the sequential run's
    summary = run_cv(SUPERVISED, folds=FOLDS, name="par", out=results, overrides=overrides, wandb=False,
                     analyze=False, launcher=recorder)
    assert recorder.jobs == []
    assert_same_summary(run_dir, reference, summary, reference_summary)
    recorder = Recorder()  # a missing fold is the only one launched, with the run's own arguments
    (run_dir / "fold2" / "result.json").unlink()
    run_cv(SUPERVISED, folds=FOLDS, name="par", out=results, overrides=overrides, wandb=False, analyze=False,
           launcher=recorder, threads_per_fold=3, summarize=False)
    assert [(j.fold, j.name, j.threads, j.overrides) for j in recorder.jobs] == [(2, "par", 3, tuple(overrides))]
    assert recorder.jobs[0].log_file == str((run_dir / "logs" / "fold2.log").resolve())
    with pytest.raises(ValueError, match="different setup"):  # the run folder's fingerprint still guards it
        run_cv(SUPERVISED, folds=FOLDS, name="par", out=results, overrides=[*overrides, "--trainer.max_epochs", "2"],
               wandb=False, analyze=False, launcher=recorder)


def test_submitit_local_jobs_equal_sequential(sequential, results, esc50_root, cache_dir):
    pytest.importorskip("submitit")
    reference_summary, reference = sequential
    summary = timed("submitit local", name="sub", out=results, overrides=tiny_cv_overrides(esc50_root, cache_dir),
                    launcher=SubmititLauncher(cluster="local", cpus_per_task=1, timeout_min=10))
    assert_same_summary(results / "sub", reference, summary, reference_summary)
    assert len(list((results / "sub" / "submitit").glob("*_submitted.pkl"))) == len(FOLDS)  # one job per fold
    assert "fold 2 of sub" in (results / "sub" / "logs" / "fold2.log").read_text()


@pytest.mark.slow
def test_transductive_pretraining_is_trained_once_by_the_first_fold(tmp_path, esc50_root, cache_dir):
    """The folds of a transductive run share ``pretrain_transductive/``: the runner launches the first fold alone
    and the others after it, so the stage is trained once, never by two processes at the same time."""
    config = tmp_path / "transductive.yaml"
    config.write_text(yaml.safe_dump({"pipeline": "pretrain_probe", "pretrain": str(SUPERVISED),
                                      "transductive": True, "probe": {"C": 1.0, "max_iter": 50}}))
    summary = run_cv(config, folds=FOLDS, out=tmp_path / "results", overrides=tiny_cv_overrides(esc50_root, cache_dir),
                     wandb=False, analyze=False, launcher=ProcessLauncher(2, threads=1))
    run_dir = tmp_path / "results" / "transductive"
    logs = {fold: (run_dir / "logs" / f"fold{fold}.log").read_text() for fold in FOLDS}
    shared = run_dir / "pretrain_transductive"
    assert "already trained, loaded" not in logs[1] and f"{shared}: already trained, loaded" in logs[2]
    assert len(list(shared.glob("csv/**/metrics.csv"))) == 1  # one training run in the shared folder
    assert summary["variants"]["pretrained"]["transductive"] and summary["complete"] is False


def test_a_shared_stage_is_launched_by_the_first_fold_alone_and_failures_are_named():
    class Waves:
        def __init__(self, fail=()):
            self.waves, self.fail = [], set(fail)

        def launch(self, jobs):
            self.waves.append([job.fold for job in jobs])
            return {job.fold: "it broke" for job in jobs if job.fold in self.fail}

    jobs = [FoldJob(config_path="c.yaml", fold=k, name="n", out="o", log_file=f"fold{k}.log") for k in (2, 3, 5)]
    launcher = Waves()
    launch_folds(launcher, jobs, shared_stage=True)
    assert launcher.waves == [[2], [3, 5]]
    launcher = Waves()
    launch_folds(launcher, jobs, shared_stage=False)
    assert launcher.waves == [[2, 3, 5]]
    launcher = Waves(fail=[3])  # the others finish; the failed one is named
    with pytest.raises(FoldsFailed, match=r"^fold 3 failed: it broke \(the finished folds are kept"):
        launch_folds(launcher, jobs, shared_stage=False)
    launcher = Waves(fail=[2])  # the fold that trains the shared stage failed: the others are not started
    with pytest.raises(FoldsFailed, match=r"fold 2 failed: it broke; fold 3 failed: not run: fold 2, which trains"):
        launch_folds(launcher, jobs, shared_stage=True)
    assert launcher.waves == [[2]]
    assert FoldJob.from_json(json.loads(json.dumps(jobs[0].to_json()))) == jobs[0]  # travels as JSON


def test_ddp_is_refused_inside_parallel_folds(tmp_path, esc50_root, cache_dir, monkeypatch):
    from audio_ssl.evaluation.fold import FoldContext
    from audio_ssl.evaluation.lightning_stage import PARALLEL_ENV, fit_stage, lightning_args

    context = FoldContext(config={}, fold=1, work_dir=tmp_path / "fold1", config_path=SUPERVISED)
    args = (lightning_args(context, SUPERVISED, context.work_dir) + tiny_cv_overrides(esc50_root, cache_dir)
            + ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"])
    monkeypatch.setenv(PARALLEL_ENV, "2")
    with pytest.raises(ValueError, match=r"--parallel 2 runs 2 folds at once .* DDP over 2 processes .*"
                                         r"--parallel 1 .* --launcher submitit --gpus-per-fold"):
        fit_stage(args, context.work_dir)
    assert not (context.work_dir / "checkpoints").exists()  # refused before anything was trained


def test_launcher_arguments_are_checked(tmp_path, capsys):
    base = ["--config", str(SUPERVISED), "--out", str(tmp_path), "--no-wandb"]
    for extra, message in ((["--parallel", "0"], "--parallel 0: the number of folds at once must be at least 1"),
                           (["--parallel", "2", "--threads-per-fold", "0"], "--threads-per-fold 0: must be at least 1"),
                           (["--parallel", "2", "--launcher", "submitit"], "choose one"),
                           (["--launcher", "submitit", "--launcher-cluster", "slurm"], 'Could not detect "srun"'),
                           (["--launcher", "submitit", "--gpus-per-fold", "-1"], "--gpus-per-fold -1: must be at least 0"),
                           (["--parallel", "2", "--gpus-per-fold", "1", "--slurm-qos", "high"],
                            "--gpus-per-fold, --slurm-qos: options of --launcher submitit, which is not given")):
        if "submitit" in extra:
            pytest.importorskip("submitit")
        code, _, err = exit_code_and_output(cv_main, base + extra, capsys)
        assert code == 2 and message in err, (extra, err)
    assert not any(tmp_path.iterdir())  # nothing written
    assert default_threads(1) >= default_threads(2) >= 1
    with pytest.raises(ValueError, match="at least 1"):
        ProcessLauncher(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_a_fold_process_dies_with_its_launcher_even_on_sigkill(tmp_path):
    """The launcher's preexec_fn: SIGKILL the parent (a device call's timeout) and its fold process goes too."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "from audio_ssl.evaluation.launchers import die_with_parent\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=die_with_parent)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "the fold process outlived its launcher"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return "Z"
