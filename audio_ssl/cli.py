"""The ``audio-ssl`` command: Lightning CLI subcommands (fit, validate, test, predict) plus project tools.

``audio-ssl fit --config experiments/supervised_cpu.yaml`` trains; every YAML names the model and the
data module by ``class_path``. The number of classes is linked from the data module to the model. The
``checkpoint`` block (:class:`audio_ssl.utils.checkpoints.CheckpointSettings`) puts one run in one folder: ``last.ckpt`` is the latest
state after every epoch (and every ``every_n_train_steps``), so ``--ckpt_path last`` resumes exactly where a run
stopped; ``best-*.ckpt`` is kept only with a ``val_fold`` (never chosen on the test fold); a fresh fit into a
folder holding another run is refused. ``validate``/``test``/``predict`` need ``--ckpt_path`` (or
``--allow_untrained true``).

Project tools (own argument parsers): ``demo`` (synthetic data, end to end), ``cv`` (k-fold cross-validation),
``results`` (Markdown table of CV summaries), ``probe`` (linear probe on a checkpoint), ``classify`` (any audio
files), ``make-beats-checkpoint``.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.methods.base import BaseMethod
from audio_ssl.utils.checkpoints import CheckpointSettings, run_identity


def require_trained_weights(subcommand: str, ckpt_path: str | None, allow_untrained: bool, model) -> None:
    """Refuse ``validate``/``test``/``predict`` of a model that no checkpoint initialises.

    Without ``ckpt_path`` the model keeps the weights it was built with: random ones, or for
    ``init_encoder_from``/a BEATs ``checkpoint`` a pretrained encoder under an untrained head. Raises ValueError
    saying what to pass, unless ``allow_untrained``."""
    if ckpt_path or allow_untrained:
        return
    source = getattr(model, "init_encoder_from", None) or getattr(model, "checkpoint", None)
    detail = (f"; {source} initialises only the encoder, the classifier head stays untrained" if source else "")
    raise ValueError(
        f"audio-ssl {subcommand}: no --ckpt_path, so the model would be evaluated with untrained weights{detail}. "
        "Pass --ckpt_path <checkpoint.dirpath>/last.ckpt (the final state of a fit) or a best-*.ckpt, or "
        "--allow_untrained true to evaluate these weights on purpose"
    )


class AudioSSLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(CheckpointSettings, "checkpoint", sub_configs=True)
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="validate/test/predict without --ckpt_path: evaluate the model's initial weights "
                                 "on purpose (otherwise refused)")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.init_args.sample_rate", "model.init_args.sample_rate")

    def instantiate_trainer(self, **kwargs):
        """The trainer, with the checkpoint callbacks of :class:`CheckpointSettings` for this data module."""
        config = self.config.get(str(self.subcommand), self.config)
        settings = self._get(self.config_init, "checkpoint")
        identity = run_identity(config.get("model"), config.get("data"))
        callbacks = settings.callbacks(getattr(self.datamodule, "val_fold", None), identity)
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, callbacks)

    def _require_weights(self, subcommand: str) -> None:
        config = self.config[subcommand]
        require_trained_weights(subcommand, config.get("ckpt_path"), bool(config.get("allow_untrained")), self.model)

    def before_validate(self) -> None:
        self._require_weights("validate")

    def before_test(self) -> None:
        self._require_weights("test")

    def before_predict(self) -> None:
        self._require_weights("predict")


def build_cli(args: list[str] | None = None, run: bool = True) -> AudioSSLCLI:
    return AudioSSLCLI(
        BaseMethod,
        FoldAudioDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


TOOLS = {
    "demo": "audio_ssl.tools.demo",
    "classify": "audio_ssl.tools.predict",
    "make-beats-checkpoint": "audio_ssl.tools.make_beats_checkpoint",
    "cv": "audio_ssl.tools.cv",
    "results": "audio_ssl.tools.results",
    "probe": "audio_ssl.evaluation.probe",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        import importlib

        importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        return
    build_cli(argv)


__all__ = ["AudioSSLCLI", "build_cli", "main", "require_trained_weights"]


if __name__ == "__main__":
    main()
