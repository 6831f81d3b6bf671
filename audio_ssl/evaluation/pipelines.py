"""The Lightning pipelines of ``audio-ssl cv``: ``lightning`` (a plain Lightning YAML: fit on the training folds,
test the final weights on the held-out fold) and the pretrain-then-evaluate ``pretrain_probe`` and
``pretrain_finetune``. Each is a fold task (:mod:`audio_ssl.evaluation.fold`) built from Lightning stages
(:mod:`audio_ssl.evaluation.lightning_stage`).

Pipeline config format
----------------------
A pipeline config is a YAML with a top-level ``pipeline:`` key; paths are relative to the YAML's folder::

    pipeline: pretrain_probe            # or pretrain_finetune
    pretrain: simclr.yaml               # a Lightning YAML (any BaseMethod with embed(); labels only feed
                                        #   its online-probe / kNN monitors, never the encoder), or a list:
                                        #   a recipe then overlays, [simclr.yaml, cpu/simclr.yaml]
    size: cpu                           # optional: add each stage recipe's overlay <recipe folder>/cpu/<recipe>
    pretrain_overrides: ["--trainer.max_epochs", "100"]   # optional, extra CLI args for pretraining
    transductive: false                 # true: pretrain on every fold's audio, the test fold included;
                                        #   results are marked "pretraining saw test-fold audio"
    probe: linear_probe.yaml            # pretrain_probe: probe settings, a YAML path or an inline mapping
                                        #   (see experiments/linear_probe.yaml); default settings if absent
    finetune: supervised_cpu.yaml       # pretrain_finetune: the supervised Lightning YAML to fine-tune with
                                        #   (its encoder must match the pretrained one); a list stacks, as above
    finetune_overrides: []              # optional, extra CLI args for both fine-tuning runs

``audio-ssl cv --config PIPELINE.yaml`` runs, for each held-out fold ``k`` (folder ``fold{k}/``):

- ``pretrain/``: the pretraining YAML fitted with ``test_fold=k`` (its training set: the other folds); weights in
  ``pretrain/final.ckpt``. With ``transductive: true`` the training set is every fold whatever ``k`` is, so the
  pretraining runs once, in ``<run>/pretrain_transductive/``, and every fold probes the same weights (its wall
  time is counted in the first fold only). The untrained model (the same config
  instantiated with the config's ``seed_everything``, before any training) is kept as the random baseline.
- ``pretrain_probe``: embeddings of the training folds (the data module's ``train`` split: every fold but ``k``
  and ``val_fold``) and of fold ``k`` from ``module.embed`` (centre crops,
  no augmentation, inference mode, cached in ``embeddings/``), then a logistic-regression probe trained on
  the training folds and tested on fold ``k``, for the pretrained and the untrained encoder. Variants
  ``pretrained`` and ``random_init``.
- ``pretrain_finetune``: the ``finetune`` YAML fitted on the training folds and tested on fold ``k`` (final
  weights) twice: from the pretrained encoder (``--model.init_args.init_encoder_from pretrain/final.ckpt``,
  folder ``finetune_pretrained/``) and from random init (``finetune_random_init/``). Variants ``pretrained``
  and ``random_init``.

Run-level overrides (``audio-ssl cv --set``/trailing args) go to every Lightning run, after the stage's own.
Any pipeline key can be set from the command line, ``audio-ssl cv --config experiments/simclr_probe.yaml
--pipeline-set size=cpu --pipeline-set transductive=true`` (the run is then named ``simclr_probe_cpu_transductive``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from audio_ssl.evaluation.fold import TRANSDUCTIVE_NOTE, DatasetDescription, FoldContext, FoldOutput
from audio_ssl.evaluation.lightning_stage import (
    FINAL_WEIGHTS,
    describe_encoder,
    fit_and_test,
    fit_stage,
    lightning_args,
    resolved_config_text,
)
from audio_ssl.evaluation.probe import fold_groups, load_probe_config, probe_fold, resolve_device
from audio_ssl.evaluation.registry import DEFAULT_VARIANT, register_pipeline
from audio_ssl.evaluation.run_config import stage_configs
from audio_ssl.evaluation.tracking import finish_wandb

PIPELINE_KEYS = {
    "pretrain_probe": {"pipeline", "pretrain", "pretrain_overrides", "transductive", "probe", "size"},
    "pretrain_finetune": {"pipeline", "pretrain", "pretrain_overrides", "transductive", "finetune",
                          "finetune_overrides", "size"},
}
RANDOM_METHOD = "none (random init)"


@register_pipeline("lightning")
def lightning_task(context: FoldContext) -> dict[str, FoldOutput]:
    """A plain Lightning YAML: fit on the training folds, test the final weights on the held-out fold."""
    args = lightning_args(context, [context.config_path, *context.overlays], context.work_dir, stage="fit")
    _, output = fit_and_test(args + list(context.overrides), context.work_dir, label="fit")
    return {DEFAULT_VARIANT: output}


def check_pipeline_config(config: dict, pipeline: str, source: str = "<config>") -> None:
    """Reject unknown keys (typos) and malformed entries, naming the file (``source``) and the key."""
    unknown = sorted(k for k in config if k not in PIPELINE_KEYS[pipeline])
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for pipeline {pipeline}; "
                         f"allowed: {sorted(PIPELINE_KEYS[pipeline])}")
    for key in ("pretrain_overrides", "finetune_overrides"):
        value = config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ValueError(f"{source}: '{key}' must be a list of command-line arguments, got {value!r}")
    if not isinstance(config.get("transductive", False), bool):
        raise ValueError(f"{source}: 'transductive' must be true or false, got {config['transductive']!r}")


@dataclass
class Pretrained:
    """The outcome of the pretraining stage of one fold."""

    cli: object  # the Lightning CLI: .model (trained), .datamodule
    untrained: object  # the same model as instantiated, before training
    checkpoint: Path
    epochs: int
    wall_time_s: float
    pretraining_data: str
    transductive: bool
    config_text: str


def pretrain_stage(context: FoldContext) -> Pretrained:
    """Fit the ``pretrain`` YAML with ``test_fold=context.fold`` (resumable), keeping a copy of the untrained
    model."""
    config = context.config
    paths = stage_configs(config, "pretrain", context.config_path)
    transductive = bool(config.get("transductive", False))
    # Transductive pretraining sees every fold's audio whatever the held-out fold, so its weights do not
    # depend on the fold: it is trained once (by the first fold that needs it) and shared by all folds.
    work_dir = context.work_dir
    stage_dir = work_dir.parent / "pretrain_transductive" if transductive else work_dir / "pretrain"
    args = (lightning_args(context, paths, stage_dir, stage="pretrain")
            + ["--data.init_args.transductive", "true" if transductive else "false"]
            + [str(a) for a in config.get("pretrain_overrides", [])] + list(context.overrides))
    holder: dict = {}
    start = time.perf_counter()
    cli, epochs = fit_stage(args, stage_dir, before_fit=lambda c: holder.update(untrained=copy.deepcopy(c.model)))
    folds = cli.datamodule.split_folds("pretrain")
    data = f"{cli.datamodule.dataset_name} folds {','.join(map(str, folds))}"
    if transductive:
        data += f" ({TRANSDUCTIVE_NOTE})"
    return Pretrained(cli, holder["untrained"], stage_dir / FINAL_WEIGHTS, epochs, time.perf_counter() - start,
                      data, transductive, resolved_config_text(cli))


@register_pipeline("pretrain_probe")
def pretrain_probe(context: FoldContext) -> dict[str, FoldOutput]:
    """Pretrain, then a linear probe on frozen embeddings of the pretrained and of the untrained encoder."""
    config, fold = context.config, context.fold
    check_pipeline_config(config, "pretrain_probe", context.source)
    probe_config = load_probe_config(config.get("probe"), context.config_dir)
    pre = pretrain_stage(context)
    dm = pre.cli.datamodule
    train_set, test_set = dm.split_dataset("train"), dm.split_dataset("test")
    groups = fold_groups(dm, train_set)
    dataset = DatasetDescription.of(dm)
    method = type(pre.cli.model).__name__
    outputs = {}
    for variant, module in (("pretrained", pre.cli.model), ("random_init", pre.untrained)):
        output = probe_fold(module, train_set, test_set, dm.num_classes, dm.class_names, probe_config, groups,
                            context.work_dir / "embeddings", tag=f"{variant}-fold{fold}")
        pretrained = variant == "pretrained"
        output.description = dataclasses.replace(
            output.description,
            method=method if pretrained else RANDOM_METHOD,
            encoder=describe_encoder(module),
            pretraining_data=pre.pretraining_data if pretrained else "none",
            transductive=pre.transductive and pretrained,
            protocol="linear probe (frozen encoder)",
            epochs=pre.epochs if pretrained else 0,
            wall_time_s=output.description.wall_time_s + (pre.wall_time_s if pretrained else 0.0),
            configs={"pretrain": pre.config_text},
            dataset=dataset,
            device=str(resolve_device(probe_config.device)),
            details={**output.description.details, "random_init_seed": pre.cli.config.get("seed_everything")},
        )
        outputs[variant] = output
    return outputs


@register_pipeline("pretrain_finetune")
def pretrain_finetune(context: FoldContext) -> dict[str, FoldOutput]:
    """Pretrain, then fine-tune the ``finetune`` YAML from the pretrained encoder and from random init."""
    config = context.config
    check_pipeline_config(config, "pretrain_finetune", context.source)
    finetune = stage_configs(config, "finetune", context.config_path)
    pre = pretrain_stage(context)
    finish_wandb()
    method = type(pre.cli.model).__name__
    outputs = {}
    for variant in ("pretrained", "random_init"):
        pretrained = variant == "pretrained"
        stage_dir = context.work_dir / f"finetune_{variant}"
        init = str(pre.checkpoint) if pretrained else "null"
        args = (lightning_args(context, finetune, stage_dir, stage=f"finetune-{variant}")
                + [str(a) for a in config.get("finetune_overrides", [])]
                + ["--model.init_args.init_encoder_from", init] + list(context.overrides))
        cli, output = fit_and_test(args, stage_dir, label=f"finetune_{variant}")
        d = output.description
        output.description = dataclasses.replace(
            d,
            method=method if pretrained else RANDOM_METHOD,
            pretraining_data=pre.pretraining_data if pretrained else "none",
            transductive=pre.transductive and pretrained,
            protocol=f"fine-tune ({type(cli.model).__name__})",
            epochs=f"{pre.epochs}+{d.epochs}" if pretrained else d.epochs,
            configs={**({"pretrain": pre.config_text} if pretrained else {}), **d.configs},
            wall_time_s=d.wall_time_s + (pre.wall_time_s if pretrained else 0.0),
        )
        outputs[variant] = output
        finish_wandb()
    return outputs
