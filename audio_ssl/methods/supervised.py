"""Supervised classification from scratch: the baseline every self-supervised method is compared with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from audio_ssl.features.augment import Mixup, RandomGain, RandomTimeShift, SpecAugment
from audio_ssl.methods.base import BaseMethod
from audio_ssl.methods.metrics import ClassificationScores
from audio_ssl.models.heads import ClassificationHead
from audio_ssl.models.resnet import AudioResNet
from audio_ssl.utils.plots import log_confusion_matrix


class SupervisedClassifier(BaseMethod):
    """Encoder + classification head trained with cross-entropy on log-mel spectrograms.

    Training-only augmentation, all on the device: random gain and time shift on the waveform,
    SpecAugment on the log-mel (``freq_mask`` bins / ``time_mask`` frames: each width uniform below it, as
    torchaudio draws it), and mixup (with probability ``mixup_prob`` per batch) whose soft targets make the
    loss mixup-aware. Label smoothing applies on top. A random gain is refused (ValueError naming ``gain_db``)
    with a front end that normalises each clip (``normalize="instance"``): a gain scales the power by a constant,
    i.e. shifts the log-mel by a constant, which instance normalisation removes (to float rounding), so it would
    be a silent no-op.

    Test-time augmentation (``tta_views > 1``, :meth:`predict_proba`): the softmax averaged over ``tta_views``
    views of each clip, on the device. ``tta="augment"`` (default): view 0 is the clean clip, views ``1..V-1`` are
    drawn from the training augmentations that make sense at test time, i.e. a circular time shift uniform in
    ``+-time_shift`` of the clip (as :class:`RandomTimeShift`) then SpecAugment masks of the training widths and
    counts (filled as in training), never gain (see above) or mixup (it needs a second clip and a label). The
    views are deterministic: view ``v`` is drawn from ``numpy.random.default_rng([tta_seed, v])`` and is the
    same for every clip of a batch, so a clip's probabilities do not depend on its batch or on the global RNG.
    ``tta="shift"``: the views are the circular shifts by ``v / V`` of the clip (``v = 0..V-1``).

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
        time_mask: int = 30,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mixup_alpha: float = 0.2,
        mixup_prob: float = 0.3,
        gain_db: float = 0.0,
        time_shift: float = 0.0,
        tta_views: int = 1,
        tta: Literal["augment", "shift"] = "augment",
        tta_seed: int = 0,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        self.save_hyperparameters(ignore=["encoder", "frontend"])
        name = type(self).__name__
        if gain_db < 0:
            raise ValueError(f"{name}: gain_db must be >= 0 (the gain is drawn in +-gain_db), got {gain_db}")
        normalize = getattr(self.frontend, "normalize", None)
        if gain_db > 0 and normalize == "instance":
            raise ValueError(
                f"{name}: gain_db={gain_db} has no effect with the front end {type(self.frontend).__name__} "
                f"(normalize={normalize!r}): a gain shifts the log-mel by a constant, which instance normalisation "
                "removes; set gain_db: 0, or a front end without instance normalisation")
        self.encoder = encoder if encoder is not None else AudioResNet(arch="resnet34")
        self.head = ClassificationHead(self.encoder.out_dim, num_classes, dropout=dropout)
        self.label_smoothing = label_smoothing
        self.time_shift = time_shift
        self.gain = RandomGain(min_db=-gain_db, max_db=gain_db) if gain_db > 0 else nn.Identity()
        self.shift = RandomTimeShift(max_fraction=time_shift) if time_shift > 0 else nn.Identity()
        self.spec_augment = SpecAugment(freq_mask, time_mask, num_freq_masks, num_time_masks)
        self.mixup = Mixup(alpha=mixup_alpha, prob=mixup_prob)
        if tta_views < 1:
            raise ValueError(f"tta_views must be >= 1, got {tta_views}")
        if tta not in ("augment", "shift"):
            raise ValueError(f"{name}: tta must be 'augment' or 'shift', got {tta!r}")
        if int(tta_seed) < 0:
            raise ValueError(f"{name}: tta_seed must be >= 0, got {tta_seed}")
        if tta == "augment" and tta_views > 1 and time_shift <= 0 and not self._masks_spectrogram():
            raise ValueError(f"{name}: tta_views={tta_views} with tta='augment' draws views from the training "
                             "augmentations, but time_shift, freq_mask and time_mask are all 0 (every view would be "
                             "the clean clip): set one of them, or tta: shift")
        self.tta_views, self.tta, self.tta_seed = tta_views, tta, int(tta_seed)
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

    def predict_proba(self, audio: Tensor) -> Tensor:
        """Class probabilities ``[B, num_classes]`` (rows sum to 1) of raw waveforms ``[B, T]``: the softmax
        averaged over the ``tta_views`` views of :meth:`tta_inputs` (one view, the clean clip, by default)."""
        probs = sum(F.softmax(self(inputs), dim=1) for inputs in self.tta_inputs(audio))
        return probs / self.tta_views

    def tta_inputs(self, audio: Tensor) -> list[Tensor]:
        """The front end's outputs for the ``tta_views`` test-time views of waveforms ``audio [B, T]`` (see the
        class docstring): view 0 is ``frontend(audio)``; the others are shifted (and, for ``tta="augment"``,
        masked) as drawn by :meth:`tta_view_draws`."""
        num_samples = audio.shape[-1]
        views = []
        for view in range(self.tta_views):
            if view == 0:
                views.append(self.frontend(audio))
                continue
            if self.tta == "shift":
                views.append(self.frontend(torch.roll(audio, round(view * num_samples / self.tta_views), -1)))
                continue
            draws = self.tta_view_draws(view)
            limit = self.shift.max_shift(num_samples) if isinstance(self.shift, RandomTimeShift) else 0
            shift = int(np.floor(draws["shift"] * (2 * limit + 1))) - limit  # uniform over -limit..limit
            inputs = self.frontend(torch.roll(audio, shift, -1) if shift else audio)
            if self._masks_spectrogram():
                inputs = self._on_spectrogram(inputs, lambda spec, d=draws: self._tta_mask(spec, d))
            views.append(inputs)
        return views

    def _masks_spectrogram(self) -> bool:
        """Whether SpecAugment masks anything (a frequency or a time mask of positive width and count)."""
        augment = self.spec_augment
        return (augment.freq_mask > 0 and augment.num_freq_masks > 0) or (augment.time_mask > 0 and
                                                                           augment.num_time_masks > 0)

    def tta_view_draws(self, view: int) -> dict[str, float | list[tuple[float, float]]]:
        """The uniform [0, 1) numbers of test-time view ``view`` (``numpy.random.default_rng([tta_seed, view])``,
        always drawn in the same order): ``shift``, and one ``(width, start)`` pair per frequency and per time
        mask (``freq``, ``time``)."""
        rng = np.random.default_rng([self.tta_seed, view])
        augment = self.spec_augment
        return {"shift": float(rng.random()),
                "freq": [(float(rng.random()), float(rng.random())) for _ in range(augment.num_freq_masks)],
                "time": [(float(rng.random()), float(rng.random())) for _ in range(augment.num_time_masks)]}

    def _tta_mask(self, spec: Tensor, draws: dict) -> Tensor:
        """SpecAugment masks of ``draws`` on ``spec [B, C, F, T]``, the same cells for every clip. A width is
        ``floor(u * min(mask, size))`` and its start ``floor(v * (size - u * min(mask, size)))`` (torchaudio's
        ``mask_along_axis``); masked cells get :class:`SpecAugment`'s fill (each clip's mean, or its constant)."""
        augment = self.spec_augment

        def masked(size: int, max_width: int, pairs: list[tuple[float, float]]) -> Tensor:
            index = torch.arange(size, device=spec.device)
            hit = torch.zeros(size, dtype=torch.bool, device=spec.device)
            for u, v in pairs if max_width > 0 else []:
                width = u * min(max_width, size)
                start = int(v * (size - width))
                hit = hit | ((index >= start) & (index < start + int(width)))
            return hit

        hit = masked(spec.shape[-2], augment.freq_mask, draws["freq"])[:, None] | \
            masked(spec.shape[-1], augment.time_mask, draws["time"])[None, :]
        if augment.mask_value == "mean":
            fill = spec.mean(dim=(-2, -1), keepdim=True)
        else:
            fill = torch.full_like(spec[..., :1, :1], float(augment.mask_value))
        return torch.where(hit, fill, spec)

    def _on_spectrogram(self, inputs: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn`` (on ``[B, C, F, T]``) applied to the front end's output: ``[B, C, F, T]`` as is, time-major
        ``[B, frames, bins]`` transposed there and back. Raises ValueError for a waveform front end."""
        if inputs.ndim == 4:
            return fn(inputs)
        if inputs.ndim == 3:
            return rearrange(fn(rearrange(inputs, "b t f -> b 1 f t")), "b 1 f t -> b t f")
        raise ValueError(f"{type(self).__name__}: freq_mask/time_mask mask a spectrogram, but the front end "
                         f"{type(self.frontend).__name__} gives {tuple(inputs.shape)} (a waveform): set freq_mask "
                         "and time_mask to 0")

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

