"""One Lightning stage of one fold: the CLI arguments that put it in place, a resumable fit, and a test of the
final weights on the held-out fold as a :class:`~audio_ssl.evaluation.fold.FoldOutput`.

A stage lives in its own folder (``fold{k}/``, ``fold{k}/pretrain/``, ...): ``checkpoints/`` (Lightning's, with
``last.ckpt`` to resume an interrupted fit), ``csv/`` (and W&B) logs, and ``final.ckpt`` once the fit has
finished: ``{"state_dict", "epoch", "global_step"}``, what ``init_encoder_from`` takes. A stage whose
``final.ckpt`` exists is not trained again.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldContext,
    FoldOutput,
    ResultDescription,
    classification_metrics,
    gather_clip_outputs,
    predictions_frame,
)
from audio_ssl.evaluation.tracking import logger_spec
from audio_ssl.utils.data_stall import DataStallMonitor
from audio_ssl.utils.distributed import barrier, is_rank_zero
from audio_ssl.utils.io import atomic_write
from audio_ssl.utils.provenance import CHECKPOINT_KEY

log = logging.getLogger(__name__)

FINAL_WEIGHTS = "final.ckpt"
PARALLEL_ENV = "AUDIO_SSL_CV_PARALLEL"
"""Set to N in the fold processes of ``audio-ssl cv --parallel N`` (N > 1): a stage there refuses DDP."""


def lightning_args(context: FoldContext, config_path: Path | Sequence[Path], stage_dir: Path,
                   stage: str = "fit") -> list[str]:
    """Lightning CLI arguments that put one stage of the context's fold in place: its YAML (or a recipe and its
    overlays, as consecutive ``--config`` arguments), the held-out fold, the stage's folder for checkpoints and
    logs, and its loggers. Append the stage's own overrides and then ``context.overrides``."""
    name = f"{context.run_name}-fold{context.fold}" + ("" if stage == "fit" else f"-{stage}")
    loggers = logger_spec(stage_dir, name, stage, group=context.run_name if context.wandb else None,
                          project=context.wandb_project)
    paths = [config_path] if isinstance(config_path, (str, Path)) else list(config_path)
    return [
        *[arg for path in paths for arg in ("--config", str(path))],
        "--data.init_args.test_fold", str(context.fold),
        "--trainer.default_root_dir", str(stage_dir),
        "--checkpoint.dirpath", str(stage_dir / "checkpoints"),
        "--trainer.logger", json.dumps(loggers),
    ]


def resolved_config_text(cli) -> str:
    """The fully resolved Lightning config of a CLI object, as YAML text."""
    try:
        return cli.parser.dump(cli.config, skip_check=True)
    except Exception as err:  # a config that cannot be dumped must not lose a finished run
        log.warning("could not dump the resolved config: %s", err)
        return ""


def describe_encoder(module) -> str:
    """``AudioResNet layers=(2, 2, 2, 2) widths=(16, 32, 64, 128), 0.70M params``-style description; an encoder
    with ``describe()`` names itself (``HFAudioEncoder facebook/hubert-base-ls960 (hubert), 94.37M params``,
    ``TimmCNN efficientnet_b0, 4.01M params``)."""
    encoder = getattr(module, "encoder", module)
    describe = getattr(encoder, "describe", None)
    parts = [describe() if callable(describe) else type(encoder).__name__]
    for attr in ("layers", "widths"):
        if hasattr(encoder, attr):
            parts.append(f"{attr}={tuple(getattr(encoder, attr))}")
    params = sum(p.numel() for p in encoder.parameters())
    return " ".join(parts) + f", {params / 1e6:.2f}M params"


def starting_weights(model) -> tuple[str, str]:
    """``(pretraining_data, protocol)`` of a model trained by :func:`fit_and_test`: an ``init_encoder_from``
    checkpoint, the weights an encoder states it loaded (``weights_source`` of the HF, timm and BEATs encoders: hub
    id, folder or file), or none (supervised from scratch)."""
    if getattr(model, "init_encoder_from", None):
        return "see the encoder checkpoint", "fine-tune from a pretrained encoder"
    encoder = getattr(model, "encoder", None)
    stated = getattr(encoder, "weights_source", None)
    if stated and not str(stated).startswith("random init"):
        return f"weights from outside: {type(encoder).__name__} weights {stated}", "fine-tune from a pretrained encoder"
    return "none", "supervised from scratch"


