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
   (``val/knn_acc``; its memory bank holds the epoch's view-1 training embeddings, i.e. augmented crops,
   and the queries are clean whole validation clips). The contrastive top-1/top-5 accuracy is logged too: a
   task the encoder solves almost perfectly (top-1 near 1) is a sign that the augmentations are too weak.

Validation also reports the NT-Xent loss and accuracy on two views of each validation clip built with the
same augmentation pipeline under a fixed seed (``val/loss``, ``val/contrastive_top1``), so the numbers are
comparable between epochs. They are computed in eval mode (BatchNorm running statistics), and the negatives
are the clips of the local validation batch only.

Several GPUs: with ``sync_batchnorm`` (default) every BatchNorm of the encoder and projector is converted to
a synchronised one when ``trainer.world_size > 1``, so the statistics are those of the global batch (a
per-GPU BatchNorm lets the network tell which clips share a GPU, a shortcut for the contrastive task). On
CPU (Gloo) the synchronisation uses differentiable all-reduces (:class:`CrossProcessBatchNorm`), since
``torch.nn.SyncBatchNorm`` supports accelerators only.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from audio_ssl.features.views import ViewAugmentation
from audio_ssl.losses import NTXentLoss, NTXentOutput, nt_xent
from audio_ssl.methods.base import BaseMethod
from audio_ssl.models.heads import ProjectionHead
from audio_ssl.models.resnet import AudioResNet

__all__ = ["CrossProcessBatchNorm", "SimCLR", "convert_sync_batchnorm"]


class CrossProcessBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span every process of the default group, for CPU (Gloo) runs.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators (and DDP refuses it on CPU modules). Here, in
    training mode under a process group of more than one process, the batch mean and biased variance are
    computed over all processes' batches with two all-reduces from ``torch.distributed.nn``, whose backward
    passes sum every rank's gradient, so the gradients match one process on the concatenated batch. The
    running statistics are updated with the unbiased global variance, as ``nn.SyncBatchNorm`` does. In a
    single process or in eval mode it is a plain BatchNorm. Accepts ``[N, C, *]`` inputs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"CrossProcessBatchNorm expects input of shape [N, C, *], got {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        total = count.item()
        mean = dist_fn.all_reduce(input.sum(dims)) / total
        centred = input - mean.view(shape)
        var = dist_fn.all_reduce(centred.square().sum(dims)) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                unbiased = var * total / max(total - 1, 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _to_cross_process(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (CrossProcessBatchNorm, nn.SyncBatchNorm)):
        out = CrossProcessBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cross_process(child))
    return out


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cuda") -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` synchronised over the default process group, parameters and
    running statistics kept: ``nn.SyncBatchNorm`` on accelerators, :class:`CrossProcessBatchNorm` when
    ``device_type == "cpu"``. Returns the module (a new one if ``module`` is itself a BatchNorm)."""
    if device_type == "cpu":
        return _to_cross_process(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


class SimCLR(BaseMethod):
    """SimCLR: encoder + projection head trained with NT-Xent on two augmented views per clip.

    Args:
        encoder: Spectrogram encoder with an ``out_dim`` attribute (default: ``AudioResNet("resnet18")``).
        num_classes: Classes of the dataset, for the online probe and kNN monitor only.
        proj_hidden_dim: Hidden width of the projector (``None``: the encoder's ``out_dim``).
        proj_dim: Output width of the projector.
        proj_layers: Linear layers in the projector (Linear-BN-ReLU blocks, then a Linear).
        temperature: NT-Xent temperature.
        gather_distributed: Use the projections of every process as negatives.
        sync_batchnorm: Convert BatchNorms to synchronised ones when ``trainer.world_size > 1``.
        crop_seconds: Length of each view, cropped at independent random offsets (``None``: whole clip).
        augment_strength: One knob scaling every augmentation range (0: views differ by their crops only).
        gain_db, mix_db, mix_prob, time_shift, freq_mask, time_mask, num_freq_masks, num_time_masks,
        rrc_scale, rrc_ratio, rrc_prob, crop_tries, crop_min_energy: Base ranges of the individual
            augmentations, see :class:`~audio_ssl.features.views.ViewAugmentation`.
        val_view_seed: Seed of the validation views (the same views every epoch).
        **kwargs: :class:`~audio_ssl.methods.base.BaseMethod` arguments (front end, optimizer, lr, schedule,
            ``scale_lr_with_batch``, ``probe_lr``, ``knn_temperature``, ...).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        num_classes: int = 50,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        proj_layers: int = 2,
        temperature: float = 0.5,
        gather_distributed: bool = True,
        sync_batchnorm: bool = True,
        crop_seconds: float | None = 3.0,
        augment_strength: float = 1.0,
        gain_db: float = 6.0,
        mix_db: tuple[float, float] = (-20.0, -10.0),
        mix_prob: float = 1.0,
        time_shift: float = 0.1,
        freq_mask: float = 0.2,
        time_mask: float = 0.2,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        rrc_scale: tuple[float, float] = (0.5, 1.0),
        rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        rrc_prob: float = 1.0,
        crop_tries: int = 1,
        crop_min_energy: float = 0.0,
        val_view_seed: int = 0,
        online_probe: bool = True,
        knn_k: int = 20,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, online_probe=online_probe, knn_k=knn_k, **kwargs)
        self.save_hyperparameters(ignore=["encoder", "frontend"])
        self.encoder = encoder if encoder is not None else AudioResNet(arch="resnet18")
        embed_dim = int(self.encoder.out_dim)
        self.projector = ProjectionHead(embed_dim, proj_hidden_dim or embed_dim, proj_dim, proj_layers,
                                        batch_norm=True)
        self.criterion = NTXentLoss(temperature, gather_distributed)
        self.sync_batchnorm = sync_batchnorm
        self.views = ViewAugmentation(
            sample_rate=self.sample_rate, crop_seconds=crop_seconds, strength=augment_strength, gain_db=gain_db,
            mix_db=mix_db, mix_prob=mix_prob, time_shift=time_shift, freq_mask=freq_mask, time_mask=time_mask,
            num_freq_masks=num_freq_masks, num_time_masks=num_time_masks, rrc_scale=rrc_scale,
            rrc_ratio=rrc_ratio, rrc_prob=rrc_prob, crop_tries=crop_tries, crop_min_energy=crop_min_energy,
        )
        self.val_view_seed = val_view_seed
        self.setup_online_probe(embed_dim)

    # ------------------------------------------------------------------ multi-GPU
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.sync_batchnorm and self._trainer is not None and self.trainer.world_size > 1:
            self.convert_sync_batchnorm(self.trainer.strategy.root_device.type)

    def convert_sync_batchnorm(self, device_type: str = "cuda") -> None:
        """Synchronise the BatchNorms of the encoder and projector over all processes (see
        :func:`convert_sync_batchnorm`; ``device_type`` is where training runs)."""
        self.encoder = convert_sync_batchnorm(self.encoder, device_type)
        self.projector = convert_sync_batchnorm(self.projector, device_type)

    # ------------------------------------------------------------------ views on the device
    def make_views(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Two independently augmented log-mel views ``[B, 1, F, T']`` of waveforms ``[B, T]``."""
        return self.views(audio, self.frontend), self.views(audio, self.frontend)

    def train_transform(self, batch: dict) -> dict:
        batch["view1"], batch["view2"] = self.make_views(batch["audio"])
        return batch

    @contextlib.contextmanager
    def seeded(self, seed: int):
        """Run a block with the global RNGs of this device seeded by ``seed``, restoring them afterwards."""
        device = self.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # ------------------------------------------------------------------ steps
    def contrastive_step(self, view1: Tensor, view2: Tensor) -> tuple[NTXentOutput, Tensor]:
        """NT-Xent of two batches of views; returns the loss/accuracies and the embeddings ``[2B, D]``
        (view 1 then view 2) before the projector."""
        h = self.encoder(torch.cat([view1, view2]))
        z1, z2 = self.projector(h).chunk(2)
        return self.criterion(z1, z2, return_accuracy=True), h

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out, h = self.contrastive_step(batch["view1"], batch["view2"])
        labels = batch["label"]
        n = len(labels)
        probe_loss = self.online_probe_step(h, labels.repeat(2), "train")  # detached inside
        self.knn_collect(h[:n], labels, "train")
        self.log_metrics("train", {"loss": out.loss, "contrastive_top1": out.top1, "contrastive_top5": out.top5},
                         batch_size=n, prog_bar=True)
        return out.loss + probe_loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        labels = batch["label"]
        emb = self.encoder(batch["spec"])  # = self.embed(audio): clean full clips
        self.online_probe_step(emb, labels, "val")
        self.knn_collect(emb, labels, "val")
        with self.seeded(self.val_view_seed + 1_000_003 * self.global_rank + batch_idx):
            view1, view2 = self.make_views(batch["audio"])
        h = self.encoder(torch.cat([view1, view2]))
        z1, z2 = self.projector(h).chunk(2)
        out = nt_xent(z1, z2, self.criterion.temperature, gather_distributed=False, return_accuracy=True)
        self.log_metrics("val", {"loss": out.loss, "contrastive_top1": out.top1, "contrastive_top5": out.top5},
                         batch_size=len(labels))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.online_probe_step(self.encoder(batch["spec"]), batch["label"], "test")
