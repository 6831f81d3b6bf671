"""Frozen-BEATs linear probe with features extracted once per fold and cached on disk.

The frozen encoder is the expensive part (~90M parameters), so each fold's clips go through it exactly
once: the mean-pooled features (``BEATsClassifier.embed``, optionally several layers concatenated, computed
by the project's :func:`~audio_ssl.evaluation.probe.extract_embeddings`) are saved as ``.npz`` under a name
keyed by the checkpoint's sha256, the dataset, the fold, the layers, the clip length and the list of clips.
Every held-out fold of a cross-validation, and every later run with the same checkpoint, reads them back
(the generic probe pipeline caches the train/test pair per held-out fold, i.e. it would run the encoder
over the whole dataset once per fold). The classifier is the project's
:class:`~audio_ssl.evaluation.probe.LinearProbe` (standardisation + multinomial logistic regression), with
``C`` chosen by leave-one-training-fold-out (:func:`~audio_ssl.evaluation.probe.select_C`) when a list is given.

Three ways in:

* :func:`run_beats_probe`: Python API, returns one :class:`FoldOutput` per held-out fold;
* ``pipeline: beats_probe`` configs for the cross-validation runner (:func:`beats_probe_task`)::

      pipeline: beats_probe
      checkpoint: /path/to/BEATs_iter3_plus_AS2M.pt   # required (path or URL)
      layers: null                 # or e.g. [8, 12]: hidden states to pool and concatenate
      probe: linear_probe.yaml     # probe settings (C, solver, device, embed_batch_size, ...), or a mapping
      feature_cache_dir: null      # default: ~/.cache/audio-ssl/features ($AUDIO_SSL_FEATURES)
      data: {class_path: audio_ssl.data.ESC50DataModule, init_args: {}}  # data_dir: $AUDIO_SSL_DATA/esc50 by default

* the command line, which also reads the Lightning YAML ``experiments/beats_probe.yaml``::

      python -m audio_ssl.evaluation.beats_probe --config experiments/beats_probe.yaml \\
          --checkpoint BEATs_iter3_plus_AS2M.pt --probe experiments/linear_probe.yaml --out results/beats_probe.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Subset

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.data.datasets import ClipDataset
from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldContext,
    FoldOutput,
    ResultDescription,
    classification_metrics,
    predictions_frame,
)
from audio_ssl.evaluation.probe import (
    LinearProbe,
    ProbeConfig,
    extract_embeddings,
    load_probe_config,
    resolve_device,
    select_C,
)
from audio_ssl.evaluation.registry import register_pipeline
from audio_ssl.utils.download import sha256sum
from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "FoldFeatures",
    "beats_probe_task",
    "default_feature_dir",
    "extract_fold_features",
    "feature_cache_path",
    "main",
    "run_beats_probe",
]

FEATURE_VERSION = 1


def default_feature_dir() -> Path:
    """``$AUDIO_SSL_FEATURES`` or ``~/.cache/audio-ssl/features``."""
    env = os.environ.get("AUDIO_SSL_FEATURES")
    return Path(env) if env else Path.home() / ".cache" / "audio-ssl" / "features"


@dataclass
class FoldFeatures:
    """Pooled features of one fold's clips (rows in the dataset's order)."""

    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N]
    files: list[str]
    path: Path  # the cache file
    computed: bool  # False when read from the cache
    seconds: float  # extraction time (0 when read from the cache)


def feature_cache_path(cache_dir: str | os.PathLike, checkpoint_sha256: str, dataset: str, fold: int,
                       layers: Sequence[int] | None, clip_samples: int, sample_rate: int,
                       files: Sequence[str]) -> Path:
    """Cache file of one fold's features: ``beats-{sha[:12]}-{dataset}-fold{k}-{layers}-{key}.npz``.

    ``key`` hashes everything that changes the features besides the name's parts (the clip list, the clip
    length, the sample rate, the format version), so a subset of a fold or another crop gets its own file.
    """
    layer_tag = "final" if layers is None else "L" + "_".join(map(str, layers))
    digest = hashlib.sha256(json.dumps({
        "version": FEATURE_VERSION, "checkpoint": checkpoint_sha256, "layers": layers,
        "clip_samples": int(clip_samples), "sample_rate": int(sample_rate), "files": list(map(str, files)),
    }, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"beats-{checkpoint_sha256[:12]}-{dataset}-fold{fold}-{layer_tag}-{digest}.npz"


def _load_cached(path: Path, files: Sequence[str]) -> FoldFeatures | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            cached_files = [str(f) for f in data["files"]]
            if cached_files != [str(f) for f in files]:
                log.warning("%s holds other clips than requested: extracting again", path)
                return None
            return FoldFeatures(data["features"].astype(np.float32), data["labels"].astype(np.int64),
                                cached_files, path, computed=False, seconds=0.0)
    except (OSError, KeyError, ValueError) as err:
        log.warning("cannot read feature cache %s (%s): extracting again", path, err)
        return None


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically (a concurrent reader sees the old file or the whole new one)."""
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)


