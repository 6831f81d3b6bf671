"""The cross-validation runner's overhead: one ``audio-ssl cv`` over all folds against the same folds run one
by one as plain ``audio-ssl fit`` + ``audio-ssl test`` commands, measured back to back in one run.

    python benchmarks/cv_overhead.py --config experiments/supervised_cpu.yaml --epochs 1 --out results/bench/cv_overhead.json

Both sides train and test the same config on the same folds with the same overrides; the ratio
``cv wall time / sum of single-fold wall times`` is printed (1.0 = no overhead; below 1 means the runner saves
the per-process start-up that separate commands pay).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, environment, format_table, write_json  # noqa: E402

CLI = [sys.executable, "-m", "audio_ssl.cli"]


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/supervised_cpu.yaml")
    parser.add_argument("--folds", default="1,2,3,4,5")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra Lightning CLI arguments for both sides")
    args = parser.parse_args(argv)
    folds = [int(f) for f in args.folds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="cv-overhead-"))
    shared = ["--trainer.max_epochs", str(args.epochs), "--trainer.enable_progress_bar", "false", *args.overrides]
    try:
        single = {}
        for fold in folds:
            out = work / f"single{fold}"
            logger = json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                  "init_args": {"save_dir": str(out), "name": "csv"}}])
            base = ["--config", args.config, "--data.init_args.test_fold", str(fold), *shared,
                    "--checkpoint.dirpath", str(out / "checkpoints"), "--trainer.logger", logger]
            single[fold] = run([*CLI, "fit", *base]) + run(
                [*CLI, "test", *base, "--ckpt_path", str(out / "checkpoints" / "last.ckpt")])
            print(f"single fold {fold}: {single[fold]:.1f} s", flush=True)
        cv = run([*CLI, "cv", "--config", args.config, "--folds", args.folds, "--name", "overhead",
                  "--out", str(work / "cv"), "--no-wandb", *shared])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_single = sum(single.values())
    result = {"config": args.config, "epochs": args.epochs, "folds": folds, "single_fold_s": single,
              "sum_single_s": total_single, "cv_s": cv, "ratio_cv_over_single": cv / total_single,
              "environment": environment()}
    print(format_table([*([f"fit + test, fold {f}", s] for f, s in single.items()),
                        [f"sum of {len(folds)} single-fold runs", total_single], ["audio-ssl cv", cv]],
                       ["run", "wall s"]))
    print(f"ratio cv / single {cv / total_single:.3f} (cv includes the error analysis and summary)")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
