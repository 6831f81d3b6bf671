"""Classical baselines for the cross-validation runner: majority class, random guessing, MFCC + logistic regression.

Registered as the pipeline ``baseline``; a config looks like::

    pipeline: baseline
    baseline: mfcc_logreg          # majority | random | mfcc_logreg
    data:                          # the same block as in the Lightning configs
      class_path: audio_ssl.data.ESC50DataModule
      init_args: {sample_rate: 16000}  # data_dir: $AUDIO_SSL_DATA/esc50 by default
    n_mfcc: 40                     # mfcc_logreg only (defaults in MFCCParams)
    C: 1.0
    max_iter: 2000

Per held-out fold, every baseline trains on the data module's training folds (every fold but
``test_fold`` and ``val_fold``) and is tested on the held-out fold:

- ``majority``: scores every test clip with the training folds' class frequencies, so the prediction is
  the most frequent training class (ties go to the lowest class index) and the top-5 are the five most
  frequent classes;
- ``random``: uniform random scores from a generator seeded with ``(seed, fold)``; the top-1 class is
  uniform over the classes, so the expected accuracy is 1/C;
- ``mfcc_logreg``: each clip (the whole decoded clip from the waveform cache) becomes the mean and
  standard deviation over time of ``n_mfcc`` MFCCs and, with ``deltas: true``, of their first-order
  deltas (4 x ``n_mfcc`` numbers); a ``StandardScaler`` + multinomial ``LogisticRegression(C, max_iter)``
  is trained on the training folds. The feature matrix of all clips is computed once and kept next to
  the waveform cache (keyed by the cache file and the MFCC parameters), so the five folds, and later
  runs, share it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pkgutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio_ssl.data.base import FoldAudioDataModule
from audio_ssl.data.cache import CacheGroup, WaveformCache
from audio_ssl.data.datasets import ClipDataset
from audio_ssl.evaluation.fold import (
    DatasetDescription,
    FoldContext,
    FoldOutput,
    ResultDescription,
    classification_metrics,
    predictions_frame,
)
from audio_ssl.evaluation.registry import register_pipeline
from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "MFCCParams",
    "build_datamodule",
    "majority_scores",
    "mfcc_feature_matrix",
    "mfcc_statistics",
    "random_scores",
    "run_baseline_fold",
]

BASELINES = ("majority", "random", "mfcc_logreg")
FEATURE_VERSION = 1
MIN_CLIPS_FOR_PROCESSES = 64
"""Fewer clips than this are featurised in this process (starting workers would cost more)."""
PARALLEL_BACKEND = "loky"
"""joblib backend for ``n_jobs > 1``: worker processes (the per-clip work is many small numpy calls, which
threads do not run in parallel well)."""


# ---------------------------------------------------------------------------------------------- data
def build_datamodule(data_config: dict, test_fold: int) -> FoldAudioDataModule:
    """Instantiate the ``data`` block of a config (``class_path`` + ``init_args``) with ``test_fold`` set."""
    if not isinstance(data_config, dict) or "class_path" not in data_config:
        raise ValueError(f"config key 'data' must be a mapping with a 'class_path', got {data_config!r}")
    class_path = data_config["class_path"]
    try:
        cls = pkgutil.resolve_name(class_path)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"data.class_path={class_path!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, FoldAudioDataModule)):
        raise ValueError(f"data.class_path={class_path!r} is not a FoldAudioDataModule subclass")
    init_args = dict(data_config.get("init_args") or {})
    init_args["test_fold"] = test_fold
    return cls(**init_args)


# ---------------------------------------------------------------------------------------------- trivial baselines
def majority_scores(train_labels: np.ndarray, num_classes: int, num_test: int) -> np.ndarray:
    """Scores [num_test, num_classes]: every row is the training class frequency (ties broken toward the
    lower class index by a 1e-9 nudge, so the top-1 is the lowest-index most frequent class everywhere)."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    prior = counts / counts.sum()
    prior = prior + 1e-9 * (num_classes - np.arange(num_classes)) / num_classes
    prior /= prior.sum()
    return np.tile(prior, (num_test, 1))


def random_scores(num_test: int, num_classes: int, seed: int | list[int]) -> np.ndarray:
    """Seeded uniform random scores, normalised per row [num_test, num_classes]: chance-level guessing."""
    scores = np.random.default_rng(seed).random((num_test, num_classes))
    return scores / scores.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- MFCC features
