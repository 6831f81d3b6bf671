"""The base every method stands on, and the contract between a method and the rest of the package.

What a method provides (the CLI, the cross-validation pipelines, ``probe``, ``classify`` and the tests rely on
these names and nothing else):

=========================  ==========================================================================================
``encoder``                the network being learned, an ``nn.Module`` with an integer ``out_dim``
                           (``embedding_dim``); ``init_encoder_from`` and ``load_encoder_weights`` copy ``encoder.*``
``embed(audio)``           clip embeddings ``[B, D]`` of raw waveforms ``[B, T]`` (float, the data's sample rate),
                           no augmentation; what linear probes and kNN use
``classifies``             ``True`` when the method has a trained classifier; then ``predict_proba(audio)`` gives
                           class probabilities ``[B, num_classes]`` (rows sum to 1), ``predict_step`` returns
                           ``{"index", "probs"}`` and ``test_outputs`` holds the last test epoch's per-clip
                           ``{"index", "label", "probs"}`` (this process's clips). Otherwise ``predict_proba``
                           raises NotImplementedError and the method is evaluated with ``pipeline: pretrain_probe``
checkpoints                ``state_dict`` (every weight, teachers and probes included), ``hyper_parameters`` and
                           ``checkpoint["audio_ssl"]`` = :meth:`checkpoint_metadata`; :meth:`from_checkpoint`
                           rebuilds the method from a checkpoint alone
=========================  ==========================================================================================

Shared machinery, so that a method file holds only its objective: the on-device front end (``frontend``), optimizer
groups and schedules, the online probe and kNN monitor (:mod:`audio_ssl.methods.monitors`, fed by
:meth:`BaseMethod.monitor_step`), BatchNorm over processes (``sync_batchnorm``), the speed options
(``channels_last``, ``fused_optimizer``, ``compile``; :meth:`BaseMethod.apply_speed_options`) and grouped metric names
(``train/...``, ``val/...``, ``test/...``). A momentum teacher is in :mod:`audio_ssl.methods.momentum`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import ClassVar, Literal

import lightning as L
import torch
from torch import nn

from audio_ssl.features.logmel import LogMelSpectrogram
from audio_ssl.methods.metrics import WeightedMean
from audio_ssl.methods.monitors import KNNMonitor, OnlineProbe
from audio_ssl.models.timm_cnn import pretrained_weights_not_read
from audio_ssl.utils.distributed import convert_sync_batchnorm, destroy_process_group_at_exit
from audio_ssl.utils.optim import build_optimizer, build_scheduler, split_decay
from audio_ssl.utils.provenance import (
    CHECKPOINT_KEY,
    METADATA_FORMAT,
    describe_architecture,
    describe_module,
    git_state,
    package_version,
    to_plain,
)

log = logging.getLogger(__name__)


def load_prefixed_weights(module: nn.Module, state: dict, source: str, prefix: str = "encoder.") -> None:
    """Load the ``prefix``-ed entries of a state dict into ``module``, naming any key that does not match."""
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{source}: no '{prefix}*' weights in this checkpoint")
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: {prefix.rstrip('.')} weights do not match this encoder; "
                         f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")


def check_encoder_matches(meta: dict, encoder: nn.Module, frontend: nn.Module | None, source: str) -> None:
    """Refuse outside encoder weights computed by another network or on other features: the structure of the
    encoder (``meta["encoder"]``, :func:`~audio_ssl.utils.provenance.describe_architecture`) and the front end's
    settings (``meta["frontend"]``: class, sample_rate, n_fft, hop_length, n_mels, log, normalize, ...) recorded in
    a checkpoint's self-description (``meta`` = ``checkpoint["audio_ssl"]``) are compared with ``encoder`` and
    ``frontend`` (None: not compared). A max-pool has no weights and a hop length changes none, so such a mismatch
    would otherwise load without a word.

    Raises:
        ValueError: naming ``source`` and each differing entry with the checkpoint's and this model's value.
    Logs a warning naming what could not be checked (a checkpoint from before these records, an encoder that does
    not state its ``architecture()``, an entry only one side records).
    """
    from audio_ssl.utils.checkpoints import description_differences

    differences, unchecked = [], []
    pairs = [("encoder", describe_architecture(encoder))]
    if frontend is not None:
        pairs.append(("frontend", describe_module(frontend)))
    for name, current in pairs:
        recorded = meta.get(name)
        if not isinstance(recorded, dict):
            unchecked.append(f"{name} (not recorded in the checkpoint)")
            continue
        found, skipped = description_differences(recorded, current, name)
        differences += found
        unchecked += skipped
    if differences:
        raise ValueError(f"{source}: its encoder was trained as another network or on other features than this "
                         f"model's: {'; '.join(differences)}. Make the receiving config's encoder and front end "
                         "match the pretraining config")
    if unchecked:
        log.warning("%s: could not check %s against this model (a checkpoint saved before audio-ssl recorded "
                    "them, an encoder that does not state its architecture(), or a setting only one side has); "
                    "loading the encoder weights unchecked there", source, ", ".join(unchecked))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``mode`` values of :func:`torch.compile` accepted by ``compile_mode``."""
