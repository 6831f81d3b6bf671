"""``audio-ssl classify`` on long recordings: wall time and peak RSS of a 10-hour file beside a 5-second clip's.

    python benchmarks/classify_long.py --hours 10 --threads 1 --out results/bench/classify_long.json

One run writes, block by block, a 5-second clip, a ``--baseline-hours`` recording and a ``--hours`` recording
(``--rate`` Hz, ``--channels`` channels, 16-bit WAV in ``--tmp-dir``; deleted at the end), builds a checkpoint
of ``--config``'s model (random weights: the cost of inference does not depend on them; self-describing, so
classify needs nothing else) and runs, each in a fresh subprocess (``python -m audio_ssl.cli classify
--progress never``, ``OMP_NUM_THREADS=--threads``), timed with ``time.perf_counter`` and with the peak RSS of
that process from ``os.wait4`` (``ru_maxrss``):

- streaming classify on the clip, the baseline recording and the long recording;
- the former whole-file path (:func:`audio_ssl.data.audio.decode_audio` of the whole file, then
  :func:`audio_ssl.evaluation.windows.score_long_audio`) on the clip and on the baseline recording
  (``--baseline-hours 0`` skips it; it needs about 4 GB per hour of 44.1 kHz stereo).

Printed and written as JSON: per run wall and CPU seconds (user + system, less sensitive to other load on the
machine), peak RSS (MB), seconds per hour of audio, real-time factor,
and RSS above the clip's (target for the long file: <= 200 MB), with the ratios measured in this run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, environment, format_table, write_json  # noqa: E402

WHOLE_FILE = """
import sys, torch
from audio_ssl.data.audio import decode_audio
from audio_ssl.evaluation.windows import score_long_audio
from audio_ssl.tools.classify import load_classifier
bundle = load_classifier(None, sys.argv[1], "cpu")
wave = decode_audio(sys.argv[2], bundle.sample_rate, mono=True)
window = round(bundle.clip_seconds * bundle.sample_rate)
mean, _, starts = score_long_audio(bundle.score, wave, window, window // 2, 16, bundle.device)
print(len(starts), mean.argmax())
"""


def write_recording(path: Path, seconds: float, rate: int, channels: int) -> None:
    """A 16-bit WAV of tones and noise, written one minute at a time (never whole in memory)."""
    rng = np.random.default_rng(0)
    minute = 60 * rate
    t = np.arange(minute) / rate
    base = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(minute)
    frames = round(seconds * rate)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16", format="RF64" if frames * channels * 2 >= 2**32 - 64
                      else "WAV") as f:
        written, k = 0, 0
        while written < frames:
            n = min(minute, frames - written)
            block = (base[:n] * (0.5 + 0.5 * np.sin(k))).astype(np.float32)
            f.write(np.repeat(block[:, None], channels, axis=1) * np.linspace(1, 0.6, channels, dtype=np.float32))
            written, k = written + n, k + 1


def make_checkpoint(config: Path, out: Path, num_classes: int) -> None:
    """A self-describing checkpoint of ``config``'s model with freshly initialised weights."""
    import torch
    import yaml
    from jsonargparse import ArgumentParser

    from audio_ssl.methods.base import BaseMethod
    from audio_ssl.utils.provenance import CHECKPOINT_KEY

    cfg = yaml.safe_load(config.read_text())
    data = (cfg["data"].get("init_args") or {})
    sample_rate, clip_seconds = int(data.get("sample_rate", 16000)), float(data.get("clip_seconds", 5.0))
    block = dict(cfg["model"])
    block["init_args"] = {**(block.get("init_args") or {}), "num_classes": num_classes, "sample_rate": sample_rate}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BaseMethod, "model")
    torch.manual_seed(0)
    model = parser.instantiate_classes(parser.parse_object({"model": block})).model
    meta = {"model_config": block, "num_classes": num_classes, "sample_rate": sample_rate,
            "data": {"clip_seconds": clip_seconds, "class_names": [f"class{i}" for i in range(num_classes)]}}
    torch.save({"state_dict": model.state_dict(), CHECKPOINT_KEY: meta}, out)