def extract_fold_features(
    model,
    dataset: ClipDataset | Subset,
    fold: int,
    checkpoint_sha256: str,
    dataset_name: str,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    bf16: bool = False,
) -> FoldFeatures:
    """Pooled features of ``dataset`` (one fold, fixed crops), read from the cache or extracted and cached.

    ``model`` is a :class:`~audio_ssl.methods.beats.BEATsClassifier` (its ``embed`` and ``layers`` are used);
    ``dataset`` is a :class:`ClipDataset` built with ``random_crop=False``, or a ``Subset`` of one.
    Extraction is :func:`~audio_ssl.evaluation.probe.extract_embeddings` (eval mode, inference mode), under
    bfloat16 autocast with ``bf16``.
    """
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    rows = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(base)))
    if base.random_crop:
        raise ValueError("extract_fold_features needs deterministic crops: build the fold with random_crop=False")
    files = [str(base.files[i]) for i in rows]
    layers = getattr(model, "layers", None)
    path = feature_cache_path(cache_dir if cache_dir is not None else default_feature_dir(), checkpoint_sha256,
                              dataset_name, fold, layers, base.clip_samples, int(model.sample_rate), files)
    if path.exists() and (cached := _load_cached(path, files)) is not None:
        return cached
    device = resolve_device(device) if isinstance(device, str) else device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    start = time.perf_counter()
    with autocast:
        features, labels = extract_embeddings(model, dataset, batch_size, device, num_workers)
    seconds = time.perf_counter() - start
    features, labels = features.astype(np.float32), labels.astype(np.int64)
    _save_npz(path, features=features, labels=labels, files=np.asarray(files))
    log.info("fold %d: %d clips in %.1f s (%.2f clips/s) -> %s", fold, len(files), seconds,
             len(files) / seconds, path)
    return FoldFeatures(features, labels, files, path, computed=True, seconds=seconds)


def _fold_subset(dataset: ClipDataset, max_clips: int | None) -> ClipDataset | Subset:
    """The first ``max_clips`` clips of each class (the whole fold when ``max_clips`` is None)."""
    if max_clips is None:
        return dataset
    counts: dict[int, int] = {}
    keep = []
    for i, label in enumerate(dataset.labels.tolist()):
        if counts.get(label, 0) < max_clips:
            counts[label] = counts.get(label, 0) + 1
            keep.append(i)
    return Subset(dataset, keep)


