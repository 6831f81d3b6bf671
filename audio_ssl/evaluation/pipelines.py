"""The Lightning pipelines of ``audio-ssl cv``: ``lightning`` (a plain Lightning YAML: fit on the training folds,
test the final weights on the held-out fold), the pretrain-then-evaluate ``pretrain_probe`` and
``pretrain_finetune``, and ``frozen_probe`` (a model whose weights come from outside, probed without training).
Each is a fold task (:mod:`audio_ssl.evaluation.fold`) built from Lightning stages
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
    probe: linear_probe.yaml            # pretrain_finetune, optional: also probe the same pretrained weights

    pipeline: frozen_probe
    model: efficientnet_b0_finetune.yaml   # a Lightning YAML whose model holds pretrained weights once built
                                           #   (or names them in init_encoder_from); its embed() is probed
    model_overrides: []                    # optional, extra CLI args for instantiating the model
    random_init_overrides: ["--model.init_args.encoder", "{\"init_args\": {\"pretrained\": null}}"]
                                           # REQUIRED: CLI args that build the same architecture untrained
    probe: ../linear_probe.yaml            # probe settings, as pretrain_probe's
    max_clips: null                        # optional: at most this many clips per fold (class-balanced), a
                                           #   pipeline check recorded in the results

``audio-ssl cv --config PIPELINE.yaml`` runs, for each held-out fold ``k`` (folder ``fold{k}/``):

- ``pretrain/``: the pretraining YAML fitted with ``test_fold=k`` (its training set: the other folds); weights in
  ``pretrain/final.ckpt``. With ``transductive: true`` the training set is every fold whatever ``k`` is, so the
  pretraining runs once, in ``<run>/pretrain_transductive/``, and every fold probes the same weights (its wall
  time is counted in the first fold only). The untrained model (the same config
  instantiated with the config's ``seed_everything``, before any training) is kept as the random baseline.
- ``pretrain_probe``: embeddings of the training folds (the data module's ``train`` split: every fold but ``k``
  and ``val_fold``) and of fold ``k`` from ``module.embed`` (centre crops,
  no augmentation, inference mode, cached per fold in ``<run>/embeddings/`` by
  :mod:`audio_ssl.evaluation.embeddings`, so weights shared by several held-out folds, such as the seeded
  untrained model's, embed each clip once), then a logistic-regression probe trained on the training folds and
  tested on fold ``k``, for the pretrained and the untrained encoder. Variants ``pretrained`` and ``random_init``.
- ``frozen_probe``: no training. The ``model`` YAML is instantiated with ``test_fold=k`` (its data module gives
  the folds), and again with ``random_init_overrides`` (the control: the same architecture untrained; the same
  seeded weights for every fold). Both are probed as in ``pretrain_probe`` (:func:`probe_frozen`), with one
  embedding cache for the run, so each fold's clips go through each model once over all held-out folds.
  The results name where the weights came from. The BEATs probe (``pipeline: beats_probe``) is this pipeline
  on a ``BEATsClassifier`` (:mod:`audio_ssl.evaluation.beats_probe`).
- ``pretrain_finetune``: the ``finetune`` YAML fitted on the training folds and tested on fold ``k`` (final
  weights) twice: from the pretrained encoder (``--model.init_args.init_encoder_from pretrain/final.ckpt``,
  folder ``finetune_pretrained/``) and from random init (``finetune_random_init/``). Variants ``pretrained``
  and ``random_init``. With a ``probe`` key the same pretrained weights (one pretraining per fold) and the
  untrained model are also linear-probed as in ``pretrain_probe``: variants ``probe_pretrained``,
  ``probe_random_init``, ``finetune_pretrained`` and ``finetune_random_init`` (a seed-table row's probe and
  fine-tune from one run).

Run-level overrides (``audio-ssl cv --set``/trailing args) go to every Lightning run, after the stage's own.
Any pipeline key can be set from the command line, ``audio-ssl cv --config experiments/simclr_probe.yaml
--pipeline-set size=cpu --pipeline-set transductive=true`` (the run is then named ``simclr_probe_cpu_transductive``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from audio_ssl.evaluation.embeddings import EmbeddingCache, resolve_device
from audio_ssl.evaluation.fold import TRANSDUCTIVE_NOTE, DatasetDescription, FoldContext, FoldOutput
from audio_ssl.evaluation.lightning_stage import (
    FINAL_WEIGHTS,
    describe_encoder,
    fit_and_test,
    fit_stage,
    lightning_args,
    resolved_config_text,
)
from audio_ssl.evaluation.probe import ProbeConfig, fold_groups, load_probe_config, probe_fold
from audio_ssl.evaluation.registry import DEFAULT_VARIANT, register_pipeline
from audio_ssl.evaluation.run_config import stage_configs
from audio_ssl.evaluation.tracking import finish_wandb

PIPELINE_KEYS = {
    "pretrain_probe": {"pipeline", "pretrain", "pretrain_overrides", "transductive", "probe", "size"},
    "pretrain_finetune": {"pipeline", "pretrain", "pretrain_overrides", "transductive", "finetune",
                          "finetune_overrides", "probe", "size"},
    "frozen_probe": {"pipeline", "model", "model_overrides", "random_init_overrides", "probe", "max_clips"},
}
RANDOM_METHOD = "none (random init)"


@register_pipeline("lightning")
def lightning_task(context: FoldContext) -> dict[str, FoldOutput]:
    """A plain Lightning YAML: fit on the training folds, test the final weights on the held-out fold."""
    refuse_non_classifier([context.config_path, *context.overlays])
    args = lightning_args(context, [context.config_path, *context.overlays], context.work_dir, stage="fit")
    _, output = fit_and_test(args + list(context.overrides), context.work_dir, label="fit")
    return {DEFAULT_VARIANT: output}


def refuse_non_classifier(configs: list[Path]) -> None:
    """Raise ValueError before any training when the stacked Lightning YAMLs build a method that does not classify
    (``classifies = False``: SimCLR, BYOL-A, masked prediction): the fold's test would have nothing to score."""
    import yaml

    from audio_ssl.cli import chosen_class

    loaded = [(Path(path), yaml.safe_load(Path(path).read_text()) or {}) for path in configs]
    method = chosen_class("model", [config for _, config in loaded])
    if method is None or getattr(method, "classifies", True) is not False:
        return  # a classifier, or a class path the Lightning CLI will report itself
    source = [path for path, config in loaded if "class_path" in (config.get("model") or {})][-1]
    raise ValueError(f"{source}: {method.__name__} does not classify (classifies = False), so a fold has nothing to "
                     f"test: evaluate it with its pretrain-then-probe pipeline (e.g. experiments/{source.stem}_probe.yaml, "
                     "pipeline: pretrain_probe)")


