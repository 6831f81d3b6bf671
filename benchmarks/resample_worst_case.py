"""Worst-case resampling cost over a sweep of rate pairs: the old torchaudio path against :func:`resample`.

Every pair runs in its own forked process (so one pair's peak memory cannot hide another's) on ``--seconds``
(0.25) of white noise at the original rate, mono float32. Reported per pair: wall seconds, peak RSS of that
process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the extra over its RSS before the call (what the
resampling itself needed: output, filter bank, scratch), or why it failed. Each process runs under an address
space cap (``--mem-cap-gb`` above what it held at the start, 6 by default) and a time limit (``--timeout``,
120 s): a pair over either is reported as failed, with the limit it hit.

- ``old``: ``torchaudio.functional.resample`` with the settings the project used before (librosa
  ``kaiser_best``: Kaiser window, beta 14.77, 64 zero crossings, rolloff 0.9476). Its kernel has
  ``orig/gcd x target/gcd`` taps, so co-prime rates (16001 -> 16000) cost seconds and gigabytes.
- ``new``: :func:`audio_ssl.data.audio.resample` (libsoxr ``VHQ``).

The sweep is every ordered pair of ``--rates`` (default: 1 Hz to 384 kHz, with co-prime neighbours of the
common rates); the old path runs only on pairs into ``--old-targets`` (16000 and 44100 by default: it is slow).
Usage, from the repository root (``--quick``: a handful of pairs, for the test suite)::

    python benchmarks/resample_worst_case.py [--out results/bench/resample_worst_case.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_RATES = [1, 7, 1000, 8000, 11025, 16000, 16001, 22050, 44100, 44101, 48000, 96000, 192000, 383999, 384000]
DEFAULT_OLD_TARGETS = [16000, 44100]
QUICK_RATES = [1, 16000, 16001, 44100, 384000]
OLD_KWARGS = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}


def _load_audio_module():
    """``audio_ssl/data/audio.py`` on its own (it needs numpy, soundfile and soxr only): importing the
    ``audio_ssl.data`` package would load torch and Lightning into every measured process."""
    spec = importlib.util.spec_from_file_location("_bench_audio", REPO_ROOT / "audio_ssl" / "data" / "audio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(method: str, orig: int, target: int, seconds: float, mem_cap: int, conn) -> None:
    try:
        if method == "old":
            import torch
            import torchaudio.functional as AF

            torch.set_num_threads(1)
            run = lambda x: AF.resample(torch.from_numpy(x)[None], orig, target, **OLD_KWARGS)[0].numpy()  # noqa: E731
        else:
            resample = _load_audio_module().resample
            run = lambda x: resample(x, orig, target)  # noqa: E731
        x = np.random.default_rng(0).standard_normal(max(1, round(seconds * orig))).astype(np.float32)
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + mem_cap, resource.RLIM_INFINITY))
        before = _maxrss_mb()
        start = time.perf_counter()
        y = run(x)
        wall = time.perf_counter() - start
        conn.send({"ok": True, "seconds": wall, "peak_mb": _maxrss_mb(), "extra_mb": _maxrss_mb() - before,
                   "out_samples": int(len(y))})
    except BaseException as err:  # noqa: BLE001 - reported, not raised
        conn.send({"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"})


def measure(method: str, orig: int, target: int, seconds: float = 0.25, timeout: float = 120.0,
            mem_cap_gb: float = 6.0) -> dict:
    """One pair in a forked process: ``{"method", "orig", "target", "ok", "seconds", "peak_mb", "extra_mb"}``
    or ``{..., "ok": False, "error"}``."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(method, orig, target, seconds, int(mem_cap_gb * 2**30), child))
    proc.start()
    child.close()
    row = {"method": method, "orig": orig, "target": target}
    if parent.poll(timeout):
        try:
            row.update(parent.recv())
        except EOFError:
            row.update(ok=False, error=f"killed (exit code {proc.exitcode})")
    else:
        proc.kill()
        row.update(ok=False, error=f"over the {timeout:.0f} s time limit")
    proc.join()
    if proc.exitcode not in (0, None) and "error" not in row:
        row.update(ok=False, error=f"killed (exit code {proc.exitcode})")
    return row


def worst(rows: list[dict], method: str) -> dict:
    """The slowest pair, the hungriest pair and the failures of ``method``."""
    done = [r for r in rows if r["method"] == method and r["ok"]]
    failed = [r for r in rows if r["method"] == method and not r["ok"]]
    return {
        "pairs": len(done) + len(failed),
        "slowest": max(done, key=lambda r: r["seconds"]) if done else None,
        "most_memory": max(done, key=lambda r: r["extra_mb"]) if done else None,
        "failed": failed,
    }


def _line(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['orig']} -> {r['target']} Hz: {r['seconds']:.3f} s, peak RSS {r['peak_mb']:.0f} MB (+{r['extra_mb']:.0f} MB)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=None)
    parser.add_argument("--old-targets", type=int, nargs="*", default=None)
    parser.add_argument("--seconds", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--mem-cap-gb", type=float, default=6.0)
    parser.add_argument("--quick", action="store_true", help="five rates, the old path on one pair only")
    parser.add_argument("--out", default=None, help="write every row and the summary as JSON here")
    args = parser.parse_args(argv)
    rates = args.rates or (QUICK_RATES if args.quick else DEFAULT_RATES)
    old_targets = args.old_targets if args.old_targets is not None else ([] if args.quick else DEFAULT_OLD_TARGETS)
    pairs = [(o, t) for o in rates for t in rates if o != t]
    jobs = [("new", o, t) for o, t in pairs] + [("old", o, t) for o, t in pairs if t in old_targets]
    if args.quick:
        jobs.append(("old", 16000, 44100))
    rows = []
    for method, orig, target in jobs:
        row = measure(method, orig, target, args.seconds, args.timeout, args.mem_cap_gb)
        rows.append(row)
        status = _line(row) if row["ok"] else f"{orig} -> {target} Hz: FAILED ({row['error']})"
        print(f"{method:>3}  {status}", flush=True)
    # Imported only now: the shared helpers import torch, which would sit in every forked child's RSS above.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import environment, format_table, write_json

    summary = {m: worst(rows, m) for m in ("old", "new")}
    print(f"\nworst cases over {len(pairs)} rate pairs from {min(rates)} Hz to {max(rates)} Hz, "
          f"{args.seconds} s of mono float32 input:")
    print(format_table([[method, _line(s["slowest"]), _line(s["most_memory"]), f"{len(s['failed'])} of {s['pairs']}",
                         (f"{s['failed'][0]['orig']} -> {s['failed'][0]['target']} Hz: {s['failed'][0]['error']}"
                          if s["failed"] else None)]
                        for method, s in summary.items() if s["pairs"]],
                       ["path", "slowest", "most memory", "failed", "e.g."]))
    result = {"seconds_of_input": args.seconds, "rates": rates, "rows": rows, "summary": summary,
              "environment": environment()}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(0 if main() else 1)
