"""Load test of ``audio-ssl serve`` on 127.0.0.1: requests/s, p50/p99 latency, errors and the server's peak memory.

    python benchmarks/serve_load.py                                   # a small model made here, 5 s clips
    python benchmarks/serve_load.py --checkpoint runs/x/checkpoints/last.ckpt --clients 8 --requests 200
    python benchmarks/serve_load.py --quick                           # seconds, what the test suite runs

Each scenario starts the server as a subprocess (``python -m audio_ssl.cli serve --host 127.0.0.1``), waits for
``/healthz``, sends ``--warmup`` untimed requests, then has ``--clients`` concurrent clients post the same
``--clip-seconds`` WAV (``--clip-rate`` Hz, so the server resamples, as for ESC-50's 44.1 kHz files) as multipart
uploads until ``--requests`` have been answered or ``--time-limit`` seconds have passed (both bound every run).
Latency is per request, client side; requests/s counts 200 answers over the wall time of the run. The server's
resident memory is sampled every 20 ms (``/proc/<pid>/status``: VmRSS) and its peak (VmHWM) read at the end.

Scenarios:
* ``batched``: ``--max-batch`` (16) windows per forward pass; ``one_by_one``: ``--max-batch 1`` (the baseline);
  both with ``--max-queue`` above ``--clients``, so every request must succeed (errors = 0).
* ``overload``: ``--overload-clients`` clients against a queue of ``--overload-queue``: the surplus must get 503
  (and nothing else), and memory stays flat.

Without ``--checkpoint``, a supervised ResNet-10 at a quarter of the width (``experiments/supervised_cpu.yaml``'s
model: 64 mels, 0.3M parameters, 5 s clips) is fitted for one step on a generated ESC-50-layout set, so the
script runs anywhere; its speed is the model's, its predictions meaningless. Exit status 1 when a scenario breaks
its rule (errors below the queue limit, anything but 503 above it, no 503 at all above it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, format_table, write_json  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the model
def make_checkpoint(workdir: Path, clip_seconds: float = 5.0) -> Path:
    """A self-describing checkpoint of supervised_cpu.yaml's model, fitted one step on generated data."""
    from audio_ssl.cli import build_cli
    from audio_ssl.data.synthetic import make_synthetic_esc50

    data = workdir / "esc50"
    make_synthetic_esc50(data, num_classes=10, clips_per_class=5, sample_rate=16000, seconds=clip_seconds, seed=0)
    config = workdir / "model.yaml"
    config.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer: {{max_epochs: 1, limit_train_batches: 1, limit_val_batches: 0, accelerator: cpu, devices: 1,
                   logger: false, enable_progress_bar: false, enable_model_summary: false}}
        checkpoint: {{dirpath: {workdir / "serve_bench" / "checkpoints"}, monitor: null}}
        model:
          class_path: audio_ssl.methods.SupervisedClassifier
          init_args:
            encoder:
              class_path: audio_ssl.models.AudioResNet
              init_args: {{arch: resnet10, widths: [16, 32, 64, 128]}}
            frontend:
              class_path: audio_ssl.features.LogMelSpectrogram
              init_args: {{n_fft: 1024, hop_length: 512, n_mels: 64, log: db, normalize: instance}}
            scheduler: constant
        data:
          class_path: audio_ssl.data.ESC50DataModule
          init_args: {{data_dir: {data}, cache_dir: {workdir / "cache"}, clip_seconds: {clip_seconds},
                       batch_size: 8, num_workers: 0}}
        """))
    build_cli(["fit", "--config", str(config)])
    return workdir / "serve_bench" / "checkpoints" / "last.ckpt"


def make_clip(seconds: float, rate: int, seed: int = 0) -> bytes:
    """A WAV (16-bit mono) of a noisy chirp."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 300 * t * (1 + t / 2)) + 0.05 * rng.standard_normal(len(t))
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``audio-ssl serve`` in a subprocess on 127.0.0.1, with its memory sampled while it runs."""

    def __init__(self, checkpoint: Path, max_batch: int, max_queue: int, threads: int | None = None,
                 max_wait_ms: float = 5.0, timeout: float = 60.0, startup_timeout: float = 120.0):
        self.port, self.max_queue = free_port(), max_queue
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "audio_ssl.cli", "serve", "--checkpoint", str(checkpoint), "--host",
                   "127.0.0.1", "--port", str(self.port), "--max-batch", str(max_batch), "--max-queue", str(max_queue),
                   "--max-wait-ms", str(max_wait_ms), "--timeout", str(timeout), "--log-level", "warning"]
        if threads:
            command += ["--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready(startup_timeout)
        self.samples: list[int] = []
        self._sampling = False
        self._sampler: threading.Thread | None = None

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"audio-ssl serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"audio-ssl serve did not answer /healthz within {timeout:g} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def memory_kib(self, field: str = "VmRSS") -> int:
        """A ``/proc/<pid>/status`` memory field of the server in KiB (0 where /proc is missing)."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def start_sampling(self, every: float = 0.02) -> None:
        self.samples, self._sampling = [], True

        def sample():
            while self._sampling:
                self.samples.append(self.memory_kib())
                time.sleep(every)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._sampling = False
        if self._sampler is not None:
            self._sampler.join()

    def health(self) -> dict:
        import httpx

        return httpx.get(self.base + "/healthz", timeout=5.0).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------- the clients
