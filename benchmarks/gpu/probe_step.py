"""Training-step throughput of the supervised ResNet-34 recipe on one GPU, alone and with P processes sharing it.

Run before the real suite on a fresh GPU machine (seconds, synthetic batches, no data needed) to check that the
recipe's epochs fit the budget: it prints milliseconds per optimizer step for one process alone, then for P
processes started together (the way ``run_supervised.sh`` ran the 5 folds), and the implied seconds per fold
(``steps_per_fold`` = 50 steps/epoch x epochs, ESC-50 with 1,600 training clips at batch 32).

    python3 benchmarks/gpu/probe_step.py --processes 5 --steps 120 --epochs 100

The step is the recipe's: log-mel front end (n_fft 1024, hop 512, 128 mels, 5 s at 16 kHz) and ResNet-34 under
bf16 autocast, AdamW, batch 32, forward + backward + step. Data loading and validation are not included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def one(steps: int, warmup: int, batch: int, channels_last: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from audio_ssl.features.logmel import LogMelSpectrogram
    from audio_ssl.models import AudioResNet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    frontend = LogMelSpectrogram(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=128).to(device)
    encoder = AudioResNet(arch="resnet34", widths=[64, 128, 256, 512]).to(device)
    head = torch.nn.Linear(encoder.out_dim, 50).to(device)
    params = list(encoder.parameters()) + list(head.parameters())
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(params, lr=1e-3, fused=device == "cuda")
    audio = torch.randn(batch, 80000, device=device)
    labels = torch.randint(0, 50, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            spec = frontend(audio)
            if channels_last:
                spec = spec.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(head(encoder(spec)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    return {"ms_per_step": 1000 * (time.perf_counter() - start) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(one(args.steps, args.warmup, args.batch, args.channels_last)), flush=True)
        return
    base = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--batch", str(args.batch)] + (["--channels-last"] if args.channels_last else [])
    steps_per_fold = 50 * args.epochs
    report = {}
    for label, count in (("alone", 1), (f"{args.processes}_parallel", args.processes)):
        procs = [subprocess.Popen(base, stdout=subprocess.PIPE, text=True) for _ in range(count)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        ms = max(r["ms_per_step"] for r in results)
        report[label] = {"ms_per_step_slowest": round(ms, 2), "seconds_per_fold_train_steps": round(ms * steps_per_fold / 1000, 1)}
        print(label, report[label], flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
