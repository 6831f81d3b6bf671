"""Error analysis of a cross-validation run from its saved predictions (no re-inference).

For every variant, ``<run>/analysis/<variant>/`` gets:

- ``confusion_matrix.png``: row-normalised (true class per row) over the predictions of all folds;
- ``per_class_accuracy.png`` and ``per_class_accuracy.csv``;
- ``confused_pairs.csv`` / ``.md``: the most frequent (true, predicted) mistakes, with their share of the
  true class;
- ``least_confident_correct.png``/``.csv`` and ``most_confident_wrong.png``/``.csv``: clips with their
  log-mel spectrograms (computed from the audio files with the project's :class:`LogMelSpectrogram`).

``analysis/README.md`` collects the tables and links the figures.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from audio_ssl.evaluation.run_store import (  # noqa: E402
    ANALYSIS_DIR,
    finished_folds,
    read_predictions,
    read_summary,
    summary_path,
)
from audio_ssl.utils.io import atomic_write  # noqa: E402
from audio_ssl.utils.plots import confusion_matrix_figure  # noqa: E402

log = logging.getLogger(__name__)


def load_predictions(run_dir: str | os.PathLike, variant: str) -> pd.DataFrame:
    """All folds' predictions of one variant, with a ``fold`` column."""
    frames = []
    for fold, result in finished_folds(Path(run_dir)).items():
        if variant in result.variants:
            frames.append(read_predictions(Path(run_dir), result.variants[variant]).assign(fold=fold))
    if not frames:
        raise FileNotFoundError(f"{run_dir}: no saved predictions for variant {variant!r}")
    return pd.concat(frames, ignore_index=True)


def confusion_counts(predictions: pd.DataFrame, num_classes: int) -> np.ndarray:
    """Counts [true, predicted] from the ``label`` and ``pred`` columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (predictions["label"].to_numpy(), predictions["pred"].to_numpy()), 1)
    return matrix


def confused_pairs(predictions: pd.DataFrame, class_names: list[str], top: int = 20) -> pd.DataFrame:
    """The ``top`` most frequent mistakes: ``true, predicted, count, share_of_true`` (count / clips of the true
    class), most frequent first (ties by class names)."""
    matrix = confusion_counts(predictions, len(class_names))
    support = matrix.sum(axis=1)
    rows = [{"true": class_names[t], "predicted": class_names[p], "count": int(matrix[t, p]),
             "share_of_true": float(matrix[t, p] / support[t])}
            for t in range(len(class_names)) for p in range(len(class_names)) if t != p and matrix[t, p] > 0]
    frame = pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true"])
    return frame.sort_values(["count", "true", "predicted"], ascending=[False, True, True]).head(top).reset_index(
        drop=True)


def confidence_extremes(predictions: pd.DataFrame, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(least confident correct, most confident wrong)`` clips, ``n`` of each."""
    correct = predictions[predictions["pred"] == predictions["label"]]
    wrong = predictions[predictions["pred"] != predictions["label"]]
    return (correct.sort_values("confidence", kind="stable").head(n).reset_index(drop=True),
            wrong.sort_values("confidence", ascending=False, kind="stable").head(n).reset_index(drop=True))


def per_class_accuracy_figure(accuracy: pd.Series, title: str = "Per-class accuracy"):
    """Horizontal bars, best class at the top, with the mean as a dashed line."""
    ordered = accuracy.sort_values()
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.18 * len(ordered) + 1)))
    ax.barh(range(len(ordered)), ordered.to_numpy(), color="tab:blue")
    ax.set_yticks(range(len(ordered)), ordered.index, fontsize=6 if len(ordered) > 20 else 9)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.axvline(float(accuracy.mean()), color="k", lw=0.8, ls="--", label="mean")
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def logmel_image(path: str, sample_rate: int, n_mels: int = 64) -> np.ndarray | None:
    """The log-mel (dB) of an audio file as [n_mels, frames], or ``None`` if the file cannot be decoded."""
    from audio_ssl.data.audio import AudioDecodeError, decode_audio
    from audio_ssl.features.logmel import LogMelSpectrogram

    try:
        wave = decode_audio(path, sample_rate)
    except AudioDecodeError as err:
        log.warning("analysis: cannot show %s (%s)", path, err)
        return None
    frontend = LogMelSpectrogram(sample_rate=sample_rate, n_mels=n_mels)
    with torch.inference_mode():
        return frontend(torch.from_numpy(wave)[None])[0, 0].numpy()


