"""Multi-process runs of the supervised baseline with two real gloo processes on CPU: each rank reads its
own shard, metrics are synced, and the synced numbers equal a single-process run."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
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


# ---------------------------------------------------------------------------------------------- rank-asymmetric folds
# 5 classes x 15 clips: 15 clips per fold, which 2 ranks cannot split evenly. With an evaluation batch of 1,
# rank 0 runs 8 batches and rank 1 runs 7: a per-batch collective would hang, a padded sampler would score a
# clip twice.


@pytest.fixture(scope="module")
def odd_fold_data(tmp_path_factory):
    from audio_ssl.data.synthetic import make_synthetic_esc50

    root = tmp_path_factory.mktemp("esc50_odd")
    make_synthetic_esc50(root, num_classes=5, clips_per_class=15, seconds=0.5, seed=2)
    return root, tmp_path_factory.mktemp("cache_odd")


def odd_model_and_data(odd_fold_data, seed: int = 0):
    root, cache = odd_fold_data
    torch.manual_seed(seed)
    model = SupervisedClassifier(
        encoder=AudioResNet(arch="resnet10", widths=(8, 8, 16, 16)),
        frontend=LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32, normalize="instance"),
        num_classes=5, dropout=0.0,
    )
    data = ESC50DataModule(str(root), test_fold=2, clip_seconds=0.5, batch_size=4, eval_batch_size=1,
                           num_workers=0, cache_dir=str(cache))
    return model, data


@pytest.mark.ddp
def test_two_process_validate_and_test_on_an_odd_fold_match_one_process(odd_fold_data, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    keys = ("acc", "f1_macro", "loss")
    model, data = odd_model_and_data(odd_fold_data)
    single = trainer(1, tmp_path).validate(model, datamodule=data, verbose=False)[0]
    single_test = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="one"),
                            enable_progress_bar=False, enable_checkpointing=False).test(model, datamodule=data,
                                                                                        verbose=False)[0]

    model, data = odd_model_and_data(odd_fold_data)
    ddp = trainer(2, tmp_path, [RecordIndices(str(tmp_path))]).validate(model, datamodule=data, verbose=False)[0]
    shards = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(len(s) for s in shards) == [7, 8]  # unequal shards, no clip repeated
    assert sorted(shards[0] + shards[1]) == list(range(15))
    for key in keys:
        assert ddp[f"val/{key}"] == pytest.approx(single[f"val/{key}"], abs=1e-6), key
    assert ddp["val/acc"] * 15 == pytest.approx(round(single["val/acc"] * 15), abs=1e-6)  # k/15, not k/16

    # test: the confusion-matrix plot reads the log folder; it must not put a broadcast inside rank 0's block
    ddp_trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=CSVLogger(tmp_path, name="two"),
                            enable_progress_bar=False, enable_checkpointing=False)
    ddp_test = ddp_trainer.test(model, datamodule=data, verbose=False)[0]
    for key in ("acc", "f1_macro"):
        assert ddp_test[f"test/{key}"] == single_test[f"test/{key}"], key
    assert (tmp_path / "two" / "version_0" / "test_confusion_matrix.png").is_file()


@pytest.mark.ddp
def test_two_process_fit_logs_synced_train_and_exact_val_metrics(odd_fold_data, tmp_path):
    """Training metrics are the mean over both ranks' samples; validation during fit is the whole fold once."""
    from lightning.pytorch.loggers import CSVLogger
    from lookup_model import LookupClassifier, adversarial_scores
    from sklearn.metrics import accuracy_score, f1_score

    _, data = odd_model_and_data(odd_fold_data)
    data.setup()
    # ranks that disagree: all right on even clip indices of the training set, 60% right on odd ones
    train_labels, val_labels = data.train_set.labels, data.val_set.labels
    train = adversarial_scores(train_labels, 5, first_batch=0, mode="correct_first", seed=5)
    train[::2] = np.eye(5, dtype=np.float32)[train_labels[::2]] * 10
    tables = {"train": train, "val": adversarial_scores(val_labels, 5, first_batch=1, mode="correct_first", seed=6)}
    model = LookupClassifier(tables, 5, record_dir=str(tmp_path))
    fit = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true", max_epochs=1,
                    logger=CSVLogger(tmp_path),
                    enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0)
    fit.fit(model, datamodule=data)
    logged = pd.read_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    value = {c: float(logged[c].dropna().iloc[-1]) for c in logged.columns if logged[c].notna().any()}

    seen = [json.loads((tmp_path / f"train_rank{r}.json").read_text()) for r in (0, 1)]
    per_rank = [accuracy_score(train_labels[s], train[s].argmax(1)) for s in seen]
    assert abs(per_rank[0] - per_rank[1]) > 0.1  # the ranks really disagree (a rank-0-only value fails)
    everything = np.array(seen[0] + seen[1])
    assert value["train/acc_epoch"] == pytest.approx(accuracy_score(train_labels[everything],
                                                                    train[everything].argmax(1)), abs=1e-6)
    val_pred = tables["val"].argmax(1)
    assert value["val/acc"] == pytest.approx(accuracy_score(val_labels, val_pred), abs=1e-6)
    assert value["val/f1_macro"] == pytest.approx(f1_score(val_labels, val_pred, average="macro"), abs=1e-6)
