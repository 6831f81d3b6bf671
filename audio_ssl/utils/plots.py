"""Figures for evaluation: confusion matrices and friends, written as PNG and logged to W&B when active."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from audio_ssl.utils.io import atomic_write  # noqa: E402

log = logging.getLogger(__name__)


def confusion_matrix_figure(matrix: np.ndarray | torch.Tensor, class_names: list[str] | None = None,
                            normalize: bool = True, title: str = "Confusion matrix"):
    """Row-normalised (true class per row) confusion matrix with class names."""
    m = np.asarray(matrix, dtype=np.float64)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = m.shape[0]
    names = class_names or [str(i) for i in range(n)]
    size = max(5.0, 0.22 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), names, rotation=90, fontsize=6 if n > 20 else 9)
    ax.set_yticks(range(n), names, fontsize=6 if n > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def log_confusion_matrix(trainer, matrix: torch.Tensor, class_names: list[str] | None = None,
                         key: str = "test/confusion_matrix", out_dir: str | os.PathLike | None = None) -> Path:
    """Write the confusion matrix PNG into ``out_dir`` and log it to every W&B logger of ``trainer``.

    Under DDP call this on rank 0 only, and pass ``out_dir``: the default, ``trainer.log_dir``, is a
    broadcast from rank 0 that the other ranks would never join (a crash on gloo, a hang on NCCL).
    """
    if out_dir is None:
        out_dir = trainer.log_dir or trainer.default_root_dir
    path = Path(out_dir) / (key.replace("/", "_") + ".png")
    fig = confusion_matrix_figure(matrix, class_names)
    try:
        with atomic_write(path) as fh:
            fig.savefig(fh, dpi=120, format="png")
    finally:
        plt.close(fig)
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_image(key=key, images=[str(path)])
    log.info("confusion matrix written to %s", os.fspath(path))
    return path