@dataclass(frozen=True)
class MFCCParams:
    """MFCC settings (librosa): ``n_mfcc`` coefficients from ``n_mels`` mel bands of an ``n_fft`` STFT."""

    n_mfcc: int = 40
    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 512
    fmin: float = 0.0
    fmax: float | None = None
    deltas: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.n_mfcc <= self.n_mels:
            raise ValueError(f"n_mfcc={self.n_mfcc} must be in 1..n_mels={self.n_mels}")
        if self.n_fft <= 0 or self.hop_length <= 0:
            raise ValueError(f"n_fft={self.n_fft} and hop_length={self.hop_length} must be positive")

    @property
    def dim(self) -> int:
        return self.n_mfcc * (4 if self.deltas else 2)

    @classmethod
    def from_config(cls, config: dict) -> MFCCParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: config[k] for k in fields if k in config})


def mfcc_statistics(wave: np.ndarray, sample_rate: int, params: MFCCParams) -> np.ndarray:
    """One clip's feature vector [params.dim]: mean and std over time of the MFCCs (then of their deltas)."""
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    mfcc = librosa.feature.mfcc(
        y=wave, sr=sample_rate, n_mfcc=params.n_mfcc, n_mels=params.n_mels, n_fft=params.n_fft,
        hop_length=params.hop_length, fmin=params.fmin, fmax=params.fmax,
    )
    parts = [mfcc.mean(axis=1), mfcc.std(axis=1)]
    if params.deltas:
        frames = mfcc.shape[1]
        width = min(9, frames if frames % 2 else frames - 1)  # librosa needs an odd width <= frames
        delta = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
        parts += [delta.mean(axis=1), delta.std(axis=1)]
    return np.concatenate(parts).astype(np.float32)


def _features_of(cache: WaveformCache | CacheGroup, positions: list[int], params: MFCCParams) -> np.ndarray:
    return np.stack([mfcc_statistics(cache.segment(p, 0, int(cache.lengths[p])), cache.sample_rate, params)
                     for p in positions])


def _compute_mfcc_matrix(cache: WaveformCache | CacheGroup, params: MFCCParams, n_jobs: int) -> np.ndarray:
    """Features of every clip in the cache [len(cache), params.dim], in ``n_jobs`` processes."""
    positions = list(range(len(cache)))
    if n_jobs <= 1 or len(positions) < MIN_CLIPS_FOR_PROCESSES:
        return _features_of(cache, positions, params)
    from joblib import Parallel, delayed

    chunks = [positions[i::n_jobs * 4] for i in range(n_jobs * 4)]
    parts = Parallel(n_jobs=n_jobs, backend=PARALLEL_BACKEND)(delayed(_features_of)(cache, chunk, params) for chunk in chunks)
    matrix = np.empty((len(positions), params.dim), dtype=np.float32)
    for chunk, part in zip(chunks, parts):
        matrix[chunk] = part
    return matrix


def mfcc_feature_matrix(
    cache: WaveformCache | CacheGroup, params: MFCCParams, feature_dir: str | os.PathLike | None = None, n_jobs: int = 1
) -> tuple[np.ndarray, Path, bool]:
    """The MFCC statistics of every clip of ``cache`` [len(cache), params.dim], row i = ``cache.files[i]``.

    The matrix is stored in ``feature_dir`` (default: ``features/`` next to the waveform cache) under a
    name that hashes the waveform cache file (itself keyed by the file list and sample rate) and the
    parameters, and is reused whenever it exists. Returns ``(matrix, path, computed_now)``.
    """
    feature_dir = Path(feature_dir) if feature_dir is not None else cache.directory / "features"
    key = json.dumps({"cache": cache.stem, "version": FEATURE_VERSION,
                      "params": dataclasses.asdict(params)}, sort_keys=True)
    stem = cache.stem
    path = feature_dir / f"{stem}-mfcc-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    if path.exists():
        matrix = np.load(path)
        if matrix.shape == (len(cache), params.dim):
            return matrix, path, False
        log.warning("%s has shape %s, expected %s: recomputing", path, matrix.shape, (len(cache), params.dim))
    start = time.perf_counter()
    matrix = _compute_mfcc_matrix(cache, params, n_jobs)
    log.info("MFCC features of %d clips in %.1f s -> %s", len(cache), time.perf_counter() - start, path)
    with atomic_write(path) as fh:
        np.save(fh, matrix)
    return matrix, path, True


