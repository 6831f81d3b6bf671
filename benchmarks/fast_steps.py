"""Training-step time of each speed option against the plain fp32 step, all measured in the same run.

    python benchmarks/fast_steps.py --device cuda --out results/bench/fast_steps_cuda.json
    python benchmarks/fast_steps.py --device cpu --threads 1 --batch-size 8 --clip-seconds 1 \\
        --set model.init_args.views.init_args.crop_seconds 0.5 --out results/bench/fast_steps_cpu.json

For each recipe (``--config``, repeatable; default ``experiments/supervised_resnet34.yaml`` and
``experiments/simclr.yaml``, at ``--batch-size`` 32) the script builds one model per variant through the CLI
(:func:`common.load_experiment`, so each option is set exactly as a recipe sets it) and trains it on the same
pre-generated in-memory batches with ``train_step.PlainLoop`` (the step Lightning runs, without its
bookkeeping: transfer, ``on_after_batch_transfer``, ``training_step`` under the precision's autocast,
``zero_grad``, ``backward``, clipping, ``step``, scheduler ``step``):

=================  =========================================================================================
``baseline``       ``--precision`` (default ``32-true``), no option
``bf16``           ``bf16-mixed`` autocast (the trainer's ``precision: bf16-mixed``; absent when the baseline is bf16)
``channels_last``  ``--model.init_args.channels_last true``
``fused``          ``--model.init_args.fused_optimizer true``
``compile``        ``--model.init_args.compile true`` (``--compile-mode``)
``combined``       every option whose median per-round ratio is at least ``1 + --min-gain``, together (or the
                   ``--combined`` options, e.g. ``bf16 channels_last``, which may pay only together)
=================  =========================================================================================

A variant the recipe refuses (``fused`` with LARS, ``channels_last`` with a Transformer) is reported as skipped
with the reason. Each variant first runs ``--warmup`` untimed steps once (compilation, cuDNN autotuning: the
seconds are reported as ``prime_s``). Then ``--repeats`` rounds; in every round each variant trains ``--steps``
steps (the first ``--warmup`` untimed), in an order rotated by one every round, and its samples/s is divided by
the baseline's of the same round. Reported per variant: the median samples/s, the median of the per-round ratios
to the baseline (the decision), the ratio of the medians, samples per CPU second and, on CUDA, the peak memory.
When two or more options pay (or ``--combined`` names two or more that the recipe accepts), ``combined`` is
measured in its own ``--repeats`` rounds against the same baseline model.

Evaluation batches: the samples/s of ``embed`` (no gradient, eval mode, the baseline's precision) at every
``--eval-batch-sizes`` size, against the training batch size, for the ``data.eval_batch_size`` choice.

An option pays only on the hardware it was measured on: recipes turn one on only from a GPU run of this script
(``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

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
from train_step import PlainLoop, make_batches, throughput  # noqa: E402

OPTIONS = {
    "bf16": {"precision": "bf16-mixed"},
    "channels_last": {"set": {"model.init_args.channels_last": "true"}},
    "fused": {"set": {"model.init_args.fused_optimizer": "true"}},
    "compile": {"set": {"model.init_args.compile": "true"}},
}
"""Each option as the change it makes to the baseline: a precision, or CLI overrides of the recipe."""
DEFAULT_CONFIGS = [REPO_ROOT / "experiments" / "supervised_resnet34.yaml", REPO_ROOT / "experiments" / "simclr.yaml"]
_MISSING = object()


def combine(names: list[str], compile_mode: str) -> dict:
    """The change of several options at once (``precision`` from ``bf16``, the union of the overrides)."""
    change: dict[str, Any] = {"set": {}}
    for name in names:
        change["precision"] = OPTIONS[name].get("precision", change.get("precision"))
        change["set"].update(OPTIONS[name].get("set", {}))
    if "model.init_args.compile" in change["set"]:
        change["set"]["model.init_args.compile_mode"] = compile_mode
    return change


class Variant:
    """One model of the recipe with one change, its training loop and its timings."""

    def __init__(self, name: str, config: Path, overrides: list[str], change: dict, base_precision: str,
                 device: torch.device, batches: list[dict], warmup: int):
        self.name, self.timings, self.cpu_timings = name, [], []
        args = overrides + [f"--{k}={v}" for k, v in change.get("set", {}).items()]
        model, _, cfg = load_experiment(config, args)
        model.apply_speed_options()  # what setup() does under the Trainer
        self.precision = change.get("precision") or base_precision
        self.loop = PlainLoop(model, device, self.precision, cfg.trainer.gradient_clip_val,
                              cfg.trainer.gradient_clip_algorithm)
        self.device, self.batches, self.warmup = device, batches, warmup
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        self.loop.run(batches, warmup, warmup)
        sync(device)
        self.prime_s = time.perf_counter() - start

    def round(self, steps: int, batch_size: int) -> None:
        ends, cpu_ends = self.loop.run(self.batches, steps, self.warmup)
        self.timings.append(throughput(ends, self.warmup, batch_size))
        self.cpu_timings.append(throughput(cpu_ends, self.warmup, batch_size))

    def peak_memory_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def interleaved_rounds(variants: list[Variant], repeats: int, steps: int, batch_size: int, label: str) -> None:
    """``repeats`` rounds, each variant once per round, the order rotated by one every round."""
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for variant in order:
            variant.round(steps, batch_size)
        print(f"{label} round {r + 1}: " + ", ".join(f"{v.name} {v.timings[-1]:.1f}" for v in variants)
              + " samples/s", flush=True)


def summarise(variant: Variant, baseline: Variant) -> dict[str, Any]:
    per_round = [ratio(v, b) for v, b in zip(variant.timings, baseline.timings)]
    return {
        "precision": variant.precision,
        "prime_s": variant.prime_s,
        "samples_per_s": variant.timings,
        "median_samples_per_s": median(variant.timings),
        "ms_per_step": 1e3 * variant.batches[0]["audio"].shape[0] / median(variant.timings),
        "ratio_per_round": per_round,
        "median_ratio": median(per_round),
        "ratio_of_medians": ratio(median(variant.timings), median(baseline.timings)),
        "samples_per_cpu_s": variant.cpu_timings,
        "cpu_ratio": ratio(median(variant.cpu_timings), median(baseline.cpu_timings)),
        "peak_memory_mb": variant.peak_memory_mb(),
    }


@torch.no_grad()
def eval_throughput(model, device: torch.device, precision: str, sizes: list[int], samples: int,
                    repeats: int) -> dict[str, float]:
    """Samples/s of ``model.embed`` (eval mode, no gradient, ``precision``'s autocast) at each batch size: the
    median of ``repeats`` timed calls after one untimed call."""
    model.eval()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed"
                else torch.autocast(device.type, enabled=False))
    out = {}
    for size in sizes:
        audio = 0.1 * torch.randn(size, samples, generator=torch.Generator().manual_seed(size)).to(device)
        times = []
        with autocast:
            for i in range(repeats + 1):
                start = time.perf_counter()
                model.embed(audio)
                sync(device)
                if i:
                    times.append(time.perf_counter() - start)
        out[str(size)] = size / median(times)
    model.train()
    return out


def refusal(err: Exception) -> str:
    """The method's own message out of the CLI's "does not validate against any of the Union subtypes" report
    (its ``- ...`` lines, less the ``Expected a <class 'NoneType'>`` of the optional model); else the first line."""
    reasons = [line.strip()[2:] for line in str(err).splitlines() if line.strip().startswith("- ")]
    reasons = [r for r in reasons if not r.startswith("Expected a ")]
    return reasons[0] if reasons else str(err).splitlines()[0]


def applicable(cfg, sets: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """``--set`` pairs as CLI arguments for a recipe: those whose key the recipe has, and the keys it lacks."""
    args, lacking = [], []
    for key, value in sets:
        if cfg.get(key, _MISSING) is _MISSING:
            lacking.append(key)
        else:
            args.append(f"--{key}={value}")
    return args, lacking


def measure_recipe(config: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    # The CLI's own Trainer is not used (the precision is the variant's): 32-true keeps its CPU warning quiet.
    fixed = [f"--data.init_args.batch_size={args.batch_size}", "--trainer.precision=32-true"]
    base_model, dm, cfg = load_experiment(config, fixed)
    sets, lacking = applicable(cfg, args.set)
    torch.manual_seed(0)  # the same batches for every recipe and run
    overrides = [*fixed, *sets]
    samples = round((args.clip_seconds or dm.clip_seconds) * dm.sample_rate)
    batches = make_batches(args.num_batches, args.batch_size, samples, base_model.num_classes)
    del base_model
    names = [n for n in args.variants if not (n == "bf16" and args.precision == "bf16-mixed")]
    print(f"{config.name}: batch {args.batch_size} x {samples} samples, {args.steps} steps/round "
          f"({args.warmup} warm-up), {args.repeats} round(s), {device}, baseline {args.precision}, "
          f"{torch.get_num_threads()} thread(s)" + (f"; --set not applied (absent): {lacking}" if lacking else ""),
          flush=True)

    def build(name: str, change: dict) -> Variant | str:
        try:
            return Variant(name, config, overrides, change, args.precision, device, batches, args.warmup)
        except ValueError as err:  # the recipe refuses the option (e.g. fused LARS): say so, measure the rest
            print(f"  {name}: skipped ({refusal(err)})", flush=True)
            return refusal(err)

    baseline = build("baseline", {})
    if isinstance(baseline, str):
        raise ValueError(f"{config}: the baseline cannot be built: {baseline}")
    built = {n: build(n, combine([n], args.compile_mode)) for n in names}
    skipped = {n: v for n, v in built.items() if isinstance(v, str)}
    measured = [v for v in built.values() if isinstance(v, Variant)]
    interleaved_rounds([baseline, *measured], args.repeats, args.steps, args.batch_size, config.stem)
    variants = {v.name: summarise(v, baseline) for v in measured}
    baseline_summary = summarise(baseline, baseline)
    pays = [n for n, s in variants.items() if s["median_ratio"] >= 1 + args.min_gain]
    chosen = pays if args.combined is None else [n for n in args.combined if n in variants]
    combined: dict[str, Any] = {"options": chosen, "chosen_by": "pays" if args.combined is None else "--combined"}
    if len(chosen) >= 2:
        for v in measured:  # free the single-option models before building the combination
            v.loop = None
        gc.collect()
        together = build("combined", combine(chosen, args.compile_mode))
        if isinstance(together, str):
            combined["skipped"] = together
        else:  # new rounds of the same baseline model against the combination
            baseline.timings, baseline.cpu_timings = [], []
            interleaved_rounds([baseline, together], args.repeats, args.steps, args.batch_size,
                               f"{config.stem} combined")
            combined.update(summarise(together, baseline), baseline_median_samples_per_s=median(baseline.timings))
    elif len(chosen) == 1:
        combined["same_as"] = chosen[0]
    evaluation = None
    if args.eval_batch_sizes:
        sizes = sorted({args.batch_size, *args.eval_batch_sizes})
        sps = eval_throughput(baseline.loop.model, device, args.precision, sizes, samples, args.eval_repeats)
        evaluation = {"samples_per_s": sps,
                      "ratio_to_train_batch": {k: ratio(v, sps[str(args.batch_size)]) for k, v in sps.items()}}
    result = {
        "config": str(config.relative_to(REPO_ROOT) if config.is_relative_to(REPO_ROOT) else config),
        "batch_size": args.batch_size,
        "clip_samples": samples,
        "parameters": sum(p.numel() for p in baseline.loop.model.parameters()),
        "set_not_applied": lacking,
        "baseline": baseline_summary,
        "variants": variants,
        "skipped": skipped,
        "pays": pays,
        "combined": combined,
        "eval": evaluation,
    }
    print_recipe(result, args.min_gain)
    return result


def print_recipe(result: dict, min_gain: float) -> None:
    rows = [["baseline", result["baseline"]["median_samples_per_s"], result["baseline"]["ms_per_step"], 1.0, 1.0,
             result["baseline"]["prime_s"], "-"]]
    for name, s in result["variants"].items():
        rows.append([name, s["median_samples_per_s"], s["ms_per_step"], s["median_ratio"], s["cpu_ratio"],
                     s["prime_s"], "yes" if name in result["pays"] else "no"])
    combined = result["combined"]
    if "median_ratio" in combined:
        rows.append(["combined (" + "+".join(combined["options"]) + ")", combined["median_samples_per_s"],
                     combined["ms_per_step"], combined["median_ratio"], combined["cpu_ratio"], combined["prime_s"],
                     "yes" if combined["median_ratio"] >= 1 + min_gain else "no"])
    elif "skipped" in combined:
        rows.append(["combined (" + "+".join(combined["options"]) + ")", None, None, None, None, None, "skipped"])
    for name in result["skipped"]:
        rows.append([name, None, None, None, None, None, "skipped"])
    print()
    print(format_table(rows, ["variant", "samples/s", "ms/step", "ratio (median/round)", "CPU-time ratio",
                              "prime s", f"pays (>= {1 + min_gain:.2f})"]))
    if result["eval"]:
        print("eval embed samples/s by batch size: " + ", ".join(
            f"{k}: {v:.1f} (x{result['eval']['ratio_to_train_batch'][k]:.2f})"
            for k, v in result["eval"]["samples_per_s"].items()))
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=None,
                        help="recipe (repeatable); default: supervised_resnet34.yaml and simclr.yaml")
    parser.add_argument("--variants", nargs="+", choices=list(OPTIONS), default=list(OPTIONS),
                        help="options to measure against the baseline (default: all)")
    parser.add_argument("--combined", nargs="+", choices=list(OPTIONS), default=None,
                        help="options to measure together (default: those that pay)")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true",
                        help="the baseline's precision (bf16-mixed: the options on top of bf16)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compile variant")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round (warm-up included)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (every variant once per round)")
    parser.add_argument("--min-gain", type=float, default=0.03,
                        help="an option pays when its median per-round ratio is >= 1 + this")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=None, help="default: the config's clip length")
    parser.add_argument("--num-batches", type=int, default=4, help="distinct pre-generated batches to cycle")
    parser.add_argument("--eval-batch-sizes", type=int, nargs="*", default=[128, 256],
                        help="evaluation batch sizes to time against --batch-size (none: skip)")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="CLI override for every recipe that has KEY, e.g. --set "
                             "model.init_args.views.init_args.crop_seconds 0.5 (a key no recipe has is an error)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.config = args.config or DEFAULT_CONFIGS
    if not 1 <= args.warmup < args.steps:
        parser.error(f"need 1 <= --warmup < --steps, got warmup={args.warmup}, steps={args.steps}")
    for name in ("repeats", "batch_size", "num_batches", "eval_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(size < 1 for size in args.eval_batch_sizes):
        parser.error(f"--eval-batch-sizes must be >= 1, got {args.eval_batch_sizes}")
    if args.min_gain < 0:
        parser.error(f"--min-gain must be >= 0, got {args.min_gain}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    missing = [str(c) for c in args.config if not c.is_file()]
    if missing:
        parser.error(f"--config: no such file: {', '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment()  # the load before the run
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as a GPU run would; the priming steps absorb the autotuning
    lacking = [applicable(load_experiment(config, ["--trainer.precision=32-true"])[2], args.set)[1]
               for config in args.config]
    for key, _ in args.set:  # before any measurement: a mistyped key must not cost a run
        if all(key in keys for keys in lacking):
            raise ValueError(f"--set {key}: no recipe has this key ({', '.join(map(str, args.config))})")
    recipes = [measure_recipe(config, args, device) for config in args.config]
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": env,
        "recipes": recipes,
    }
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
