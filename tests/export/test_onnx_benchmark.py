"""benchmarks/onnx_parity.py stays runnable: a tiny run (1 s clips, 4 clips) on both classifier kinds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import onnx_parity  # noqa: E402


def test_tiny_run(tmp_path, esc50_root):
    out = tmp_path / "onnx.json"
    result = onnx_parity.main(["--data-dir", str(esc50_root), "--clips", "4", "--batch", "2", "--repeats", "1",
                               "--clip-seconds", "1", "--kinds", "supervised", "beats", "--out", str(out)])
    assert [r["kind"] for r in result["runs"]] == ["supervised", "beats"]
    for run in result["runs"]:
        assert run["dynamic_length"] and run["max_abs_diff"] < 1e-4
        assert run["torch_clips_per_s"] > 0 and run["onnx_clips_per_s"] > 0
    assert result["runs"][0]["encoder"] == "AudioResNet" and result["runs"][1]["encoder"] == "BEATs"
    assert json.loads(out.read_text())["clips"].startswith("ESC-50")
