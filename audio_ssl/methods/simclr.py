"""SimCLR (Chen et al., 2020) for audio: two augmented log-mel views per clip, an MLP projector and NT-Xent.

What the method does per training step, all on the accelerator:

1. :meth:`SimCLR.train_transform` builds two views of each cached waveform with
   :class:`~audio_ssl.features.views.ViewAugmentation` (independent random crops, gain, a background clip
   from the batch, time shift, then random resized crop and SpecAugment on the log-mel).
2. Both views go through the encoder in one forward pass (BatchNorm statistics over both views), then the
   projector; NT-Xent contrasts every projection against the projections of *all* processes (gathered with
   gradients, see :mod:`audio_ssl.losses.nt_xent`).
3. Monitors that never touch the encoder's gradients: the online linear probe on detached embeddings
   (``train/online_probe_acc``, ``val/online_probe_acc``) and the kNN accuracy on the validation fold
   (``val/knn_acc``; its memory bank holds the clean whole training clips embedded at validation time, see
   :meth:`~audio_ssl.methods.base.BaseMethod.knn_bank`, and the queries are clean whole validation clips). The contrastive top-1/top-5 accuracy is logged too: a
   task the encoder solves almost perfectly (top-1 near 1) is a sign that the augmentations are too weak.

Validation also reports the NT-Xent loss and accuracy on two views of each validation clip built with the
same augmentation pipeline under a fixed seed (``val/loss``, ``val/contrastive_top1``), so the numbers are
comparable between epochs. They are computed in eval mode (BatchNorm running statistics), and the negatives
are the clips of the local validation batch only.

Several GPUs: with ``sync_batchnorm`` (default) every BatchNorm of the encoder and projector is converted to
a synchronised one when ``trainer.world_size > 1`` (:meth:`BaseMethod.convert_sync_batchnorm`), so the
statistics are those of the global batch (a per-GPU BatchNorm lets the network tell which clips share a GPU,
a shortcut for the contrastive task).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audio_ssl.features.views import ViewAugmentation
from audio_ssl.losses import NTXentLoss, NTXentOutput, nt_xent
from audio_ssl.methods.base import BaseMethod
from audio_ssl.models.heads import ProjectionHead
from audio_ssl.models.resnet import AudioResNet

__all__ = ["SimCLR"]


class SimCLR(BaseMethod):
    """SimCLR: encoder + projection head trained with NT-Xent on two augmented views per clip.

    Args:
        encoder: Spectrogram encoder with an ``out_dim`` attribute (default: ``AudioResNet("resnet18")``).
        views: The view augmentation (default: :class:`~audio_ssl.features.views.ViewAugmentation` with its
            defaults); any module with ``pair(wave [B, T], frontend) -> (view1, view2)``, both ``[B, 1, F, T']``.
            Its ``sample_rate`` is the method's (see :meth:`ViewAugmentation.bind`).
        num_classes: Classes of the dataset, for the online probe and kNN monitor only.
        proj_hidden_dim: Hidden width of the projector (``None``: the encoder's ``out_dim``).
        proj_dim: Output width of the projector.
        proj_layers: Linear layers in the projector (Linear-BN-ReLU blocks, then a Linear).
        temperature: NT-Xent temperature.
        gather_distributed: Use the projections of every process as negatives.
        val_view_seed: Seed of the validation views (the same views every epoch).
        **kwargs: :class:`~audio_ssl.methods.base.BaseMethod` arguments (front end, optimizer, lr, schedule,
            ``scale_lr_with_batch``, ``probe_lr``, ``knn_temperature``, ``sync_batchnorm`` (on here), ...).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        views: ViewAugmentation | None = None,
        num_classes: int = 50,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        proj_layers: int = 2,
        temperature: float = 0.5,
        gather_distributed: bool = True,
        val_view_seed: int = 0,
        online_probe: bool = True,
        knn_k: int = 20,
        sync_batchnorm: bool = True,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, online_probe=online_probe, knn_k=knn_k,
                         sync_batchnorm=sync_batchnorm, **kwargs)
        self.save_hyperparameters(ignore=["encoder", "frontend", "views"])
        self.encoder = encoder if encoder is not None else AudioResNet(arch="resnet18")
        embed_dim = int(self.encoder.out_dim)
        self.projector = ProjectionHead(embed_dim, proj_hidden_dim or embed_dim, proj_dim, proj_layers,
                                        batch_norm=True)
        self.criterion = NTXentLoss(temperature, gather_distributed)
        self.views = (views if views is not None else ViewAugmentation()).bind(self.sample_rate)
        self.val_view_seed = val_view_seed
        self.setup_online_probe(embed_dim)

    # ------------------------------------------------------------------ views on the device
    def make_views(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Two independently augmented log-mel views ``[B, 1, F, T']`` of waveforms ``[B, T]``."""
        return self.views.pair(audio, self.frontend)

    def train_transform(self, batch: dict) -> dict:
        batch["view1"], batch["view2"] = self.make_views(batch["audio"])
        return batch

    # ------------------------------------------------------------------ steps
    def contrastive_step(self, view1: Tensor, view2: Tensor) -> tuple[NTXentOutput, Tensor]:
        """NT-Xent of two batches of views; returns the loss/accuracies and the embeddings ``[2B, D]``
        (view 1 then view 2) before the projector."""
        h = self.encoder(torch.cat([view1, view2]))
        z1, z2 = self.projector(h).chunk(2)
        return self.criterion(z1, z2, return_accuracy=True), h

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out, h = self.contrastive_step(batch["view1"], batch["view2"])
        probe_loss = self.monitor_step(h, batch["label"], "train")  # detached inside; kNN bank: view 1
        self.log_metrics("train", {"loss": out.loss, "contrastive_top1": out.top1, "contrastive_top5": out.top5},
                         batch_size=len(batch["label"]), prog_bar=True)
        return out.loss + probe_loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        labels = batch["label"]
        self.monitor_step(self.encoder(batch["spec"]), labels, "val")  # = self.embed(audio): clean full clips
        with self.seeded(self.val_view_seed + 1_000_003 * self.global_rank + batch_idx):
            view1, view2 = self.make_views(batch["audio"])
        h = self.encoder(torch.cat([view1, view2]))
        z1, z2 = self.projector(h).chunk(2)
        out = nt_xent(z1, z2, self.criterion.temperature, gather_distributed=False, return_accuracy=True)
        self.log_metrics("val", {"loss": out.loss, "contrastive_top1": out.top1, "contrastive_top5": out.top5},
                         batch_size=len(labels))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.monitor_step(self.encoder(batch["spec"]), batch["label"], "test")