def measure(cmd: list[str], threads: int) -> dict:
    """Wall seconds and peak RSS (MB) of one subprocess; raises if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{err[-2000:]}")
    rss_mb = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return {"wall_s": wall, "peak_rss_mb": rss_mb, "cpu_s": usage.ru_utime + usage.ru_stime}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=10.0, help="length of the long recording (default: 10)")
    parser.add_argument("--baseline-hours", type=float, default=0.5,
                        help="length of the recording also run through the whole-file path (0: skip; default 0.5)")
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--config", default="experiments/supervised_cpu.yaml", help="the model (random weights)")
    parser.add_argument("--num-classes", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the classify processes")
    parser.add_argument("--tmp-dir", default=None, help="where the recordings are written (default: system tmp)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="classify-long-", dir=args.tmp_dir))
    runs: dict[str, dict] = {}
    try:
        checkpoint = work / "model.ckpt"
        make_checkpoint(REPO_ROOT / args.config, checkpoint, args.num_classes)
        lengths = {"clip": args.clip_seconds, "long": args.hours * 3600}
        if args.baseline_hours > 0:
            lengths["baseline"] = args.baseline_hours * 3600
        for name in ("clip", "baseline", "long"):
            if name not in lengths:
                continue
            path = work / f"{name}.wav"
            start = time.perf_counter()
            write_recording(path, lengths[name], args.rate, args.channels)
            print(f"wrote {name}: {lengths[name] / 3600:.4g} h, {path.stat().st_size / 1e9:.2f} GB in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            classify = [sys.executable, "-m", "audio_ssl.cli", "classify", "--checkpoint", str(checkpoint), str(path),
                        "--device", "cpu", "--progress", "never", "--out", str(work / f"{name}.csv")]
            sides = [("stream", classify)]
            if name in ("clip", "baseline") and args.baseline_hours > 0:
                sides.append(("whole_file", [sys.executable, "-c", WHOLE_FILE, str(checkpoint), str(path)]))
            for side, cmd in sides:
                result = measure(cmd, args.threads)
                hours = lengths[name] / 3600
                result.update(audio_hours=hours, s_per_audio_hour=result["wall_s"] / hours,
                              realtime_factor=lengths[name] / result["wall_s"])
                runs[f"{name}/{side}"] = result
                print(f"{name}/{side}: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    clip_rss = runs["clip/stream"]["peak_rss_mb"]
    for result in runs.values():
        result["rss_above_clip_mb"] = result["peak_rss_mb"] - clip_rss
    summary = {"long_rss_above_clip_mb": runs["long/stream"]["rss_above_clip_mb"], "target_mb": 200.0}
    summary["met"] = summary["long_rss_above_clip_mb"] <= summary["target_mb"]
    if "baseline/whole_file" in runs:
        base, stream = runs["baseline/whole_file"], runs["baseline/stream"]
        summary["baseline_rss_ratio_whole_over_stream"] = base["peak_rss_mb"] / stream["peak_rss_mb"]
        summary["baseline_wall_ratio_whole_over_stream"] = base["wall_s"] / stream["wall_s"]
    print()
    print(format_table([[name, r["audio_hours"], r["wall_s"], r["cpu_s"], r["s_per_audio_hour"], r["realtime_factor"],
                         r["peak_rss_mb"], r["rss_above_clip_mb"]] for name, r in runs.items()],
                       ["run", "audio h", "wall s", "CPU s", "s/audio h", "x realtime", "peak RSS MB", "above clip"]))
    print(f"long recording: {summary['long_rss_above_clip_mb']:.0f} MB above the clip's peak RSS "
          f"(target <= {summary['target_mb']:.0f} MB: {'met' if summary['met'] else 'NOT met'})")
    if "baseline_rss_ratio_whole_over_stream" in summary:
        print(f"whole-file path / streaming on {args.baseline_hours:g} h: peak RSS "
              f"x{summary['baseline_rss_ratio_whole_over_stream']:.1f}, wall x{summary['baseline_wall_ratio_whole_over_stream']:.2f}")
    result = {"args": vars(args), "runs": runs, "summary": summary, "environment": environment(),
              "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
