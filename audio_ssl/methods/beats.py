"""Pretrained BEATs (Chen et al., 2022) as a frozen linear probe or fine-tuned with differential learning rates.

One module, two modes:

* ``freeze_encoder=True`` (probe): the encoder stays in eval mode with no gradients; only the head trains.
  For whole cross-validations prefer :mod:`audio_ssl.evaluation.beats_probe`, which extracts the pooled
  features once per fold (cached on disk) and fits the linear classifier on them.
* ``freeze_encoder=False`` (fine-tune): encoder and head train with their own learning rates
  (``encoder_lr``, ``head_lr``), optionally with layer-wise learning-rate decay (the depths from
  :meth:`audio_ssl.models.beats.BEATs.layer_id`, the groups from :func:`audio_ssl.utils.optim.layer_decay_groups`),
  under BaseMethod's per-step warm-up + cosine schedule.

Where the fbank is computed: once per batch, on the device, in the batch hook (``batch["spec"]`` =
``[B, frames, 128]`` normalised Kaldi fbank); the encoder is then run from fbanks with
:meth:`BEATs.extract_features`, never through ``BEATs.forward`` (which would compute the fbank again).
Training-only augmentation acts on that fbank: SpecAugment on a ``[B, 1, mels, frames]`` view and mixup
with soft targets (the loss is ``cross_entropy(logits, soft_targets, label_smoothing)``).

The modes, the optimizer groups and the augmentation pipeline are those of
:class:`~audio_ssl.methods.finetune.FineTuneClassifier`, which this class extends (adding the BEATs checkpoint, the
padding mask and the pooling of several hidden states); training, validation and test steps, metrics,
``test_outputs``, ``predict_proba`` (with time-shift TTA) and ``predict_step`` are those of
:class:`SupervisedClassifier`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from audio_ssl.features.fbank import BEATsFbank
from audio_ssl.methods.finetune import FineTuneClassifier
from audio_ssl.models.beats import BEATS_OFFICIAL_URL, BEATs, load_beats_checkpoint
from audio_ssl.models.heads import PooledLayersHead

log = logging.getLogger(__name__)

__all__ = [
    "BEATsClassifier",
    "BEATsFbankFrontend",
    "BEATsProbeHead",
    "masked_mean",
]

MISSING_CHECKPOINT = (
    "BEATsClassifier needs a pretrained checkpoint: pass --model.init_args.checkpoint with the path or http(s) "
    f"URL of the official BEATs_iter3_plus_AS2M.pt (listed at {BEATS_OFFICIAL_URL}); any official-format "
    "BEATs checkpoint works (audio-ssl make-beats-checkpoint writes a random-weight one for pipeline checks)"
)


class BEATsFbankFrontend(BEATsFbank):
    """:class:`BEATsFbank` returning only the fbank ``[B, frames, mels]`` (no padding mask), so it can serve
    as ``BaseMethod.frontend`` wherever a method calls ``self.frontend(audio)``."""

    def forward(self, waveforms: Tensor, padding_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(waveforms)[0]


def masked_mean(tokens: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean of ``tokens [B, N, D]`` over the non-padded tokens (``padding_mask [B, N]``, True = padded)."""
    if padding_mask is None:
        return tokens.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(tokens.dtype)
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


#: The head on the pooled (optionally several) hidden states; kept under this name for existing imports.
BEATsProbeHead = PooledLayersHead


# --------------------------------------------------------------------------------------------------------------
# The LightningModule
# --------------------------------------------------------------------------------------------------------------


