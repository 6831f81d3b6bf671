"""The on-disk format of a cross-validation run, ``<out>/<NAME>/``, and the only code that reads or writes it.

::

    run.json                     the run's identity: config file, pipeline, overrides, fingerprint, folds
    fold{k}/result.json          a finished fold (its presence marks the fold done; finished folds are skipped
                                 on a re-run); fold{k}/ also holds the fold's Lightning runs and checkpoints
    predictions/fold{k}.csv      per-clip predictions (fold{k}_{variant}.csv for tasks with several variants)
    folds.csv                    one row per fold and variant: metrics and wall times
    summary.json                 the summary (see :mod:`audio_ssl.evaluation.summary`)
    analysis/                    the error analysis (see :mod:`audio_ssl.evaluation.analysis`)
    logs/fold{k}.log             a fold run in its own process (``audio-ssl cv --parallel N``, ``--launcher``)
    submitit/{job id}_*          submitit's files of a fold job (``--launcher submitit``)

``result.json`` holds ``{"fold", "wall_time_s", "fingerprint", "variants": {variant: {"metrics", "info",
"predictions"}}}``, where ``info`` is the variant's :class:`~audio_ssl.evaluation.fold.ResultDescription` as
one flat mapping (its fields, the dataset's fields with ``dataset`` for its name, and its ``details``). Every
file is written atomically (:func:`audio_ssl.utils.io.atomic_write`): predictions first, ``result.json``
last, so a fold interrupted while saving is run again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audio_ssl.evaluation.fold import DatasetDescription, FoldOutput, ResultDescription
from audio_ssl.utils.io import atomic_write

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
FOLDS_FILE = "folds.csv"
SUMMARY_FILE = "summary.json"
ANALYSIS_DIR = "analysis"

_DESCRIPTION_FIELDS = [f.name for f in dataclasses.fields(ResultDescription) if f.name not in ("dataset", "details")]
_DATASET_FIELDS = {("dataset" if f.name == "name" else f.name): f.name for f in dataclasses.fields(DatasetDescription)}
"""On-disk key -> field of :class:`DatasetDescription` (the dataset's name is stored as ``dataset``)."""


@dataclass
class VariantResult:
    """One variant of a finished fold, as stored: ``predictions`` is the CSV's path inside the run folder."""

    metrics: dict[str, float]
    description: ResultDescription
    predictions: str


@dataclass
class FoldResult:
    """A finished fold, as stored in ``fold{k}/result.json``."""

    fold: int
    wall_time_s: float
    fingerprint: str
    variants: dict[str, VariantResult]


@dataclass
class RunRecord:
    """``run.json``: what identifies a run, so that a re-run with another config or overrides is refused."""

    name: str
    config_file: str
    pipeline: str
    overrides: list[str]
    fingerprint: str
    num_folds: int
    config: dict | None = None
    """The pipeline config as run (after ``--pipeline-set``), to say what differs when a re-run is refused."""
    pipeline_set: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------- descriptions
def description_to_json(description: ResultDescription) -> dict:
    """The flat ``info`` mapping of ``result.json``."""
    info = {name: getattr(description, name) for name in _DESCRIPTION_FIELDS}
    if description.dataset is not None:
        info.update({key: getattr(description.dataset, name) for key, name in _DATASET_FIELDS.items()})
    clash = sorted(set(description.details) & (set(info) | set(_DATASET_FIELDS)))
    if clash:
        raise ValueError(f"details {clash} shadow fields of the description: set the fields instead")
    info.update(description.details)
    return json.loads(json.dumps(info, default=str))


def description_from_json(info: dict) -> ResultDescription:
    """The inverse of :func:`description_to_json` (keys it does not know become ``details``)."""
    known = {name: info[name] for name in _DESCRIPTION_FIELDS if name in info}
    dataset = None
    if all(key in info for key in ("dataset", "num_folds", "num_clips", "clips_digest")):
        dataset = DatasetDescription(**{name: info.get(key) for key, name in _DATASET_FIELDS.items()})
    details = {k: v for k, v in info.items() if k not in known and k not in _DATASET_FIELDS}
    known["configs"] = known.get("configs") or {}
    return ResultDescription(**known, dataset=dataset, details=details)


# ---------------------------------------------------------------------------------------------- run identity
def open_run(run_dir: Path, record: RunRecord) -> None:
    """Start or continue a run in ``run_dir``: refuse a folder made by another config or overrides, then
    (re)write ``run.json``."""
    path = Path(run_dir) / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        # A folder where nothing was trained yet (e.g. a run stopped by a typo in an override) is simply reused.
        trained = [p for p in Path(run_dir).glob("fold*/**/*.ckpt")] + list(Path(run_dir).glob("fold*/result.json"))
        if previous.get("fingerprint") != record.fingerprint and trained:
            raise ValueError(f"{run_dir} holds a CV run of a different setup: {'; '.join(run_differences(previous, record))}. "
                             f"Use another run name (cv --name) or results folder (reproduce --out), or delete {run_dir} to "
                             "start this run again")
    with atomic_write(path, "w") as fh:
        json.dump(dataclasses.asdict(record), fh, indent=2, default=str)


def override_values(overrides) -> dict[str, str]:
    """``{"trainer.max_epochs": "3"}`` of Lightning override arguments (``--key value`` or ``--key=value``); a
    flag without a value maps to ``""``."""
    values: dict[str, str] = {}
    items = [str(a) for a in overrides or []]
    i = 0
    while i < len(items):
        arg = items[i]
        key, sep, value = arg.lstrip("-").partition("=")
        if not sep and i + 1 < len(items) and not items[i + 1].startswith("--"):
            value, i = items[i + 1], i + 1
        values[key] = value
        i += 1
    return values


def run_differences(previous: dict, record: RunRecord) -> list[str]:
    """What differs between a run folder's ``run.json`` (``previous``) and the run asked for now, key by key:
    the config file, the pipeline keys (``--pipeline-set`` included), the ``--set``/Lightning overrides."""
    changes = []
    if previous.get("config_file") != record.config_file:
        changes.append(f"config file {previous.get('config_file')} there, {record.config_file} now")
    before_config, now_config = previous.get("config"), record.config
    if isinstance(before_config, dict) and isinstance(now_config, dict):
        now_config = json.loads(json.dumps(now_config, default=str))  # as run.json stores it
        for key in sorted(set(before_config) | set(now_config)):
            there, now = before_config.get(key, "<unset>"), now_config.get(key, "<unset>")
            if there != now:
                changes.append(f"pipeline key {key}: {there!r} there, {now!r} now")
    before, now = override_values(previous.get("overrides")), override_values(record.overrides)
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            there = repr(before[key]) if key in before else "<unset>"
            here = repr(now[key]) if key in now else "<unset>"
            changes.append(f"override {key}: {there} there, {here} now")
    if not changes:
        changes.append("the config file or a YAML it names changed since that run" + (
            "" if isinstance(before_config, dict) else " (or a pipeline key: that run.json does not record them)"))
    return changes


# ---------------------------------------------------------------------------------------------- folds
def fold_dir(run_dir: Path, fold: int) -> Path:
    """``<run>/fold{k}``: the fold's work directory and the home of its ``result.json``."""
    return Path(run_dir) / f"fold{fold}"


def prediction_path(fold: int, variant: str, single: bool) -> str:
    """``predictions/fold{k}.csv`` for a task with one variant, ``predictions/fold{k}_{variant}.csv`` otherwise."""
    return f"predictions/fold{fold}.csv" if single else f"predictions/fold{fold}_{variant}.csv"


def save_fold_result(run_dir: Path, fold: int, outputs: dict[str, FoldOutput], wall_time_s: float,
                     fingerprint: str) -> FoldResult:
    """Write a finished fold: predictions first, then ``fold{k}/result.json`` (its presence marks the fold done)."""
    run_dir = Path(run_dir)
    if not outputs:
        raise ValueError(f"fold {fold}: the task returned no outputs")
    variants = {}
    for variant, output in outputs.items():
        if not isinstance(output, FoldOutput):
            raise TypeError(f"fold {fold}, variant {variant!r}: expected a FoldOutput, got {type(output).__name__}")
        if "acc" not in output.metrics:
            raise ValueError(f"fold {fold}, variant {variant!r}: metrics must include 'acc', got {list(output.metrics)}")
        rel = prediction_path(fold, variant, single=len(outputs) == 1)
        with atomic_write(run_dir / rel, "w") as fh:
            output.predictions.to_csv(fh, index=False)
        variants[variant] = VariantResult({k: float(v) for k, v in output.metrics.items()}, output.description, rel)
    result = FoldResult(fold, float(wall_time_s), fingerprint, variants)
    stored = {"fold": fold, "wall_time_s": result.wall_time_s, "fingerprint": fingerprint,
              "variants": {name: {"metrics": v.metrics, "info": description_to_json(v.description),
                                  "predictions": v.predictions} for name, v in variants.items()}}
    with atomic_write(fold_dir(run_dir, fold) / RESULT_FILE, "w") as fh:
        json.dump(stored, fh, indent=2)
    return result


def load_fold_result(run_dir: Path, fold: int) -> FoldResult | None:
    """A finished fold's result, or ``None`` when the fold has not finished (or a prediction file is missing)."""
    path = fold_dir(run_dir, fold) / RESULT_FILE
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    variants = {name: VariantResult(v["metrics"], description_from_json(v["info"]), v["predictions"])
                for name, v in stored["variants"].items()}
    if not all((Path(run_dir) / v.predictions).exists() for v in variants.values()):
        return None
    return FoldResult(int(stored["fold"]), float(stored["wall_time_s"]), stored.get("fingerprint", ""), variants)


def finished_folds(run_dir: Path) -> dict[int, FoldResult]:
    """Every finished fold in a CV run folder, by fold number."""
    results = {}
    for path in sorted(Path(run_dir).glob(f"fold*/{RESULT_FILE}")):
        fold = int(path.parent.name.removeprefix("fold"))
        result = load_fold_result(Path(run_dir), fold)
        if result is not None:
            results[fold] = result
    return dict(sorted(results.items()))


def read_predictions(run_dir: Path, variant: VariantResult) -> pd.DataFrame:
    """The per-clip predictions of one variant of a finished fold."""
    return pd.read_csv(Path(run_dir) / variant.predictions)


# ---------------------------------------------------------------------------------------------- summary
def write_summary(run_dir: Path, summary: dict, folds: pd.DataFrame) -> None:
    """Write ``folds.csv`` and ``summary.json`` into the run folder."""
    with atomic_write(Path(run_dir) / FOLDS_FILE, "w") as fh:
        folds.to_csv(fh, index=False)
    with atomic_write(Path(run_dir) / SUMMARY_FILE, "w") as fh:
        json.dump(summary, fh, indent=2)


def summary_path(run_dir_or_file: str | os.PathLike) -> Path:
    """``<run>/summary.json`` for a run folder; a file path is returned as it is."""
    path = Path(run_dir_or_file)
    return path / SUMMARY_FILE if path.is_dir() else path


def read_summary(run_dir_or_file: str | os.PathLike) -> dict | None:
    """A run's summary (from its folder or its ``summary.json``), ``None`` when there is none yet."""
    file = summary_path(run_dir_or_file)
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON: {err}") from err