def _mfcc_logreg_scores(
    config: dict, cache: WaveformCache | CacheGroup, train: ClipDataset, test: ClipDataset, num_classes: int
) -> tuple[np.ndarray, dict]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    params = MFCCParams.from_config(config)
    n_jobs = int(config.get("n_jobs", min(4, os.cpu_count() or 1)))
    matrix, path, computed = mfcc_feature_matrix(cache, params, config.get("feature_cache_dir"), n_jobs)
    C, max_iter = float(config.get("C", 1.0)), int(config.get("max_iter", 2000))
    if C <= 0 or max_iter <= 0:
        raise ValueError(f"C={C} and max_iter={max_iter} must be positive")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(matrix[[cache.position(f) for f in train.files]], train.labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        log.warning("logistic regression did not converge in max_iter=%d iterations", max_iter)
    probs = np.zeros((len(test), num_classes))
    rows = [cache.position(f) for f in test.files]
    probs[:, model.classes_] = model.predict_proba(matrix[rows])  # classes absent in training: 0
    info = {"feature_cache": str(path), "features_computed": computed, "feature_dim": params.dim,
            "mfcc": dataclasses.asdict(params), "C": C, "max_iter": max_iter, "converged": converged}
    return probs, info


# ---------------------------------------------------------------------------------------------- the fold task
@register_pipeline("baseline")
def run_baseline_fold(context: FoldContext) -> dict[str, FoldOutput]:
    """Train the configured baseline on every fold but ``context.fold`` and test it on ``context.fold``.

    Returns ``{config["baseline"]: FoldOutput}`` with test metrics, per-clip predictions and a description
    (method/protocol, the dataset, and as details the clip counts and, for ``mfcc_logreg``, the feature cache
    used and whether it was computed now). ``context.work_dir`` is not needed: the only artefact (the feature
    matrix) lives in the shared feature cache. A relative ``data.init_args.data_dir`` is taken from the
    working directory, as in the Lightning configs.
    """
    config, fold = context.config, context.fold
    name = config.get("baseline")
    if name not in BASELINES:
        raise ValueError(f"config key 'baseline' must be one of {list(BASELINES)}, got {name!r}")
    if "data" not in config:
        raise ValueError("a baseline config needs a 'data' block (class_path + init_args)")
    start = time.perf_counter()
    datamodule = build_datamodule(config["data"], fold)
    datamodule.prepare_data()
    train = datamodule.split_dataset("train")
    test = datamodule.split_dataset("test")
    num_classes = datamodule.num_classes
    description = ResultDescription(method=f"baseline: {name}", pretraining_data="none", transductive=False,
                                    device="cpu", dataset=DatasetDescription.of(datamodule))
    details: dict = {"train_clips": len(train), "test_clips": len(test), "train_folds": datamodule.split_folds("train")}
    if name == "majority":
        probs = majority_scores(train.labels, num_classes, len(test))
        description.encoder, description.protocol = "none", "most frequent class of the training folds"
        details["majority_class"] = int(probs[0].argmax())
    elif name == "random":
        seed = int(config.get("seed", config.get("seed_everything", 0)))
        probs = random_scores(len(test), num_classes, [seed, fold])
        description.encoder, description.protocol = "none", f"uniform random scores, seed ({seed}, fold)"
        details["seed"] = seed
    else:
        probs, extra = _mfcc_logreg_scores(config, datamodule.cache, train, test, num_classes)
        deltas = " + deltas" if extra["mfcc"]["deltas"] else ""
        description.encoder = (f"MFCC mean/std ({extra['mfcc']['n_mfcc']} coefficients{deltas}, "
                               f"{extra['feature_dim']} dims)")
        description.protocol = f"StandardScaler + logistic regression (C={extra['C']}) on the training folds"
        details.update(extra)
    description.details = details
    description.wall_time_s = time.perf_counter() - start
    output = FoldOutput(
        metrics=classification_metrics(test.labels, probs),
        predictions=predictions_frame(test.files, test.labels, probs, datamodule.class_names),
        description=description,
    )
    return {name: output}
