"""The audio-stack check fails with the package, the versions and the fix when a part does not work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from audio_ssl.utils.environment import AudioStackError, check_audio_stack


def test_working_stack_reports_versions():
    versions = check_audio_stack()
    assert versions["torch"].startswith("2.11.0") and versions["torchaudio"].startswith("2.11.0")
    assert versions["libsndfile"]


def test_broken_torchaudio_library_is_named_with_the_fix(monkeypatch):
    # A mismatched pair imports the Python package but fails to load libtorchaudio on first use.
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(AudioStackError) as err:
        check_audio_stack()
    message = str(err.value)
    assert "torchaudio failed" in message
    assert "torch 2.11.0" in message and "requirements/lock.txt" in message and "make clean && make setup" in message


def test_command_exits_non_zero_with_one_message():
    code = "import sys; sys.modules['soundfile'] = None; from audio_ssl.utils.environment import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "soundfile failed" in proc.stderr and proc.stdout == ""


def test_lock_pins_one_matched_pair():
    from pathlib import Path

    lock = (Path(__file__).parents[2] / "requirements" / "lock.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lock if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"
    project = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"torch==2.11.0"' in project and '"torchaudio==2.11.0"' in project
