"""``audio-ssl demo``: the main job end to end — data, training, test metrics — in a few minutes on a CPU.

With no ``--data-dir`` a small synthetic dataset in the ESC-50 layout is generated first, so the demo
needs nothing but Python. With ``--data-dir`` it trains on a real ESC-50 copy. The test metrics are those of the
final model, which is also ``<out>/checkpoints/last.ckpt``; re-running the demo replaces the previous demo run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audio_ssl.cli import build_cli
from audio_ssl.data.synthetic import make_synthetic_esc50

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "supervised_cpu.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audio-ssl demo", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="an ESC-50 folder; default: generate synthetic data")
    parser.add_argument("--out", default="runs/demo", help="where runs, checkpoints and the synthetic data go")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--test-fold", type=int, default=5)
    args = parser.parse_args(argv)

    out = Path(args.out)
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = out / "synthetic-esc50"
        if not (data_dir / "meta" / "esc50.csv").exists():
            print(f"generating a synthetic ESC-50-layout dataset in {data_dir}")
            make_synthetic_esc50(data_dir, num_classes=5, clips_per_class=20, seconds=5.0, seed=0)
    overrides = [
        "--config", args.config,
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.test_fold", str(args.test_fold),
        "--data.init_args.cache_dir", str(out / "cache"),
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.logger", json.dumps([
            {"class_path": "lightning.pytorch.loggers.WandbLogger",
             "init_args": {"project": "audio-ssl", "name": "demo", "save_dir": str(out), "offline": True}},
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out), "name": "csv"}},
        ]),
        "--checkpoint.dirpath", str(out / "checkpoints"),
        "--checkpoint.existing_run", "overwrite",  # a re-run of the demo replaces the previous demo run
    ]
    cli = build_cli(overrides, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule)
    print("\nDemo finished. Test metrics on the held-out fold:")
    for key, value in sorted(results[0].items()):
        print(f"  {key:20s} {value:.4f}")
    print(f"Checkpoints: {out / 'checkpoints'}")
