"""The per-fold task interface: what a fold task receives (:class:`FoldContext`) and what it returns
(:class:`FoldOutput`: metrics, per-clip predictions and a :class:`ResultDescription`), in one format for every
method, plus the metric and prediction helpers every task uses.

A *fold task* trains on the training folds and tests on the held-out ``context.fold``; it returns one
:class:`FoldOutput` per *variant* (e.g. ``"pretrained"`` and ``"random_init"``)::

    FoldTask = Callable[[FoldContext], dict[str, FoldOutput]]

Tasks are registered by name in :mod:`audio_ssl.evaluation.registry`; the runner
(:mod:`audio_ssl.evaluation.runner`) calls one per held-out fold and the run store
(:mod:`audio_ssl.evaluation.run_store`) keeps what it returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audio_ssl.evaluation.run_config import resolve_path

TRANSDUCTIVE_NOTE = "pretraining saw test-fold audio"


@dataclass(frozen=True)
class FoldContext:
    """Everything a fold task needs besides its own config section: the held-out fold, its work directory and
    the run it belongs to.

    ``config``: the run's YAML as parsed (resolve relative paths in it with :meth:`resolve_path`).
    ``fold``: the held-out (test) fold. ``work_dir``: ``results/NAME/fold{k}``, for the fold's Lightning runs,
    checkpoints and caches. ``config_path``: the YAML file (``None`` for a config built in code: relative
    paths then resolve against the working directory). ``overrides``: Lightning CLI arguments to append to
    every Lightning run (``audio-ssl cv --set``/trailing args). ``run_name``, ``wandb``, ``wandb_project``:
    the CV run, for the loggers of its Lightning stages. ``overlays``: Lightning YAMLs stacked after a plain
    Lightning ``config_path`` (``audio-ssl cv --config recipe.yaml --config cpu/recipe.yaml``).
    """

    config: dict
    fold: int
    work_dir: Path
    config_path: Path | None = None
    overrides: tuple[str, ...] = ()
    run_name: str = "cv"
    wandb: bool = False
    wandb_project: str = "audio-ssl"
    overlays: tuple[Path, ...] = ()

    @property
    def source(self) -> str:
        """The config file's name for error messages."""
        return str(self.config_path) if self.config_path is not None else "<config>"

    @property
    def config_dir(self) -> Path:
        """The folder relative paths of the config are taken from."""
        return self.config_path.parent if self.config_path is not None else Path.cwd()

    def resolve_path(self, key: str, required: bool = True) -> Path | None:
        """``config[key]`` as an existing file, relative to the config's folder."""
        return resolve_path(self.config, key, self.config_path, required)


def clips_digest(files: Sequence[str]) -> str:
    """Order-independent hash of a set of clip paths (to prove the test folds cover the dataset)."""
    digest = hashlib.sha256()
    for f in sorted(str(f) for f in files):
        digest.update(f.encode() + b"\n")
    return digest.hexdigest()[:16]


@dataclass
class DatasetDescription:
    """The dataset a fold was tested on; the fold bookkeeping check needs ``num_folds``, ``num_clips`` and
    ``clips_digest`` to prove that every clip was tested exactly once across the folds."""

    name: str
    num_folds: int
    num_clips: int
    clips_digest: str
    class_names: list[str]
    sample_rate: int
    clip_seconds: float | None = None

    @classmethod
    def of(cls, datamodule) -> DatasetDescription:
        """The description of a :class:`~audio_ssl.data.base.FoldAudioDataModule` (clips it skips left out)."""
        meta = datamodule._metadata()
        cache = datamodule._open_cache()
        paths = [p for p in meta["path"] if p not in cache.skipped]
        return cls(name=datamodule.dataset_name, num_folds=int(datamodule.num_folds), num_clips=len(paths),
                   clips_digest=clips_digest(paths), class_names=list(datamodule.class_names),
                   sample_rate=int(datamodule.sample_rate), clip_seconds=float(datamodule.clip_seconds))


@dataclass
class ResultDescription:
    """What was evaluated, and how: one row of the results table and the summary's description of a variant.

    ``method``, ``encoder``, ``pretraining_data``, ``protocol`` and ``epochs`` (an int, or e.g. ``"100+30"``
    for pretraining + fine-tuning) are the results table's columns; ``transductive`` marks pretraining that saw
    the test fold's audio. ``device`` and ``wall_time_s`` (of this variant on this fold) go into the summary,
    ``configs`` (``{label: resolved config text}``) into its ``configs`` section, ``dataset`` into its dataset
    fields and the bookkeeping check. ``details``: anything else worth keeping per fold (the probe's chosen C,
    feature cache paths, ...), shown under the summary's ``details``; values must be JSON-serialisable.
    """

    method: str | None = None
    encoder: str | None = None
    pretraining_data: str | None = None
    transductive: bool = False
    protocol: str | None = None
    epochs: int | str | None = None
    device: str | None = None
    wall_time_s: float | None = None
    dataset: DatasetDescription | None = None
    configs: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


@dataclass
class FoldOutput:
    """The result of testing one model on one held-out fold.

    ``metrics``: scalar test metrics (at least ``acc``; usually ``acc_top5`` and ``f1_macro``).
    ``predictions``: one row per test clip, see :func:`predictions_frame`.
    ``description``: what was tested and how (see :class:`ResultDescription`).
    """

    metrics: dict[str, float]
    predictions: pd.DataFrame
    description: ResultDescription = field(default_factory=ResultDescription)


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