def check_pipeline_config(config: dict, pipeline: str, source: str = "<config>") -> None:
    """Reject unknown keys (typos) and malformed entries, naming the file (``source``) and the key."""
    unknown = sorted(k for k in config if k not in PIPELINE_KEYS[pipeline])
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for pipeline {pipeline}; "
                         f"allowed: {sorted(PIPELINE_KEYS[pipeline])}")
    for key in ("pretrain_overrides", "finetune_overrides", "model_overrides", "random_init_overrides"):
        value = config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ValueError(f"{source}: '{key}' must be a list of command-line arguments, got {value!r}")
    max_clips = config.get("max_clips")
    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1):
        raise ValueError(f"{source}: 'max_clips' must be a positive integer or null, got {max_clips!r}")
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


def probe_pretrained(context: FoldContext, pre: Pretrained, probe_config: ProbeConfig,
                     names: tuple[str, str] = ("pretrained", "random_init")) -> dict[str, FoldOutput]:
    """The linear probe on frozen embeddings of the fold's pretrained model and of its untrained copy, as the
    variants ``names`` (pretrained, random init)."""
    dm = pre.cli.datamodule
    train_set, test_set = dm.split_dataset("train"), dm.split_dataset("test")
    groups = fold_groups(dm, train_set)
    dataset = DatasetDescription.of(dm)
    method = type(pre.cli.model).__name__
    outputs = {}
    # One cache folder for the run: the untrained model (seeded: the same weights for every fold) and
    # transductive pretraining (one model for every fold) embed each fold once over all held-out folds.
    cache_dir = context.work_dir.parent / "embeddings"
    for variant, module, pretrained in ((names[0], pre.cli.model, True), (names[1], pre.untrained, False)):
        output = probe_fold(module, train_set, test_set, dm.num_classes, dm.class_names, probe_config, groups,
                            cache_dir, tag="pretrained" if pretrained else "random_init")
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


@register_pipeline("pretrain_probe")
def pretrain_probe(context: FoldContext) -> dict[str, FoldOutput]:
    """Pretrain, then a linear probe on frozen embeddings of the pretrained and of the untrained encoder."""
    config = context.config
    check_pipeline_config(config, "pretrain_probe", context.source)
    probe_config = load_probe_config(config.get("probe"), context.config_dir)
    return probe_pretrained(context, pretrain_stage(context), probe_config)


