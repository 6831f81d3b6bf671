"""The kNN monitor: the weighted vote against a hand count, and a memory bank of the clean training clips (the
embeddings a plain loop over the training split gives), scored every ``knn_every_n_epochs`` epochs; the bank
gathered over two Gloo processes whose shards differ in size."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from ddp_utils import run_distributed

from audio_ssl.data import ESC50DataModule
from audio_ssl.features import LogMelSpectrogram, ViewAugmentation
from audio_ssl.methods import SimCLR
from audio_ssl.methods.monitors import KNNMonitor, knn_predict
from audio_ssl.models import AudioResNet
from audio_ssl.utils.distributed import all_gather_rows


def test_knn_vote_weights_the_k_nearest_by_exp_of_cosine_over_temperature():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]])  # cosines to the bank: 1, 0.8, 0, -1
    scores = knn_predict(bank, labels, query, num_classes=3, k=3, temperature=0.5)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(0.8 / 0.5) + math.exp(0.0), 0.0]])
    torch.testing.assert_close(scores, expected)


def test_knn_monitor_scores_queries_against_the_bank_and_clears_them():
    monitor = KNNMonitor(num_classes=2, k=1)
    assert monitor.compute() is None  # no bank, no queries
    monitor.set_bank(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    monitor.collect(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
    monitor.collect(torch.tensor([[0.1, 0.9]]), torch.tensor([0]))  # nearest is class 1: wrong
    accuracy, count = monitor.compute()
    assert count == 3 and accuracy.item() == pytest.approx(2 / 3)
    assert monitor.compute() is None and monitor.bank is not None


def tiny_simclr(**kwargs) -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(encoder=AudioResNet(arch="resnet10", widths=(8, 8, 16, 16)),
                  frontend=LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32, normalize="instance"),
                  num_classes=5, views=ViewAugmentation(crop_seconds=0.5), proj_hidden_dim=16, proj_dim=8,
                  scheduler="none", optimizer="adamw", lr=3e-3, online_probe=False, knn_k=3, **kwargs)


def fit(model, data, tmp_path, epochs=1):
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=1, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.mark.parametrize("transductive", [False, True])
def test_the_bank_is_the_clean_training_clips_embedded_by_a_plain_loop(esc50_root, cache_dir, tmp_path, transductive):
    data = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, batch_size=8, num_workers=0,
                           cache_dir=str(cache_dir), transductive=transductive)
    model = tiny_simclr()
    trainer = fit(model, data, tmp_path)
    assert 0 <= trainer.callback_metrics["val/knn_acc"] <= 1
    clips = data.split_dataset("train")  # folds 2-5 even when transductive: the test fold's labels never vote
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.embed(clips[i]["audio"].float()[None]) for i in range(len(clips))])
    bank_x, bank_y = model.knn.bank
    assert len(bank_x) == len(clips) == 40
    torch.testing.assert_close(bank_x, expected, rtol=1e-4, atol=1e-5)
    assert bank_y.tolist() == [int(clips[i]["label"]) for i in range(len(clips))]


def test_the_bank_is_built_every_n_epochs_and_never_in_the_sanity_check(esc50_root, cache_dir, tmp_path,
                                                                        monkeypatch):
    data = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, batch_size=8, num_workers=0,
                           cache_dir=str(cache_dir))
    model = tiny_simclr(knn_every_n_epochs=2)
    built = []
    real = SimCLR.knn_bank
    monkeypatch.setattr(SimCLR, "knn_bank", lambda self, loader=None: built.append(self.current_epoch) or
                        real(self, loader))
    trainer = fit(model, data, tmp_path, epochs=3)
    assert built == [1]  # epochs 0, 1, 2: scored after the second; not in the sanity check, not after 1 or 3
    assert "val/knn_acc" in trainer.callback_metrics and not model.knn.queries
    with pytest.raises(ValueError, match="knn_every_n_epochs must be >= 1, got 0"):
        tiny_simclr(knn_every_n_epochs=0)


def test_a_fit_on_loaders_banks_the_training_loaders_clips(esc50_root, cache_dir, tmp_path):
    data = ESC50DataModule(str(esc50_root), test_fold=1, clip_seconds=1.0, batch_size=8, num_workers=0,
                           cache_dir=str(cache_dir))
    data.setup("fit")
    clips = data.split_dataset("train")  # no random crop: the clips are the whole 1 s files
    train = torch.utils.data.DataLoader(clips, batch_size=8, shuffle=True)
    val = torch.utils.data.DataLoader(data.split_dataset("val"), batch_size=8)
    model = tiny_simclr()
    L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(model, train, val)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.embed(clips[i]["audio"].float()[None]) for i in range(len(clips))])
    torch.testing.assert_close(model.knn.bank[0], expected, rtol=1e-4, atol=1e-5)  # in order, not shuffled


def _gather_worker(rank: int, world_size: int) -> dict:
    rows = torch.arange(3 * (rank + 1) * 2, dtype=torch.float32).view(-1, 2) + 100 * rank  # 3 rows, then 6
    return {"gathered": all_gather_rows(rows)}


def test_gathering_rows_of_different_counts_over_two_processes():
    results = run_distributed(_gather_worker, world_size=2)
    expected = torch.cat([torch.arange(6.0).view(-1, 2), torch.arange(12.0).view(-1, 2) + 100])
    for result in results:
        torch.testing.assert_close(result["gathered"], expected)


@pytest.mark.ddp
def test_two_processes_score_against_the_same_bank_as_one(tmp_path_factory, tmp_path):
    """45 training clips over 2 ranks (shards of 23 and 22, gathered unevenly) and 15 queries: the same kNN
    accuracy as one process."""
    from audio_ssl.data.synthetic import make_synthetic_esc50

    root, cache = tmp_path_factory.mktemp("esc50_knn"), tmp_path_factory.mktemp("cache_knn")
    make_synthetic_esc50(root, num_classes=5, clips_per_class=15, seconds=0.5, seed=2)

    def run(devices: int) -> float:
        data = ESC50DataModule(str(root), test_fold=2, val_fold=1, clip_seconds=0.5, batch_size=4,
                               eval_batch_size=2, num_workers=0, cache_dir=str(cache))
        assert len(data.split_dataset("train")) == 45
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                            logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            default_root_dir=str(tmp_path))
        return trainer.validate(tiny_simclr(), datamodule=data, verbose=False)[0]["val/knn_acc"]

    assert run(2) == pytest.approx(run(1), abs=1e-6)