FUSED_OPTIMIZERS = ("adamw", "adam", "sgd")
"""Optimizers with a fused (single-kernel) implementation in torch (``fused=True``); LARS has none."""


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: 4-D tensor arguments in ``torch.channels_last`` memory format (values unchanged)."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


class BaseMethod(L.LightningModule):
    """Shared machinery and the method contract (see the module docstring); subclasses set ``self.encoder`` and
    define ``training_step``.

    Batches arrive from the data workers as raw waveforms (``batch["audio"]``, [B, T]). After the
    transfer to the device, :meth:`on_after_batch_transfer` calls :meth:`train_transform` (training)
    or :meth:`eval_transform` (everything else), which compute features and batch augmentations on
    the accelerator. The default :meth:`eval_transform` adds ``batch["spec"]`` = the front end's output.

    Optimisation: :meth:`parameter_groups` lists the groups (subclasses add e.g. an encoder group
    with its own learning rate); ``lr`` is scaled by ``global_batch / 256`` when
    ``scale_lr_with_batch``. Schedules are stepped every optimizer step.

    Monitors for self-supervised methods (labels never reach the encoder): ``online_probe`` trains a
    linear classifier on detached embeddings in its own parameter group; ``knn_k > 0`` reports a
    weighted kNN accuracy on the validation set each epoch, using the embeddings of that epoch's
    training batches as the memory bank. A method feeds both with :meth:`monitor_step`.

    Several processes: with ``sync_batchnorm`` every BatchNorm of the method (front end excepted) computes its
    statistics over the global batch when ``trainer.world_size > 1`` (see
    :func:`audio_ssl.utils.distributed.convert_sync_batchnorm`); self-supervised methods turn it on, since a
    per-process BatchNorm lets a network tell which clips share a process.

    Speed options (all off by default; ``benchmarks/fast_steps.py`` measures each against the plain step, and a
    recipe turns one on only where that measurement shows it pays; bf16 autocast is the trainer's
    ``precision: bf16-mixed``, not an option here). They change how the step runs, never what it computes
    (within float rounding), and never the checkpoint's keys. :meth:`apply_speed_options` puts them in force;
    :meth:`setup` calls it, so they apply under the Trainer (fit, validate, test, predict), not to a model called
    outside it (e.g. one rebuilt by :meth:`from_checkpoint` and called directly, or exported):

    - ``channels_last``: every 4-D weight of the method's networks (all children but the front end: encoder,
      heads, teachers) and every 4-D input of the encoder in ``torch.channels_last`` memory format (NHWC), which
      cuDNN's and oneDNN's convolutions prefer, notably for tensor-core bf16/fp16 kernels. Only for
      convolutional encoders (``encoder.convolutional = True``: :class:`~audio_ssl.models.AudioResNet`,
      :class:`~audio_ssl.models.timm_cnn.TimmCNN`); another encoder raises ValueError.
    - ``fused_optimizer``: torch's fused AdamW/Adam/SGD kernels (``fused=True``: one kernel per step for all
      parameters, instead of torch's default: ``foreach`` kernels on CUDA, a per-parameter loop on the CPU).
      ``True`` raises ValueError for ``lars`` (no fused implementation) and when the parameters' device has no
      fused kernel; ``"auto"`` fuses when every parameter is on a CUDA device and the optimizer has a fused form,
      and otherwise builds the usual optimizer.
    - ``compile``: :meth:`torch.nn.Module.compile` of the encoder with ``compile_mode`` (:func:`torch.compile`'s
      ``mode``, one of :data:`COMPILE_MODES`). It compiles the encoder's ``__call__`` in place, so the module and
      its ``state_dict`` keys stay as they were (``torch.compile(encoder)`` would wrap it and prefix every key
      with ``_orig_mod.``). Only calls of ``self.encoder(x)`` run compiled; a method that calls other functions
      of its encoder (the masked method's CNN path: ``encoder.forward_features``) runs those eagerly.
    """

    classifies: ClassVar[bool] = False
    """Whether :meth:`predict_proba`, ``predict_step`` and ``test_outputs`` give class probabilities."""

    encoder: nn.Module
    """The network being learned (an ``out_dim`` attribute gives its embedding size); set by every subclass."""

    def __init__(
        self,
        num_classes: int = 50,
        sample_rate: int = 16000,
        frontend: nn.Module | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        max_lr: float | None = None,
        warmup_fraction: float = 0.1,
        scale_lr_with_batch: bool = False,
        online_probe: bool = False,
        probe_lr: float = 1e-3,
        knn_k: int = 0,
        knn_temperature: float = 0.07,
        sync_batchnorm: bool = False,
        init_encoder_from: str | None = None,
        channels_last: bool = False,
        fused_optimizer: bool | Literal["auto"] = False,
        compile: bool = False,
        compile_mode: str = "default",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.frontend = frontend if frontend is not None else LogMelSpectrogram(sample_rate=sample_rate)
        frontend_rate = getattr(self.frontend, "sample_rate", sample_rate)
        if frontend_rate != sample_rate:
            raise ValueError(
                f"the front end expects {frontend_rate} Hz audio but the data is at sample_rate={sample_rate}: "
                "set model.init_args.frontend.init_args.sample_rate to the data's rate"
            )
        self.optimizer_name, self.lr, self.weight_decay, self.momentum = optimizer, lr, weight_decay, momentum
        self.scheduler_name, self.max_lr, self.warmup_fraction = scheduler, max_lr, warmup_fraction
        self.scale_lr_with_batch = scale_lr_with_batch
        self.probe_lr = probe_lr
        self.use_online_probe = online_probe
        self.online_probe: OnlineProbe | None = None
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.knn = KNNMonitor(num_classes, knn_k, knn_temperature) if knn_k > 0 and num_classes else None
        self.sync_batchnorm = sync_batchnorm
        self.init_encoder_from = init_encoder_from
        for name, value in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if not (isinstance(fused_optimizer, bool) or fused_optimizer == "auto"):
            raise ValueError(f"fused_optimizer must be true, false or 'auto', got {fused_optimizer!r}")
        if fused_optimizer is True and optimizer.lower() not in FUSED_OPTIMIZERS:
            raise ValueError(f"fused_optimizer=true: optimizer={optimizer!r} has no fused implementation (only "
                             f"{', '.join(FUSED_OPTIMIZERS)}); set fused_optimizer to false or 'auto'")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        self.use_channels_last, self.fused_optimizer = channels_last, fused_optimizer
        self.compile_encoder, self.compile_mode = compile, compile_mode
        self._speed_options_applied = False
        self.test_outputs: list[dict] = []
        """Classifiers: per-clip ``{"index" [B], "label" [B], "probs" [B, C]}`` of the last test epoch (CPU)."""
        self._epoch_means = nn.ModuleDict()  # log_metrics' MeanMetrics, by logged name, created on first use

    # ------------------------------------------------------------------ initialisation from a pretraining run
    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # every rank, once its group exists: a Gloo rank must not exit with it live
        if stage == "fit" and self.init_encoder_from:
            self.load_encoder_weights(self.init_encoder_from)
        if self.sync_batchnorm and self._trainer is not None and self.trainer.world_size > 1:
            self.convert_sync_batchnorm(self.trainer.strategy.root_device.type)
        self.apply_speed_options()

    def apply_speed_options(self) -> None:
        """Put ``channels_last`` and ``compile`` in force (see the class docstring; ``fused_optimizer`` acts in
        :meth:`configure_optimizers`). Called by :meth:`setup`; a loop without the Trainer calls it once the
        networks are built. Idempotent: a second call changes nothing.

        Raises:
            ValueError: ``channels_last`` with an encoder that is not convolutional (names the encoder class).
        """
        if self._speed_options_applied:
            return
        if self.use_channels_last:
            if not getattr(self.encoder, "convolutional", False):
                raise ValueError(f"channels_last=true applies to convolutional encoders (encoder.convolutional = "
                                 f"True: AudioResNet, TimmCNN); {type(self.encoder).__name__} is not one: set "
                                 "model.init_args.channels_last false")
            for child in self.children():
                if child is not self.frontend:
                    child.to(memory_format=torch.channels_last)  # 4-D tensors only; the values are unchanged
            self.encoder.register_forward_pre_hook(_channels_last_inputs)
        if self.compile_encoder:
            self.encoder.compile(mode=self.compile_mode)
        self._speed_options_applied = True

    def convert_sync_batchnorm(self, device_type: str = "cuda") -> None:
        """Synchronise every BatchNorm of the method's networks (all children but the front end) over all
        processes; ``device_type`` is where training runs (``"cpu"``: :class:`CrossProcessBatchNorm`)."""
        for name, child in list(self.named_children()):
            if child is not self.frontend:
                setattr(self, name, convert_sync_batchnorm(child, device_type))

    def load_encoder_weights(self, checkpoint: str) -> None:
        """Copy ``encoder.*`` weights from a Lightning checkpoint of another method (e.g. a SimCLR run) into
        ``self.encoder``; every encoder key must match, and the encoder structure and front-end settings the
        checkpoint records must equal this model's (:func:`check_encoder_matches`: ValueError naming both values).
        On resume, Lightning restores the checkpoint after this."""
        from audio_ssl.utils.provenance import checkpoint_metadata
        from audio_ssl.utils.torch_files import load_weights_file

        state = load_weights_file(checkpoint, map_location="cpu")
        check_encoder_matches(checkpoint_metadata(state), self.encoder, self.frontend, checkpoint)
        load_prefixed_weights(self.encoder, state.get("state_dict", state), checkpoint)

    # ------------------------------------------------------------------ self-describing checkpoints
    model_config: dict | None = None
    """``{"class_path", "init_args"}`` of this model as the CLI resolved it (set by :class:`audio_ssl.cli.AudioSSLCLI`);
    stored in checkpoints so that ``classify`` and ``probe`` can rebuild the model without the YAML."""

    def checkpoint_metadata(self) -> dict:
        """What a checkpoint needs to be used alone (plain values; stored under ``checkpoint["audio_ssl"]``):
        the method and its resolved config, the front end's settings, the data (dataset, class names, test/val/train
        folds, transductive, sample rate, clip length, batch size; from the trainer's data module), the W&B run
        id and the source version (package version, git commit)."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        describe = getattr(datamodule, "describe", None)
        wandb_ids = [lg.version for lg in (trainer.loggers if trainer is not None else [])
                     if type(lg).__name__ == "WandbLogger"]
        git = git_state()
        cls = type(self)
        return {
            "format": METADATA_FORMAT,
            "method": f"{cls.__module__}.{cls.__qualname__}",
            "num_classes": int(self.num_classes),
            "sample_rate": int(self.sample_rate),
            "model_config": to_plain(self.model_config),
            "frontend": describe_module(self.frontend),
            "encoder": describe_architecture(self.encoder),
            "data": to_plain(describe()) if callable(describe) else None,
            "wandb_run_id": wandb_ids[0] if wandb_ids else None,
            "audio_ssl_version": package_version(),
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_metadata()

    @staticmethod
    def from_metadata(meta: dict, source: str = "<checkpoint>") -> BaseMethod:
        """A new (untrained) method as described by a checkpoint's ``checkpoint["audio_ssl"]``: its resolved model
        config with the recorded number of classes and sample rate. Raises ValueError when ``meta`` has no model
        description (a checkpoint saved outside the audio-ssl CLI) or it cannot be instantiated (``source``
        names the checkpoint in the message)."""
        from jsonargparse import ArgumentParser

        if not meta.get("model_config"):
            raise ValueError(f"{source}: this checkpoint does not describe its model (saved before audio-ssl stored "
                             "it, or outside the audio-ssl CLI)")
        block = dict(meta["model_config"])
        block["init_args"] = {**(block.get("init_args") or {}), "num_classes": int(meta["num_classes"]),
                              "sample_rate": int(meta["sample_rate"])}
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(BaseMethod, "model")
        try:
            model = parser.instantiate_classes(parser.parse_object({"model": block})).model
        except Exception as err:
            raise ValueError(f"{source}: cannot rebuild the model it describes ({err})") from err
        model.model_config = meta["model_config"]
        return model

    @staticmethod
    def from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> BaseMethod:
        """The method a checkpoint describes, with its weights: :meth:`from_metadata` (no YAML needed; encoders
        with outside weights build the architecture only, see ``pretrained_weights_not_read``), then ``state_dict``
        loaded strictly. Raises ValueError as :meth:`from_metadata` does."""
        from audio_ssl.utils.provenance import checkpoint_metadata, read_checkpoint

        checkpoint = read_checkpoint(Path(path))
        with pretrained_weights_not_read():  # every weight comes from the checkpoint: no hub, no weight file
            model = BaseMethod.from_metadata(checkpoint_metadata(checkpoint), str(path))
        model.load_state_dict(checkpoint["state_dict"])
        return model.to(map_location)

    # ------------------------------------------------------------------ features on the device
    @contextlib.contextmanager
    def seeded(self, seed: int):
        """Run a block with the global RNGs of this device seeded by ``seed``, restoring them afterwards (e.g. the
        same validation views every epoch)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch["audio"] = batch["audio"].float()  # the loaders ship float16 waveforms
        return self.train_transform(batch) if self.training else self.eval_transform(batch)

    def train_transform(self, batch: dict) -> dict:
        return self.eval_transform(batch)

    def eval_transform(self, batch: dict) -> dict:
        batch["spec"] = self.frontend(batch["audio"])
        return batch

    # ------------------------------------------------------------------ the contract
    @property
    def embedding_dim(self) -> int:
        """``D`` of :meth:`embed` (the encoder's ``out_dim``)."""
        return int(self.encoder.out_dim)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """Clip embeddings ``[B, D]`` from raw waveforms ``[B, T]``, without augmentation: what probes and kNN use.

        Methods whose encoder is not ``self.encoder`` applied to ``self.frontend`` override this.
        """
        return self.encoder(self.frontend(audio))

    def predict_proba(self, audio: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]`` (rows sum to 1) of raw waveforms ``[B, T]``.

        Only methods with ``classifies = True`` implement it; raises NotImplementedError otherwise."""
        raise NotImplementedError(f"{type(self).__name__} does not classify (classifies = False): probe its "
                                  "embeddings instead (pipeline: pretrain_probe, or audio-ssl probe)")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """``{"index": [B], "probs": [B, num_classes]}`` for a batch of the predict loader (classifiers only)."""
        return {"index": batch["index"], "probs": self.predict_proba(batch["audio"])}

    # ------------------------------------------------------------------ monitors
    def setup_online_probe(self, embedding_dim: int) -> None:
        """Subclasses call this once they know the embedding size."""
        if self.use_online_probe and self.num_classes:
            self.online_probe = OnlineProbe(embedding_dim, self.num_classes)

    def monitor_step(self, embeddings: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        """Feed the monitors: the online probe on every row of ``embeddings [V * B, D]`` (``V`` views of ``B``
        clips, view-major; labels ``[B]`` repeated) and the kNN bank (``stage == "train"``) or queries on the
        first view. Logs ``{stage}/online_probe_loss`` and ``..._acc``; returns the probe's loss (0 when off),
        which the caller adds to its own (the embeddings are detached inside, so the encoder's gradient does
        not change). Test embeddings feed the probe only."""
        views = len(embeddings) // len(labels)
        if self.knn is not None and stage in ("train", "val"):
            self.knn.collect(embeddings[: len(labels)], labels, stage)
        if self.online_probe is None:
            return embeddings.new_zeros(())
        loss, metrics = self.online_probe.step(embeddings, labels.repeat(views))
        self.log_metrics(stage, metrics, batch_size=len(labels) * views)
        return loss

    def on_train_epoch_start(self) -> None:
        if self.knn is not None:
            self.knn.reset_bank()

    def on_validation_epoch_end(self) -> None:
        result = self.knn.compute() if self.knn is not None else None
        if result is not None:
            accuracy, count = result
            self.log_metrics("val", {"knn_acc": accuracy}, batch_size=count)

    # ------------------------------------------------------------------ logging
    def log_metrics(self, stage: str, metrics: dict, batch_size: int, **kwargs) -> None:
        """Log ``{stage}/{name}``: the epoch mean weighted by ``batch_size`` over every batch of every rank; in
        training also the step value (this rank's, as ``..._step``; the epoch mean is then ``..._epoch``).

        The epoch means are :class:`WeightedMean` states (weighted sum and weight, float64) summed over
        the ranks once, at the end of the epoch. Lightning's own ``sync_dist`` mean is not used: it averages
        the integer batch counts of the ranks with an integer division (8 and 7 clips count as 14), and per
        step it would be a collective, which hangs when evaluation shards differ by a batch.
        """
        on_step = stage == "train"
        prog_bar = kwargs.pop("prog_bar", False)
        for name, value in metrics.items():
            key = f"{stage}/{name}"
            if key not in self._epoch_means:
                self._epoch_means[key] = WeightedMean().to(self.device)
            mean = self._epoch_means[key]
            if on_step:
                mean(value, batch_size)  # forward: the step value (this batch) + accumulation
            else:
                mean.update(value, batch_size)
            self.log(key, mean, on_step=on_step, on_epoch=True, prog_bar=prog_bar,
                     metric_attribute=f"_epoch_means.{key}", **kwargs)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """Every trainable parameter except the online probe, at ``lr``; biases/norms without decay."""
        probe_ids = {id(p) for p in self.online_probe.parameters()} if self.online_probe is not None else set()
        main = nn.ParameterList([p for p in self.parameters() if id(p) not in probe_ids])
        return [dict(g, name="main") for g in split_decay(main, self.weight_decay)]

    def effective_lr(self, lr: float) -> float:
        if not self.scale_lr_with_batch or self._trainer is None:
            return lr
        global_batch = self.trainer.world_size * self.trainer.accumulate_grad_batches * self._train_batch_size()
        return lr * global_batch / 256

    def _train_batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        return int(getattr(datamodule, "batch_size", 256))

    def use_fused_optimizer(self) -> bool:
        """Whether :meth:`configure_optimizers` builds a fused optimizer: ``fused_optimizer`` resolved (``"auto"``:
        every parameter on CUDA and an optimizer in :data:`FUSED_OPTIMIZERS`)."""
        if self.fused_optimizer != "auto":
            return bool(self.fused_optimizer)
        params = list(self.parameters())
        return (self.optimizer_name.lower() in FUSED_OPTIMIZERS and bool(params)
                and all(p.device.type == "cuda" for p in params))

    def configure_optimizers(self):
        groups = self.parameter_groups()
        for g in groups:
            g["lr"] = self.effective_lr(g.get("lr", self.lr))
        if self.online_probe is not None:
            groups.append({"name": "online_probe", "params": list(self.online_probe.parameters()),
                           "lr": self.probe_lr, "weight_decay": 0.0, "lars_exclude": True})
        optimizer = build_optimizer(self.optimizer_name, groups, self.effective_lr(self.lr), self.weight_decay,
                                    self.momentum, fused=self.use_fused_optimizer())
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1000
        max_lr = self.effective_lr(self.max_lr) if self.max_lr is not None else None
        scheduler = build_scheduler(self.scheduler_name, optimizer, total, self.warmup_fraction, max_lr)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
