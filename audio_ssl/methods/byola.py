"""BYOL-A (Niizumi et al., 2021, "BYOL for Audio: Self-Supervised Learning for General-Purpose Audio
Representation", IJCNN): BYOL (Grill et al., 2020) on two augmentations of one log-mel segment.

Per training step, on the accelerator:

1. :class:`~audio_ssl.features.views.BYOLAViews` crops each clip once, computes its log-mel with the method's
   front end and augments it twice (mixup with a remembered background clip, random resize crop,
   post-normalisation).
2. The online network (encoder, projector, predictor) sees both views in one forward pass; the target network
   (a :class:`~audio_ssl.methods.momentum.MomentumTeacher` of encoder + projector: no gradients, eval mode)
   projects them too. Loss: :func:`~audio_ssl.losses.byol_loss` of each prediction against the other view's
   target projection, summed over the two directions.
3. After every optimizer step the target follows the online network by an exponential moving average at
   ``tau`` from :func:`~audio_ssl.methods.momentum.cosine_momentum` (BYOL-A: constant 0.99, i.e.
   ``final_momentum = base_momentum``; BYOL: 0.996 rising to 1).
4. The online probe and kNN monitor of :class:`BaseMethod` watch the encoder's embeddings of view 1 (train)
   and of the clean clips (validation); labels never reach the encoder.

Differences from the paper, by design of this package: the encoder is any spectrogram encoder with ``out_dim``
(the recipes use the package's ResNet, as SimCLR does, rather than BYOL-A's AudioNTT2020 CNN), the
pre-normalisation is the front end's per-clip normalisation instead of dataset statistics, and the random
resize crop interpolates bilinearly (BYOL-A: bicubic).

Validation reports ``val/loss`` on views of each validation clip drawn under a fixed seed (the same every
epoch), in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from audio_ssl.features.views import BYOLAViews
from audio_ssl.losses.byol import byol_loss
from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.momentum import MomentumTeacher
from audio_ssl.models.heads import ProjectionHead
from audio_ssl.models.resnet import AudioResNet

__all__ = ["BYOLA"]


class BYOLA(BaseMethod):
    """BYOL-A: online encoder + projector + predictor regressing a momentum target's projections of another view.

    Args:
        encoder: Spectrogram encoder ``[B, 1, F, T] -> [B, out_dim]`` (default: ``AudioResNet("resnet18")``).
        views: The view augmentation, any module with ``pair(wave [B, T], frontend) -> (view1, view2)``
            (default: :class:`~audio_ssl.features.views.BYOLAViews` with BYOL-A's settings).
        num_classes: Classes of the dataset, for the online probe and kNN monitor only.
        proj_hidden_dim, proj_dim: Projector ``out_dim -> proj_hidden_dim -> proj_dim`` (BYOL-A: 4096, 256).
        pred_hidden_dim: Predictor ``proj_dim -> pred_hidden_dim -> proj_dim`` (BYOL-A: 4096).
        base_momentum, final_momentum: The target's EMA rate at the first and last step (BYOL-A: 0.99 both).
        val_view_seed: Seed of the validation views.
        **kwargs: :class:`BaseMethod` arguments (front end, optimizer, lr, schedule, monitors,
            ``sync_batchnorm`` (on here), ``init_encoder_from``, ...).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        views: BYOLAViews | None = None,
        num_classes: int = 50,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        base_momentum: float = 0.99,
        final_momentum: float = 0.99,
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
        self.projector = ProjectionHead(self.embedding_dim, proj_hidden_dim, proj_dim, 2, batch_norm=True)
        self.predictor = ProjectionHead(proj_dim, pred_hidden_dim, proj_dim, 2, batch_norm=True)
        # the target normalises with batch statistics, as in BYOL / BYOL-A (see MomentumTeacher)
        self.teacher = MomentumTeacher(self.student(), base_momentum, final_momentum, batch_statistics=True)
        self.views = (views if views is not None else BYOLAViews()).bind(self.sample_rate)
        self.val_view_seed = val_view_seed
        self._teacher_step = -1
        self.setup_online_probe(self.embedding_dim)

    def student(self) -> nn.Sequential:
        """The online network the target copies: encoder then projector (a view of the same modules)."""
        return nn.Sequential(self.encoder, self.projector)

    # ------------------------------------------------------------------ views on the device
    def train_transform(self, batch: dict) -> dict:
        batch["view1"], batch["view2"] = self.views.pair(batch["audio"], self.frontend)
        return batch

    # ------------------------------------------------------------------ the objective
    def byol_step(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        """Symmetrised BYOL loss of two view batches ``[B, 1, F, T]``; returns ``(loss, embeddings [2B, D])``
        (the online encoder's, view 1 then view 2)."""
        views = torch.cat([view1, view2])
        h = self.encoder(views)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        z1, z2 = self.teacher(views).chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1), h

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, h = self.byol_step(batch["view1"], batch["view2"])
        probe_loss = self.monitor_step(h, batch["label"], "train")
        self.log_metrics("train", {"loss": loss, "momentum": torch.tensor(self.teacher.momentum)},
                         batch_size=len(batch["label"]), prog_bar=True)
        return loss + probe_loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Move the target toward the online network once per optimizer step (not per accumulated batch)."""
        step = self.trainer.global_step
        if step > self._teacher_step:
            self._teacher_step = step
            self.teacher.update(self.student(), step, max(int(self.trainer.estimated_stepping_batches), 1))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        labels = batch["label"]
        self.monitor_step(self.encoder(batch["spec"]), labels, "val")  # clean clips, = self.embed(audio)
        with self.seeded(self.val_view_seed + 1_000_003 * self.global_rank + batch_idx):
            view1, view2 = self.views.pair(batch["audio"], self.frontend)
        loss, _ = self.byol_step(view1, view2)
        self.log_metrics("val", {"loss": loss}, batch_size=len(labels))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.monitor_step(self.encoder(batch["spec"]), batch["label"], "test")