class BEATsClassifier(FineTuneClassifier):
    """Pretrained BEATs encoder + mean pooling + linear head, frozen (probe) or fine-tuned.

    Args:
        checkpoint: REQUIRED. Path or http(s) URL of an official-format BEATs checkpoint, e.g.
            ``BEATs_iter3_plus_AS2M.pt``; read with ``torch.load(weights_only=True)``, keys matched strictly.
            (A Lightning checkpoint of this module stores the head and encoder weights, but rebuilding the
            module still reads this file for the architecture.)
        checkpoint_sha256: verify the file (and a downloaded URL) against this digest.
        checkpoint_cache_dir: where URLs are downloaded (default ``~/.cache/audio-ssl/checkpoints``).
        freeze_encoder: probe mode: encoder frozen in eval mode, no gradients; only the head trains.
        layers: hidden states to pool and concatenate (``0`` = encoder input after the positional
            convolution, ``i`` = output of layer ``i``, negative indices count from the top); ``None`` uses the
            final encoder output.
        head_norm: LayerNorm on each pooled layer before the linear layer (see :class:`BEATsProbeHead`).
        dropout: dropout before the linear layer.
        encoder_lr, head_lr: learning rates of the encoder and the head (fine-tune mode).
        layer_decay: layer-wise lr decay factor for the encoder (None: every encoder parameter at encoder_lr).
        layerdrop: override the checkpoint's ``encoder_layerdrop`` (None keeps it; the released models use
            0.05; set 0 for DDP without ``find_unused_parameters``).
        gradient_checkpointing: recompute every Transformer layer in the backward pass (less memory).
        label_smoothing, freq_mask, time_mask, num_freq_masks, num_time_masks, mixup_alpha, mixup_prob,
            gain_db, time_shift, tta_views: as in :class:`SupervisedClassifier`; the masks are in fbank
            bins/frames (128 mel bins, 100 frames per second).
        **kwargs: :class:`BaseMethod` options (optimizer, weight_decay, scheduler, warmup_fraction, ...).
            ``lr`` is not accepted: use ``encoder_lr`` and ``head_lr``.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        num_classes: int = 50,
        checkpoint_sha256: str | None = None,
        checkpoint_cache_dir: str | None = None,
        freeze_encoder: bool = False,
        layers: list[int] | None = None,
        head_norm: bool = True,
        dropout: float = 0.0,
        encoder_lr: float = 1e-5,
        head_lr: float = 1e-3,
        layer_decay: float | None = None,
        layerdrop: float | None = None,
        gradient_checkpointing: bool = False,
        label_smoothing: float = 0.1,
        freq_mask: int = 24,
        time_mask: int = 64,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mixup_alpha: float = 0.4,
        mixup_prob: float = 0.5,
        gain_db: float = 0.0,
        time_shift: float = 0.0,
        tta_views: int = 1,
        **kwargs,
    ):
        if not checkpoint:
            raise ValueError(MISSING_CHECKPOINT)
        for name in ("frontend", "encoder"):
            if name in kwargs:
                raise ValueError(f"BEATsClassifier does not take {name!r}: it is fixed by the BEATs checkpoint")
        encoder = load_beats_checkpoint(checkpoint, cache_dir=checkpoint_cache_dir, sha256=checkpoint_sha256,
                                        gradient_checkpointing=gradient_checkpointing)
        checked_layers = self._check_layers(encoder, layers)
        fbank = encoder.frontend
        frontend = BEATsFbankFrontend(fbank.sample_rate, fbank.num_mel_bins, fbank.frame_length_ms,
                                      fbank.frame_shift_ms, fbank.mean, fbank.std)
        # The AudioSet predictor of a fine-tuned checkpoint is never trained here.
        if encoder.predictor is not None:
            encoder.predictor.requires_grad_(False)
        super().__init__(
            encoder=encoder, num_classes=num_classes, freeze_encoder=freeze_encoder, head_norm=head_norm,
            dropout=dropout, encoder_lr=encoder_lr, head_lr=head_lr, layer_decay=layer_decay,
            label_smoothing=label_smoothing, freq_mask=freq_mask, time_mask=time_mask, num_freq_masks=num_freq_masks,
            num_time_masks=num_time_masks, mixup_alpha=mixup_alpha, mixup_prob=mixup_prob, gain_db=gain_db,
            time_shift=time_shift, tta_views=tta_views, frontend=frontend, **kwargs,
        )
        self.encoder: BEATs
        self.checkpoint = str(checkpoint)
        if layerdrop is not None:
            if not 0.0 <= layerdrop < 1.0:
                raise ValueError(f"layerdrop must be in [0, 1), got {layerdrop}")
            self.encoder.encoder.layerdrop = layerdrop
        if checked_layers is not None:  # the head pools several hidden states
            self.layers = checked_layers
            self.head = self.build_head(num_classes, head_norm, dropout)

    layers: list[int] | None = None
    """Hidden states pooled and concatenated (None: the final encoder output)."""

    def build_head(self, num_classes: int, norm: bool, dropout: float) -> PooledLayersHead:
        """LayerNorm per pooled hidden state -> Dropout -> Linear (:class:`PooledLayersHead`)."""
        num_pooled = len(self.layers) if self.layers is not None else 1
        return PooledLayersHead(self.encoder.out_dim, num_pooled, num_classes, norm=norm, dropout=dropout)

    @property
    def embedding_dim(self) -> int:
        """``D`` of :meth:`embed`: the encoder width times the number of pooled hidden states."""
        return self.encoder.out_dim * (len(self.layers) if self.layers is not None else 1)

    @staticmethod
    def _check_layers(encoder: BEATs, layers: Sequence[int] | None) -> list[int] | None:
        """Validate ``layers`` against the encoder depth; returns non-negative hidden-state indices."""
        if layers is None:
            return None
        num_states = encoder.num_layers + 1
        if len(layers) == 0:
            raise ValueError("layers must name at least one hidden state (or be None for the final output)")
        bad = [i for i in layers if not -num_states <= i < num_states]
        if bad:
            raise ValueError(f"layers {bad} out of range: this BEATs has {encoder.num_layers} layers, so "
                             f"hidden states 0..{num_states - 1} (0 = encoder input, i = output of layer i)")
        return [i % num_states for i in layers]

    # ------------------------------------------------------------------ features
    def encode(self, fbank: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, embedding_dim]`` from normalised fbanks ``[B, frames, mels]``.

        ``padding_mask [B, frames]`` (True = padded frame) restricts the mean to the valid tokens.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            out = self.encoder.extract_features(fbank, padding_mask, output_hidden_states=self.layers is not None)
            if self.layers is None:
                return masked_mean(out.features, out.padding_mask)
            assert out.hidden_states is not None
            pooled = [masked_mean(out.hidden_states[i], out.padding_mask) for i in self.layers]
            return torch.cat(pooled, dim=-1)

    def forward(self, fbank: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]`` from fbanks ``[B, frames, mels]`` (what ``batch["spec"]`` holds)."""
        return self.head(self.encode(fbank, padding_mask))

    def embed(self, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, embedding_dim]`` from 16 kHz waveforms ``[B, T]`` (no augmentation, no head
        norm): what the probe pipelines use. ``padding_mask [B, T]`` marks padded samples (True)."""
        fbank, frame_mask = self.encoder.frontend(audio, padding_mask)
        return self.encode(fbank, frame_mask)