async def _load(base: str, clip: bytes, clients: int, requests: int, time_limit: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient):
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            sent += 1
            started = time.perf_counter()
            try:
                response = await http.post("/v1/classify", files={"file": ("clip.wav", clip, "audio/wav")})
                key = str(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                elif response.status_code == 503:
                    await asyncio.sleep(0.02)  # a client that was told the queue is full backs off a little
            except httpx.HTTPError as err:
                key = type(err).__name__
            statuses[key] = statuses.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120.0) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    lat = np.array(latencies) * 1000.0
    return {"clients": clients, "requests": sum(statuses.values()), "ok": ok, "statuses": statuses,
            "errors": sum(v for k, v in statuses.items() if k != "200"), "seconds": round(elapsed, 3),
            "requests_per_s": round(ok / elapsed, 3) if elapsed else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if ok else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if ok else None}


def measure(server: ServerProcess, name: str, clip: bytes, clients: int, requests: int, time_limit: float,
            warmup: int = 2) -> dict:
    """Warm a running server up, load it, and measure (see the module docstring)."""
    import httpx

    for _ in range(warmup):
        httpx.post(server.base + "/v1/classify", files={"file": ("clip.wav", clip)}, timeout=120.0)
    before = server.health()["batching"]
    idle = server.memory_kib()
    server.start_sampling()
    try:
        result = asyncio.run(_load(server.base, clip, clients, requests, time_limit))
    finally:
        server.stop_sampling()
    after = server.health()["batching"]
    batches, windows = after["batches"] - before["batches"], after["windows"] - before["windows"]
    peak = max([server.memory_kib("VmHWM"), *server.samples])
    return {"scenario": name, "max_batch": after["max_batch"], "max_queue": server.max_queue, **result,
            "mean_batch": round(windows / batches, 2) if batches else 0.0, "largest_batch": after["largest_batch"],
            "rss_idle_mb": round(idle / 1024, 1), "rss_peak_mb": round(peak / 1024, 1)}


def run_scenario(name: str, checkpoint: Path, clip: bytes, clients: int, requests: int, time_limit: float,
                 max_batch: int, max_queue: int, threads: int | None = None, warmup: int = 2,
                 max_wait_ms: float = 5.0) -> dict:
    """Start a server, warm it up, load it, stop it; the measurements of one scenario."""
    server = ServerProcess(checkpoint, max_batch, max_queue, threads, max_wait_ms)
    try:
        return measure(server, name, clip, clients, requests, time_limit, warmup)
    finally:
        server.stop()


def check(result: dict) -> list[str]:
    """The rules: below the queue limit no errors; above it only 503s, and some."""
    problems = []
    if result["scenario"] == "overload":
        other = {k: v for k, v in result["statuses"].items() if k not in ("200", "503")}
        if other:
            problems.append(f"overload: answers other than 200/503: {other}")
        if not result["statuses"].get("503"):
            problems.append("overload: no 503 although the clients outnumber the queue")
    elif result["errors"]:
        problems.append(f"{result['scenario']}: {result['errors']} errors below the queue limit: {result['statuses']}")
    return problems


def table(results: list[dict]) -> str:
    """The scenarios as a plain-text table (:func:`common.format_table`)."""
    head = ("scenario", "max_batch", "clients", "ok", "errors", "req/s", "p50 ms", "p99 ms", "mean batch",
            "RSS idle MB", "RSS peak MB")
    return format_table([(r["scenario"], r["max_batch"], r["clients"], r["ok"],
                          ", ".join(f"{k}: {v}" for k, v in r["statuses"].items() if k != "200") or "0",
                          r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["mean_batch"], r["rss_idle_mb"],
                          r["rss_peak_mb"]) for r in results], head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a classifier checkpoint (default: made here)")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="length of the posted clip (default: 5)")
    parser.add_argument("--clip-rate", type=int, default=44100, help="its sample rate (default: 44100)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario at most (default: 200)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per scenario at most (default: 60)")
    parser.add_argument("--max-batch", type=int, default=16, help="the batched scenario's --max-batch (default: 16)")
    parser.add_argument("--max-queue", type=int, default=32, help="queue of the batched/one-by-one runs (default: 32)")
    parser.add_argument("--overload-clients", type=int, default=24, help="clients of the overload run (default: 24)")
    parser.add_argument("--overload-queue", type=int, default=4, help="queue of the overload run (default: 4)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--scenarios", default="batched,one_by_one,overload", help="which to run, comma-separated")
    parser.add_argument("--quick", action="store_true", help="tiny bounded run: 4 clients, 24 requests, 30 s")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.time_limit = 4, 24, 30.0
        args.overload_clients, args.overload_queue = 8, 2

    with tempfile.TemporaryDirectory(prefix="serve-load-") as workdir:
        checkpoint = args.checkpoint or make_checkpoint(Path(workdir), args.clip_seconds)
        clip = make_clip(args.clip_seconds, args.clip_rate)
        plans = {
            "batched": (args.clients, args.max_batch, args.max_queue),
            "one_by_one": (args.clients, 1, args.max_queue),
            "overload": (args.overload_clients, args.max_batch, args.overload_queue),
        }
        results = []
        for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            clients, max_batch, max_queue = plans[name]
            print(f"serve_load: {name}: {clients} clients, max_batch {max_batch}, max_queue {max_queue} ...",
                  file=sys.stderr, flush=True)
            results.append(run_scenario(name, checkpoint, clip, clients, args.requests, args.time_limit, max_batch,
                                        max_queue, args.threads))
    print(f"{args.clip_seconds:g} s clips at {args.clip_rate} Hz, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(results))
    problems = [p for r in results for p in check(r)]
    for problem in problems:
        print("FAILED:", problem)
    write_json(args.out, {"results": results, "problems": problems, "environment": environment()})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
