"""Fine-tuning step time and peak memory of the full-size BEATs classifier (random weights, official format).

One step is what ``audio-ssl fit --config experiments/beats_finetune.yaml`` runs per batch: the batch hook
(Kaldi fbank + SpecAugment + mixup on the device), the forward pass under bf16 autocast (on CUDA), the
mixup-aware loss, the backward pass and the AdamW step over the encoder/head parameter groups.

    python benchmarks/beats_finetune_step.py                                    # CUDA: batch 32, bf16
    python benchmarks/beats_finetune_step.py --gradient-checkpointing both --batch-sizes 32 64 --out ft.json
    python benchmarks/beats_finetune_step.py --device cpu                        # CPU: batch 4, fp32, 2 steps

A random-weight checkpoint of the released architecture is written to a temporary folder first (or pass
``--checkpoint``). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per configuration; on CPU the
process's peak resident set size (``ru_maxrss``, which never decreases: configurations run from the smallest
batch up) and its increase over the resident size before the configuration.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from audio_ssl.methods.beats import BEATsClassifier
from audio_ssl.tools.make_beats_checkpoint import make_beats_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import current_rss_mb, environment, format_table, peak_rss_mb, sync, write_json  # noqa: E402


def bench_one(model: BEATsClassifier, device: torch.device, batch_size: int, samples: int, steps: int,
              warmup: int, bf16: bool, gradient_checkpointing: bool) -> dict[str, Any]:
    """Time ``steps`` optimizer steps (after ``warmup``) at ``batch_size``; returns one result row."""
    model.encoder.set_gradient_checkpointing(gradient_checkpointing)
    model.train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    gen = torch.Generator().manual_seed(batch_size)
    audio = ((torch.rand(batch_size, samples, generator=gen) * 2 - 1) * 0.3).to(device)
    labels = torch.randint(0, model.num_classes, (batch_size,), generator=gen).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mb()
    hook_s = step_s = 0.0
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        batch = model.on_after_batch_transfer({"audio": audio, "label": labels, "index": labels}, 0)
        sync(device)
        t1 = time.perf_counter()
        with autocast:
            logits = model(batch["spec"])
            loss = F.cross_entropy(logits.float(), batch["target"], label_smoothing=model.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            hook_s += t1 - t0
            step_s += t2 - t1
    model.zero_grad(set_to_none=True)  # free the gradients (and, with the optimizer, its state) before the next row
    del optimizer
    total = (hook_s + step_s) / steps
    row: dict[str, Any] = {
        "batch_size": batch_size,
        "gradient_checkpointing": gradient_checkpointing,
        "tokens": model.encoder.num_tokens(samples),
        "step_ms": 1000 * total,
        "fbank_aug_ms": 1000 * hook_s / steps,
        "fwd_bwd_opt_ms": 1000 * step_s / steps,
        "clips_per_s": batch_size / total,
        "loss": loss.item(),
    }
    if device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_mem_mb"] = peak_rss_mb()["self"]
        row["peak_rss_increase_mb"] = max(0.0, row["peak_mem_mb"] - rss_before)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 32 (CUDA), 4 (CPU)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast (default: on for CUDA, off for CPU)")
    parser.add_argument("--gradient-checkpointing", choices=("off", "on", "both"), default="off")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 CUDA, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--num-classes", type=int, default=50)
    parser.add_argument("--layer-decay", type=float, default=None)
    parser.add_argument("--checkpoint", default=None, help="BEATs checkpoint (default: random full-size weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch_sizes = sorted(args.batch_sizes or ([32] if cuda else [4]))
    bf16 = cuda if args.bf16 is None else args.bf16
    steps = args.steps if args.steps is not None else (10 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    device = torch.device(args.device)
    samples = int(round(args.clip_seconds * 16000))

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(make_beats_checkpoint(Path(tmp) / "beats_random_full.pt", size="full"))
        model = BEATsClassifier(checkpoint, num_classes=args.num_classes, layer_decay=args.layer_decay).to(device)
    rows = [bench_one(model, device, b, samples, steps, warmup, bf16, gc) for b in batch_sizes for gc in variants]

    report = {
        "model": f"BEATsClassifier fine-tune, {model.encoder.num_layers} x {model.encoder.out_dim} BEATs",
        "checkpoint": args.checkpoint or "RANDOM weights, BEATs iter3 architecture (temporary file)",
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "bf16": bf16,
        "clip_seconds": args.clip_seconds,
        "steps": steps,
        "warmup": warmup,
        "optimizer": "AdamW, encoder_lr 1e-5 / head_lr 1e-3" + (f", layer_decay {args.layer_decay}"
                                                                if args.layer_decay else ""),
        "augmentation": "SpecAugment (24 bins, 64 frames) + mixup (p=0.5) on the fbank",
        "peak_mem": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS (ru_maxrss)",
        "results": rows,
        "environment": environment(),
    }
    print(f"{report['model']} ({report['checkpoint']}), {report['params'] / 1e6:.1f}M params, {args.clip_seconds:g} s clips, "
          f"{args.device}{' bf16' if bf16 else ' fp32'}, {report['environment']['torch_threads']} threads, "
          f"{steps} steps after {warmup} warm-up")
    print(format_table([[r["batch_size"], "on" if r["gradient_checkpointing"] else "off", r["tokens"], r["step_ms"],
                         r["fbank_aug_ms"], r["fwd_bwd_opt_ms"], r["clips_per_s"], r["peak_mem_mb"]] for r in rows],
                       ["batch", "grad ckpt", "tokens", "step ms", "fbank+aug ms", "fwd+bwd+opt ms", "clips/s",
                        "peak MB"]))
    print("step = batch hook (fbank, SpecAugment, mixup) + forward + loss + backward + AdamW step; "
          "peak MB = " + report["peak_mem"])
    write_json(args.out, report)
    print(json.dumps(report["results"]))
    return report


if __name__ == "__main__":
    main()
