"""A pretrained encoder as a frozen probe or fine-tuned with differential learning rates and layer-wise lr decay.

:class:`FineTuneClassifier` takes any encoder module (``out_dim``; ``forward(inputs) -> [B, out_dim]`` pooled
features of the front end's output) and puts a head on it: ``LayerNorm -> Dropout -> Linear``
(:class:`~audio_ssl.models.heads.PooledLayersHead`). Two modes:

* ``freeze_encoder=True`` (probe): the encoder stays in eval mode (no dropout, no layer drop, no model-internal
  masking) with ``requires_grad=False``, and runs without building a graph; only the head trains.
* ``freeze_encoder=False`` (fine-tune): encoder and head train with their own learning rates (``encoder_lr``,
  ``head_lr``). With ``layer_decay`` the encoder's learning rates fall geometrically from the top block to the
  stem (BEiT, Bao et al., 2022; timm's ``param_groups_layer_decay``); the depths come from the encoder itself
  (``num_layers`` and ``layer_id(param_name)``, see :func:`audio_ssl.utils.optim.layer_decay_groups`), so one
  method serves BEATs, the Hugging Face encoders, the timm CNNs and this package's ``AudioResNet`` and
  ``SpectrogramTransformer``. Biases, norms and the encoder's ``no_weight_decay_keys`` train without weight decay.
  With ``freeze_encoder_epochs: N`` the first N epochs are the probe mode above (the head warms up on a frozen
  encoder in eval mode: no gradient, no BatchNorm statistics updated); then the encoder unfreezes and its groups
  start their own linear warm-up and cosine from lr 0 (``start_step`` of the groups, see
  :class:`audio_ssl.utils.optim.WarmupCosineSchedule`; ``scheduler: cosine``), as in ULMFiT's gradual unfreezing
  (Howard & Ruder, 2018) and the linear-probe-then-fine-tune of Kumar et al. (2022).

The front end: ``frontend`` when given (e.g. the log-mel of a CNN recipe), otherwise the encoder's own
(``encoder.build_frontend(sample_rate)``: the Hugging Face encoders' feature extractors), otherwise BaseMethod's
default log-mel. Training-only augmentation, on the device: waveform gain and time shift, SpecAugment on a
spectrogram front end's output (``[B, 1, F, T]`` or time-major ``[B, frames, mels]``; a waveform front end
refuses masks), and mixup on the front end's output with soft targets.

Steps, metrics, ``test_outputs``, ``predict_proba`` (with time-shift TTA) and ``predict_step`` are those of
:class:`SupervisedClassifier`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from audio_ssl.methods.supervised import SupervisedClassifier
from audio_ssl.models.heads import PooledLayersHead
from audio_ssl.utils.optim import layer_decay_groups, no_weight_decay

__all__ = ["FineTuneClassifier"]


class FineTuneClassifier(SupervisedClassifier):
    """Pretrained encoder + ``LayerNorm -> Dropout -> Linear`` head, frozen (probe) or fine-tuned.

    Args:
        encoder: the pretrained encoder (``out_dim``; ``forward`` gives pooled ``[B, out_dim]``). For
            ``layer_decay`` it also provides ``num_layers: int`` and ``layer_id(param_name) -> int``.
        freeze_encoder: probe mode: the encoder frozen in eval mode, no gradients; only the head trains.
        freeze_encoder_epochs: fine-tune mode: the encoder is frozen as in probe mode for this many epochs, then
            trains at ``encoder_lr`` after its own warm-up (0: it trains from the first step).
        head_norm: LayerNorm on the pooled features before the linear layer.
        dropout: dropout before the linear layer.
        encoder_lr, head_lr: learning rates of the encoder and of the head (``encoder_lr`` unused when frozen).
        layer_decay: layer-wise lr decay factor in (0, 1] (None: every encoder parameter at ``encoder_lr``).
        label_smoothing, freq_mask, time_mask, num_freq_masks, num_time_masks, mixup_alpha, mixup_prob,
            gain_db, time_shift, tta_views: as in :class:`SupervisedClassifier` (masks in the front end's
            bins/frames; 0 turns SpecAugment off, the default).
        **kwargs: :class:`BaseMethod` options (sample_rate, frontend, optimizer, weight_decay, scheduler,
            warmup_fraction, ...). ``lr`` is not accepted: set ``encoder_lr`` and ``head_lr``.

    Raises:
        ValueError: ``lr`` given, a negative ``encoder_lr`` or non-positive ``head_lr``, a negative
            ``freeze_encoder_epochs`` or one set with ``freeze_encoder`` (at fit: not fewer than ``max_epochs``, or
            with a scheduler other than cosine), ``layer_decay`` outside
            (0, 1] or with an encoder that does not state its depth, a front end at another sample rate than
            the data (the error names both rates), ``freq_mask``/``time_mask`` with a front end that gives
            waveforms (the wav2vec 2.0 family; the error names the model kind).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 50,
        freeze_encoder: bool = False,
        freeze_encoder_epochs: int = 0,
        head_norm: bool = True,
        dropout: float = 0.0,
        encoder_lr: float = 1e-5,
        head_lr: float = 1e-3,
        layer_decay: float | None = None,
        label_smoothing: float = 0.1,
        freq_mask: int = 0,
        time_mask: int = 0,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        mixup_alpha: float = 0.4,
        mixup_prob: float = 0.5,
        gain_db: float = 0.0,
        time_shift: float = 0.0,
        tta_views: int = 1,
        **kwargs,
    ):
        name = type(self).__name__
        # ``lr`` is head_lr (saved in the hyper-parameters, hence passed back by load_from_checkpoint).
        if kwargs.pop("lr", head_lr) != head_lr:
            raise ValueError(f"{name} does not take lr: set encoder_lr and head_lr")
        if encoder_lr < 0 or head_lr <= 0:
            raise ValueError(f"{name}: encoder_lr must be >= 0 and head_lr > 0, got {encoder_lr}, {head_lr}")
        if isinstance(freeze_encoder_epochs, bool) or not isinstance(freeze_encoder_epochs, int) or (
                freeze_encoder_epochs < 0 or (freeze_encoder and freeze_encoder_epochs)):
            raise ValueError(f"{name}: freeze_encoder_epochs must be an integer >= 0 (and 0 with freeze_encoder: "
                             f"true, which freezes it throughout), got {freeze_encoder_epochs!r}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"{name}: layer_decay must be in (0, 1] or None, got {layer_decay}")
        if layer_decay is not None and not freeze_encoder and not (
                callable(getattr(encoder, "layer_id", None)) and isinstance(getattr(encoder, "num_layers", None), int)):
            raise ValueError(f"{name}: layer_decay={layer_decay} needs an encoder with num_layers and "
                             f"layer_id(param_name); {type(encoder).__name__} has none: set layer_decay to null")
        if kwargs.get("frontend") is None and callable(getattr(encoder, "build_frontend", None)):
            kwargs["frontend"] = encoder.build_frontend(kwargs.get("sample_rate", 16000))
        if (freq_mask > 0 or time_mask > 0) and getattr(kwargs.get("frontend"), "outputs_waveform", False):
            config = getattr(encoder, "config", None)
            kind = getattr(config, "model_type", None) or type(encoder).__name__
            source = getattr(encoder, "model_id", None)
            raise ValueError(
                f"{name}: freq_mask={freq_mask}/time_mask={time_mask} mask a spectrogram, but the encoder "
                f"{type(encoder).__name__}{' ' + source if source else ''} is a {kind} model that takes the waveform: "
                "set --model.init_args.freq_mask 0 --model.init_args.time_mask 0 for waveform models "
                "(SpecAugment suits spectrogram models: AST, the CNNs)")
        super().__init__(
            encoder=encoder, num_classes=num_classes, dropout=dropout, label_smoothing=label_smoothing,
            freq_mask=freq_mask, time_mask=time_mask, num_freq_masks=num_freq_masks,
            num_time_masks=num_time_masks, mixup_alpha=mixup_alpha, mixup_prob=mixup_prob, gain_db=gain_db,
            time_shift=time_shift, tta_views=tta_views, lr=head_lr, **kwargs,
        )
        self.freeze_encoder, self.freeze_encoder_epochs = freeze_encoder, freeze_encoder_epochs
        # what unfreezing gives back: the encoder's own choice of trainable parameters (e.g. a fixed feature extractor)
        self._trainable = {n for n, p in self.encoder.named_parameters() if p.requires_grad}
        self.encoder_lr, self.head_lr, self.layer_decay = encoder_lr, head_lr, layer_decay
        self.augment_spec = freq_mask > 0 or time_mask > 0
        self.head = self.build_head(num_classes, head_norm, dropout)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        # Pretrained models are often returned in eval mode, and Lightning keeps each submodule's mode at the
        # start of fit: set the modes here (a frozen encoder stays in eval, see train()).
        self.train()

    def build_head(self, num_classes: int, norm: bool, dropout: float) -> nn.Module:
        """The classifier on :meth:`encode`'s output: ``LayerNorm -> Dropout -> Linear`` over ``embedding_dim``."""
        return PooledLayersHead(self.embedding_dim, 1, num_classes, norm=norm, dropout=dropout)

    # ------------------------------------------------------------------ modes
    @property
    def encoder_frozen(self) -> bool:
        """Whether the encoder is frozen now: probe mode, or an epoch before ``freeze_encoder_epochs`` (outside a
        fit, epoch 0)."""
        return self.freeze_encoder or self.current_epoch < self.freeze_encoder_epochs

    def train(self, mode: bool = True) -> FineTuneClassifier:
        """As ``nn.Module.train``, but a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def on_train_epoch_start(self) -> None:
        """At each epoch, the freeze phase: the encoder frozen (eval mode, no gradient) before
        ``freeze_encoder_epochs``, trainable (its own trainable parameters, train mode) from then on."""
        super().on_train_epoch_start()
        if self.freeze_encoder_epochs:
            frozen = self.encoder_frozen
            for name, param in self.encoder.named_parameters():
                param.requires_grad_(not frozen and name in self._trainable)
            self.train(self.training)

    def setup(self, stage: str) -> None:
        """As :meth:`BaseMethod.setup`; a freeze phase over several processes needs DDP to accept parameters that
        get no gradient (those of the frozen encoder): ValueError naming the strategy to use otherwise."""
        super().setup(stage)
        if stage == "fit" and self.freeze_encoder_epochs and self._trainer is not None \
                and self.trainer.world_size > 1 \
                and not getattr(self.trainer.strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
            raise ValueError(f"{type(self).__name__}: freeze_encoder_epochs={self.freeze_encoder_epochs} on "
                             f"{self.trainer.world_size} processes leaves the encoder without gradients for a while, "
                             "which DDP refuses by default: set --trainer.strategy ddp_find_unused_parameters_true")

    def encoder_start_step(self) -> int:
        """The optimizer step at which the encoder starts training: ``freeze_encoder_epochs`` times the steps of
        an epoch (0 without a freeze phase; at most the last step). ValueError when the fit is not longer than the
        freeze phase (``fast_dev_run`` excepted: a smoke run of one step)."""
        if not self.freeze_encoder_epochs or self._trainer is None:
            return 0
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # sets up the training data: num_training_batches is known
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        if not trainer.fast_dev_run and trainer.max_epochs is not None and \
                0 <= trainer.max_epochs <= self.freeze_encoder_epochs:
            raise ValueError(f"{type(self).__name__}: freeze_encoder_epochs={self.freeze_encoder_epochs} is not "
                             f"fewer than trainer.max_epochs={trainer.max_epochs}: the encoder would never train")
        return min(self.freeze_encoder_epochs * per_epoch, max(total - 1, 0))

    # ------------------------------------------------------------------ features
    def encode(self, inputs: Tensor) -> Tensor:
        """Pooled features ``[B, embedding_dim]`` of the front end's output (no graph through a frozen encoder)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            return self.encoder(inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of the front end's output (what ``batch["spec"]`` holds)."""
        return self.head(self.encode(inputs))

    def embed(self, audio: Tensor) -> Tensor:
        """Pooled encoder features ``[B, embedding_dim]`` of waveforms ``[B, T]`` at ``sample_rate`` (no
        augmentation, no head): what the probes use."""
        return self.encode(self.frontend(audio))

    # ------------------------------------------------------------------ device-side transforms
    def _mask(self, inputs: Tensor) -> Tensor:
        """SpecAugment on a spectrogram: ``[B, 1, F, T]`` as is, time-major ``[B, frames, bins]`` transposed."""
        if inputs.ndim == 4:
            return self.spec_augment(inputs)
        if inputs.ndim == 3:
            return rearrange(self.spec_augment(rearrange(inputs, "b t f -> b 1 f t")), "b 1 f t -> b t f")
        raise ValueError(f"{type(self).__name__}: freq_mask/time_mask mask a spectrogram, but the front end "
                         f"{type(self.frontend).__name__} gives {tuple(inputs.shape)} (a waveform): set freq_mask "
                         "and time_mask to 0")

    def train_transform(self, batch: dict) -> dict:
        """Waveform gain/shift (if configured) -> front end -> SpecAugment (if configured) -> mixup, on the device."""
        inputs = self.frontend(self.shift(self.gain(batch["audio"])))
        if self.augment_spec:
            inputs = self._mask(inputs)
        batch["spec"], batch["target"] = self.mixup(inputs, batch["label"], self.num_classes)
        return batch

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """The head at ``head_lr`` (biases and norms without weight decay) and, unless frozen, the encoder at
        ``encoder_lr`` with layer-wise decay (:func:`audio_ssl.utils.optim.layer_decay_groups`); with a freeze
        phase the encoder groups carry ``start_step`` (:meth:`encoder_start_step`)."""
        decay, skip = [], []
        for name, param in self.head.named_parameters():
            (skip if no_weight_decay(name, param) else decay).append(param)
        groups = [{"name": "head", "params": decay, "lr": self.head_lr, "weight_decay": self.weight_decay}]
        if skip:
            groups.append({"name": "head.no_decay", "params": skip, "lr": self.head_lr, "weight_decay": 0.0,
                           "lars_exclude": True})
        if not self.freeze_encoder:
            start = self.encoder_start_step()
            encoder = layer_decay_groups(self.encoder, self.encoder_lr, self.weight_decay, self.layer_decay)
            groups += [dict(g, start_step=start) if start else g for g in encoder]
        return groups