def refuse_ddp_in_parallel_folds(trainer) -> None:
    """Raise ``ValueError`` when this process is one of several folds at once (``audio-ssl cv --parallel N``,
    which sets :data:`PARALLEL_ENV`) and ``trainer`` would start DDP over several processes."""
    import os

    parallel = os.environ.get(PARALLEL_ENV)
    if parallel and trainer.world_size > 1:
        raise ValueError(f"audio-ssl cv --parallel {parallel} runs {parallel} folds at once on this machine, and this "
                         f"fold's trainer asks for DDP over {trainer.world_size} processes (trainer.devices="
                         f"{trainer.num_devices}, trainer.num_nodes={trainer.num_nodes}): run a DDP fold with "
                         "--parallel 1 (the default), or give each fold its own GPUs with --launcher submitit "
                         "--gpus-per-fold N")


def fit_stage(args: list[str], stage_dir: Path, before_fit: Callable[[object], None] | None = None):
    """Build a Lightning CLI from ``args`` and fit it, resumably: a stage whose ``final.ckpt`` exists is not
    trained again (its weights are loaded); an interrupted one continues from ``checkpoints/last.ckpt``.
    ``before_fit(cli)`` sees the freshly instantiated (untrained) model. Returns ``(cli, epochs trained)``."""
    import torch

    from audio_ssl.cli import build_cli

    with warnings.catch_warnings():  # `audio-ssl cv ...` has its own argv; the CLI gets `args` on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = build_cli(args, run=False)
    refuse_ddp_in_parallel_folds(cli.trainer)
    if before_fit is not None:
        before_fit(cli)
    final = stage_dir / FINAL_WEIGHTS
    if final.exists():
        state = torch.load(final, map_location="cpu", weights_only=True)
        cli.model.load_state_dict(state["state_dict"])
        log.info("%s: already trained, loaded %s", stage_dir, final)
        return cli, int(state.get("epoch", 0))
    last = stage_dir / "checkpoints" / "last.ckpt"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.exists() else None)
    epochs = int(cli.trainer.current_epoch)
    # DDP: every rank holds the same weights; rank 0 writes, the others wait until the file is there.
    if is_rank_zero():
        with atomic_write(final) as fh:
            torch.save({"state_dict": cli.model.state_dict(), "epoch": epochs,
                        "global_step": int(cli.trainer.global_step),
                        CHECKPOINT_KEY: cli.model.checkpoint_metadata()}, fh)
    barrier()
    return cli, epochs


def evaluate_stage(cli, description: ResultDescription | None = None) -> FoldOutput:
    """Test the CLI's model on its held-out fold with its current (final) weights; per-clip predictions from
    ``model.test_outputs`` (the method contract of :class:`~audio_ssl.methods.base.BaseMethod`).
    The output's description is ``description`` with the dataset and the device filled in."""
    import dataclasses


    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    if not model.classifies:
        raise ValueError(f"{type(model).__name__} produces no class probabilities on the test fold (classifies = "
                         "False): evaluate it with pipeline: pretrain_probe")
    datamodule.setup("test")
    test_set = datamodule.test_set
    trainer.test(model, datamodule=datamodule, verbose=False)
    outputs = model.test_outputs
    index, probs = gather_clip_outputs(outputs)  # DDP: every rank's shard (a collective); repeats dropped
    if index.tolist() != list(range(len(test_set))):
        raise RuntimeError(f"the test loop saw {len(index)} clips, not each of the {len(test_set)} test clips once")
    files = [test_set.files[i] for i in index]
    labels = test_set.labels[index]
    frame = predictions_frame(files, labels, probs, datamodule.class_names)
    description = dataclasses.replace(description or ResultDescription(),
                                      dataset=DatasetDescription.of(datamodule),
                                      device=str(trainer.strategy.root_device))
    return FoldOutput(classification_metrics(labels, probs), frame, description)


def fit_and_test(args: list[str], stage_dir: Path, label: str = "fit") -> tuple[object, FoldOutput]:
    """One supervised Lightning stage: fit (resumably) then test with the final weights. The output describes
    the model as trained here (method, encoder, protocol, epochs, wall time, and in ``details`` the mean data stall
    fraction of the fit's epochs, ``data_stall_fraction``, see :mod:`audio_ssl.utils.data_stall`); the resolved
    config is kept under ``configs[label]``."""
    start = time.perf_counter()
    cli, epochs = fit_stage(args, stage_dir)
    model = cli.model
    pretraining_data, protocol = starting_weights(model)
    description = ResultDescription(
        method=type(model).__name__,
        encoder=describe_encoder(model),
        pretraining_data=pretraining_data,
        transductive=False,
        protocol=protocol,
        epochs=epochs,
        configs={label: resolved_config_text(cli)},
    )
    stall = DataStallMonitor.of(cli.trainer)
    if stall is not None and stall.summary() is not None:  # a stage trained here (not loaded from final.ckpt)
        description.details.update(stall.summary())
    output = evaluate_stage(cli, description)
    output.description.wall_time_s = time.perf_counter() - start
    return cli, output
