"""The embedding cache of every frozen-encoder probe: clip embeddings of one fold at a time, on disk.

A probe of held-out fold ``k`` needs the embeddings of the training folds (every fold but ``k``) and of fold
``k``. Computed per held-out fold, a k-fold run would push every clip through the encoder ``k`` times; cached
per *fold*, each fold's clips go through it once and every held-out fold (and every later run with the same
weights) reads them back. The ``pretrain_probe``, ``frozen_probe`` and BEATs probes all use this module.

A cache entry is one ``.npz`` (``features`` float32 ``[N, D]``, ``labels`` int64 ``[N]``, ``files`` ``[N]``) named
``{name}-{weights[:12]}-{key}.npz``, where ``weights`` is :func:`state_hash` of the module (every tensor of its
state dict: weights *and* buffers such as BatchNorm statistics) and ``key`` hashes everything else that changes
the features: what the module's ``embed`` reads besides its weights (e.g. BEATs' ``layers``), the clip list in
order, the clip length in samples, the sample rate and :data:`FORMAT_VERSION`. A change of any of them is
another file; nothing is ever read back for other weights or other clips. Files are written atomically
(:func:`audio_ssl.utils.io.atomic_write`): a concurrent reader sees no file or the whole file.

Embeddings are computed by :func:`extract_embeddings`: ``module.embed(audio [B, T]) -> [B, D]`` over the
dataset in order, deterministic (centre) crops, eval mode and ``torch.inference_mode`` (so nothing in the
module, BatchNorm statistics included, can change).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "EmbeddingCache",
    "FoldFeatures",
    "default_feature_dir",
    "embed_spec",
    "extract_embeddings",
    "resolve_device",
    "state_hash",
]

FORMAT_VERSION = 2
"""Version of the cache files' layout and key; raising it makes every older file a miss."""

FEATURES_ENV = "AUDIO_SSL_FEATURES"


def default_feature_dir() -> Path:
    """``$AUDIO_SSL_FEATURES`` or ``~/.cache/audio-ssl/features``: the cache of probes that have no run folder."""
    env = os.environ.get(FEATURES_ENV)
    return Path(env) if env else Path.home() / ".cache" / "audio-ssl" / "features"


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def state_hash(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every tensor in ``module.state_dict()``: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def embed_spec(module: torch.nn.Module) -> dict:
    """What ``module.embed`` depends on besides its state dict: the class and, when it has them, the pooled
    ``layers`` (BEATs) and ``embedding_dim``."""
    spec: dict = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    layers = getattr(module, "layers", None)
    if layers is None or isinstance(layers, (list, tuple)):
        spec["layers"] = list(layers) if layers is not None else None
    return spec


@torch.inference_mode()
def extract_embeddings(module: torch.nn.Module, dataset, batch_size: int = 64, device: str | torch.device = "auto",
                       num_workers: int = 0, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [N, D] float32, labels [N] int64)`` of ``module.embed`` over ``dataset`` in order.

    ``dataset`` yields ``{"audio": [T], "label"}`` with deterministic crops (a ``ClipDataset`` built with
    ``random_crop=False``, or a ``Subset`` of one). The module is put in eval mode on ``device`` for the pass
    and returned to its previous mode and device; ``bf16`` runs it under bfloat16 autocast.

    Raises ``ValueError`` for a random-crop dataset or an ``embed`` that does not return ``[B, D]``.
    """
    if getattr(base_dataset(dataset), "random_crop", False):
        raise ValueError("extract_embeddings needs deterministic crops: build the dataset with random_crop=False")
    device = resolve_device(device)
    params = list(module.parameters())
    home = params[0].device if params else torch.device("cpu")
    was_training = module.training
    module.eval().to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        chunks, labels = [], []
        with autocast:
            for batch in loader:
                out = module.embed(batch["audio"].to(device).float())
                if out.ndim != 2:
                    raise ValueError(f"{type(module).__name__}.embed returned shape {tuple(out.shape)}, "
                                     "expected [B, D]")
                chunks.append(out.float().cpu())
                labels.append(batch["label"])
    finally:
        module.train(was_training).to(home)
    if not chunks:
        raise ValueError("extract_embeddings: the dataset holds no clips")
    return torch.cat(chunks).numpy().astype(np.float32), torch.cat(labels).numpy().astype(np.int64)


def base_dataset(dataset):
    """The ``ClipDataset`` under any number of ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def clip_files(dataset) -> list[str]:
    """The files of a ``ClipDataset`` (or of ``Subset`` wrappers of one), in the dataset's order."""
    if isinstance(dataset, Subset):
        files = clip_files(dataset.dataset)
        return [files[i] for i in dataset.indices]
    return [str(f) for f in dataset.files]


@dataclass
class FoldFeatures:
    """Embeddings of one set of clips (usually one fold), rows in the dataset's order."""

    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N]
    files: list[str]
    path: Path | None  # the cache file (None without a cache)
    computed: bool  # False when read from the cache
    seconds: float  # time spent in the encoder (0 when read from the cache)