def run_beats_probe(
    checkpoint: str,
    datamodule: FoldAudioDataModule,
    test_folds: Sequence[int] | None = None,
    layers: list[int] | None = None,
    probe: ProbeConfig | None = None,
    feature_cache_dir: str | os.PathLike | None = None,
    bf16: bool = False,
    clips_per_class: int | None = None,
    checkpoint_sha256: str | None = None,
) -> dict[int, FoldOutput]:
    """Linear probe of frozen BEATs on each of ``test_folds`` (default: every fold), features cached per fold.

    For held-out fold ``k`` the probe trains on the data module's ``train`` split for test fold ``k``
    (:meth:`~audio_ssl.data.base.FoldAudioDataModule.split_folds`: every fold but ``k`` and ``val_fold``).
    ``probe`` holds the classifier and extraction settings (default :class:`ProbeConfig`; its ``device``,
    ``embed_batch_size`` and ``num_workers`` drive the extraction). ``clips_per_class`` keeps only the first
    clips of each class in every fold (a quick pipeline check; reported in the description's ``details``).
    """
    from audio_ssl.methods.beats import BEATsClassifier

    start = time.perf_counter()
    probe = probe or ProbeConfig()
    sha = checkpoint_sha256 or sha256sum(checkpoint)
    datamodule.prepare_data()
    num_classes = datamodule.num_classes
    folds = list(test_folds) if test_folds is not None else list(range(1, datamodule.num_folds + 1))
    train_folds_of = {fold: datamodule.split_folds("train", test_fold=fold) for fold in folds}  # checks each fold
    model = BEATsClassifier(checkpoint, num_classes=num_classes, freeze_encoder=True, layers=layers,
                            checkpoint_sha256=checkpoint_sha256, sample_rate=datamodule.sample_rate)
    features: dict[int, FoldFeatures] = {}

    def fold_features(fold: int) -> FoldFeatures:
        if fold not in features:
            subset = _fold_subset(datamodule.split([fold], random_crop=False), clips_per_class)
            features[fold] = extract_fold_features(
                model, subset, fold, sha, datamodule.dataset_name, feature_cache_dir, probe.embed_batch_size,
                probe.device, probe.num_workers, bf16)
        return features[fold]

    dataset = DatasetDescription.of(datamodule)
    encoder = (f"BEATs {model.encoder.num_layers} x {model.encoder.out_dim}, "
               f"{sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f}M params")
    details_base = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha, "layers": model.layers,
                    "clips_per_class": clips_per_class, "embedding_dim": model.embedding_dim,
                    "probe_settings": asdict(probe)}
    outputs: dict[int, FoldOutput] = {}
    for fold in folds:
        fold_start = time.perf_counter()
        train_folds = train_folds_of[fold]
        train = [fold_features(f) for f in train_folds]
        test = fold_features(fold)
        extracted = [t for t in (*train, test) if t.computed]
        x_train = np.concatenate([t.features for t in train])
        y_train = np.concatenate([t.labels for t in train])
        groups = np.concatenate([np.full(len(t.labels), f) for f, t in zip(train_folds, train)])
        probe_start = time.perf_counter()
        best_c, scores = select_C(x_train, y_train, groups, probe.Cs, num_classes, probe)
        probs = LinearProbe.from_config(probe, best_c).fit(x_train, y_train, num_classes).predict_proba(test.features)
        details = {**details_base, "train_folds": train_folds, "probe_train_clips": len(y_train),
                   "test_clips": len(test.labels), "probe_C": best_c, "probe_C_scores": scores,
                   "probe_time_s": time.perf_counter() - probe_start,
                   "embed_time_s": sum(t.seconds for t in extracted),
                   "clips_extracted": sum(len(t.labels) for t in extracted),
                   "feature_files": [str(t.path) for t in (*train, test)]}
        description = ResultDescription(
            method="BEATs (frozen) + linear probe", encoder=encoder, pretraining_data="see the BEATs checkpoint",
            transductive=False, protocol="linear probe (frozen encoder)", epochs=0,
            device=str(resolve_device(probe.device)), wall_time_s=time.perf_counter() - fold_start,
            dataset=dataset, details=details)
        for t in extracted:
            t.computed, t.seconds = False, 0.0  # counted once, for the first held-out fold that needed it
        outputs[fold] = FoldOutput(classification_metrics(test.labels, probs),
                                   predictions_frame(test.files, test.labels, probs, datamodule.class_names),
                                   description)
    log.info("BEATs probe on folds %s in %.1f s", folds, time.perf_counter() - start)
    return outputs


# ---------------------------------------------------------------------------------------------- pipeline
def _build_datamodule(data_config: dict, test_fold: int) -> FoldAudioDataModule:
    from audio_ssl.evaluation.baselines import build_datamodule

    return build_datamodule(data_config, test_fold)


def _missing_checkpoint(flag: str) -> str:
    from audio_ssl.methods.beats import MISSING_CHECKPOINT

    return MISSING_CHECKPOINT.replace("--model.init_args.checkpoint", flag)


