"""``audio-ssl reproduce``: a selection that runs nothing, or a data folder that does not exist, is refused before
anything runs (exit status 2, naming the option and value), never a silent exit 0 or a failure per row."""

from __future__ import annotations

import functools
from pathlib import Path

from helpers import exit_code

from audio_ssl.tools import reproduce

run_main = functools.partial(exit_code, reproduce.main)  # the exit status of `audio-ssl reproduce ARGV`


def test_gpu_rows_leaving_no_selected_row_is_refused(tmp_path: Path, capsys):
    """mfcc_logreg is `gpu: false`: with --gpu-rows the selection is empty, so nothing would run; today the
    command exits 0 ("incomplete runs: none"), which the GPU script reads as "every selected row complete"."""
    rc = run_main(["--gpu-rows", "--rows", "mfcc_logreg", "--data-dir", str(tmp_path / "esc50"),
                   "--out", str(tmp_path / "out"), "--no-readme"])
    assert rc == 2
    assert "mfcc_logreg" in capsys.readouterr().err


def test_empty_rows_option_is_refused(tmp_path: Path, capsys):
    """`--rows ''` (e.g. an unset shell variable) selects no row; today it silently runs every row."""
    rc = run_main(["--rows", "", "--data-dir", str(tmp_path / "esc50"), "--out", str(tmp_path / "out"),
                   "--no-readme", "--budget-minutes", "0.001"])
    assert rc == 2
    assert "--rows" in capsys.readouterr().err


def test_missing_data_dir_is_refused_before_any_row(tmp_path: Path, capsys):
    """A --data-dir without meta/esc50.csv: today every selected row starts (5 fold processes each for the GPU
    rows, ~1 min per row on this CPU) and fails with a traceback; expected: exit 2 naming --data-dir."""
    missing = tmp_path / "nowhere"
    rc = run_main(["--rows", "mfcc_logreg", "--data-dir", str(missing), "--out", str(tmp_path / "out"),
                   "--no-readme"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and str(missing) in err


def test_gpu_rows_on_a_machine_without_cuda_are_refused_unless_allowed(tmp_path: Path, capsys, monkeypatch):
    """`make reproduce` on a CPU-only machine must not quietly start the 100-epoch ResNet-34 (Lightning would pick
    the CPU): refused with the ways out named; the CPU rows and --smoke are unaffected."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "esc50"
    (data / "meta").mkdir(parents=True)
    (data / "meta" / "esc50.csv").write_text("filename,fold,target,category\n")
    rc = run_main(["--rows", "supervised_resnet34,mfcc_logreg", "--data-dir", str(data),
                   "--out", str(tmp_path / "out"), "--no-readme"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "['supervised_resnet34']" in err and "no CUDA device" in err and "--allow-cpu" in err
    assert not (tmp_path / "out" / "supervised_resnet34").exists()


def test_the_gpu_script_checks_budget_and_rows_before_any_stage(tmp_path: Path):
    """run_reproduce.sh: a bad --budget or --rows costs no device time (exit 2 before the data stages)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    for args, message in ((["--budget", "abc"], "--budget abc"), (["--budget", "5"], "--budget 5"),
                          (["--rows", "nosuch"], "unknown row(s) ['nosuch']")):
        proc = subprocess.run(["bash", "benchmarks/gpu/run_reproduce.sh", "--smoke", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert not (tmp_path / "work").exists()  # no stage ran
