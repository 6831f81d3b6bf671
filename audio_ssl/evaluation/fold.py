"""What one held-out fold produces, in one format for every method: metrics plus per-clip predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch


@dataclass
class FoldOutput:
    """The result of testing one model on one held-out fold.

    ``metrics``: scalar test metrics (at least ``acc``; usually ``acc_top5`` and ``f1_macro``).
    ``predictions``: one row per test clip, see :func:`predictions_frame`.
    ``info``: anything else worth keeping in the summary (epochs, wall time of a stage, ...).
    """

    metrics: dict[str, float]
    predictions: pd.DataFrame
    info: dict = field(default_factory=dict)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy and macro-F1 from integer labels [N] and class scores [N, C]."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels)
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    metrics = {"acc": float((pred == labels).mean()),
               "f1_macro": float(f1_score(labels, pred, average="macro", labels=np.arange(probs.shape[1]),
                                          zero_division=0))}
    if probs.shape[1] > 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        metrics["acc_top5"] = float((top5 == labels[:, None]).any(1).mean())
    return metrics


def predictions_frame(
    files: Sequence[str | Path],
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    k: int = 5,
) -> pd.DataFrame:
    """Per-clip predictions: ``file, label, label_name, pred, pred_name, confidence`` and
    ``top{i}``/``top{i}_prob`` for i = 1..k (class ids and probabilities, best first)."""
    probs = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if len(files) != len(labels) or len(labels) != len(probs):
        raise ValueError(f"{len(files)} files, {len(labels)} labels and {len(probs)} rows of probabilities")
    names = list(class_names) if class_names is not None else [str(i) for i in range(probs.shape[1])]
    order = np.argsort(-probs, axis=1)[:, : min(k, probs.shape[1])]
    frame = pd.DataFrame({
        "file": [str(f) for f in files],
        "label": labels,
        "label_name": [names[i] for i in labels],
        "pred": order[:, 0],
        "pred_name": [names[i] for i in order[:, 0]],
        "confidence": probs[np.arange(len(probs)), order[:, 0]],
    })
    for i in range(order.shape[1]):
        frame[f"top{i + 1}"] = order[:, i]
        frame[f"top{i + 1}_prob"] = probs[np.arange(len(probs)), order[:, i]]
    return frame


def gather_clip_outputs(outputs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(index [N], probs [N, C])`` of per-batch outputs ``{"index", "probs"}`` from every process, sorted by
    clip index with repeats dropped (a padded distributed sampler scores some clips twice).

    Under DDP each rank holds the outputs of its own shard; this is a collective: call it on every rank.
    """
    from audio_ssl.utils.distributed import all_gather_objects

    local = ([torch.as_tensor(o["index"]).cpu().long() for o in outputs],
             [torch.as_tensor(o["probs"]).detach().float().cpu() for o in outputs])
    index, probs = [], []
    for rank_index, rank_probs in all_gather_objects(local):
        index += rank_index
        probs += rank_probs
    if not index:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    index_np = torch.cat(index).numpy()
    probs_np = torch.cat(probs).numpy()
    unique, first = np.unique(index_np, return_index=True)  # sorted clip indices, first occurrence of each
    return unique, probs_np[first]