@register_pipeline("beats_probe")
def beats_probe_task(context: FoldContext) -> dict[str, FoldOutput]:
    """Cross-validation task: the cached linear probe of frozen BEATs on the held-out ``context.fold``."""
    config, fold = context.config, context.fold
    if not config.get("checkpoint"):
        raise ValueError(f"{context.source}: " + _missing_checkpoint("'checkpoint:'"))
    if "data" not in config:
        raise ValueError(f"{context.source}: a beats_probe config needs a 'data' block (class_path + init_args)")
    probe = load_probe_config(config.get("probe"), context.config_dir)
    outputs = run_beats_probe(
        str(config["checkpoint"]), _build_datamodule(config["data"], fold), [fold], layers=config.get("layers"),
        probe=probe, feature_cache_dir=config.get("feature_cache_dir"), bf16=bool(config.get("bf16", False)),
        clips_per_class=config.get("clips_per_class"), checkpoint_sha256=config.get("checkpoint_sha256"),
    )
    return {"beats_probe": outputs[fold]}


# ---------------------------------------------------------------------------------------------- command line
def _from_lightning_yaml(path: Path) -> tuple[dict, dict]:
    """``(model init_args, data block)`` of a Lightning experiment YAML."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ValueError(f"{path}: not a Lightning experiment config (needs 'model' and 'data' blocks)")
    return dict(config["model"].get("init_args") or {}), dict(config["data"])


def main(argv: list[str] | None = None) -> dict[int, FoldOutput]:
    parser = argparse.ArgumentParser(prog="python -m audio_ssl.evaluation.beats_probe",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None,
                        help="a Lightning YAML (e.g. experiments/beats_probe.yaml): its model.init_args "
                             "checkpoint/layers and its data block are the defaults")
    parser.add_argument("--checkpoint", default=None, help="official-format BEATs checkpoint (path or URL)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (overrides the config's data_dir)")
    parser.add_argument("--dataset", default="audio_ssl.data.ESC50DataModule",
                        help="data module class path when no --config is given")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="held-out folds (default: all)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="hidden states to concatenate")
    parser.add_argument("--probe", default=None,
                        help="probe settings YAML, e.g. experiments/linear_probe.yaml (default: ProbeConfig())")
    parser.add_argument("--C", type=float, nargs="+", default=None, help="override the probe's C (list: select)")
    parser.add_argument("--bf16", action="store_true", help="extract under bfloat16 autocast")
    parser.add_argument("--clips-per-class", type=int, default=None,
                        help="keep only the first N clips of each class in every fold (pipeline checks)")
    parser.add_argument("--feature-cache-dir", default=None, help=f"default: {default_feature_dir()}")
    parser.add_argument("--cache-dir", default=None, help="waveform cache directory")
    parser.add_argument("--out", type=Path, default=None, help="write metrics and descriptions as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model_args, data = ({}, {"class_path": args.dataset, "init_args": {}})
    if args.config is not None:
        model_args, data = _from_lightning_yaml(args.config)
    checkpoint = args.checkpoint or model_args.get("checkpoint")
    if not checkpoint:
        parser.error(_missing_checkpoint("--checkpoint"))
    init_args = dict(data.get("init_args") or {})
    if args.data_dir is not None:
        init_args["data_dir"] = args.data_dir
    if args.cache_dir is not None:
        init_args["cache_dir"] = args.cache_dir
    data["init_args"] = init_args
    probe = load_probe_config(args.probe)
    if args.C is not None:
        probe = ProbeConfig(**{**asdict(probe), "C": args.C if len(args.C) > 1 else args.C[0]})
    datamodule = _build_datamodule(data, (args.folds or [1])[0])
    layers = args.layers if args.layers is not None else model_args.get("layers")
    outputs = run_beats_probe(checkpoint, datamodule, args.folds, layers=layers, probe=probe,
                              feature_cache_dir=args.feature_cache_dir, bf16=args.bf16,
                              clips_per_class=args.clips_per_class)
    for fold, out in outputs.items():
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(out.metrics.items()))
        d = out.description.details
        print(f"fold {fold}: {metrics} (C={d['probe_C']:g}; train {d['probe_train_clips']}, test "
              f"{d['test_clips']} clips; extracted {d['clips_extracted']} clips in "
              f"{d['embed_time_s']:.1f} s; probe fit {d['probe_time_s']:.1f} s)")
    accs = [o.metrics["acc"] for o in outputs.values()]
    print(f"mean acc over {len(accs)} fold(s): {np.mean(accs):.4f}")
    if args.out is not None:
        report = {str(k): {"metrics": o.metrics, "description": asdict(o.description)} for k, o in outputs.items()}
        with atomic_write(args.out, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        print(f"wrote {args.out}")
    return outputs


if __name__ == "__main__":
    main()
