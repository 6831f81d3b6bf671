"""Supervised classification from scratch: the baseline every self-supervised method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl.features.augment import Mixup, RandomGain, RandomTimeShift, SpecAugment
from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.metrics import ClassificationScores
from audio_ssl.models.heads import ClassificationHead
from audio_ssl.models.resnet import AudioResNet
from audio_ssl.utils.plots import log_confusion_matrix


class SupervisedClassifier(BaseMethod):
    """Encoder + classification head trained with cross-entropy on log-mel spectrograms.

    Training-only augmentation, all on the device: random gain and time shift on the waveform,
    SpecAugment on the log-mel, and mixup (with probability ``mixup_prob`` per batch) whose soft
    targets make the loss mixup-aware. Label smoothing applies on top.

    Test-time augmentation: ``tta_views > 1`` averages the softmax over that many circular time
    shifts of each test clip (evenly spaced over the clip), computed on the device.

    Evaluation metrics (``val/acc``, ``val/f1_macro``, ``val/acc_top5`` and the same under ``test/``) are
    computed once per epoch from counts summed over every batch and process (:class:`ClassificationScores`),
    so they equal scikit-learn on the epoch's predictions. ``test_outputs`` holds this process's clips only;
    under DDP the CV runner gathers them.
    """

    classifies = True

    def __init__(
        self,
        encoder: nn.Module | None = None,
        num_classes: int = 50,
        dropout: float = 0.5,
        label_smoothing: float = 0.1,
        freq_mask: int = 30,
        time_mask: int = 80,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mixup_alpha: float = 0.2,
        mixup_prob: float = 0.3,
        gain_db: float = 0.0,
        time_shift: float = 0.0,
        tta_views: int = 1,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        self.save_hyperparameters(ignore=["encoder", "frontend"])
        self.encoder = encoder if encoder is not None else AudioResNet(arch="resnet34")
        self.head = ClassificationHead(self.encoder.out_dim, num_classes, dropout=dropout)
        self.label_smoothing = label_smoothing
        self.gain = RandomGain(min_db=-gain_db, max_db=gain_db) if gain_db > 0 else nn.Identity()
        self.shift = RandomTimeShift(max_fraction=time_shift) if time_shift > 0 else nn.Identity()
        self.spec_augment = SpecAugment(freq_mask, time_mask, num_freq_masks, num_time_masks)
        self.mixup = Mixup(alpha=mixup_alpha, prob=mixup_prob)
        if tta_views < 1:
            raise ValueError(f"tta_views must be >= 1, got {tta_views}")
        self.tta_views = tta_views
        self.val_metrics = ClassificationScores(num_classes)
        self.test_metrics = ClassificationScores(num_classes)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(spec))

    # ------------------------------------------------------------------ device-side transforms
    def train_transform(self, batch: dict) -> dict:
        audio = self.shift(self.gain(batch["audio"]))
        spec = self.spec_augment(self.frontend(audio))
        batch["spec"], batch["target"] = self.mixup(spec, batch["label"], self.num_classes)
        return batch

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["spec"])
        loss = F.cross_entropy(logits, batch["target"], label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        self.log_metrics("train", {"loss": loss, "acc": acc}, batch_size=len(logits), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["spec"])
        loss = F.cross_entropy(logits, batch["label"])
        self.val_metrics.update(logits, batch["label"])
        self.log_metrics("val", {"loss": loss}, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_scores("val", self.val_metrics, prog_bar=True)

    def _log_scores(self, stage: str, metric: ClassificationScores, prog_bar: bool = False) -> None:
        """Log the epoch's scores (every rank calls this: ``compute`` syncs the counts across processes)."""
        if metric.update_count == 0:  # e.g. a validation loop limited to zero batches
            return
        scores = metric.compute()
        metric.reset()
        # The values are already global and equal on every rank. Lightning wants epoch-level values synced; the
        # max of equal values is exact (a mean over ranks could round).
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, on_epoch=True, prog_bar=prog_bar,
                      sync_dist=True, reduce_fx="max")

    def predict_proba(self, audio: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]`` of raw waveforms ``[B, T]``: the softmax averaged over
        ``tta_views`` circular shifts (evenly spaced over the clip)."""
        views = self.tta_views
        shifts = [round(i * audio.shape[-1] / views) for i in range(views)]
        probs = sum(F.softmax(self(self.frontend(torch.roll(audio, s, dims=-1))), dim=1) for s in shifts)
        return probs / views

    def test_step(self, batch: dict, batch_idx: int) -> None:
        probs = self.predict_proba(batch["audio"])
        self.test_metrics.update(probs, batch["label"])
        self.test_outputs.append({"index": batch["index"].cpu(), "label": batch["label"].cpu(), "probs": probs.cpu()})

    def on_test_epoch_start(self) -> None:
        self.test_outputs.clear()

    def on_test_epoch_end(self) -> None:
        # Collectives first, on every rank: the synced confusion matrix and the log folder (trainer.log_dir
        # broadcasts rank 0's); only then the rank-zero-only plot.
        matrix = self.test_metrics.confusion_matrix().cpu()
        out_dir = self.trainer.log_dir  # None without a logger: no run folder to put the picture in
        self._log_scores("test", self.test_metrics)
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "class_names", None) if datamodule is not None else None
        if self.trainer.is_global_zero and out_dir is not None:
            log_confusion_matrix(self.trainer, matrix, names, out_dir=out_dir)

