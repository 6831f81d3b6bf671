"""Experiment tracking of a cross-validation run: the loggers of its Lightning stages (CSV always, W&B in the
run's group when enabled) and the W&B records of its folds and its summary. W&B is never required: a failure
to log is a warning, and the results on disk are unaffected. Runs are offline unless ``WANDB_MODE`` says
otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


def logger_spec(stage_dir: Path, name: str, job_type: str, group: str | None = None,
                project: str = "audio-ssl") -> list[dict]:
    """Loggers for one Lightning stage: CSV always; with a ``group`` (the CV run's name) also W&B, named
    ``name`` (fold and stage), offline unless ``WANDB_MODE`` says otherwise."""
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(stage_dir), "name": "csv"}}]
    if group is not None:
        loggers.append({"class_path": "lightning.pytorch.loggers.WandbLogger",
                        "init_args": {"project": project, "name": name, "group": group, "job_type": job_type,
                                      "save_dir": str(stage_dir),
                                      "offline": os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")}})
    return loggers


def finish_wandb() -> None:
    """End the active W&B run (if any), so the next Lightning stage starts its own run in the group."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _log_to_wandb(run_name: str, project: str, job_name: str, job_type: str, directory: Path,
                  payload: Callable[[object], None]) -> None:
    """Log into the active W&B run (or a new one in the CV group), then finish it. Never fatal."""
    try:
        import wandb

        from audio_ssl.utils.run_logging import stable_wandb_id

        # a fixed id per folder and job: re-running the command continues the same W&B run (one summary run)
        run_id = stable_wandb_id(str(Path(directory).resolve()), job_name)
        active = wandb.run or wandb.init(project=project, group=run_name, name=job_name, job_type=job_type,
                                         dir=str(directory), id=run_id, resume="allow")
        payload(active)
        wandb.finish()
    except Exception as err:  # W&B is never required
        log.warning("W&B logging for %s failed (%s); results on disk are unaffected", job_name, err)


def log_fold(run_name: str, project: str, fold: int, metrics: dict[str, dict[str, float]], wall_time_s: float,
             directory: Path) -> None:
    """A finished fold's test metrics (``{variant: {metric: value}}``) as ``cv/{variant}/{metric}``."""

    def payload(active):
        values = {f"cv/{variant}/{metric}": value for variant, m in metrics.items() for metric, value in m.items()}
        values["cv/fold"] = fold
        values["cv/wall_time_s"] = wall_time_s
        active.log(values)
        active.summary.update(values)

    _log_to_wandb(run_name, project, f"{run_name}-fold{fold}", "fold", directory, payload)


def log_summary(run_name: str, project: str, summary: dict, folds: pd.DataFrame, run_dir: Path,
                analysis_files: dict) -> None:
    """The summary statistics, the per-fold table and the analysis figures and tables, in one summary run."""

    def payload(active):
        import wandb

        values = {}
        for variant, entry in summary["variants"].items():
            for metric, stats in entry["metrics"].items():
                for stat in ("mean", "std", "min", "max"):
                    if stats[stat] is not None:
                        values[f"summary/{variant}/{metric}_{stat}"] = stats[stat]
        active.summary.update(values)
        active.log({"folds": wandb.Table(dataframe=folds)})
        for variant, files in analysis_files.items():
            for key, path in files.items():
                if str(path).endswith(".png"):
                    active.log({f"analysis/{variant}/{key}": wandb.Image(str(path))})
                elif str(path).endswith(".csv"):
                    active.log({f"analysis/{variant}/{key}": wandb.Table(dataframe=pd.read_csv(path))})

    _log_to_wandb(run_name, project, f"{run_name}-summary", "cv-summary", run_dir, payload)
