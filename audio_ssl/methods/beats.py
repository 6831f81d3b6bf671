"""Pretrained BEATs (Chen et al., 2022) as a frozen linear probe or fine-tuned with differential learning rates.

One module, two modes:

* ``freeze_encoder=True`` (probe): the encoder stays in eval mode with no gradients; only the head trains.
  For whole cross-validations prefer :mod:`audio_ssl.evaluation.beats_probe`, which extracts the pooled
  features once per fold (cached on disk) and fits the linear classifier on them.
* ``freeze_encoder=False`` (fine-tune): encoder and head train with their own learning rates
  (``encoder_lr``, ``head_lr``), optionally with layer-wise learning-rate decay (:func:`beats_parameter_groups`),
  under BaseMethod's per-step warm-up + cosine schedule.

Where the fbank is computed: once per batch, on the device, in the batch hook (``batch["spec"]`` =
``[B, frames, 128]`` normalised Kaldi fbank); the encoder is then run from fbanks with
:meth:`BEATs.extract_features`, never through ``BEATs.forward`` (which would compute the fbank again).
Training-only augmentation acts on that fbank: SpecAugment on a ``[B, 1, mels, frames]`` view and mixup
with soft targets (the loss is ``cross_entropy(logits, soft_targets, label_smoothing)``).

Training, validation and test steps, metrics (``val/acc``, ``test/acc``, top-5, macro-F1, the confusion
matrix), ``test_outputs`` for the CV runner, ``predict_proba`` (with time-shift TTA) and ``predict_step``
are those of :class:`SupervisedClassifier`, which this class extends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from audio_ssl.features.fbank import BEATsFbank
from audio_ssl.methods.supervised import SupervisedClassifier
from audio_ssl.models.beats import BEATS_OFFICIAL_URL, BEATs, load_beats_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "BEATsClassifier",
    "BEATsFbankFrontend",
    "BEATsProbeHead",
    "beats_layer_id",
    "beats_parameter_groups",
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


class BEATsProbeHead(nn.Module):
    """Classifier on ``num_layers`` concatenated pooled features ``[B, num_layers * dim]``.

    ``LayerNorm(dim)`` on each layer's pooled vector (when ``norm``), then ``Dropout`` and ``Linear``. The
    per-layer normalisation puts layers of different scales (the encoder input vs. the top layer) on equal
    footing when several are concatenated, and makes the head's learning rate insensitive to the feature
    scale. The official fine-tuning predictor has no norm (set ``norm=False`` to match it).
    """

    def __init__(self, dim: int, num_layers: int, num_classes: int, norm: bool = True, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"BEATsProbeHead: dropout must be in [0, 1), got {dropout}")
        self.dim, self.num_layers = dim, num_layers
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim * num_layers, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        """``[B, num_layers * dim]`` -> logits ``[B, num_classes]``."""
        x = self.norm(rearrange(pooled, "b (l d) -> b l d", l=self.num_layers))
        return self.linear(self.dropout(rearrange(x, "b l d -> b (l d)")))


# --------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (timm style)
# --------------------------------------------------------------------------------------------------------------

_FRONT = re.compile(
    r"^(patch_embedding|layer_norm|post_extract_proj|encoder\.pos_conv|"
    r"encoder\.layers\.\d+\.self_attn\.relative_attention_bias)\."
)
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
_NO_DECAY_NAMES = ("relative_attention_bias", "grep_a", "weight_g")


def beats_layer_id(name: str, model: BEATs) -> int:
    """Depth of a BEATs parameter for layer-wise lr decay: 0 for the front, ``i + 1`` for layer ``i``.

    Front (id 0): the patch embedding and its LayerNorm, ``post_extract_proj``, the convolutional positional
    embedding, the relative position table (shared by every layer, computed before the first one) and, in
    post-norm models, ``encoder.layer_norm`` (applied before the layers). In pre-norm models
    ``encoder.layer_norm`` is the final norm and shares the last layer's id ``L``.
    """
    if name.startswith("encoder.layer_norm."):
        return model.num_layers if model.cfg.layer_norm_first else 0
    if _FRONT.match(name):
        return 0
    if match := _LAYER.match(name):
        return int(match.group(1)) + 1
    raise ValueError(f"beats_layer_id: no layer-wise lr rule for BEATs parameter {name!r}")


def _no_weight_decay(name: str, param: Tensor) -> bool:
    """Biases, norm scales and position parameters train without weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in _NO_DECAY_NAMES)


