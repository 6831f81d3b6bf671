"""The ``audio-ssl`` command: Lightning CLI subcommands (fit, validate, test, predict) plus project tools.

``audio-ssl fit --config experiments/supervised_cpu.yaml`` trains; every YAML names the model and the
data module by ``class_path``. The number of classes is linked from the data module to the model. The
``checkpoint`` block (:class:`audio_ssl.utils.checkpoints.CheckpointSettings`) puts one run in one folder: ``last.ckpt`` is the latest
state after every epoch (and every ``every_n_train_steps``), so ``--ckpt_path last`` resumes exactly where a run
stopped; ``best-*.ckpt`` is kept only with a ``val_fold`` (never chosen on the test fold); a fresh fit into a
folder holding another run is refused. ``validate``/``test``/``predict`` need ``--ckpt_path`` (or
``--allow_untrained true``). Recipes name no run folder: ``checkpoint.dirpath`` (``runs/<run_name>/checkpoints``)
and the loggers (:data:`DEFAULT_LOGGERS`, in ``runs/<run_name>``) follow ``--run_name``, by default the stem of the
first ``--config`` file. More ``--config`` files stack on a recipe, later values winning: a size overlay
(``--config experiments/simclr.yaml --config experiments/cpu/simclr.yaml``) states only what the size changes and
names the run ``simclr_cpu`` (:func:`stacked_name`). Values stated once are linked at parse time (:data:`LINKED`):
the data's ``sample_rate`` is the model's and its front end's, a spectrogram encoder's ``n_mels`` is its front
end's, and the model's ``num_classes`` is the data's (at instantiation); setting a linked value by hand is refused.

Project tools (own argument parsers): ``demo`` (synthetic data, end to end), ``cv`` (k-fold cross-validation),
``results`` (Markdown table of CV summaries), ``reproduce`` (the seed table), ``probe`` (linear probe on a
checkpoint), ``classify`` (any audio files), ``make-beats-checkpoint``, ``cache`` (list/clean the waveform caches),
``export`` (ONNX / HEAR).
``audio-ssl --help`` lists both groups, ``audio-ssl --version`` the version.

Runs describe themselves: every checkpoint stores the data, class names, folds and the resolved model config
(:meth:`audio_ssl.methods.base.BaseMethod.checkpoint_metadata`); the W&B run gets the fully resolved config, and
a resumed run or a later ``test`` continues the same W&B run and CSV version (:mod:`audio_ssl.utils.run_logging`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.methods.base import BaseMethod
from audio_ssl.utils.checkpoints import CheckpointSettings, CheckpointWriteError, RunFolderError, run_identity
from audio_ssl.utils.data_stall import DataStallMonitor
from audio_ssl.utils.provenance import to_plain


class UntrainedWeightsError(ValueError):
    """``validate``/``test``/``predict`` asked for without weights to evaluate (see :func:`require_trained_weights`)."""


def require_trained_weights(subcommand: str, ckpt_path: str | None, allow_untrained: bool, model) -> None:
    """Refuse ``validate``/``test``/``predict`` of a model that no checkpoint initialises.

    Without ``ckpt_path`` the model keeps the weights it was built with: random ones, or for
    ``init_encoder_from``/a BEATs ``checkpoint`` a pretrained encoder under an untrained head. Raises ValueError
    saying what to pass, unless ``allow_untrained``."""
    if ckpt_path or allow_untrained:
        return
    source = getattr(model, "init_encoder_from", None) or getattr(model, "checkpoint", None)
    detail = (f"; {source} initialises only the encoder, the classifier head stays untrained" if source else "")
    raise UntrainedWeightsError(
        f"audio-ssl {subcommand}: no --ckpt_path, so the model would be evaluated with untrained weights{detail}. "
        "Pass --ckpt_path <checkpoint.dirpath>/last.ckpt (the final state of a fit) or a best-*.ckpt, or "
        "--allow_untrained true to evaluate these weights on purpose"
    )


LIGHTNING_COMMANDS = {
    "fit": "train a model from an experiment YAML (resume with --ckpt_path last)",
    "validate": "run the validation loop of a model",
    "test": "test a model on its held-out fold",
    "predict": "run predict_step over the held-out fold",
}

TOOLS = {
    "demo": "audio_ssl.tools.demo",
    "classify": "audio_ssl.tools.classify",
    "zeroshot": "audio_ssl.tools.zeroshot",
    "make-beats-checkpoint": "audio_ssl.tools.make_beats_checkpoint",
    "cv": "audio_ssl.tools.cv",
    "results": "audio_ssl.tools.results",
    "reproduce": "audio_ssl.tools.reproduce",
    "probe": "audio_ssl.tools.probe",
    "cache": "audio_ssl.tools.cache",
    "serve": "audio_ssl.serve.server",
    "export": "audio_ssl.tools.export",
}

TOOL_HELP = {
    "demo": "train and test on generated data (or --data-dir) end to end, in minutes on a CPU",
    "cv": "k-fold cross-validation of an experiment or pipeline YAML over the official folds",
    "results": "Markdown table of finished cross-validation runs",
    "reproduce": "the seed table on ESC-50 (every row, 5 folds), resumable within a time budget (--smoke: CPU toy)",
    "probe": "linear probe of a checkpoint's encoder on one fold",
    "classify": "class predictions for audio files and folders with a checkpoint",
    "zeroshot": "CLAP zero-shot classification of audio files against labels you name (no training)",
    "make-beats-checkpoint": "write a small random BEATs checkpoint in the official format",
    "cache": "list the waveform caches (cache list) or delete unused/damaged ones (cache clean)",
    "serve": "HTTP inference API and web page for a checkpoint (FastAPI + uvicorn)",
    "export": "a checkpoint as an ONNX classifier (--format onnx) or a HEAR 2021 module (--format hear)",
}


def top_level_help() -> str:
    width = max(map(len, [*LIGHTNING_COMMANDS, *TOOLS])) + 2
    lines = ["usage: audio-ssl COMMAND [options]", "",
             "Environmental sound classification and self-supervised audio representation learning.", "",
             "Lightning commands (an experiment YAML: audio-ssl fit --config experiments/supervised_cpu.yaml):"]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Project tools:"]
    lines += [f"  {name:<{width}}{TOOL_HELP[name]}" for name in TOOLS]
    lines += ["", "Options:", f"  {'-h, --help':<{width}}this message; 'audio-ssl COMMAND --help' for a command's options",
              f"  {'--version':<{width}}the package version and git commit", "",
              "Data: recipes read $AUDIO_SSL_DATA/<dataset> (default ~/.cache/audio-ssl/data/<dataset>, e.g. .../esc50);",
              "pass --data.init_args.data_dir DIR to use another folder."]
    return "\n".join(lines) + "\n"


class AudioSSLSaveConfig(SaveConfigCallback):
    """Writes ``config.yaml`` to the log folder (Lightning's behaviour) and logs the same fully resolved config
    (data, folds, batch size, encoder, front end, trainer), plus the data module's description, to every W&B
    logger."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Without a logger there is no run folder: Lightning would write ``config.yaml`` into the working
        directory (a checkout, say). The checkpoint describes the run in that case (``checkpoint["audio_ssl"]``)."""
        if not trainer.loggers:
            return
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        if not wandb_loggers:
            return
        import yaml

        try:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True)) or {}
        except Exception as err:  # logging must never stop a run
            warnings.warn(f"could not log the resolved config to W&B: {err}", stacklevel=1)
            return
        config = to_plain(config)
        describe = getattr(trainer.datamodule, "describe", None)
        if callable(describe):
            config["data_resolved"] = to_plain({k: v for k, v in describe().items() if k != "class_names"})
        from audio_ssl.utils.provenance import git_state, package_version

        config["audio_ssl"] = {"version": package_version(), "git_commit": git_state()["commit"],
                               "git_dirty": git_state()["dirty"]}
        for logger in wandb_loggers:
            logger.log_hyperparams(config)


class AudioSSLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(CheckpointSettings, "checkpoint", sub_configs=True)
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="validate/test/predict without --ckpt_path: evaluate the model's initial weights "
                                 "on purpose (otherwise refused)")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="names the run's folders: checkpoints in runs/<run_name>/checkpoints, logs in "
                                 "runs/<run_name> (default: the first --config file's stem, plus _<folder> per size overlay "
                                 "of the same stem: simclr.yaml + cpu/simclr.yaml -> simclr_cpu)")
        parser.set_defaults({"checkpoint.dirpath": f"runs/{RUN_NAME}/checkpoints", "trainer.logger": DEFAULT_LOGGERS})
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        for source, target in LINKED:
            parser.link_arguments(source, target)

    def instantiate_trainer(self, **kwargs):
        """The trainer, with the checkpoint callbacks of :class:`CheckpointSettings` for this data module and a
        :class:`~audio_ssl.utils.data_stall.DataStallMonitor`."""
        config = self.config.get(str(self.subcommand), self.config)
        settings = self._get(self.config_init, "checkpoint")
        identity = run_identity(config.get("model"), config.get("data"))
        callbacks = settings.callbacks(getattr(self.datamodule, "val_fold", None), identity)
        callbacks.append(DataStallMonitor())  # perf/data_stall_fraction every epoch (cheap: no per-step sync)
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

    # ------------------------------------------------------------------ parsing: explicit args, short errors
    def parse_arguments(self, parser, args) -> None:
        """Parse ``args`` (``None``: the command line). ``build_cli`` and the project tools pass their arguments
        explicitly on purpose, so Lightning's warning about ``args`` next to ``sys.argv`` does not apply. A
        config error is one message and a pointer to ``--help`` instead of the full usage."""
        argv = list(sys.argv[1:] if args is None else args) if isinstance(args, (list, type(None))) else None
        name = run_name_from_args(argv) if argv is not None else None
        if argv is not None:
            try:
                check_not_pipeline_config(argv)
                check_linked_not_set(argv)
            except ValueError as err:
                command = next((a for a in argv if a in self.subcommands()), None) or _CURRENT_TOOL
                prog = f"audio-ssl {command}" if command else "audio-ssl"
                sys.stderr.write(f"{prog}: error: {err}\nsee {prog} --help\n")
                raise SystemExit(2) from None
        for each in [parser, *getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}).values()]:
            each.exit_on_error = False
            if name:  # the run folders by name already in the defaults, so --print_config shows them resolved
                try:
                    each.set_defaults({"checkpoint.dirpath": _with_run_name(f"runs/{RUN_NAME}/checkpoints", name),
                                       "trainer.logger": _with_run_name(DEFAULT_LOGGERS, name)})
                except (KeyError, ArgumentError):  # a parser without these keys (the top-level one)
                    continue
        try:
            if isinstance(args, dict) or (args is not None and hasattr(args, "as_dict")):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except ArgumentError as err:
            argv = list(sys.argv[1:] if args is None else args)
            command = next((a for a in argv if a in self.subcommands()), None) or _CURRENT_TOOL
            prog = f"audio-ssl {command}" if command else "audio-ssl"
            sys.stderr.write(f"{prog}: error: {short_error(str(err))}\nsee {prog} --help\n")
            raise SystemExit(2) from None

    # ------------------------------------------------------------------ loggers that follow the run
    def _run_config(self):
        return self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config

    def _run_dir(self, config) -> Path:
        """The run folder: the parent of the checkpoint folder (``runs/x`` for ``runs/x/checkpoints``)."""
        dirpath = config.get("checkpoint.dirpath") if "checkpoint" in config else None
        if dirpath:
            return Path(dirpath).expanduser().parent
        return Path(config.get("trainer.default_root_dir") or ".")

    def before_instantiate_classes(self) -> None:
        from audio_ssl.utils.run_logging import prepare_logger_config

        config = self._run_config()
        name = run_name(config)
        if "checkpoint" in config and config.get("checkpoint.dirpath"):
            config["checkpoint.dirpath"] = _with_run_name(config["checkpoint.dirpath"], name)
        config["trainer.logger"] = _with_run_name(config.get("trainer.logger"), name)
        loggers = config.get("trainer.logger")
        loggers = _without_wandb_if_missing(loggers)
        run_dir = self._run_dir(config)
        if self.subcommand == "fit" and "checkpoint" in config and config.get("checkpoint.dirpath"):
            from audio_ssl.utils.run_logging import check_writable_folder, is_rank_zero

            if is_rank_zero():
                check_writable_folder(config["checkpoint.dirpath"], "the run's checkpoints")
            if not config.get("ckpt_path") and not config.get("trainer.fast_dev_run"):
                # Refuse a fresh fit into a folder that holds another run now, before anything of this run
                # (the loggers' ids, a model summary) is written or printed; LastCheckpoint checks again at fit.
                from audio_ssl.utils.checkpoints import check_run_folder

                check_run_folder(config["checkpoint.dirpath"], None, resuming=False,
                                 existing_run=config.get("checkpoint.existing_run") or "refuse")
        if self.subcommand is None:  # built for a program (cv, probe): it resumes from last.ckpt if there is one
            resume = (run_dir / "checkpoints" / "last.ckpt").exists() or bool(
                config.get("checkpoint.dirpath") and (Path(config["checkpoint.dirpath"]) / "last.ckpt").exists())
        else:
            resume = self.subcommand != "fit" or bool(config.get("ckpt_path"))
        config["trainer.logger"] = prepare_logger_config(loggers, run_dir, resume)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # mark it for main(): a config that cannot be built, reported in one line
            err.audio_ssl_config_error = True
            raise

    def after_instantiate_classes(self) -> None:
        from audio_ssl.utils.run_logging import is_rank_zero, record_logger_ids

        config = self._run_config()
        if isinstance(self.model, BaseMethod) and config.get("model") is not None:
            self.model.model_config = to_plain(config["model"])
        if is_rank_zero():
            record_logger_ids(self.trainer.loggers, self._run_dir(config))


RUN_NAME = "{run_name}"
"""Placeholder in ``checkpoint.dirpath`` and the loggers' arguments, replaced by the run's name (:func:`run_name`)."""

DEFAULT_LOGGERS = [
    {"class_path": "lightning.pytorch.loggers.WandbLogger",
     "init_args": {"project": "audio-ssl", "name": RUN_NAME, "save_dir": f"runs/{RUN_NAME}", "offline": True}},
    {"class_path": "lightning.pytorch.loggers.CSVLogger",
     "init_args": {"save_dir": f"runs/{RUN_NAME}", "name": "csv"}},
]
"""The loggers of every recipe unless it (or the command line) names others: W&B offline and CSV, both in
``runs/<run_name>``, next to the checkpoints in ``runs/<run_name>/checkpoints`` (the ``checkpoint.dirpath`` default)."""


def stacked_name(paths: list[str]) -> str:
    """The run name of stacked ``--config`` files: the first file's stem, plus ``_<folder>`` for every later file
    of the same stem (a size overlay: ``simclr.yaml`` + ``cpu/simclr.yaml`` -> ``simclr_cpu``). Other overlays
    (``my_tweak.yaml``) leave the name alone; name such a run with ``--run_name``."""
    first = Path(paths[0])
    name = first.stem
    for path in map(Path, paths[1:]):
        if path.stem == first.stem and path.parent.name:
            name += f"_{path.parent.name}"
    return name


def run_name(config) -> str:
    """The run's name: ``--run_name``, else the stacked ``--config`` files' name (:func:`stacked_name`), else
    ``default``."""
    name = config.get("run_name") if "run_name" in config else None
    if name:
        return str(name)
    files = config.get("config") if "config" in config else None
    files = [str(getattr(f, "relative", None) or f) for f in (files or []) if f is not None]
    return stacked_name(files) if files else "default"


def _option_values(argv: list[str], option: str) -> list[str]:
    """Every value of ``option`` in a command line (``--option VALUE`` and ``--option=VALUE``), in order."""
    values = []
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
    return values


def run_name_from_args(argv: list[str]) -> str | None:
    """The run's name from a command line: ``--run_name``, else the stacked ``--config`` files' name."""
    names = _option_values(argv, "--run_name")
    if names and names[0]:
        return names[0]
    files = [f for f in _option_values(argv, "--config") if not f.lstrip().startswith(("{", "["))]
    return stacked_name(files) if files else None


LINKED = (
    ("data.init_args.sample_rate", "model.init_args.sample_rate"),
    ("data.init_args.sample_rate", "model.init_args.frontend.init_args.sample_rate"),
    ("model.init_args.frontend.init_args.n_mels", "model.init_args.encoder.init_args.n_mels"),
    ("model.init_args.patch_size", "model.init_args.encoder.init_args.patch_size"),
)
"""Values stated once and copied at parse time (``source``, ``target``): the data's sample rate is the model's and
its front end's; a spectrogram encoder's ``n_mels`` is the front end's; its ``patch_size`` is the masked method's.
A target absent from the chosen classes (an encoder without ``n_mels``) is skipped. Setting a target by hand is
refused (:func:`check_linked_not_set`): jsonargparse would overwrite it without a word."""


INSTANTIATE_LINKED = (("data.num_classes", "model.init_args.num_classes"),)
"""Values copied when the classes are instantiated: the model's ``num_classes`` is the data module's number of
classes. Setting the target by hand is refused like a :data:`LINKED` one."""


def check_not_pipeline_config(argv: list[str]) -> None:
    """Raise ValueError when a ``--config`` file is a pipeline config (a top-level ``pipeline:`` key), which only
    ``audio-ssl cv`` runs."""
    import yaml

    for value in _option_values(argv, "--config"):
        path = Path(value)
        if value.lstrip().startswith(("{", "[")) or not path.is_file():
            continue
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(config, dict) and "pipeline" in config:
            raise ValueError(f"{path} is a pipeline config (pipeline: {config['pipeline']}), not a Lightning YAML: "
                             f"run it with audio-ssl cv --config {path}")


def _nested(mapping, dotted: str):
    """``mapping['a']['b']`` for ``'a.b'``; ``KeyError`` when a level is missing or not a mapping."""
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            raise KeyError(dotted)
        mapping = mapping[part]
    return mapping


def check_linked_not_set(argv: list[str]) -> None:
    """Raise ValueError, naming the file or option and the key to set instead, when a command line or one of its
    ``--config`` files sets a :data:`LINKED` target (it would be overwritten by its source)."""
    import yaml

    configs = []
    for value in _option_values(argv, "--config"):
        path = Path(value)
        if value.lstrip().startswith(("{", "[")) or not path.is_file():
            continue  # jsonargparse reports a missing file itself
        try:
            configs.append((path, yaml.safe_load(path.read_text())))
        except yaml.YAMLError:
            continue  # jsonargparse reports the syntax error with its position
    links = [(s, t) for s, t in LINKED if _link_source_exists(s, [c for _, c in configs], argv)]
    for source, target in links:
        if any(a == f"--{target}" or a.startswith(f"--{target}=") for a in argv):
            raise ValueError(f"--{target} is linked to {source} (stated once): set --{source} instead")
    for source, target in INSTANTIATE_LINKED:
        if any(a == f"--{target}" or a.startswith(f"--{target}=") for a in argv):
            raise ValueError(f"--{target} is linked to {source} (the data module's number of classes): remove it; "
                             "the model gets the data's classes")
    for option, value in _option_pairs(argv):
        for source, target in [*links, *INSTANTIATE_LINKED]:
            if not target.startswith(option + ".") or not value.lstrip().startswith("{"):
                continue
            try:
                parsed = yaml.safe_load(value)
                _nested(parsed, target[len(option) + 1:])
            except (yaml.YAMLError, KeyError):
                continue
            raise ValueError(f"--{option} sets {target}, which is linked to {source} (stated once): remove it "
                             f"from --{option} and set {source}")
    for path, config in configs:
        for source, target in links:
            try:
                _nested(config, target)
            except KeyError:
                continue
            raise ValueError(f"{path}: {target} is linked to {source} (stated once): remove it and set {source}")
        for source, target in INSTANTIATE_LINKED:
            try:
                _nested(config, target)
            except KeyError:
                continue
            raise ValueError(f"{path}: {target} is linked to {source} (the data module's number of classes): "
                             "remove it; the model gets the data's classes")


def _option_pairs(argv: list[str]) -> list[tuple[str, str]]:
    """``(key, value)`` of every ``--key value`` and ``--key=value`` in a command line (``key`` without dashes)."""
    pairs = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key, sep, value = arg[2:].partition("=")
        if sep:
            pairs.append((key, value))
        elif i + 1 < len(argv):
            pairs.append((key, argv[i + 1]))
    return pairs


def chosen_class(section: str, configs: list, argv: list[str] = ()) -> type | None:
    """The class a run builds for ``section`` (``model``, ``model.init_args.frontend``, ...): the last
    ``class_path`` of that section in ``configs`` (parsed YAML mappings, in ``--config`` order), then on the command
    line; ``None`` when none is named or it cannot be imported (the CLI reports that itself)."""
    import pkgutil

    class_path = None
    for config in configs:
        with contextlib.suppress(KeyError):
            class_path = _nested(config, f"{section}.class_path")
    for option in _option_values(list(argv), f"--{section}.class_path") + _option_values(list(argv), f"--{section}"):
        class_path = option if "." in option and not option.lstrip().startswith("{") else class_path
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    try:
        return pkgutil.resolve_name(class_path)
    except (ImportError, AttributeError, ValueError):
        return None


def _link_source_exists(source: str, configs: list, argv: list[str]) -> bool:
    """Whether a :data:`LINKED` source is a parameter of the class chosen for it (:func:`chosen_class`): a masked
    method has ``patch_size``, a supervised one does not, and then its Transformer encoder's own ``patch_size`` is
    the one to set. Unknown classes count as having it."""
    import inspect

    cls = chosen_class(source.rsplit(".init_args.", 1)[0], configs, argv)  # model.init_args.patch_size -> model
    try:
        return cls is None or source.rsplit(".", 1)[1] in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True


def _with_run_name(value, name: str):
    """``value`` (a string, or nested lists/dicts/namespaces of them) with :data:`RUN_NAME` replaced by ``name``."""
    from jsonargparse import Namespace

    if isinstance(value, str):
        return value.replace(RUN_NAME, name)
    if isinstance(value, list):
        return [_with_run_name(v, name) for v in value]
    if isinstance(value, Namespace):
        return Namespace(**{k: _with_run_name(v, name) for k, v in vars(value).items()})
    if isinstance(value, dict):
        return {k: _with_run_name(v, name) for k, v in value.items()}
    return value


def _without_wandb_if_missing(loggers):
    """Drop W&B loggers, with one warning, when the ``wandb`` package is not installed (CSV logging goes on)."""
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        return loggers
    specs = loggers if isinstance(loggers, list) else [loggers]
    kept = [s for s in specs if not str(getattr(s, "get", lambda *_: "")("class_path", "")).endswith("WandbLogger")]
    if len(kept) == len(specs):
        return loggers
    warnings.warn("wandb is not installed: W&B logging is off for this run (pip install wandb to turn it on)",
                  stacklevel=2)
    if not isinstance(loggers, list):
        return False
    return kept or False


_NOISE = re.compile(r"^(- )*(Subtypes:|Given value type:|Given value:|Errors:|Does not validate against any of the "
                    r"Union subtypes|Expected a <class 'NoneType'>)")


def short_error(message: str) -> str:
    """A jsonargparse error on one line: the nested 'Parser key ...' chain without the union bookkeeping."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [re.sub(r"^(- )+", "", line).strip() for line in lines if line and not _NOISE.match(line)]
    return " ".join(kept) or message.strip()


def build_cli(args: list[str] | None = None, run: bool = True) -> AudioSSLCLI:
    return AudioSSLCLI(
        BaseMethod,
        FoldAudioDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=AudioSSLSaveConfig,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


_CURRENT_TOOL: str | None = None
"""The project tool running now (``cv``, ``probe``...), which builds Lightning CLIs without a subcommand: their
argument errors name ``audio-ssl <tool>``."""

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES})
"""Write errors reported by :func:`main` in one line (full disk, read-only file system, quota, permissions)."""


