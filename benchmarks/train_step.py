"""Training throughput of a method through Lightning against a plain PyTorch loop on the same model.

    python benchmarks/train_step.py --config experiments/supervised_cpu.yaml --steps 20 --device cpu
    python benchmarks/train_step.py --config experiments/supervised_resnet34.yaml --device cuda --steps 50

Both sides train the model of ``--config`` (a copy each, same initial weights) on the same fixed set of
pre-generated in-memory batches (random waveforms of the config's clip length and batch size, random
labels), with the same optimizer and scheduler (the module's ``configure_optimizers``), precision and
gradient clipping:

- Lightning: ``Trainer.fit`` with ``logger=False``, no checkpointing, no progress bar, no model summary,
  no validation; everything else at its defaults (so ``self.log`` bookkeeping, hooks and the loops run).
  The batches come from a ``DataLoader(batch_size=None, num_workers=0)`` over the in-memory list.
- plain loop: the same steps by hand: move the batch, ``on_after_batch_transfer`` (the module's device-side
  transforms: front end, augmentation), ``training_step`` (whose ``self.log`` calls do nothing without a
  Trainer), ``zero_grad``, ``backward``, optional clipping, ``step``, scheduler ``step``.

Throughput is samples/s over the steps after ``--warmup`` (timed from the end of the last warm-up step to
the end of the last step, so every timed step's full cycle is included once). ``--repeats`` rounds
alternate the order (L, P / P, L, ...); medians are reported. Target: Lightning / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO_ROOT,
    environment,
    format_table,
    load_experiment,
    median,
    quiet_lightning,
    ratio,
    sync,
    write_json,
)

TARGET = 0.95
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
FULL_PRECISION = {"32-true", "32", 32}


class BatchList(Dataset):
    """``length`` items cycling over a fixed list of ready-made batches (one item = one whole batch)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return dict(self.batches[i % len(self.batches)])


def make_batches(count: int, batch_size: int, samples: int, num_classes: int, seed: int = 0) -> list[dict]:
    """``count`` batches of random waveforms (about -20 dBFS), random labels and item indices, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "audio": 0.1 * torch.randn(batch_size, samples, generator=gen),
            "label": torch.randint(0, num_classes, (batch_size,), generator=gen),
            "index": torch.arange(batch_size),
        }
        for _ in range(count)
    ]


def throughput(ends: list[float], warmup: int, batch_size: int) -> float:
    """Samples/s from the end times of consecutive steps, skipping the first ``warmup`` steps."""
    if len(ends) <= warmup or warmup < 1:
        raise ValueError(f"need more than warmup={warmup} >= 1 step end times, got {len(ends)}")
    return (len(ends) - warmup) * batch_size / (ends[-1] - ends[warmup - 1])


class StepClock(Callback):
    """Wall-clock and process CPU time at the end of every training step (synchronising the device only where
    the timing needs it)."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self.ends) + 1 in (self.warmup, self.steps):
            sync(self.device)
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def run_lightning(
    model,
    batches: list[dict],
    steps: int,
    warmup: int,
    device: torch.device,
    precision: Any,
    clip_val: float | None,
    clip_algorithm: str | None,
) -> tuple[list[float], list[float]]:
    """Train ``steps`` steps with ``Trainer.fit``; returns the wall-clock and CPU times at each step's end."""
    clock = StepClock(warmup, steps, device)
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        max_epochs=1,
        max_steps=steps,
        precision=precision,
        gradient_clip_val=clip_val,
        gradient_clip_algorithm=clip_algorithm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(
        model, train_dataloaders=DataLoader(BatchList(batches, steps), batch_size=None, num_workers=0)
    )
    if len(clock.ends) != steps:
        raise RuntimeError(f"Lightning ran {len(clock.ends)} steps instead of {steps}")
    return clock.ends, clock.cpu_ends


