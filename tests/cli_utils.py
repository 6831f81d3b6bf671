"""What the CLI tests share: the Lightning recipes of ``experiments/``, the per-recipe overrides that make them
CPU-test sized (``tests/fast_dev_run/<stem>.json``) and the arguments that point a run at the test data.

    from cli_utils import common_args, lightning_configs, small_overrides  # tests/ is on sys.path
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = Path(__file__).resolve().parent / "fast_dev_run"

__all__ = ["common_args", "lightning_configs", "prepare_recipe", "small_overrides"]


def lightning_configs() -> list[Path]:
    """Every experiment YAML that the Lightning CLI runs, in ``experiments/`` and ``experiments/zoo/`` (pipeline
    configs have their own tests)."""
    configs = sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "experiments" / "zoo").glob("*.yaml"))
    return [p for p in configs if "pipeline" not in (yaml.safe_load(p.read_text()) or {})]


def prepare_recipe(config: Path) -> None:
    """Write the tiny pretrained weights a recipe's overrides point at: the official-format BEATs checkpoint of the
    ``beats_*`` recipes, the Hugging Face folders (``tests/hf_utils.py``) of recipes whose encoder is an
    ``HFAudioEncoder``."""
    if config.stem.startswith("beats_"):
        from audio_ssl.tools.make_beats_checkpoint import ensure_tiny_checkpoint

        ensure_tiny_checkpoint()
    encoder = ((yaml.safe_load(config.read_text()) or {}).get("model", {}).get("init_args") or {}).get("encoder")
    if isinstance(encoder, dict) and str(encoder.get("class_path", "")).endswith("HFAudioEncoder"):
        from hf_utils import ensure_tiny_hf_models

        ensure_tiny_hf_models()


def small_overrides(config: Path) -> list[str]:
    """Extra CLI arguments that make a recipe small enough for a CPU test (the architecture family kept):
    ``tests/fast_dev_run/<config stem>.json`` holds a JSON list of arguments."""
    path = OVERRIDES / f"{config.stem}.json"
    return json.loads(path.read_text()) if path.exists() else []


def common_args(esc50_root, cache_dir, tmp_path, batch_size=4) -> list[str]:
    """Data (the synthetic ESC-50 of the fixtures, 1 s clips, no workers), CPU, no progress bar, checkpoints and a
    CSV log under ``tmp_path``."""
    return [
        "--data.init_args.data_dir", str(esc50_root),
        "--data.init_args.cache_dir", str(cache_dir),
        "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", str(batch_size),
        "--data.init_args.clip_seconds", "1.0",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false",
        "--checkpoint.dirpath", str(tmp_path / "checkpoints"),
        "--trainer.logger", json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": str(tmp_path), "name": "csv"}}]),
    ]
