"""Feature-extraction throughput and peak memory of the full-size BEATs encoder (random weights).

Measures the whole pipeline (Kaldi fbank + encoder) and the encoder alone on fixed-length clips under
``torch.inference_mode``, for each batch size, and prints a table and writes JSON.

    python benchmarks/beats_extract.py --device cpu --iters 3 --out beats_cpu.json
    python benchmarks/beats_extract.py --device cuda --bf16 --iters 20 --out beats_cuda_bf16.json

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed runs; on CPU, the process's peak
resident set size (``ru_maxrss``, which never decreases, hence batch sizes run in increasing order) and its
increase over the resident size before the run (roughly the activations).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from audio_ssl.models.beats import BEATs, BEATsConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import current_rss_mb, environment, format_table, peak_rss_mb, sync, write_json  # noqa: E402


def bench_one(model: BEATs, device: torch.device, batch: int, samples: int, iters: int, warmup: int,
              bf16: bool) -> dict[str, Any]:
    """Time ``iters`` forward passes (after ``warmup``) of the full pipeline and of the encoder alone."""
    gen = torch.Generator().manual_seed(batch)
    waves = ((torch.rand(batch, samples, generator=gen) * 2 - 1) * 0.3).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mb()
    result: dict[str, Any] = {"batch_size": batch}
    with torch.inference_mode(), autocast:
        fbank, _ = model.frontend(waves)
        for name, run in (("pipeline", lambda: model(waves)), ("encoder", lambda: model.extract_features(fbank))):
            for _ in range(warmup):
                run()
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                out = run()
            sync(device)
            seconds = (time.perf_counter() - start) / iters
            result[f"{name}_ms_per_batch"] = 1000 * seconds
            result[f"{name}_clips_per_s"] = batch / seconds
        result["tokens"] = out.features.size(1)
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_mem_mb"] = peak_rss_mb()["self"]
        result["peak_rss_increase_mb"] = max(0.0, result["peak_mem_mb"] - rss_before)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = BEATsConfig.iter3()
    model = BEATs(cfg).to(device).eval()
    samples = int(round(args.clip_seconds * 16000))

    rows = [bench_one(model, device, b, samples, args.iters, args.warmup, args.bf16)
            for b in sorted(args.batch_sizes)]
    report = {
        "model": "BEATs iter3 architecture (random weights)",
        "params": sum(p.numel() for p in model.parameters()),
        "cfg": cfg.to_dict(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "bf16": args.bf16,
        "clip_seconds": args.clip_seconds,
        "iters": args.iters,
        "warmup": args.warmup,
        "peak_mem": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (ru_maxrss)",
        "results": rows,
        "environment": environment(),
    }

    print(f"BEATs iter3 ({report['params'] / 1e6:.1f}M params), {args.clip_seconds:g} s clips, "
          f"{args.device}{' bf16' if args.bf16 else ' fp32'}, {report['environment']['torch_threads']} threads, "
          f"{args.iters} iters after {args.warmup} warm-up")
    print(format_table([[r["batch_size"], r["tokens"], r["pipeline_clips_per_s"], r["pipeline_ms_per_batch"],
                         r["encoder_clips_per_s"], r["encoder_ms_per_batch"], r["peak_mem_mb"]] for r in rows],
                       ["batch", "tokens", "pipeline clips/s", "pipeline ms/batch", "encoder clips/s",
                        "encoder ms/batch", "peak MB"]))
    print("pipeline = Kaldi fbank + encoder from waveforms; encoder = from precomputed fbanks; peak MB = "
          + report["peak_mem"])
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
