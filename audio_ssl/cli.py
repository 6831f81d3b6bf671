"""The ``audio-ssl`` command: Lightning CLI subcommands (fit, validate, test, predict) plus project tools.

``audio-ssl fit --config experiments/supervised_cpu.yaml`` trains; every YAML names the model and the
data module by ``class_path``. The number of classes is linked from the data module to the model, and
a ``ModelCheckpoint`` (best + last, fixed directory) is always present, so ``--ckpt_path last``
resumes an interrupted run.

Project tools (own argument parsers): ``demo`` (synthetic data, end to end), ``cv`` (k-fold cross-validation),
``results`` (Markdown table of CV summaries), ``probe`` (linear probe on a checkpoint), ``classify`` (any audio
files), ``make-beats-checkpoint``.
"""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.methods.base import BaseMethod


class AudioSSLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.dirpath": "runs/default/checkpoints",
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.save_last": True,
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
            }
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.init_args.sample_rate", "model.init_args.sample_rate")


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


__all__ = ["AudioSSLCLI", "build_cli", "main"]


if __name__ == "__main__":
    main()
