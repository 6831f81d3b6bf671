"""Cross-validation summaries: per-fold tables, mean/std/min/max over folds, per-class accuracy, the fold
bookkeeping check, and the Markdown results table built from ``summary.json`` files.

``std`` is always the *sample* standard deviation over folds (``ddof=1``), the usual choice when the folds
are a sample of possible train/test splits; it is ``None`` for a single fold.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audio_ssl.evaluation.fold import TRANSDUCTIVE_NOTE, DatasetDescription, clips_digest
from audio_ssl.evaluation.run_store import FoldResult, read_predictions, read_summary

STD_NOTE = "std is the sample standard deviation over folds (ddof=1); null with a single fold"
DESCRIPTION_KEYS = ("method", "encoder", "pretraining_data", "transductive", "protocol", "epochs")


def metric_stats(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof=1; ``None`` for one value), min and max of per-fold values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}


def per_class_accuracy(predictions: pd.DataFrame) -> dict[str, float]:
    """Accuracy per true class (by ``label_name``, in label order) over a predictions frame."""
    correct = (predictions["pred"] == predictions["label"]).astype(float)
    grouped = correct.groupby([predictions["label"], predictions["label_name"]]).mean()
    return {str(name): float(acc) for (_, name), acc in grouped.sort_index().items()}


def check_bookkeeping(test_files: dict[int, Sequence[str]], dataset: DatasetDescription | None,
                      num_folds: int | None = None) -> dict:
    """Check that no clip is tested twice, and, when every fold ran, that every clip of the dataset was tested
    exactly once (by comparing the set of tested files with the dataset's ``clips_digest``/``num_clips``).
    ``num_folds`` defaults to the dataset's."""
    problems = []
    seen: dict[str, int] = {}
    for fold, files in sorted(test_files.items()):
        duplicates = len(files) - len(set(files))
        if duplicates:
            problems.append(f"fold {fold} tests {duplicates} clip(s) more than once")
        for f in set(files):
            if f in seen:
                problems.append(f"{f} is tested in fold {seen[f]} and fold {fold}")
            seen[f] = fold
    if num_folds is None and dataset is not None:
        num_folds = dataset.num_folds
    complete = num_folds is not None and sorted(test_files) == list(range(1, num_folds + 1))
    checked_all = False
    if complete and dataset is not None and dataset.clips_digest:
        if len(seen) != dataset.num_clips or clips_digest(list(seen)) != dataset.clips_digest:
            problems.append(f"the test folds cover {len(seen)} distinct clips, but the dataset has "
                            f"{dataset.num_clips} (or a different set)")
        checked_all = True
    if problems:
        message = "FAILED: " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
    elif checked_all:
        message = f"every one of the {len(seen)} clips was tested exactly once across the {num_folds} folds"
    else:
        message = (f"partial run ({len(test_files)} of {num_folds or '?'} folds): no clip was tested twice; "
                   "full coverage is checked once every fold has run")
    return {"ok": not problems, "complete": complete, "message": message, "num_tested": len(seen)}


def _variant_time(result: FoldResult, variant: str) -> float:
    """The variant's own wall time on a fold when it reported one, else the fold's."""
    own = result.variants[variant].description.wall_time_s
    return float(own) if own is not None else result.wall_time_s


def folds_frame(fold_results: dict[int, FoldResult]) -> pd.DataFrame:
    """One row per fold and variant: metrics, the fold's wall time and the variant's own time if reported."""
    rows = []
    for fold, result in sorted(fold_results.items()):
        for variant, entry in result.variants.items():
            rows.append({"fold": fold, "variant": variant, **entry.metrics, "fold_wall_time_s": result.wall_time_s,
                         "variant_wall_time_s": _variant_time(result, variant)})
    return pd.DataFrame(rows)


def _dataset_fields(dataset: DatasetDescription | None) -> dict:
    """The summary's top-level dataset fields (``dataset``: the dataset's name)."""
    if dataset is None:
        return {}
    fields = dataclasses.asdict(dataset)
    return {"dataset": fields.pop("name"), **fields}


def build_summary(run_dir: str | os.PathLike, fold_results: dict[int, FoldResult], meta: dict) -> dict:
    """The ``summary.json`` content for a CV run folder from its finished folds: run metadata, the dataset, and
    per variant the description, metric statistics, per-class accuracy, wall times, the bookkeeping check and
    ``details`` (each fold's :attr:`ResultDescription.details`, e.g. the probe's chosen C).

    ``meta`` carries run-level fields (name, config_file, pipeline, overrides, num_folds, git_commit,
    git_dirty, device, cv_config_text). Per-clip predictions are read from the files the fold results point to.
    """
    run_dir = Path(run_dir)
    if not fold_results:
        raise ValueError(f"{run_dir}: no finished folds to summarise")
    first = next(iter(fold_results.values()))
    dataset = next(iter(first.variants.values())).description.dataset
    num_folds = dataset.num_folds if dataset is not None else meta.get("num_folds")
    fold_times = {str(f): r.wall_time_s for f, r in fold_results.items()}
    variants, configs, notes = {}, {"cv_config": meta.get("cv_config_text", "")}, []
    bookkeeping_ok = True
    for variant in first.variants:
        missing = [f for f, r in fold_results.items() if variant not in r.variants]
        if missing:
            raise ValueError(f"{run_dir}: variant {variant!r} is missing from fold(s) {missing}")
        entries = {f: r.variants[variant] for f, r in fold_results.items()}
        frames = {f: read_predictions(run_dir, e) for f, e in entries.items()}
        metric_names = list(dict.fromkeys(m for e in entries.values() for m in e.metrics))
        metrics = {}
        for m in metric_names:
            per_fold = {str(f): e.metrics[m] for f, e in entries.items() if m in e.metrics}
            metrics[m] = {**metric_stats(list(per_fold.values())), "per_fold": per_fold}
        description = entries[min(entries)].description
        epochs = sorted({e.description.epochs for e in entries.values()} - {None})
        variant_times = {str(f): _variant_time(fold_results[f], variant) for f in entries}
        bookkeeping = check_bookkeeping({f: frame["file"].astype(str).tolist() for f, frame in frames.items()},
                                        dataset, num_folds)
        bookkeeping_ok &= bookkeeping["ok"]
        entry = {k: getattr(description, k) for k in DESCRIPTION_KEYS}
        entry.update({
            "transductive": bool(description.transductive),
            "epochs": epochs[0] if len(epochs) == 1 else epochs,
            "metrics": metrics,
            "per_class_accuracy": per_class_accuracy(pd.concat(frames.values(), ignore_index=True)),
            "num_test_clips": int(sum(len(f) for f in frames.values())),
            "wall_time_s": {"per_fold": variant_times, "total": float(sum(variant_times.values()))},
            "device": description.device,
            "bookkeeping": bookkeeping,
            "details": {str(f): dict(e.description.details) for f, e in entries.items()},
        })
        if description.transductive:
            entry["notes"] = [TRANSDUCTIVE_NOTE]
            notes.append(f"{variant}: {TRANSDUCTIVE_NOTE}")
        variants[variant] = entry
        for label, text in description.configs.items():
            configs[label if len(first.variants) == 1 else f"{variant}/{label}"] = text
    folds_done = sorted(fold_results)
    return {
        "name": meta.get("name", run_dir.name),
        "config_file": meta.get("config_file"),
        "pipeline": meta.get("pipeline", "lightning"),
        "overrides": meta.get("overrides", []),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": meta.get("git_commit"),
        "git_dirty": meta.get("git_dirty"),
        "device": meta.get("device"),
        **_dataset_fields(dataset),
        "num_folds": num_folds,
        "folds": folds_done,
        "complete": num_folds is not None and folds_done == list(range(1, num_folds + 1)),
        "std_note": STD_NOTE,
        "bookkeeping_ok": bookkeeping_ok,
        "notes": notes,
        "wall_time_s": {"per_fold": fold_times, "total": float(sum(fold_times.values()))},
        "variants": variants,
        "configs": configs,
        "configs_note": f"resolved configs of fold {folds_done[0]}; other folds differ only in test_fold and paths",
    }


# ---------------------------------------------------------------------------------------------- the results table
def load_summaries(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Summaries from run folders or ``summary.json`` paths (folders without one are skipped)."""
    return [summary for summary in map(read_summary, paths) if summary is not None]


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _cell(value) -> str:
    text = "n/a" if value is None or value == [] else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(summaries: Sequence[dict], metric: str = "acc") -> str:
    """Markdown table, one row per variant of each summary: run, method, encoder, pretraining data, protocol,
    accuracy mean ± sample std over folds (%), folds run / total, epochs, wall time."""
    header = ["run", "method", "encoder", "pretraining data", "protocol", f"{metric} (%) mean ± std", "folds",
              "epochs", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for s in summaries:
        for variant, v in s["variants"].items():
            stats = v["metrics"].get(metric)
            if stats is None:
                score = "n/a"
            elif stats["std"] is None:
                score = f"{100 * stats['mean']:.1f}"
            else:
                score = f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"
            pretraining = v.get("pretraining_data") or "none"
            if v.get("transductive") and TRANSDUCTIVE_NOTE not in pretraining:
                pretraining += f" ({TRANSDUCTIVE_NOTE})"
            run = s["name"] if len(s["variants"]) == 1 else f"{s['name']}:{variant}"
            folds = f"{len(s['folds'])}/{s.get('num_folds') or '?'}"
            row = [run, v.get("method"), v.get("encoder"), pretraining, v.get("protocol"), score, folds,
                   v.get("epochs"), format_seconds(v["wall_time_s"]["total"])]
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"