@register_pipeline("pretrain_finetune")
def pretrain_finetune(context: FoldContext) -> dict[str, FoldOutput]:
    """Pretrain, then fine-tune the ``finetune`` YAML from the pretrained encoder and from random init; with a
    ``probe`` key also the linear probe of the same pretrained weights and of the untrained model (variants
    ``probe_pretrained``, ``probe_random_init``, ``finetune_pretrained``, ``finetune_random_init``; without it
    ``pretrained`` and ``random_init``)."""
    config = context.config
    check_pipeline_config(config, "pretrain_finetune", context.source)
    finetune = stage_configs(config, "finetune", context.config_path)
    probe_config = load_probe_config(config["probe"], context.config_dir) if "probe" in config else None
    pre = pretrain_stage(context)
    finish_wandb()
    method = type(pre.cli.model).__name__
    outputs = probe_pretrained(context, pre, probe_config, ("probe_pretrained", "probe_random_init")) \
        if probe_config is not None else {}
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
        outputs[f"finetune_{variant}" if probe_config is not None else variant] = output
        finish_wandb()
    return outputs


# ---------------------------------------------------------------------------------------------- frozen_probe
def limit_clips(labels: np.ndarray, groups: np.ndarray, max_clips: int | None = None,
                clips_per_class: int | None = None) -> np.ndarray:
    """Row indices (sorted) that keep, within each group (fold), the first ``clips_per_class`` clips of each class
    and then at most ``max_clips`` clips, class-balanced (the first clip of every class, then the second, ...).
    ``None`` for both keeps every row."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    keep = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        rank = np.zeros(len(rows), dtype=np.int64)
        seen: dict[int, int] = {}
        for i, label in enumerate(labels[rows].tolist()):
            rank[i] = seen.get(label, 0)
            seen[label] = rank[i] + 1
        if clips_per_class is not None:
            rows, rank = rows[rank < clips_per_class], rank[rank < clips_per_class]
        if max_clips is not None:
            rows = rows[np.lexsort((rows, rank))[:max_clips]]
        keep.append(np.sort(rows))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def probe_frozen(models: dict[str, torch.nn.Module], datamodule, folds: Sequence[int], probe: ProbeConfig,
                 cache_dir: Path | None, *, method: str, pretraining_data: str, max_clips: int | None = None,
                 clips_per_class: int | None = None, bf16: bool = False, configs: dict[str, str] | None = None,
                 details: dict | None = None) -> dict[int, dict[str, FoldOutput]]:
    """The frozen-encoder probe: for each held-out fold ``k`` of ``folds`` and each model of ``models``
    (``{"pretrained": m, "random_init": control}``), the linear probe (:func:`~audio_ssl.evaluation.probe.probe_fold`)
    of ``m.embed`` trained on the data module's ``train`` split for ``k`` and tested on fold ``k``.

    One :class:`~audio_ssl.evaluation.embeddings.EmbeddingCache` per model, in ``cache_dir`` (``None``: memory
    only), so every fold's clips go through each model once over all of ``folds``. ``max_clips`` /
    ``clips_per_class`` keep part of every fold (:func:`limit_clips`; a pipeline check, recorded in ``details``).
    Models are never trained or changed. ``method`` and ``pretraining_data`` describe the pretrained variant; the
    other variants are ``none (random init)``.

    Raises ``ValueError`` when two models have the same weights (a control that is not a control).
    """
    caches = {variant: EmbeddingCache(module, cache_dir if probe.cache_embeddings else None, variant,
                                      probe.embed_batch_size, probe.device, probe.num_workers, bf16)
              for variant, module in models.items()}
    hashes = {}
    for variant, cache in caches.items():
        if cache.weights in hashes:
            raise ValueError(f"the {variant} and {hashes[cache.weights]} models have the same weights "
                             f"(state hash {cache.weights}): the control must be untrained (check "
                             "random_init_overrides) and the pretrained model must hold its weights once built")
        hashes[cache.weights] = variant
    dataset = DatasetDescription.of(datamodule)
    limits = {"max_clips": max_clips, "clips_per_class": clips_per_class}
    results: dict[int, dict[str, FoldOutput]] = {}
    for fold in folds:
        train_set = datamodule.split_dataset("train", test_fold=fold)
        test_set = datamodule.split_dataset("test", test_fold=fold)
        groups = fold_groups(datamodule, train_set)
        train_rows = limit_clips(train_set.labels, groups, max_clips, clips_per_class)
        test_rows = limit_clips(test_set.labels, np.zeros(len(test_set)), max_clips, clips_per_class)
        if len(train_rows) < len(train_set):
            train_set, groups = Subset(train_set, train_rows.tolist()), groups[train_rows]
        if len(test_rows) < len(test_set):
            test_set = Subset(test_set, test_rows.tolist())
        outputs = {}
        for variant, module in models.items():
            output = probe_fold(module, train_set, test_set, datamodule.num_classes, datamodule.class_names, probe,
                                groups, cache=caches[variant])
            pretrained = variant == "pretrained"
            output.description = dataclasses.replace(
                output.description,
                method=method if pretrained else RANDOM_METHOD,
                encoder=describe_encoder(module),
                pretraining_data=pretraining_data if pretrained else "none",
                transductive=False,
                protocol="linear probe (frozen encoder)" + ("" if max_clips is None and clips_per_class is None
                                                            else " on part of every fold (pipeline check)"),
                epochs=0,
                device=str(resolve_device(probe.device)),
                dataset=dataset,
                configs=dict(configs or {}),
                details={**output.description.details, **(details or {}), **limits,
                         "train_folds": sorted({int(g) for g in groups}), "bf16": bf16},
            )
            outputs[variant] = output
        results[fold] = outputs
    return results


def weights_source(model_config: dict, module=None) -> str:
    """Where a model's weights come from: first what the encoder of ``module`` states (``weights_source``: the hub
    id, folder or file, with any revision; HF, timm and BEATs encoders), then every non-empty ``checkpoint``,
    ``pretrained``, ``init_encoder_from``, ``weights``, ``model_name`` or ``hub_id`` entry of its resolved config,
    by its config path (a bare ``pretrained=True`` only when the encoder states nothing)."""
    keys = {"checkpoint", "pretrained", "init_encoder_from", "weights", "model_name", "hub_id"}
    encoder = getattr(module, "encoder", module)
    stated = getattr(encoder, "weights_source", None) if encoder is not None else None
    found = [f"{type(encoder).__name__} weights {stated}"] if stated else []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key in keys and value not in (None, "", False) and not isinstance(value, (dict, list)):
                    if not (stated and value is True):
                        found.append(f"{where}={value}")
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(model_config, "model")
    return "weights from outside: " + ("; ".join(found) if found else "as the model builds itself (no checkpoint "
                                                                         "or pretrained entry in its config)")


def build_frozen_model(context: FoldContext, model_path: Path, stage_args: Sequence[str]):
    """The Lightning CLI (``run=False``) of the ``model`` YAML for the held-out fold, no logger; a model whose
    config names ``init_encoder_from`` gets those encoder weights now (Lightning would load them at ``fit``)."""
    import warnings

    from audio_ssl.cli import build_cli

    args = ["--config", str(model_path), "--data.init_args.test_fold", str(context.fold),
            "--trainer.logger", "false", "--trainer.default_root_dir", str(context.work_dir),
            *map(str, stage_args), *context.overrides]
    with warnings.catch_warnings():  # `audio-ssl cv ...` has its own argv; the CLI gets `args` on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = build_cli(args, run=False)
    if getattr(cli.model, "init_encoder_from", None):
        cli.model.load_encoder_weights(cli.model.init_encoder_from)
    return cli


@register_pipeline("frozen_probe")
def frozen_probe(context: FoldContext) -> dict[str, FoldOutput]:
    """Probe a model whose weights come from outside, untrained, against the same architecture untrained."""
    config = context.config
    check_pipeline_config(config, "frozen_probe", context.source)
    if "random_init_overrides" not in config or not config["random_init_overrides"]:
        raise ValueError(f"{context.source}: a frozen_probe config needs 'random_init_overrides': the CLI arguments "
                         "that build the same architecture untrained (the control), e.g. "
                         '["--model.init_args.encoder", "{\\"init_args\\": {\\"pretrained\\": null}}"]')
    probe_config = load_probe_config(config.get("probe"), context.config_dir)
    model_path = context.resolve_path("model")
    own = [str(a) for a in config.get("model_overrides", [])]
    cli = build_frozen_model(context, model_path, own)
    control = build_frozen_model(context, model_path, own + [str(a) for a in config["random_init_overrides"]])
    model_config = cli.config.get("model")
    model_config = model_config.as_dict() if hasattr(model_config, "as_dict") else dict(model_config or {})
    result = probe_frozen(
        {"pretrained": cli.model, "random_init": control.model}, cli.datamodule, [context.fold], probe_config,
        context.work_dir.parent / "embeddings", method=type(cli.model).__name__,
        pretraining_data=weights_source(model_config, cli.model), max_clips=config.get("max_clips"),
        configs={"model": resolved_config_text(cli), "random_init": resolved_config_text(control)},
        details={"random_init_overrides": [str(a) for a in config["random_init_overrides"]],
                 "random_init_seed": control.config.get("seed_everything")})
    return result[context.fold]
