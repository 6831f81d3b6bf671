"""CLAP zero-shot classification as an ``audio-ssl cv`` pipeline: no training, every held-out fold scored.

A config (``experiments/zoo/clap_zeroshot.yaml``)::

    pipeline: clap_zeroshot
    model: laion/clap-htsat-unfused     # Hub id or a local folder (see audio_ssl.models.clap.load_clap)
    revision: null                      # Hub branch/tag/commit
    template: "This is a sound of {label}."
    batch_size: 16                      # clips per forward pass
    device: auto                        # cuda if available, else cpu
    max_clips: null                     # N: score only N clips of each held-out fold (CPU pipeline checks)
    data: {class_path: audio_ssl.data.ESC50DataModule, init_args: {sample_rate: 16000}}

For held-out fold ``k`` the data module's ``test`` split (fold ``k``; the other folds are not read) is scored
against one prompt per class: the dataset's class name as words (``chirping_birds`` -> ``chirping birds``,
:func:`~audio_ssl.models.clap.class_name_to_label`) put into ``template``. Each clip is passed at its true
length (the data module's zero padding of short clips is dropped) and resampled from the data module's rate
to the model's (48 kHz) by the project's resampler; the clip length must not exceed the model's
``max_length_s`` (10 s for LAION-CLAP). Since nothing is trained, the folds differ only in their clips, and the
mean and sample std over folds describe how the accuracy varies between them.

``max_clips: N`` keeps N clips of each held-out fold, taken round-robin over the classes in metadata order (the
first clip of every class, then the second, ...), so a few clips still cover the classes; it is recorded in the
protocol column, the details and the dataset description (whose clip set is then the union of these subsets,
so the fold bookkeeping stays exact). The model is loaded once per process and shared by the folds.

Its keys are set with ``audio-ssl cv --pipeline-set KEY=VALUE``, as every pipeline's (``--pipeline-set
max_clips=20``); ``audio-ssl cv --set KEY=VALUE`` overrides apply to this config too (``--set model=DIR``,
``--set data.init_args.data_dir=DIR``, ``--set max_clips=20``; a relative folder is taken from the working
directory, as ``data_dir`` is); see
:func:`~audio_ssl.evaluation.run_config.apply_set_overrides`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.data.datasets import ClipDataset
from audio_ssl.evaluation.baselines import build_datamodule
from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldContext,
    FoldOutput,
    ResultDescription,
    classification_metrics,
    clips_digest,
    predictions_frame,
)
from audio_ssl.evaluation.probe import resolve_device
from audio_ssl.evaluation.registry import register_pipeline
from audio_ssl.evaluation.run_config import apply_set_overrides
from audio_ssl.models.clap import (
    DEFAULT_MODEL,
    DEFAULT_TEMPLATE,
    ClapZeroShot,
    check_labels,
    class_name_to_label,
    load_clap,
    prompts_for,
)

log = logging.getLogger(__name__)

__all__ = ["CONFIG_KEYS", "clap_zeroshot_task", "round_robin_subset", "score_clips"]

CONFIG_KEYS = {"pipeline", "model", "revision", "template", "batch_size", "device", "max_clips", "data"}
VARIANT = "clap_zeroshot"
_MODELS: dict[tuple, ClapZeroShot] = {}


def round_robin_subset(labels: Sequence[int], max_clips: int | None) -> list[int]:
    """Indices (ascending) of at most ``max_clips`` rows: the first row of every class, then the second, ...
    (classes in label order, rows in their given order). ``None``: every row."""
    labels = [int(x) for x in labels]
    if max_clips is None or max_clips >= len(labels):
        return list(range(len(labels)))
    seen: dict[int, int] = {}
    rank = []
    for label in labels:
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    order = sorted(range(len(labels)), key=lambda i: (rank[i], labels[i], i))
    return sorted(order[:max_clips])


def score_clips(clap: ClapZeroShot, dataset: ClipDataset | Subset, sample_rate: int, text_embeds: torch.Tensor,
                batch_size: int = 16) -> np.ndarray:
    """Zero-shot probabilities [N, L] (float32) of the clips of ``dataset`` (a :class:`ClipDataset` built with
    ``random_crop=False``, or a ``Subset`` of one) against ``text_embeds`` [L, D].

    Each clip is cut back to its true length (at most the dataset's clip length: the cache's length of the file),
    so the zero padding of short clips does not reach the model, which repeats short clips instead."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    rows = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(base)))
    if base.random_crop:
        raise ValueError("score_clips needs deterministic crops: build the fold with random_crop=False")
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        audio = torch.stack([base[i]["audio"] for i in chunk]).float()
        lengths = [min(int(base.cache.lengths[int(base.positions[i])]), base.clip_samples) for i in chunk]
        probs = clap.probabilities(clap.audio_embeddings(audio, sample_rate, lengths), text_embeds)
        out.append(probs.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(text_embeds)), np.float32)


def _model(source: str, revision: str | None, device: torch.device) -> ClapZeroShot:
    key = (source, revision, str(device))
    if key not in _MODELS:
        _MODELS.clear()  # one model in memory at a time
        _MODELS[key] = load_clap(source, revision=revision, device=device)
    return _MODELS[key]


