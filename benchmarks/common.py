"""Shared helpers of the benchmark scripts: timing, memory of the process tree, config loading, tables, JSON.

The scripts run from the repository root as ``python benchmarks/<script>.py``; they import this module
as ``common`` (their own folder is put on ``sys.path``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- timing
def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work (a no-op on CPU), so that wall-clock times cover the work itself."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Timings(NamedTuple):
    """Seconds per call: wall clock, and CPU time of this process (all its threads; robust to other load)."""

    wall: list[float]
    cpu: list[float]


def time_repeats(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | str | None = None
) -> Timings:
    """Wall-clock and CPU seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    timings = Timings([], [])
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        timings.wall.append(time.perf_counter() - start)
        timings.cpu.append(time.process_time() - cpu_start)
    return timings


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of an empty sequence")
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` (``inf`` for a zero denominator), for speed-up columns."""
    return float(numerator / denominator) if denominator > 0 else float("inf")


# ----------------------------------------------------------------------------------------- memory
def _kib_to_mb(kib: float) -> float:
    return kib / 1024


def peak_rss_mb() -> dict[str, float]:
    """Peak resident set sizes from ``getrusage``: this process (``self``) and the largest of its
    terminated, waited-for children (``children``, e.g. DataLoader workers once they have exited).

    ``ru_maxrss`` is a high-water mark for the whole process lifetime; RSS counts shared pages (the
    memory-mapped waveform cache, copy-on-write pages after ``fork``) in every process that touches them.
    """
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # bytes on macOS, KiB on Linux
    return {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }


def current_rss_mb() -> float:
    """This process's resident set size now (Linux ``/proc``; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()["self"]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return kids


def process_tree(pid: int | None = None) -> list[int]:
    """``pid`` (default: this process) and all its descendants (Linux ``/proc``; just ``pid`` elsewhere)."""
    todo, seen = [pid or os.getpid()], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _status_kib(pid: int) -> tuple[float, float] | None:
    """(RSS, anonymous RSS) of one process in KiB from ``/proc/<pid>/status`` (cheap); ``None`` if
    unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return float(fields["VmRSS"].split()[0]), float(fields["RssAnon"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def _pss_kib(pid: int) -> float | None:
    """PSS of one process in KiB from ``/proc/<pid>/smaps_rollup``: exact but costly (the kernel walks the
    page tables: ~15 ms of CPU for a process of 500 MB), so it is sampled rarely."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return float(fields["Pss"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by ``pid`` (default: this process) and its living descendants
    (from ``/proc/<pid>/stat``; falls back to ``time.process_time()`` of this process elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0.0, False
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
        found = True
    return total if found else time.process_time()


class TreeMemorySampler:
    """Samples the memory of this process and its children (DataLoader workers) in a background thread.

    Every ``interval_s``: the summed RSS (overcounts pages shared between processes, e.g. the memory-mapped
    waveform cache and the shared-memory batches) and the summed anonymous RSS (heap memory: no file-backed
    pages; copy-on-write pages after ``fork`` still count once per process). Every ``pss_interval_s`` (None:
    never, the default, as it costs CPU that would distort timings): the summed PSS (each shared page split
    between its users, so the sum is the memory the tree really holds). Peaks are reported. Linux only.

        with TreeMemorySampler(pss_interval_s=1.0) as mem:
            run_epoch()
        mem.peak_pss_mb
    """

    def __init__(self, interval_s: float = 0.2, pss_interval_s: float | None = None):
        self.interval_s, self.pss_interval_s = interval_s, pss_interval_s
        self.peak_rss_mb = self.peak_anon_mb = self.peak_pss_mb = 0.0
        self.max_processes = 0
        self._last_pss = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, pss: bool = False) -> None:
        pids = process_tree()
        rss = anon = 0.0
        for pid in pids:
            mem = _status_kib(pid)
            if mem is not None:
                rss, anon = rss + mem[0], anon + mem[1]
        self.peak_rss_mb = max(self.peak_rss_mb, _kib_to_mb(rss))
        self.peak_anon_mb = max(self.peak_anon_mb, _kib_to_mb(anon))
        self.max_processes = max(self.max_processes, len(pids))
        now = time.monotonic()
        if pss or (self.pss_interval_s is not None and now - self._last_pss >= self.pss_interval_s):
            self._last_pss = now
            total = sum(v for v in map(_pss_kib, pids) if v is not None)
            self.peak_pss_mb = max(self.peak_pss_mb, _kib_to_mb(total))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeMemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def as_dict(self) -> dict[str, float]:
        out = {
            "peak_tree_rss_mb": self.peak_rss_mb,
            "peak_tree_anon_mb": self.peak_anon_mb,
            "max_processes": self.max_processes,
        }
        if self.pss_interval_s is not None:
            out["peak_tree_pss_mb"] = self.peak_pss_mb
        return out


# ----------------------------------------------------------------------------------------- configs
def load_experiment(config: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[Any, Any, Any]:
    """Instantiate ``(model, datamodule, config namespace)`` from a Lightning CLI experiment YAML.

    Goes through :func:`audio_ssl.cli.build_cli` (``run=False``), so class paths, defaults and the
    links (``data.num_classes`` -> model) are resolved exactly as in ``audio-ssl fit``. ``overrides`` are
    extra CLI arguments (``["--data.init_args.batch_size", "8"]``). The config's loggers are replaced
    by ``False``: the benchmarks build their own Trainer.
    """
    from audio_ssl.cli import build_cli

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"experiment config {config} does not exist")
    argv, sys.argv = sys.argv, sys.argv[:1]  # the benchmark's own arguments are not the CLI's
    try:
        cli = build_cli(["--config", str(config), "--trainer.logger", "false", *overrides], run=False)
    finally:
        sys.argv = argv
    return cli.model, cli.datamodule, cli.config


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners and known-harmless warnings out of the benchmark output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*LeafSpec.*",
        ".*but have no `val_dataloader`.*",
        ".*overridden `on_after_batch_transfer`.*",
        ".*does not have many workers.*",
        ".*Seed set to.*",
    ):
        warnings.filterwarnings("ignore", message=message)


# ----------------------------------------------------------------------------------------- output
def environment() -> dict[str, Any]:
    """Where the numbers were measured (they mean little without it)."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with right-aligned numeric columns."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    numeric = [
        all(row[i] is None or isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    """Write ``payload`` as indented JSON to ``path`` (parents created); nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
