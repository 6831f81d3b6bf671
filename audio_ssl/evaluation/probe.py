"""Linear probe on frozen embeddings: the standard test of a pretrained encoder.

1. Embeddings: ``module.embed(audio)`` over each fold's clips with deterministic (centre) crops, no
   augmentation, eval mode and ``torch.inference_mode``, cached per fold by :mod:`audio_ssl.evaluation.embeddings`
   (keyed by the weights' hash and the clip list, so a k-fold run embeds every clip once per set of weights).
2. :class:`LinearProbe` standardises the embeddings with training statistics and fits multinomial logistic
   regression, by default with full-batch L-BFGS in torch (float64), minimising
   ``mean cross-entropy + ||W||^2 / (2 C N)``, which is scikit-learn's ``LogisticRegression(C)`` objective
   divided by ``C N``: the same ``C`` means the same model with either ``solver``.
   With a list of ``C`` values, :func:`select_C` picks one by leave-one-fold-out over the *training* folds
   (the test fold is never looked at), then the probe is refitted on all training folds.

:func:`probe_fold` does both for one held-out fold; :func:`probe_embeddings` is step 2 alone. The command line
(``audio-ssl probe --checkpoint CKPT``) is :mod:`audio_ssl.tools.probe`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from audio_ssl.evaluation.embeddings import EmbeddingCache, extract_embeddings, resolve_device, state_hash
from audio_ssl.evaluation.fold import FoldOutput, ResultDescription, classification_metrics, predictions_frame
from audio_ssl.utils.distributed import broadcast_from_rank_zero, rank, world_size

__all__ = [
    "LinearProbe",
    "ProbeConfig",
    "extract_embeddings",
    "fit_logistic_regression",
    "fold_groups",
    "load_probe_config",
    "probe_embeddings",
    "probe_fold",
    "resolve_device",
    "select_C",
    "state_hash",
]

log = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Linear-probe settings (the ``probe:`` section of a pipeline config, see experiments/linear_probe.yaml).

    ``C``: inverse L2 strength (scikit-learn convention), one value or a list to choose from by
    leave-one-training-fold-out. ``solver``: ``lbfgs`` (torch, full batch, on ``device``) or ``sklearn``.
    ``device``: ``auto`` = CUDA when available, for both the embedding pass and the L-BFGS fit.
    ``cpu_threads``: torch threads for a CPU fit (these small problems run fastest on one thread, and many
    times slower with several threads on a busy machine); ``None`` keeps torch's setting.
    """

    C: float | list[float] = 1.0
    solver: str = "lbfgs"
    standardize: bool = True
    max_iter: int = 1000
    tol: float = 1e-6
    embed_batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    cpu_threads: int | None = 1
    cache_embeddings: bool = True

    def __post_init__(self) -> None:
        cs = self.C if isinstance(self.C, list) else [self.C]
        if not cs or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 for c in cs):
            raise ValueError(f"probe C must be a positive number or a non-empty list of them, got {self.C!r}")
        if self.solver not in ("lbfgs", "sklearn"):
            raise ValueError(f"probe solver must be 'lbfgs' or 'sklearn', got {self.solver!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"probe cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.max_iter < 1 or self.embed_batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"probe max_iter and embed_batch_size must be >= 1 and num_workers >= 0, got "
                             f"{self.max_iter}, {self.embed_batch_size}, {self.num_workers}")

    @property
    def Cs(self) -> list[float]:  # noqa: N802 (C is the textbook name)
        return [float(c) for c in (self.C if isinstance(self.C, list) else [self.C])]

    @classmethod
    def from_dict(cls, values: dict | None, source: str = "probe") -> ProbeConfig:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown probe setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def load_probe_config(spec: dict | str | None, base_dir: Path | None = None) -> ProbeConfig:
    """Probe settings from an inline dict, or a YAML path (relative to ``base_dir``) whose ``probe:`` section
    (or, without one, whose top level) holds them; ``None`` gives the defaults."""
    if spec is None or isinstance(spec, dict):
        return ProbeConfig.from_dict(spec, "probe")
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"probe settings file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of probe settings")
    return ProbeConfig.from_dict(values.get("probe", values), str(path))


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """Temporarily set torch's intra-op threads (``None``: leave them)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# embeddings: audio_ssl.evaluation.embeddings (state_hash, extract_embeddings, EmbeddingCache)


# ---------------------------------------------------------------------------------------------- the classifier
def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float, max_iter: int = 1000,
                            tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: minimises mean CE + ||W||^2 / (2 C N) (the bias
    is not penalised). Returns ``(W [D, K], b [K])`` in ``x``'s dtype and device."""
    n, d = x.shape
    weight = torch.zeros(d, num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight.pow(2).sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


class LinearProbe:
    """Standardise (training mean/std) then multinomial logistic regression; see the module docstring."""

    def __init__(self, C: float = 1.0, solver: str = "lbfgs", standardize: bool = True, max_iter: int = 1000,
                 tol: float = 1e-6, device: str = "auto", cpu_threads: int | None = 1):
        self.C, self.solver, self.standardize = float(C), solver, standardize
        self.max_iter, self.tol, self.device = max_iter, tol, resolve_device(device)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.mean = self.std = None
        self.weight = self.bias = None
        self._sklearn = None
        self.num_classes = 0

    def _scale(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x - self.mean) / self.std if self.standardize else x

    @classmethod
    def from_config(cls, config: ProbeConfig, C: float) -> LinearProbe:
        return cls(C, config.solver, config.standardize, config.max_iter, config.tol, config.device,
                   config.cpu_threads)

    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> LinearProbe:
        with torch_threads(self.cpu_threads):
            return self._fit(x, y, num_classes)

    def _fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> LinearProbe:
        y = np.asarray(y, dtype=np.int64)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"probe fit: {len(x)} embeddings and {len(y)} labels")
        self.num_classes = int(num_classes)
        x = np.asarray(x, dtype=np.float64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-8
        xs = self._scale(x)
        if self.solver == "sklearn":
            from sklearn.linear_model import LogisticRegression

            self._sklearn = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol).fit(xs, y)
        else:
            tx = torch.as_tensor(xs, device=self.device)
            ty = torch.as_tensor(y, device=self.device)
            self.weight, self.bias = fit_logistic_regression(tx, ty, self.num_classes, self.C, self.max_iter, self.tol)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N, num_classes] (classes absent from training get probability 0 with sklearn)."""
        xs = self._scale(x)
        if self._sklearn is not None:
            probs = np.zeros((len(xs), self.num_classes))
            probs[:, self._sklearn.classes_] = self._sklearn.predict_proba(xs)
            return probs
        if self.weight is None:
            raise RuntimeError("LinearProbe.predict_proba before fit")
        logits = torch.as_tensor(xs, device=self.device) @ self.weight + self.bias
        return torch.softmax(logits, dim=1).cpu().numpy()


def select_C(x: np.ndarray, y: np.ndarray, groups: np.ndarray, Cs: Sequence[float], num_classes: int,  # noqa: N802
             config: ProbeConfig) -> tuple[float, dict[str, float]]:
    """Choose ``C`` by leave-one-group-out accuracy (groups = the training folds); ties go to the smaller C
    (stronger regularisation). Returns ``(best C, {C: mean accuracy})``."""
    Cs = sorted(float(c) for c in Cs)
    unique = np.unique(groups)
    if len(Cs) == 1 or len(unique) < 2:
        if len(Cs) > 1:
            log.warning("probe: fewer than two training folds, cannot select C; using C=%g", Cs[0])
        return Cs[0], {}
    scores = {}
    for c in Cs:
        accs = []
        for g in unique:
            held = groups == g
            probe = LinearProbe.from_config(config, c)
            probe.fit(x[~held], y[~held], num_classes)
            accs.append(float((probe.predict_proba(x[held]).argmax(1) == y[held]).mean()))
        scores[f"{c:g}"] = float(np.mean(accs))
    best = max(Cs, key=lambda c: (scores[f"{c:g}"], -c))
    return best, scores


def probe_fold(module: torch.nn.Module, train_set, test_set, num_classes: int, class_names: Sequence[str],
               config: ProbeConfig, train_groups: np.ndarray | None = None, cache_dir: Path | None = None,
               tag: str = "embeddings", cache: EmbeddingCache | None = None) -> FoldOutput:
    """Linear probe of ``module.embed`` trained on ``train_set`` and tested on ``test_set`` (both with
    ``random_crop=False``). The module is only run forward in inference mode; it is never updated.

    Embeddings come from ``cache`` (an :class:`~audio_ssl.evaluation.embeddings.EmbeddingCache` of ``module``,
    kept across held-out folds by the caller), else from a new one writing ``cache_dir/{tag}-*.npz`` (with
    ``config.cache_embeddings``; ``None``: in memory only). The training set is cached per ``train_groups``
    value (its clips' folds: :func:`fold_groups`), the test set as one fold, so every fold is one file shared
    by all held-out folds.

    Under DDP (a CV pipeline after distributed pretraining, where every rank calls this) rank 0 runs the
    probe alone, on the whole fold, reading and writing the embedding cache, and every rank returns its
    result: the same numbers as one process, and no two processes writing one file."""
    if world_size() > 1:
        output = None
        if rank() == 0:
            output = _probe_fold(module, train_set, test_set, num_classes, class_names, config, train_groups,
                                 cache_dir, tag, cache)
        return broadcast_from_rank_zero(output)
    return _probe_fold(module, train_set, test_set, num_classes, class_names, config, train_groups, cache_dir, tag,
                       cache)


def _probe_fold(module: torch.nn.Module, train_set, test_set, num_classes: int, class_names: Sequence[str],
                config: ProbeConfig, train_groups: np.ndarray | None, cache_dir: Path | None,
                tag: str, cache: EmbeddingCache | None) -> FoldOutput:
    if cache is None:
        cache = EmbeddingCache(module, cache_dir if config.cache_embeddings else None, tag, config.embed_batch_size,
                               config.device, config.num_workers)
    elif cache.module is not module:
        raise ValueError(f"probe_fold: the embedding cache {cache.name!r} belongs to another module")
    x_train, y_train, train_parts = cache.grouped(train_set, train_groups)
    test = cache.features(test_set)
    parts = [*train_parts, test]
    groups = train_groups if train_groups is not None else np.zeros(len(y_train))
    output = probe_embeddings(x_train, y_train, groups, test.features, test.labels, test.files, num_classes,
                              class_names, config)
    embed_time = sum(p.seconds for p in parts)
    output.description.details.update(
        embed_time_s=embed_time, clips_embedded=sum(len(p.labels) for p in parts if p.computed),
        feature_files=[str(p.path) for p in parts if p.path is not None], weights_hash=cache.weights)
    output.description.wall_time_s += embed_time
    return output


def probe_embeddings(x_train: np.ndarray, y_train: np.ndarray, train_groups: np.ndarray, x_test: np.ndarray,
                     y_test: np.ndarray, test_files: Sequence[str], num_classes: int, class_names: Sequence[str],
                     config: ProbeConfig) -> FoldOutput:
    """The probe on embeddings: ``C`` chosen by leave-one-group-out over ``train_groups`` [N_train] when
    ``config.C`` is a list (:func:`select_C`), the probe refitted on all of ``x_train`` [N_train, D] and tested on
    ``x_test`` [N_test, D]. Returns metrics, per-clip predictions and a description whose ``details`` hold the
    chosen ``C``, the scores, the embedding size, the clip counts and the fit time."""
    start = time.perf_counter()
    best_c, scores = select_C(x_train, y_train, np.asarray(train_groups), config.Cs, num_classes, config)
    probe = LinearProbe.from_config(config, best_c)
    probs = probe.fit(x_train, y_train, num_classes).predict_proba(x_test)
    frame = predictions_frame(list(test_files), y_test, probs, class_names)
    probe_time = time.perf_counter() - start
    details = {"probe_C": best_c, "probe_C_scores": scores, "embedding_dim": int(x_train.shape[1]),
               "probe_train_clips": len(y_train), "test_clips": len(y_test), "probe_time_s": probe_time,
               "probe_settings": dataclasses.asdict(config)}
    description = ResultDescription(protocol="linear probe (frozen encoder)", epochs=0, wall_time_s=probe_time,
                                    details=details)
    return FoldOutput(classification_metrics(y_test, probs), frame, description)


def fold_groups(datamodule, dataset) -> np.ndarray:
    """The fold number of every clip of a dataset built by ``datamodule.split``."""
    folds = datamodule._metadata().set_index("path")["fold"]
    return folds.loc[list(dataset.files)].to_numpy()
