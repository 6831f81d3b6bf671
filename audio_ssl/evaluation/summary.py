"""Cross-validation summaries: per-fold tables, mean/std/min/max over folds, per-class accuracy, the fold
bookkeeping check, and the Markdown results table built from ``summary.json`` files.

``std`` is always the *sample* standard deviation over folds (``ddof=1``), the usual choice when the folds
are a sample of possible train/test splits; it is ``None`` for a single fold.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audio_ssl.evaluation.cross_validation import STD_NOTE, TRANSDUCTIVE_NOTE, clips_digest

DESCRIPTION_KEYS = ("method", "encoder", "pretraining_data", "transductive", "protocol", "epochs")
DATASET_KEYS = ("dataset", "num_folds", "num_clips", "clips_digest", "class_names", "sample_rate", "clip_seconds")
_SHOWN = {*DESCRIPTION_KEYS, *DATASET_KEYS, "configs", "wall_time_s", "device"}


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


def check_bookkeeping(test_files: dict[int, Sequence[str]], dataset: dict | None) -> dict:
    """Check that no clip is tested twice, and, when every fold ran, that every clip of the dataset was tested
    exactly once (by comparing the set of tested files with the dataset's ``clips_digest``/``num_clips``)."""
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
    num_folds = (dataset or {}).get("num_folds")
    complete = num_folds is not None and sorted(test_files) == list(range(1, num_folds + 1))
    checked_all = False
    if complete and dataset.get("clips_digest"):
        if len(seen) != dataset["num_clips"] or clips_digest(list(seen)) != dataset["clips_digest"]:
            problems.append(f"the test folds cover {len(seen)} distinct clips, but the dataset has "
                            f"{dataset['num_clips']} (or a different set)")
        checked_all = True
    if problems:
        message = "FAILED: " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
    elif checked_all:
        message = f"every one of the {len(seen)} clips was tested exactly once across the {num_folds} folds"
    else:
        message = (f"partial run ({len(test_files)} of {num_folds or '?'} folds): no clip was tested twice; "
                   "full coverage is checked once every fold has run")
    return {"ok": not problems, "complete": complete, "message": message, "num_tested": len(seen)}


def folds_frame(fold_results: dict[int, dict]) -> pd.DataFrame:
    """One row per fold and variant: metrics, the fold's wall time and the variant's own time if reported."""
    rows = []
    for fold, result in sorted(fold_results.items()):
        for variant, entry in result["variants"].items():
            rows.append({"fold": fold, "variant": variant, **entry["metrics"],
                         "fold_wall_time_s": result["wall_time_s"],
                         "variant_wall_time_s": entry["info"].get("wall_time_s", result["wall_time_s"])})
    return pd.DataFrame(rows)


def build_summary(run_dir: str | os.PathLike, fold_results: dict[int, dict], meta: dict) -> dict:
    """The ``summary.json`` content for a CV run folder from its finished folds: run metadata, the dataset, and
    per variant the description, metric statistics, per-class accuracy, wall times, the bookkeeping check and
    ``details`` (every other ``FoldOutput.info`` entry, per fold, e.g. the probe's chosen C).

    ``meta`` carries run-level fields (name, config_file, pipeline, overrides, git_commit, git_dirty, device,
    cv_config_text). Per-clip predictions are read from the files the fold results point to.
    """
    run_dir = Path(run_dir)
    if not fold_results:
        raise ValueError(f"{run_dir}: no finished folds to summarise")
    first = next(iter(fold_results.values()))
    first_info = next(iter(first["variants"].values()))["info"]
    dataset = {k: first_info[k] for k in DATASET_KEYS if k in first_info}
    num_folds = dataset.get("num_folds", meta.get("num_folds"))
    dataset.setdefault("num_folds", num_folds)
    fold_times = {str(f): r["wall_time_s"] for f, r in fold_results.items()}
    variants, configs, notes = {}, {"cv_config": meta.get("cv_config_text", "")}, []
    bookkeeping_ok = True
    for variant in first["variants"]:
        missing = [f for f, r in fold_results.items() if variant not in r["variants"]]
        if missing:
            raise ValueError(f"{run_dir}: variant {variant!r} is missing from fold(s) {missing}")
        entries = {f: r["variants"][variant] for f, r in fold_results.items()}
        frames = {f: pd.read_csv(run_dir / e["predictions"]) for f, e in entries.items()}
        metric_names = list(dict.fromkeys(m for e in entries.values() for m in e["metrics"]))
        metrics = {}
        for m in metric_names:
            per_fold = {str(f): e["metrics"][m] for f, e in entries.items() if m in e["metrics"]}
            metrics[m] = {**metric_stats(list(per_fold.values())), "per_fold": per_fold}
        info = entries[min(entries)]["info"]
        epochs = sorted({e["info"].get("epochs") for e in entries.values()} - {None})
        variant_times = {str(f): e["info"].get("wall_time_s", fold_results[f]["wall_time_s"])
                         for f, e in entries.items()}
        bookkeeping = check_bookkeeping({f: frame["file"].astype(str).tolist() for f, frame in frames.items()},
                                        dataset)
        bookkeeping_ok &= bookkeeping["ok"]
        transductive = bool(info.get("transductive", False))
        entry = {k: info.get(k) for k in DESCRIPTION_KEYS}
        entry.update({
            "transductive": transductive,
            "epochs": epochs[0] if len(epochs) == 1 else epochs,
            "metrics": metrics,
            "per_class_accuracy": per_class_accuracy(pd.concat(frames.values(), ignore_index=True)),
            "num_test_clips": int(sum(len(f) for f in frames.values())),
            "wall_time_s": {"per_fold": variant_times, "total": float(sum(variant_times.values()))},
            "device": info.get("device"),
            "bookkeeping": bookkeeping,
            "details": {str(f): {k: v for k, v in e["info"].items() if k not in _SHOWN} for f, e in entries.items()},
        })
        if transductive:
            entry["notes"] = [TRANSDUCTIVE_NOTE]
            notes.append(f"{variant}: {TRANSDUCTIVE_NOTE}")
        variants[variant] = entry
        for label, text in (info.get("configs") or {}).items():
            configs[label if len(first["variants"]) == 1 else f"{variant}/{label}"] = text
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
        **dataset,
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


def write_summary(run_dir: str | os.PathLike, summary: dict) -> None:
    """Write ``folds.csv`` (from the finished folds) and ``summary.json`` into the run folder."""
    from audio_ssl.evaluation.cross_validation import finished_folds
    from audio_ssl.utils.io import atomic_write

    run_dir = Path(run_dir)
    # unique temp names: per-fold `cv` processes running in parallel all rewrite these run-level files
    with atomic_write(run_dir / "folds.csv", "w") as fh:
        folds_frame(finished_folds(run_dir)).to_csv(fh, index=False)
    with atomic_write(run_dir / "summary.json", "w") as fh:
        fh.write(json.dumps(summary, indent=2))


# ---------------------------------------------------------------------------------------------- the results table
def load_summaries(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Summaries from run folders or ``summary.json`` paths (folders without one are skipped)."""
    summaries = []
    for p in paths:
        p = Path(p)
        file = p / "summary.json" if p.is_dir() else p
        if not file.exists():
            continue
        try:
            summaries.append(json.loads(file.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON: {err}") from err
    return summaries


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
