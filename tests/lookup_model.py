"""A SupervisedClassifier whose scores are a fixed table looked up by clip index, so that tests choose
every prediction (e.g. an all-correct first batch) and compare what the real steps log with scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audio_ssl.features import LogMelSpectrogram
from audio_ssl.methods import SupervisedClassifier


class _Stub(nn.Module):
    out_dim = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), self.out_dim)


def adversarial_scores(labels: np.ndarray, num_classes: int, first_batch: int, mode: str, seed: int) -> np.ndarray:
    """Logits [N, C]: the first ``first_batch`` clips all right (``mode="correct_first"``) or all wrong
    (``"wrong_first"``); the other clips right with probability 0.6 and otherwise a random wrong class,
    with random runner-up scores (so top-5 hits and top-1 errors both occur)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    logits = rng.normal(0.0, 1.0, size=(n, num_classes))
    right = rng.random(n) < 0.6
    right[:first_batch] = mode == "correct_first"
    for i, y in enumerate(labels):
        top = y if right[i] else (y + 1 + rng.integers(num_classes - 1)) % num_classes
        logits[i, top] = logits[i].max() + 1.0 + rng.random()
    return logits.astype(np.float32)


class LookupClassifier(SupervisedClassifier):
    """``forward`` returns ``tables[stage][batch["index"]]`` (plus 0 x a parameter, so training has a graph).

    ``record_dir``: each rank writes the clip indices its training steps saw to ``train_rank{r}.json``.
    """

    def __init__(self, tables: dict[str, np.ndarray], num_classes: int, record_dir: str | None = None):
        super().__init__(encoder=_Stub(), num_classes=num_classes, frontend=LogMelSpectrogram(n_mels=8, n_fft=256),
                         dropout=0.0, label_smoothing=0.0, mixup_prob=0.0, freq_mask=0, time_mask=0,
                         optimizer="sgd", lr=0.0, scheduler="none")
        self.tables = {k: torch.as_tensor(v) for k, v in tables.items()}
        self.zero = nn.Parameter(torch.zeros(()))
        self.record_dir = record_dir
        self.seen: list[int] = []
        self._index = None

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        self._index = batch["index"]
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def _stage(self) -> str:
        if self.trainer.testing:
            return "test"
        return "train" if self.training else "val"

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.tables[self._stage()][self._index.cpu()].to(spec.device) + 0.0 * self.zero

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen += batch["index"].tolist()
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.record_dir:
            path = Path(self.record_dir) / f"train_rank{self.trainer.global_rank}.json"
            path.write_text(json.dumps(self.seen))
