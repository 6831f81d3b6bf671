"""DataStallMonitor: a loader slower than the step shows a high stall fraction, a fast one a low one."""

from __future__ import annotations

import time

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from audio_ssl.utils.data_stall import STALL_METRIC, DataStallMonitor

STEP_S = 0.05


class SleepyDataset(Dataset):
    def __init__(self, delay_s: float, size: int = 8):
        self.delay_s, self.size = delay_s, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        time.sleep(self.delay_s)
        return torch.full((4,), float(i))


class SleepyModel(L.LightningModule):
    """Each training step takes STEP_S (plus a tiny linear layer)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_S)
        return self.layer(batch).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def stall_of(delay_s: float, log_dir) -> tuple[DataStallMonitor, L.Trainer]:
    monitor = DataStallMonitor()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(log_dir, name="", version=""),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[monitor])
    trainer.fit(SleepyModel(), DataLoader(SleepyDataset(delay_s), batch_size=1, num_workers=0))
    return monitor, trainer


@pytest.mark.parametrize("delay_s, low, high", [(0.0, 0.0, 0.2), (2 * STEP_S, 0.55, 0.8)])
def test_stall_fraction_of_slow_and_fast_loaders(delay_s, low, high, tmp_path):
    """Waiting ``delay_s`` per batch against ``STEP_S`` per step: the fraction is about ``delay / (delay + step)``
    (2/3 for the slow loader), and near 0 for the fast one."""
    monitor, trainer = stall_of(delay_s, tmp_path)
    assert [e["steps"] for e in monitor.epochs] == [7, 7]  # 8 batches, the first wait left out
    for epoch in monitor.epochs:
        assert low <= epoch["fraction"] <= high, epoch
        assert epoch["step_s"] >= 7 * STEP_S
    logged = pd.read_csv(tmp_path / "metrics.csv")[STALL_METRIC].dropna().tolist()
    assert logged == pytest.approx([e["fraction"] for e in monitor.epochs])
    summary = monitor.summary()
    assert summary["data_stall_epochs"] == 2
    assert summary["data_stall_fraction"] == pytest.approx(sum(e["fraction"] for e in monitor.epochs) / 2)
    assert DataStallMonitor.of(trainer) is monitor


def test_no_epoch_no_summary():
    assert DataStallMonitor().summary() is None
