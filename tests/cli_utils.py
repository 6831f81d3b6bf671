"""What the CLI tests share: the Lightning recipes of ``experiments/``, the per-recipe overrides that make them
CPU-test sized (``tests/fast_dev_run/<run name>.json``) and the arguments that point a run at the test data.

    from cli_utils import common_args, config_args, lightning_configs, small_overrides  # tests/ is on sys.path
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = Path(__file__).resolve().parent / "fast_dev_run"

__all__ = ["common_args", "config_args", "lightning_configs", "merged", "prepare_recipe", "run_id", "small_overrides"]


def lightning_configs() -> list[tuple[Path, ...]]:
    """Every Lightning run the experiments define, as the ``--config`` files in order: each recipe of
    ``experiments/**/*.yaml`` alone, and each recipe with every overlay of the same name in a subfolder
    (``experiments/cpu/simclr.yaml`` -> ``(simclr.yaml, cpu/simclr.yaml)``). Pipeline configs (a ``pipeline:``
    key) and the row table of ``audio-ssl reproduce`` (a ``rows:`` key) have their own tests."""
    root = ROOT / "experiments"
    files = [p for p in sorted(root.rglob("*.yaml"))
             if not {"pipeline", "rows"} & set(yaml.safe_load(p.read_text()) or {})]
    recipes = {p.stem: p for p in files if p.parent == root}
    runs: list[tuple[Path, ...]] = []
    for path in files:
        if path.parent != root and path.stem in recipes:
            runs.append((recipes[path.stem], path))  # a size overlay, stacked on its recipe
        else:
            runs.append((path,))
    return runs


def merged(configs) -> dict:
    """The stacked YAML files merged as the CLI merges plain values: later files win, mappings merge."""
    def merge(base, extra):
        if isinstance(base, dict) and isinstance(extra, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in extra.items()}}
        return extra
    result: dict = {}
    for path in configs:
        result = merge(result, yaml.safe_load(Path(path).read_text()) or {})
    return result


def prepare_recipe(configs: Path | tuple[Path, ...]) -> None:
    """Write the tiny pretrained weights a recipe's overrides point at: the official-format BEATs checkpoint of the
    ``beats_*`` recipes, the Hugging Face folders (``tests/hf_utils.py``) of recipes whose encoder is an
    ``HFAudioEncoder``. ``configs``: one file or a stack (the first one is the recipe)."""
    config = configs if isinstance(configs, Path) else tuple(configs)[0]
    if config.stem.startswith("beats_"):
        from audio_ssl.tools.make_beats_checkpoint import ensure_tiny_checkpoint

        ensure_tiny_checkpoint()
    encoder = ((yaml.safe_load(config.read_text()) or {}).get("model", {}).get("init_args") or {}).get("encoder")
    if isinstance(encoder, dict) and str(encoder.get("class_path", "")).endswith("HFAudioEncoder"):
        from hf_utils import ensure_tiny_hf_models

        ensure_tiny_hf_models()


def config_args(configs: Path | tuple[Path, ...]) -> list[str]:
    """``--config`` arguments for one file or a stack of them."""
    configs = (configs,) if isinstance(configs, Path) else tuple(configs)
    return [arg for path in configs for arg in ("--config", str(path))]


def run_id(configs: Path | tuple[Path, ...]) -> str:
    """A test id: ``simclr.yaml`` or ``simclr.yaml+cpu/simclr.yaml``."""
    configs = (configs,) if isinstance(configs, Path) else tuple(configs)
    return "+".join(str(p.relative_to(ROOT / "experiments")) for p in configs)


def small_overrides(configs: Path | tuple[Path, ...]) -> list[str]:
    """Extra CLI arguments that make a recipe small enough for a CPU test (the architecture family kept):
    ``tests/fast_dev_run/<run name>.json`` (``simclr_cpu.json`` for ``simclr.yaml`` + ``cpu/simclr.yaml``, the
    CLI's run name), else ``<recipe stem>.json``, holds a JSON list of arguments."""
    from audio_ssl.cli import stacked_name

    configs = (configs,) if isinstance(configs, Path) else tuple(configs)
    for name in dict.fromkeys([stacked_name([str(p) for p in configs]), configs[0].stem]):
        path = OVERRIDES / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
    return []


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