def _quiet_after_fatal_error() -> None:
    """After a fatal disk error, the one useful line is ours: silence the asyncio 'socket.send() raised exception'
    warnings that W&B's service connection repeats while the process shuts down."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> None:
    from audio_ssl.data.audio import AudioDecodeError
    from audio_ssl.data.paths import DatasetNotFoundError
    from audio_ssl.utils.run_logging import UnwritableFolderError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(top_level_help())
        return
    if argv[0] in ("--version", "-V"):
        from audio_ssl.utils.provenance import version_string

        print(version_string())
        return
    if argv[0] in TOOLS:
        import importlib

        global _CURRENT_TOOL
        _CURRENT_TOOL = argv[0]
        try:
            importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        finally:
            _CURRENT_TOOL = None
        return
    if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        sys.stderr.write(f"audio-ssl: error: unknown command {argv[0]!r}; the commands are "
                         f"{', '.join([*LIGHTNING_COMMANDS, *TOOLS])}\nsee audio-ssl --help\n")
        raise SystemExit(2)
    try:
        build_cli(argv)
    except (DatasetNotFoundError, UntrainedWeightsError, RunFolderError, UnwritableFolderError) as err:
        sys.stderr.write(f"audio-ssl: error: {err}\n")
        raise SystemExit(2) from None
    except (AudioDecodeError, FloatingPointError) as err:  # a bad recording (or non-finite values) named
        if os.environ.get("AUDIO_SSL_TRACEBACK"):
            raise
        sys.stderr.write(f"audio-ssl: error: {err}\n(set AUDIO_SSL_TRACEBACK=1 for the traceback)\n")
        raise SystemExit(2) from None
    except OSError as err:
        if not isinstance(err, CheckpointWriteError) and err.errno not in DISK_ERRNOS:
            raise
        _quiet_after_fatal_error()
        sys.stderr.write(f"audio-ssl: error: {err.strerror if isinstance(err, CheckpointWriteError) else err}\n")
        raise SystemExit(1) from None
    except Exception as err:
        if not getattr(err, "audio_ssl_config_error", False):
            raise
        command = argv[0] if argv[0] in LIGHTNING_COMMANDS else ""
        prog = f"audio-ssl {command}".strip()
        sys.stderr.write(f"{prog}: error: {short_error(str(err))}\nsee {prog} --help\n")
        raise SystemExit(2) from None


__all__ = ["AudioSSLCLI", "UntrainedWeightsError", "build_cli", "main", "require_trained_weights", "top_level_help"]


if __name__ == "__main__":
    main()
