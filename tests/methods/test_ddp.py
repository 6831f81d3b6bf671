"""Multi-process runs of the supervised baseline with two real gloo processes on CPU: each rank reads its
own shard, metrics are synced, and the synced numbers equal a single-process run."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from audio_ssl.data import ESC50DataModule
from audio_ssl.features import LogMelSpectrogram
from audio_ssl.methods import SupervisedClassifier
from audio_ssl.models import AudioResNet


class RecordIndices(L.Callback):
    """Writes the dataset indices each rank evaluated to ``<dir>/rank<r>.json``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.seen: list[int] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen.extend(batch["index"].tolist())

    def on_validation_epoch_end(self, trainer, pl_module):
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump(self.seen, fh)


def model_and_data(esc50_root, cache_dir):
    torch.manual_seed(0)
    model = SupervisedClassifier(
        encoder=AudioResNet(arch="resnet10", widths=(8, 8, 16, 16)),
        frontend=LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32, normalize="instance"),
        num_classes=5, dropout=0.0,
    )
    data = ESC50DataModule(str(esc50_root), test_fold=2, clip_seconds=1.0, batch_size=2, num_workers=0,
                           cache_dir=str(cache_dir))
    return model, data


def trainer(devices: int, tmp_path, callbacks=()):
    strategy = "ddp_spawn" if devices > 1 else "auto"
    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                     enable_progress_bar=False, enable_checkpointing=False, callbacks=list(callbacks),
                     default_root_dir=str(tmp_path))


@pytest.mark.ddp
def test_two_process_validation_matches_one_process(esc50_root, cache_dir, tmp_path):
    model, data = model_and_data(esc50_root, cache_dir)
    single = trainer(1, tmp_path).validate(model, datamodule=data, verbose=False)[0]

    model, data = model_and_data(esc50_root, cache_dir)
    ddp = trainer(2, tmp_path, [RecordIndices(str(tmp_path))]).validate(model, datamodule=data, verbose=False)[0]

    shards = [set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]  # each rank reads a different shard
    assert shards[0] | shards[1] == set(range(10))  # together: the whole fold, once
    for key in ("val/acc", "val/loss", "val/f1_macro"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key