class EmbeddingCache:
    """Embeddings of one frozen module, one cache file per set of clips (see the module docstring).

    ``cache_dir=None`` keeps them in memory only. ``weights`` overrides :func:`state_hash` (computed once, here:
    the module must not change while this object is used). Within one object a set of clips is embedded at most
    once and read from disk at most once (an in-memory copy is kept), so a k-fold loop that asks for every fold
    ``k`` times runs each fold through the encoder once.

    ``batch_size``, ``device``, ``num_workers``, ``bf16``: the extraction (:func:`extract_embeddings`).
    ``name``: the files' prefix (e.g. ``pretrained``, ``random_init``).
    """

    def __init__(self, module: torch.nn.Module, cache_dir: str | os.PathLike | None, name: str = "embeddings",
                 batch_size: int = 64, device: str | torch.device = "auto", num_workers: int = 0,
                 bf16: bool = False, weights: str | None = None):
        self.module, self.name = module, name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size, self.device, self.num_workers, self.bf16 = batch_size, device, num_workers, bf16
        self.weights = weights or state_hash(module)
        self.spec = embed_spec(module)
        self._memory: dict[str, FoldFeatures] = {}

    def key(self, files: Sequence[str], clip_samples: int, sample_rate: int) -> str:
        """The hash of everything besides the weights that changes the embeddings of ``files``."""
        return hashlib.sha256(json.dumps({
            "version": FORMAT_VERSION, "weights": self.weights, "embed": self.spec,
            "clip_samples": int(clip_samples), "sample_rate": int(sample_rate), "files": list(map(str, files)),
        }, sort_keys=True).encode()).hexdigest()[:16]

    def path(self, files: Sequence[str], clip_samples: int, sample_rate: int) -> Path | None:
        """The cache file of ``files`` (``None`` without a cache folder)."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.name}-{self.weights[:12]}-{self.key(files, clip_samples, sample_rate)}.npz"

    def features(self, dataset) -> FoldFeatures:
        """The embeddings of ``dataset`` (a ``ClipDataset`` with ``random_crop=False`` or a ``Subset`` of one):
        from memory, else from the cache file, else computed and written."""
        base = base_dataset(dataset)
        if getattr(base, "random_crop", False):
            raise ValueError("the embedding cache needs deterministic crops: build the dataset with random_crop=False")
        files = clip_files(dataset)
        sample_rate = int(getattr(base.cache, "sample_rate", 0)) if hasattr(base, "cache") else 0
        key = self.key(files, base.clip_samples, sample_rate)
        if key in self._memory:
            cached = self._memory[key]
            return FoldFeatures(cached.features, cached.labels, cached.files, cached.path, False, 0.0)
        path = self.path(files, base.clip_samples, sample_rate)
        result = self._read(path, files) if path is not None and path.exists() else None
        if result is None:
            start = time.perf_counter()
            x, y = extract_embeddings(self.module, dataset, self.batch_size, self.device, self.num_workers, self.bf16)
            seconds = time.perf_counter() - start
            result = FoldFeatures(x, y, files, path, computed=True, seconds=seconds)
            if path is not None:
                with atomic_write(path) as fh:
                    np.savez(fh, features=x, labels=y, files=np.asarray(files))
            log.info("%s: %d clips embedded in %.1f s -> %s", self.name, len(files), seconds, path or "memory")
        self._memory[key] = result
        return result

    def grouped(self, dataset, groups: Sequence | np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[FoldFeatures]]:
        """``(embeddings [N, D], labels [N], parts)`` of ``dataset`` in its order, cached per group (``groups``
        [N]: e.g. each clip's fold; ``None``: the whole dataset is one group). ``parts``: one
        :class:`FoldFeatures` per group, in order of first appearance."""
        if groups is None:
            part = self.features(dataset)
            return part.features, part.labels, [part]
        groups = np.asarray(groups)
        if len(groups) != len(dataset):
            raise ValueError(f"{len(groups)} group labels for {len(dataset)} clips")
        _, first = np.unique(groups, return_index=True)
        parts, rows = [], []
        for g in groups[np.sort(first)]:
            idx = np.flatnonzero(groups == g)
            parts.append(self.features(Subset(dataset, idx.tolist()) if len(idx) < len(dataset) else dataset))
            rows.append(idx)
        order = np.concatenate(rows)
        x = np.empty((len(dataset), parts[0].features.shape[1]), dtype=np.float32)
        y = np.empty(len(dataset), dtype=np.int64)
        x[order] = np.concatenate([p.features for p in parts])
        y[order] = np.concatenate([p.labels for p in parts])
        return x, y, parts

    def _read(self, path: Path, files: list[str]) -> FoldFeatures | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                cached = [str(f) for f in data["files"]]
                if cached != files:
                    log.warning("%s holds other clips than requested: embedding again", path)
                    return None
                result = FoldFeatures(data["features"].astype(np.float32), data["labels"].astype(np.int64),
                                      cached, path, computed=False, seconds=0.0)
        except (OSError, KeyError, ValueError) as err:
            log.warning("cannot read embedding cache %s (%s): embedding again", path, err)
            return None
        log.info("embeddings read from %s", path)
        return result