class PlainLoop:
    """The same training steps without Lightning; the optimizer (and its state) persists across rounds."""

    def __init__(
        self, model, device: torch.device, precision: Any, clip_val: float | None, clip_algorithm: str | None
    ):
        self.model, self.device = model.to(device), device
        configured = model.configure_optimizers()
        if isinstance(configured, dict):
            self.optimizer = configured["optimizer"]
            scheduler = configured.get("lr_scheduler")
            self.scheduler = scheduler["scheduler"] if isinstance(scheduler, dict) else scheduler
        else:
            self.optimizer, self.scheduler = configured, None
        self.autocast_dtype = AUTOCAST.get(precision)
        if self.autocast_dtype is None and precision not in FULL_PRECISION:
            raise ValueError(
                f"precision={precision!r} is not supported by the plain loop: use 32-true, "
                f"bf16-mixed or 16-mixed"
            )
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        if clip_algorithm not in (None, "norm", "value"):
            raise ValueError(f"gradient_clip_algorithm={clip_algorithm!r}: expected 'norm' or 'value'")
        self.clip_val, self.clip_algorithm = clip_val, clip_algorithm or "norm"
        self.step_index = 0

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, cpu_batch: dict) -> None:
        model, optimizer = self.model, self.optimizer
        batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
        batch = model.on_after_batch_transfer(batch, 0)
        with self.autocast():
            loss = model.training_step(batch, self.step_index)
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.clip_val:
            if self.clip_algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip_val)
            else:
                torch.nn.utils.clip_grad_value_(model.parameters(), self.clip_val)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_index += 1

    def run(self, batches: list[dict], steps: int, warmup: int) -> tuple[list[float], list[float]]:
        """Train ``steps`` steps; returns the wall-clock and CPU times at each step's end."""
        self.model.train()
        ends, cpu_ends = [], []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging is a no-op
            for i in range(steps):
                self.train_step(batches[i % len(batches)])
                if i + 1 in (warmup, steps):
                    sync(self.device)
                ends.append(time.perf_counter())
                cpu_ends.append(time.process_time())
        return ends, cpu_ends


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "experiments" / "supervised_cpu.yaml")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round (warm-up included)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per side, in alternating order")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's data batch size")
    parser.add_argument("--clip-seconds", type=float, default=None, help="default: the config's clip length")
    parser.add_argument("--num-batches", type=int, default=4, help="distinct pre-generated batches to cycle")
    parser.add_argument("--precision", default=None, help="default: the config's trainer.precision")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="extra CLI override of the config, e.g. --set model.init_args.lr 0.01",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        parser.error(f"need 1 <= --warmup < --steps, got warmup={args.warmup}, steps={args.steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = [f"--{key}={value}" for key, value in args.set]
    model, dm, cfg = load_experiment(args.config, overrides)
    precision = args.precision or cfg.trainer.precision
    precision = str(precision) if precision is not None else "32-true"
    clip_val, clip_algorithm = cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm
    batch_size = args.batch_size or dm.batch_size
    samples = round((args.clip_seconds or dm.clip_seconds) * dm.sample_rate)
    batches = make_batches(args.num_batches, batch_size, samples, model.num_classes)

    plain = PlainLoop(copy.deepcopy(model), device, precision, clip_val, clip_algorithm)
    rounds: dict[str, list[float]] = {"lightning": [], "plain": []}
    cpu_rounds: dict[str, list[float]] = {"lightning": [], "plain": []}
    print(
        f"{args.config.name}: batch {batch_size} x {samples} samples, {args.steps} steps/round "
        f"({args.warmup} warm-up), {args.repeats} round(s), {device}, precision {precision}, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )
    for r in range(args.repeats):
        order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")
        for side in order:
            if side == "lightning":
                ends, cpu_ends = run_lightning(
                    model, batches, args.steps, args.warmup, device, precision, clip_val, clip_algorithm
                )
            else:
                ends, cpu_ends = plain.run(batches, args.steps, args.warmup)
            rounds[side].append(throughput(ends, args.warmup, batch_size))
            cpu_rounds[side].append(throughput(cpu_ends, args.warmup, batch_size))
        print(
            f"round {r + 1}: lightning {rounds['lightning'][-1]:.1f}, "
            f"plain {rounds['plain'][-1]:.1f} samples/s",
            flush=True,
        )

    lightning_sps, plain_sps = median(rounds["lightning"]), median(rounds["plain"])
    per_round = [ratio(lt, pl) for lt, pl in zip(rounds["lightning"], rounds["plain"])]
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment(),
        "batch_size": batch_size,
        "clip_samples": samples,
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "lightning_samples_per_s": rounds["lightning"],
        "plain_samples_per_s": rounds["plain"],
        "lightning_median": lightning_sps,
        "plain_median": plain_sps,
        "ratio": ratio(lightning_sps, plain_sps),
        "ratio_per_round": per_round,
        "median_ratio_per_round": median(per_round),
        "target": TARGET,
        "lightning_samples_per_cpu_s": cpu_rounds["lightning"],
        "plain_samples_per_cpu_s": cpu_rounds["plain"],
        "cpu_ratio": ratio(median(cpu_rounds["lightning"]), median(cpu_rounds["plain"])),
    }
    print()
    print(
        format_table(
            [
                ["Lightning Trainer.fit", lightning_sps, 1e3 * batch_size / lightning_sps],
                ["plain PyTorch loop", plain_sps, 1e3 * batch_size / plain_sps],
            ],
            ["loop", "samples/s (median)", "ms/step"],
        )
    )
    verdict = "met" if results["ratio"] >= TARGET else "NOT met"
    print(
        f"ratio Lightning / plain: {results['ratio']:.3f} (per round: "
        f"{', '.join(f'{x:.3f}' for x in per_round)}); target >= {TARGET}: {verdict}"
    )
    print(
        f"CPU-time ratio (samples per CPU second of this process, Lightning / plain; less sensitive to other "
        f"load on the machine): {results['cpu_ratio']:.3f}"
    )
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