def clip_grid_figure(clips: pd.DataFrame, sample_rate: int, title: str, columns: int = 4):
    """A grid of log-mel images with file name, true and predicted class and the confidence."""
    n = max(len(clips), 1)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, clip) in zip(axes.flat, clips.iterrows()):
        image = logmel_image(str(clip["file"]), sample_rate)
        if image is None:
            ax.text(0.5, 0.5, "audio not readable", ha="center", va="center")
        else:
            ax.imshow(image, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"{Path(str(clip['file'])).name}\ntrue {clip['label_name']} | pred {clip['pred_name']} "
                     f"({clip['confidence']:.2f})", fontsize=7)
    if clips.empty:
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    try:
        with atomic_write(path) as fh:
            fig.savefig(fh, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def _write_csv(frame, path: Path, **kwargs) -> None:
    with atomic_write(path, "w") as fh:
        frame.to_csv(fh, **kwargs)


def _markdown(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A small Markdown table without the optional ``tabulate`` dependency."""
    if frame.empty:
        return "(none)\n"
    cells = [[format(v, floatfmt) if isinstance(v, float) else str(v) for v in row] for row in frame.to_numpy()]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def analyze_variant(predictions: pd.DataFrame, class_names: list[str], sample_rate: int, out_dir: Path,
                    examples: int = 8, top_pairs: int = 20, title: str = "") -> dict[str, Path]:
    """Write every analysis file for one variant's predictions into ``out_dir``; returns ``{key: path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    matrix = confusion_counts(predictions, len(class_names))
    files["confusion_matrix"] = _save(
        confusion_matrix_figure(matrix, class_names, normalize=True, title=f"{title} confusion matrix".strip()),
        out_dir / "confusion_matrix.png")
    support = matrix.sum(axis=1)
    accuracy = pd.Series(np.diag(matrix) / np.maximum(support, 1), index=class_names)[support > 0]
    _write_csv(accuracy.rename("accuracy").rename_axis("class"), out_dir / "per_class_accuracy.csv")
    files["per_class_accuracy_table"] = out_dir / "per_class_accuracy.csv"
    files["per_class_accuracy"] = _save(per_class_accuracy_figure(accuracy, f"{title} per-class accuracy".strip()),
                                        out_dir / "per_class_accuracy.png")
    pairs = confused_pairs(predictions, class_names, top_pairs)
    _write_csv(pairs, out_dir / "confused_pairs.csv", index=False)
    _write_text(out_dir / "confused_pairs.md", _markdown(pairs))
    files["confused_pairs"] = out_dir / "confused_pairs.csv"
    columns = ["fold", "file", "label_name", "pred_name", "confidence"]
    low_correct, high_wrong = confidence_extremes(predictions, examples)
    for key, clips, label in (("least_confident_correct", low_correct, "least confident correct"),
                              ("most_confident_wrong", high_wrong, "most confident wrong")):
        _write_csv(clips[[c for c in columns if c in clips]], out_dir / f"{key}.csv", index=False)
        files[f"{key}_table"] = out_dir / f"{key}.csv"
        files[key] = _save(clip_grid_figure(clips, sample_rate, f"{title} {label}".strip()), out_dir / f"{key}.png")
    return files


def analyze_run(run_dir: str | os.PathLike, examples: int = 8, top_pairs: int = 20) -> dict[str, dict[str, Path]]:
    """Analyse every variant of a finished CV run (needs its ``summary.json``) into ``<run>/analysis/``."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if summary is None:
        raise FileNotFoundError(f"{summary_path(run_dir)} not found: run `audio-ssl cv` for this run first")
    sample_rate = int(summary.get("sample_rate") or 16000)
    out_root = run_dir / ANALYSIS_DIR
    readme = [f"# Error analysis: {summary['name']}\n",
              f"Predictions of folds {summary['folds']} (no re-inference). Confusion matrices are row-normalised.\n"]
    all_files = {}
    for variant in summary["variants"]:
        predictions = load_predictions(run_dir, variant)
        names = summary.get("class_names") or _names_from(predictions)
        files = analyze_variant(predictions, list(names), sample_rate, out_root / variant, examples, top_pairs,
                                title=variant if len(summary["variants"]) > 1 else "")
        all_files[variant] = files
        acc = float((predictions["pred"] == predictions["label"]).mean())
        readme += [f"\n## {variant}: accuracy over all test clips {100 * acc:.1f}% ({len(predictions)} clips)\n",
                   f"![confusion matrix]({variant}/confusion_matrix.png)\n",
                   f"![per-class accuracy]({variant}/per_class_accuracy.png)\n",
                   "\n### Most confused pairs\n", (out_root / variant / "confused_pairs.md").read_text(),
                   f"\n![least confident correct]({variant}/least_confident_correct.png)\n",
                   f"![most confident wrong]({variant}/most_confident_wrong.png)\n"]
    _write_text(out_root / "README.md", "".join(readme))
    return all_files


def _names_from(predictions: pd.DataFrame) -> list[str]:
    """Class names from the label/pred name columns (ids without a name get their number)."""
    names = dict(zip(predictions["label"], predictions["label_name"]))
    names.update({k: v for k, v in zip(predictions["pred"], predictions["pred_name"]) if k not in names})
    return [str(names.get(i, i)) for i in range(int(max(names)) + 1)]