def beats_parameter_groups(
    model: BEATs,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    prefix: str = "encoder",
) -> list[dict]:
    """Optimizer groups for the trainable parameters of a BEATs encoder (the predictor is never included).

    Without ``layer_decay`` every parameter gets ``lr``. With it (timm style), a parameter of depth
    ``id`` (:func:`beats_layer_id`) gets ``lr * layer_decay ** (L - id)``: the last layer ``lr``, layer ``i``
    ``lr * layer_decay ** (L - 1 - i)``, the front ``lr * layer_decay ** L``. Each depth is split into a
    weight-decay and a no-weight-decay group; groups are named ``{prefix}.{front|layerN}[.no_decay]`` and
    carry ``lr_scale``.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    num_layers = model.num_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or name.startswith("predictor."):
            continue
        depth = beats_layer_id(name, model) if layer_decay is not None else num_layers
        scale = layer_decay ** (num_layers - depth) if layer_decay is not None else 1.0
        no_decay = _no_weight_decay(name, param)
        key = (depth, no_decay)
        if key not in groups:
            label = "" if layer_decay is None else (".front" if depth == 0 else f".layer{depth - 1}")
            groups[key] = {
                "name": f"{prefix}{label}{'.no_decay' if no_decay else ''}",
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
            if no_decay:
                groups[key]["lars_exclude"] = True
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------------------------------------------
# The LightningModule
# --------------------------------------------------------------------------------------------------------------


class BEATsClassifier(SupervisedClassifier):
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
        # ``lr`` is head_lr (saved in the hyper-parameters, hence passed back by load_from_checkpoint).
        if kwargs.pop("lr", head_lr) != head_lr:
            raise ValueError("BEATsClassifier does not take lr: set encoder_lr and head_lr")
        if encoder_lr < 0 or head_lr <= 0:
            raise ValueError(f"encoder_lr must be >= 0 and head_lr > 0, got {encoder_lr}, {head_lr}")
        encoder = load_beats_checkpoint(checkpoint, cache_dir=checkpoint_cache_dir, sha256=checkpoint_sha256,
                                        gradient_checkpointing=gradient_checkpointing)
        fbank = encoder.frontend
        frontend = BEATsFbankFrontend(fbank.sample_rate, fbank.num_mel_bins, fbank.frame_length_ms,
                                      fbank.frame_shift_ms, fbank.mean, fbank.std)
        super().__init__(
            encoder=encoder, num_classes=num_classes, dropout=dropout, label_smoothing=label_smoothing,
            freq_mask=freq_mask, time_mask=time_mask, num_freq_masks=num_freq_masks,
            num_time_masks=num_time_masks, mixup_alpha=mixup_alpha, mixup_prob=mixup_prob, gain_db=gain_db,
            time_shift=time_shift, tta_views=tta_views, frontend=frontend, lr=head_lr, **kwargs,
        )
        self.encoder: BEATs
        self.checkpoint = str(checkpoint)
        self.freeze_encoder = freeze_encoder
        self.encoder_lr, self.head_lr, self.layer_decay = encoder_lr, head_lr, layer_decay
        self.layers = self._check_layers(layers)
        if layerdrop is not None:
            if not 0.0 <= layerdrop < 1.0:
                raise ValueError(f"layerdrop must be in [0, 1), got {layerdrop}")
            self.encoder.encoder.layerdrop = layerdrop
        self.augment_spec = freq_mask > 0 or time_mask > 0
        num_pooled = len(self.layers) if self.layers is not None else 1
        self.head = BEATsProbeHead(self.encoder.out_dim, num_pooled, num_classes, norm=head_norm, dropout=dropout)
        # The AudioSet predictor of a fine-tuned checkpoint is never trained here.
        if self.encoder.predictor is not None:
            self.encoder.predictor.requires_grad_(False)
        # load_beats_checkpoint returns the encoder in eval mode, and Lightning keeps each submodule's mode
        # at the start of fit: a fine-tuned encoder must be switched to training mode here.
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.train()

    @property
    def embedding_dim(self) -> int:
        """``D`` of :meth:`embed`: the encoder width times the number of pooled hidden states."""
        return self.encoder.out_dim * (len(self.layers) if self.layers is not None else 1)

    def _check_layers(self, layers: Sequence[int] | None) -> list[int] | None:
        """Validate ``layers`` against the encoder depth; returns non-negative hidden-state indices."""
        if layers is None:
            return None
        num_states = self.encoder.num_layers + 1
        if len(layers) == 0:
            raise ValueError("layers must name at least one hidden state (or be None for the final output)")
        bad = [i for i in layers if not -num_states <= i < num_states]
        if bad:
            raise ValueError(f"layers {bad} out of range: this BEATs has {self.encoder.num_layers} layers, so "
                             f"hidden states 0..{num_states - 1} (0 = encoder input, i = output of layer i)")
        return [i % num_states for i in layers]

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> BEATsClassifier:
        """As ``nn.Module.train``, but a frozen encoder always stays in eval mode (no dropout or layer drop)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------ features
    def encode(self, fbank: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, embedding_dim]`` from normalised fbanks ``[B, frames, mels]``.

        ``padding_mask [B, frames]`` (True = padded frame) restricts the mean to the valid tokens.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
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

    # ------------------------------------------------------------------ device-side transforms
    def train_transform(self, batch: dict) -> dict:
        """Waveform gain/shift (if configured) -> fbank -> SpecAugment -> mixup, all on the device."""
        fbank = self.frontend(self.shift(self.gain(batch["audio"])))
        if self.augment_spec:
            view = rearrange(fbank, "b t f -> b 1 f t")
            fbank = rearrange(self.spec_augment(view), "b 1 f t -> b t f")
        batch["spec"], batch["target"] = self.mixup(fbank, batch["label"], self.num_classes)
        return batch

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """The head at ``head_lr`` and, unless frozen, the encoder at ``encoder_lr`` (with layer decay)."""
        groups = []
        decay, no_decay = [], []
        for name, param in self.head.named_parameters():
            (no_decay if _no_weight_decay(name, param) else decay).append(param)
        groups.append({"name": "head", "params": decay, "lr": self.head_lr, "weight_decay": self.weight_decay})
        if no_decay:
            groups.append({"name": "head.no_decay", "params": no_decay, "lr": self.head_lr, "weight_decay": 0.0,
                           "lars_exclude": True})
        if not self.freeze_encoder:
            groups += beats_parameter_groups(self.encoder, self.encoder_lr, self.weight_decay, self.layer_decay)
        return groups