def _check_config(config: dict, source: str) -> dict:
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for pipeline clap_zeroshot; allowed: {sorted(CONFIG_KEYS)}")
    if "data" not in config:
        raise ValueError(f"{source}: a clap_zeroshot config needs a 'data' block (class_path + init_args)")
    model = config.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"{source}: 'model' must be a Hub id or a folder, got {model!r}")
    max_clips = config.get("max_clips")
    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1):
        raise ValueError(f"{source}: 'max_clips' must be a positive integer or null, got {max_clips!r}")
    batch_size = config.get("batch_size", 16)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{source}: 'batch_size' must be a positive integer, got {batch_size!r}")
    template = config.get("template", DEFAULT_TEMPLATE)
    try:
        prompts_for(["x"], template)
    except ValueError as err:
        raise ValueError(f"{source}: 'template': {err}") from None
    return {"model": model.strip(), "revision": config.get("revision"), "template": template,
            "batch_size": batch_size, "device": str(config.get("device", "auto")), "max_clips": max_clips}


def _subset_description(dm: FoldAudioDataModule, max_clips: int) -> DatasetDescription:
    """The dataset as scored with ``max_clips``: the union over folds of each fold's round-robin subset (from the
    metadata, so no other fold is decoded)."""
    meta = dm._metadata()
    paths: list[str] = []
    for fold in sorted(int(f) for f in meta["fold"].unique()):
        rows = meta[meta["fold"] == fold]
        paths += [rows["path"].iloc[i] for i in round_robin_subset(rows["label"].tolist(), max_clips)]
    return DatasetDescription(name=dm.dataset_name, num_folds=int(dm.num_folds), num_clips=len(paths),
                              clips_digest=clips_digest(paths), class_names=list(dm.class_names),
                              sample_rate=int(dm.sample_rate), clip_seconds=float(dm.clip_seconds))


@register_pipeline("clap_zeroshot")
def clap_zeroshot_task(context: FoldContext) -> dict[str, FoldOutput]:
    """Score the held-out ``context.fold`` zero-shot with CLAP; returns ``{"clap_zeroshot": FoldOutput}``."""
    config = apply_set_overrides(context.config, context.overrides, context.source)
    settings = _check_config(config, context.source)
    start = time.perf_counter()
    try:
        dm = build_datamodule(config["data"], context.fold)
    except TypeError as err:
        raise ValueError(f"{context.source}: the 'data' block cannot be instantiated ({err})") from err
    dm.prepare_data()
    class_names = list(dm.class_names)
    labels = check_labels([class_name_to_label(n) for n in class_names], f"{dm.metadata_path} class names")
    prompts = prompts_for(labels, settings["template"])
    device = resolve_device(settings["device"])
    clap = _model(settings["model"], settings["revision"], device)
    if dm.clip_seconds > clap.max_seconds:
        raise ValueError(f"{context.source}: data clip_seconds={dm.clip_seconds:g} is longer than the "
                         f"{clap.max_seconds:g} s {settings['model']} sees at once: set "
                         f"data.init_args.clip_seconds <= {clap.max_seconds:g}")
    test = dm.split_dataset("test")
    keep = round_robin_subset(test.labels.tolist(), settings["max_clips"])
    fold_set = test if len(keep) == len(test) else Subset(test, keep)
    files = [test.files[i] for i in keep]
    targets = test.labels[keep]

    score_start = time.perf_counter()
    text_embeds = clap.text_embeddings(prompts)
    probs = score_clips(clap, fold_set, int(dm.sample_rate), text_embeds, settings["batch_size"])
    seconds = time.perf_counter() - score_start
    log.info("fold %d: %d clips scored zero-shot in %.1f s (%.2f clips/s)", context.fold, len(keep), seconds,
             len(keep) / seconds)

    max_clips = settings["max_clips"]
    dataset = DatasetDescription.of(dm) if max_clips is None else _subset_description(dm, max_clips)
    protocol = "zero-shot (class-name prompts, no training)"
    if max_clips is not None:
        protocol += f"; pipeline check: {max_clips} clips per fold"
    details = {"model": settings["model"], "revision": settings["revision"], "template": settings["template"],
               "prompts": prompts, "max_clips": max_clips, "test_clips": len(keep), "fold_clips": len(test),
               "logit_scale": clap.logit_scale, "model_sample_rate": clap.sample_rate,
               "data_sample_rate": int(dm.sample_rate), "batch_size": settings["batch_size"],
               "scoring_time_s": seconds, "clips_per_s": len(keep) / seconds if seconds > 0 else None}
    description = ResultDescription(
        method="CLAP zero-shot", encoder=clap.describe(), pretraining_data=f"see the model card of {settings['model']}",
        transductive=False, protocol=protocol, epochs=0, device=str(device),
        wall_time_s=time.perf_counter() - start, dataset=dataset, details=details)
    return {VARIANT: FoldOutput(classification_metrics(targets, probs),
                                predictions_frame(files, targets, probs, class_names), description)}
