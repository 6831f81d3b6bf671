"""Logged classification scores equal scikit-learn on the same predictions, whatever the batch order.

Regression: a torchmetrics ``MetricCollection`` merged the states of top-5 accuracy and macro-F1 after an
all-correct first batch (compute groups) and logged ``f1_macro = 1.0000001`` with errors in the confusion
matrix. These tests choose every prediction (a lookup-table model, tests/lookup_model.py) and read what the
real training, validation and test steps logged, from the CSV log and the values ``trainer`` returns."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lookup_model import LookupClassifier, adversarial_scores
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, top_k_accuracy_score

from audio_ssl.data import ESC50DataModule
from audio_ssl.methods.metrics import ClassificationScores

BATCH = 8


def sklearn_scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()
    out = {"acc": accuracy_score(labels, pred), "f1_macro": f1_score(labels, pred, average="macro", zero_division=0),
           "loss": log_loss(labels, probs, labels=np.arange(num_classes))}
    if num_classes > 5:
        out["acc_top5"] = top_k_accuracy_score(labels, logits, k=5, labels=np.arange(num_classes))
    return out


@pytest.mark.parametrize("num_classes", [10, 50])
@pytest.mark.parametrize("order", ["correct_first", "wrong_first", "sorted_by_label"])
def test_scores_equal_sklearn_in_any_batch_order(num_classes, order):
    labels = np.random.default_rng(num_classes).integers(0, num_classes, 203)
    logits = adversarial_scores(labels, num_classes, first_batch=16, mode=order.replace("sorted_by_label",
                                                                                        "correct_first"), seed=3)
    if order == "sorted_by_label":
        keep = np.argsort(labels, kind="stable")
        labels, logits = labels[keep], logits[keep]
    metric = ClassificationScores(num_classes)
    for start in range(0, len(labels), 16):
        metric.update(torch.as_tensor(logits[start:start + 16]), torch.as_tensor(labels[start:start + 16]))
    got = {k: float(v) for k, v in metric.compute().items()}
    want = sklearn_scores(labels, logits)
    assert set(got) == {"acc", "f1_macro", "acc_top5"}
    for key in got:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    np.testing.assert_array_equal(metric.confusion_matrix().numpy(),
                                  confusion_matrix(labels, logits.argmax(1), labels=np.arange(num_classes)))


def test_f1_averages_the_classes_seen_and_rejects_bad_input():
    metric = ClassificationScores(10)  # classes 3..9 never occur: perfect predictions give 1, as in sklearn
    metric.update(torch.eye(10)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 2]))
    assert float(metric.compute()["f1_macro"]) == 1.0 and float(metric.compute()["acc_top5"]) == 1.0
    with pytest.raises(ValueError, match="targets must lie in 0..9"):
        metric.update(torch.zeros(1, 10), torch.tensor([10]))
    with pytest.raises(ValueError, match=r"expected scores \[B, 10\]"):
        metric.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no predictions"):
        ClassificationScores(3).compute()


# ---------------------------------------------------------------------------------------------- through Lightning
@pytest.fixture(scope="module", params=[10, 50])
def lookup_data(request, tmp_path_factory):
    from audio_ssl.data.synthetic import make_synthetic_esc50

    num_classes = request.param
    root = tmp_path_factory.mktemp(f"esc50_{num_classes}")
    make_synthetic_esc50(root, num_classes=num_classes, clips_per_class=5, seconds=0.25, seed=1)
    return root, tmp_path_factory.mktemp("cache"), num_classes


def lookup_datamodule(root, cache) -> ESC50DataModule:
    dm = ESC50DataModule(str(root), test_fold=1, val_fold=2, clip_seconds=0.25, batch_size=BATCH, num_workers=0,
                         cache_dir=str(cache))
    dm.setup()
    return dm


def csv_values(log_dir) -> dict[str, float]:
    frame = pd.read_csv(f"{log_dir}/metrics.csv")
    return {c: float(frame[c].dropna().iloc[-1]) for c in frame.columns if frame[c].notna().any()}


@pytest.mark.parametrize("mode", ["correct_first", "wrong_first"])
def test_logged_train_val_test_metrics_equal_sklearn(lookup_data, mode, tmp_path):
    root, cache, num_classes = lookup_data
    dm = lookup_datamodule(root, cache)
    splits = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}
    tables = {name: adversarial_scores(ds.labels, num_classes, BATCH, mode, seed=i)
              for i, (name, ds) in enumerate(splits.items())}
    model = LookupClassifier(tables, num_classes, record_dir=str(tmp_path))
    common = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_checkpointing=False,
                  enable_model_summary=False, num_sanity_val_steps=0)
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="fit"), **common)
    trainer.fit(model, datamodule=dm)
    logged = csv_values(trainer.log_dir)
    tester = L.Trainer(logger=CSVLogger(tmp_path, name="test"), **common)
    returned = tester.test(model, datamodule=dm, verbose=False)[0]
    logged.update(csv_values(tester.log_dir))

    seen = np.array(json.loads((tmp_path / "train_rank0.json").read_text()))
    train = sklearn_scores(splits["train"].labels[seen], tables["train"][seen])
    assert logged["train/acc_epoch"] == pytest.approx(train["acc"], abs=1e-6)
    assert logged["train/loss_epoch"] == pytest.approx(train["loss"], rel=1e-5)
    for stage in ("val", "test"):
        want = sklearn_scores(splits[stage].labels, tables[stage])
        keys = ["acc", "f1_macro", "acc_top5"] + (["loss"] if stage == "val" else [])
        for key in keys:
            assert logged[f"{stage}/{key}"] == pytest.approx(want[key], abs=1e-6), (stage, key)
        assert logged[f"{stage}/f1_macro"] <= 1.0
    for key in ("acc", "f1_macro", "acc_top5"):
        assert returned[f"test/{key}"] == pytest.approx(logged[f"test/{key}"], abs=1e-12)
    assert (tmp_path / "test" / "version_0" / "test_confusion_matrix.png").is_file()
