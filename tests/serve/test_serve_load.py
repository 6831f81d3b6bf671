"""A small bounded run of ``benchmarks/serve_load.py``: the real ``audio-ssl serve`` command in a subprocess on
127.0.0.1, concurrent clients posting 5 s clips. Below the queue limit every request succeeds; above it the
surplus gets 503 and nothing else, and the server's memory stays flat."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_load  # noqa: E402


def test_load_below_and_above_the_queue_limit(resnet_checkpoint):
    clip = serve_load.make_clip(5.0, 44100)  # the tiny model has 1 s windows: 9 windows a request
    server = serve_load.ServerProcess(resnet_checkpoint, max_batch=16, max_queue=4, threads=1)
    try:
        below = serve_load.measure(server, "batched", clip, clients=3, requests=18, time_limit=60)
        above = serve_load.measure(server, "overload", clip, clients=10, requests=30, time_limit=60, warmup=0)
    finally:
        server.stop()
    print("\n" + serve_load.table([below, above]))
    assert below["ok"] == below["requests"] == 18 and below["errors"] == 0, below
    assert 0 < below["p50_ms"] <= below["p99_ms"] and below["requests_per_s"] > 0
    assert below["mean_batch"] > 1  # concurrent requests' windows share forward passes
    assert set(above["statuses"]) <= {"200", "503"} and above["statuses"].get("503", 0) > 0, above
    assert above["ok"] > 0
    assert not serve_load.check(below) and not serve_load.check(above)
    assert 0 < below["rss_idle_mb"] <= above["rss_peak_mb"] < below["rss_idle_mb"] + 300  # flat: no growth per request
