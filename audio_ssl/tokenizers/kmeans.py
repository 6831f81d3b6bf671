"""K-means in torch and a k-means patch tokenizer for BEATs-style masked token prediction.

:func:`kmeans` runs Lloyd's algorithm on any device: k-means++ seeding, chunked squared
distances ``||x||^2 - 2 x.c + ||c||^2`` (memory ``chunk_size x k``, never ``M x k x D``),
re-seeding of empty clusters with the points farthest from their centroid, and a
``torch.Generator`` so that a seed fixes the result. Centroid sums are accumulated with
one-hot matmuls on CUDA (``index_add_`` uses non-deterministic atomics there) and with
``index_add_`` on CPU, so results are reproducible on both.

:class:`KMeansPatchTokenizer` turns spectrogram patches (or encoder features, for iterative
refinement; BEATs distils a tokenizer from the teacher instead) into discrete ids: the id of a patch
is its nearest centroid.

Normalisation (``normalize``). BEATs (Chen et al., 2022, arXiv 2212.09058) normalises its fbank with one
global mean and standard deviation and treats every patch alike: silence is not special-cased, it is simply a
constant input and so lands on one region of the codebook. ``"global"`` (the default) follows that: one
scalar mean and standard deviation over all fitted values (stored with the codebook), no per-patch
standardisation, so a patch keeps its level, and digital silence (a constant patch, at one level in every
clip when the front end has no per-clip floor or normalisation) maps to one token.
``"patch"`` is the earlier per-patch standardisation (``(v - mean(v)) / sqrt(var(v) + eps)``, invariant to
gain and offset), which scatters quiet patches over many ids (their noise is blown up to unit variance) and
sends every flat patch to the zero vector; it is kept only to read tokenizers fitted with it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from audio_ssl.tokenizers.patches import as_patch_size, patchify

__all__ = ["kmeans", "nearest_centroid", "KMeansPatchTokenizer", "TokenizerNorm"]

log = logging.getLogger(__name__)

TokenizerNorm = Literal["global", "patch", "none"]
_NORMS = ("global", "patch", "none")

_DEFAULT_CHUNK = 8192


def _sq_dists(
    x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor, x_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances ``[m, k]`` between rows of ``x [m, D]`` and ``c [k, D]``."""
    if x_sq is None:
        x_sq = (x * x).sum(1)
    d = torch.addmm(x_sq[:, None] + c_sq[None, :], x, c.T, alpha=-2.0)
    return d.clamp_min_(0.0)


def nearest_centroid(
    x: torch.Tensor, centroids: torch.Tensor, chunk_size: int = _DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``[M]`` of the nearest centroid of each row of ``x [M, D]`` and its squared distance ``[M]``."""
    c_sq = (centroids * centroids).sum(1)
    ids, dists = [], []
    for xc in x.split(chunk_size):
        d, i = _sq_dists(xc, centroids, c_sq).min(1)
        ids.append(i)
        dists.append(d)
    return torch.cat(ids), torch.cat(dists)


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): sample each next centroid with probability ~ D(x)^2."""
    m = x.shape[0]
    x_sq = (x * x).sum(1)

    def sq_dist_to(c: torch.Tensor) -> torch.Tensor:  # [M] squared distances to one centroid c [1, D]
        return (x_sq - 2.0 * (x @ c[0]) + (c * c).sum()).clamp_min_(0.0)

    idx = torch.randint(m, (1,), generator=generator, device=x.device)
    centroids = [x[idx]]
    min_d2 = sq_dist_to(centroids[0])
    for _ in range(1, k):
        total = min_d2.sum()
        if total <= 0:  # every point coincides with a chosen centroid: fall back to uniform sampling
            idx = torch.randint(m, (1,), generator=generator, device=x.device)
        else:  # inverse-CDF sampling (works for any M, unlike torch.multinomial's 2^24 limit)
            cdf = min_d2.double().cumsum(0)
            u = torch.rand(1, generator=generator, device=x.device, dtype=torch.float64) * cdf[-1]
            idx = torch.searchsorted(cdf, u, right=True).clamp_(max=m - 1)
        centroids.append(x[idx])
        torch.minimum(min_d2, sq_dist_to(centroids[-1]), out=min_d2)
    return torch.cat(centroids)


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 50,
    seed: int = 0,
    tol: float = 1e-4,
    init: torch.Tensor | None = None,
    chunk_size: int = _DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``x [M, D]`` (on ``x.device``); returns ``(centroids [k, D], assignments [M])``.

    Args:
        x: data points, one per row; computed in float32 (float64 is kept).
        k: number of clusters, ``1 <= k <= M``.
        iters: maximum number of Lloyd iterations.
        seed: seeds the ``torch.Generator`` used by k-means++; same seed + same input -> same result.
        tol: stop when the summed squared centroid shift is ``<= tol * mean per-feature variance of x``
            (the scikit-learn convention). Iterations that re-seeded a cluster never stop the loop.
        init: optional initial centroids ``[k, D]`` instead of k-means++.
        chunk_size: rows of ``x`` per distance block (memory ``chunk_size x k``).

    Empty clusters are re-seeded after each update step with the points that are currently
    farthest from their assigned centroid (one distinct point per empty cluster).
    ``assignments`` are the nearest-centroid ids for the returned centroids.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects x of shape [M, D], got {tuple(x.shape)}")
    m = x.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"kmeans needs 1 <= k <= M, got k={k} with M={m} points")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("kmeans input x contains NaN or Inf")

    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    if init is None:
        centroids = _kmeans_plus_plus(x, k, generator)
    else:
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"init must have shape [k={k}, D={x.shape[1]}], got {tuple(init.shape)}")
        centroids = init.detach().to(device=x.device, dtype=x.dtype).clone()
    threshold = tol * x.var(0, unbiased=False).mean()
    x_sq = (x * x).sum(1)

    for _ in range(iters):
        # assignment + accumulation in one pass over chunks
        c_sq = (centroids * centroids).sum(1)
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(k, dtype=x.dtype, device=x.device)
        min_d2 = []
        for xc, xc_sq in zip(x.split(chunk_size), x_sq.split(chunk_size)):
            d, ids = _sq_dists(xc, centroids, c_sq, xc_sq).min(1)
            if x.is_cuda:  # one-hot matmul: deterministic, unlike index_add_'s CUDA atomics
                one_hot = torch.nn.functional.one_hot(ids, k).to(x.dtype)
                sums += one_hot.T @ xc
                counts += one_hot.sum(0)
            else:  # index_add_ is deterministic (and much cheaper) on CPU
                sums.index_add_(0, ids, xc)
                counts.index_add_(0, ids, torch.ones_like(d))
            min_d2.append(d)
        empty = counts == 0
        new = sums / counts.clamp_min(1.0)[:, None]
        num_empty = int(empty.sum())
        if num_empty:
            far = torch.cat(min_d2).topk(num_empty).indices
            new[empty] = x[far]
        shift = ((new - centroids) ** 2).sum()
        centroids = new
        if num_empty == 0 and shift <= threshold:
            break

    assignments = nearest_centroid(x, centroids, chunk_size)[0]
    return centroids, assignments


def _as_rows(data: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Spectrograms ``[B, C, F, T]`` -> patches, features ``[B, N, D]`` -> rows, ``[M, D]`` as is."""
    if data.dim() == 4:
        return patchify(data, patch_size).flatten(0, 1)
    if data.dim() == 3:
        return data.flatten(0, 1)
    if data.dim() == 2:
        return data
    raise ValueError(
        f"expected spectrograms [B, C, F, T], features [B, N, D] or patches [M, D], got {tuple(data.shape)}"
    )


def _all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate ``[m_r, D]`` from every rank (in rank order) on every rank; ``m_r`` may differ."""
    comm_device = rows.device
    if dist.get_backend() == "nccl":
        comm_device = torch.device("cuda", torch.cuda.current_device())
    rows = rows.to(comm_device)
    world = dist.get_world_size()
    size = torch.tensor([rows.shape[0]], device=comm_device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s) for s in sizes]
    padded = rows.new_zeros((max(sizes_int), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes_int)])


class KMeansPatchTokenizer(nn.Module):
    """Nearest-centroid tokenizer over spectrogram patches (or encoder features), fitted with k-means.

    Args:
        num_clusters: codebook size ``K``.
        patch_size: patch size in (frequency bins, frames); int for square patches.
        normalize: ``"global"``: ``(v - mean) / std`` with one scalar ``mean`` and ``std = sqrt(var + eps)``
            over every value of the vectors k-means is fitted on (after sub-sampling, over all ranks),
            computed by :meth:`fit` and stored in the ``mean``/``std`` buffers, as BEATs normalises its
            fbank with global statistics. k-means itself is unchanged by a scalar affine map; the
            statistics keep the chunked distances ``||x||^2 - 2 x.c + ||c||^2`` well conditioned in
            float32 (raw dB values near -100 would cancel) and record the units of the codebook.
            ``"patch"``: standardise each vector over its own ``D`` values (``(v - mean(v)) /
            sqrt(var(v) + eps)``; the behaviour of tokenizers fitted before ``normalize`` existed).
            ``"none"``: the values as given. See the module docstring for why ``"global"`` is the default.
        max_fit_patches: at most this many vectors are sampled (without replacement) for k-means,
            in total over all ranks.
        iters: maximum Lloyd iterations; ``seed``: k-means++ and sub-sampling seed; ``tol``: see :func:`kmeans`.
        feature_dim: codebook vector size ``D``; defaults to ``p_f * p_t`` (1-channel spectrogram patches).
            Set it to the encoder width to tokenise encoder features (iterative refinement).
        eps: variance floor of the standardisation (both modes).

    The codebook lives in the ``centroids`` buffer ``[K, D]``, the ``fitted`` buffer (bool) and the
    ``mean``/``std`` buffers (scalars; 0 and 1 unless ``normalize="global"``), so all are saved in a
    Lightning checkpoint's ``state_dict``. :meth:`save`/:meth:`load` write a standalone file.

    Older codebooks (no ``mean``/``std``, per-patch standardised): :meth:`load` reads a version-1 file
    with ``normalize="patch"`` (its ``normalize_patches: true``) and logs that mode; loading such a
    ``state_dict`` into a ``"global"`` tokenizer fails with a message saying so (build it with
    ``normalize="patch"`` to use it as it was fitted).

    Distributed: :meth:`fit` is collective when ``torch.distributed`` is initialised. Every rank
    sub-samples ``ceil(max_fit_patches / world_size)`` of its own vectors, the samples are
    all-gathered (rank order), rank 0 runs k-means and broadcasts the centroids, so every rank
    ends with a bit-identical codebook even when ranks see different data.
    """

    centroids: torch.Tensor
    fitted: torch.Tensor

    def __init__(
        self,
        num_clusters: int = 1024,
        patch_size: int | tuple[int, int] = 16,
        normalize: TokenizerNorm = "global",
        max_fit_patches: int = 100_000,
        iters: int = 50,
        seed: int = 0,
        tol: float = 1e-4,
        feature_dim: int | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if max_fit_patches < num_clusters:
            raise ValueError(f"max_fit_patches={max_fit_patches} must be >= num_clusters={num_clusters}")
        self.num_clusters = int(num_clusters)
        self.patch_size = as_patch_size(patch_size)
        if normalize not in _NORMS:
            raise ValueError(f"normalize must be one of {_NORMS}, got {normalize!r}")
        self.normalize = normalize
        self.max_fit_patches = int(max_fit_patches)
        self.iters = int(iters)
        self.seed = int(seed)
        self.tol = float(tol)
        self.feature_dim = (
            int(feature_dim) if feature_dim is not None else self.patch_size[0] * self.patch_size[1]
        )
        self.eps = float(eps)
        self.register_buffer("centroids", torch.zeros(self.num_clusters, self.feature_dim))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Codebooks saved before ``mean``/``std`` existed were per-patch standardised: they load into a
        ``"patch"`` (or ``"none"``) tokenizer with identity statistics and are refused by a ``"global"`` one."""
        if f"{prefix}centroids" in state_dict and f"{prefix}mean" not in state_dict:
            if self.normalize == "global":
                error_msgs.append(
                    f"{prefix}centroids: this codebook has no global statistics ({prefix}mean, {prefix}std): it was "
                    "fitted by an older audio_ssl on per-patch standardised patches (normalize_patches); build the "
                    "tokenizer with normalize='patch' to use it as it was fitted, or fit a new one"
                )
            else:
                state_dict[f"{prefix}mean"] = torch.tensor(0.0)
                state_dict[f"{prefix}std"] = torch.tensor(1.0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain python values) that rebuild this tokenizer."""
        return {
            "num_clusters": self.num_clusters,
            "patch_size": list(self.patch_size),
            "normalize": self.normalize,
            "max_fit_patches": self.max_fit_patches,
            "iters": self.iters,
            "seed": self.seed,
            "tol": self.tol,
            "feature_dim": self.feature_dim,
            "eps": self.eps,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items()) + f", fitted={bool(self.fitted)}"

    # ------------------------------------------------------------------ preprocessing
    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        """Cast to float32 and, for ``normalize="patch"``, standardise each row; checks the feature dimension.
        (The global statistics are applied by :meth:`_normalise`: at fit time they are not known yet.)"""
        if rows.shape[-1] != self.feature_dim:
            raise ValueError(
                f"vectors have D={rows.shape[-1]} but the tokenizer has feature_dim={self.feature_dim} "
                f"(patch_size={self.patch_size}); build it with feature_dim={rows.shape[-1]} to use these inputs"
            )
        rows = rows.detach().float()
        if self.normalize == "patch":
            mean = rows.mean(-1, keepdim=True)
            var = rows.var(-1, keepdim=True, unbiased=False)
            rows = (rows - mean) / torch.sqrt(var + self.eps)
        return rows

    def _normalise(self, rows: torch.Tensor) -> torch.Tensor:
        """Apply the stored global statistics (identity unless ``normalize="global"``)."""
        if self.normalize != "global":
            return rows
        return (rows - self.mean.to(rows.device).float()) / self.std.to(rows.device).float()

    def _subsample(self, rows: torch.Tensor, budget: int, seed: int) -> torch.Tensor:
        """Keep all rows if ``M <= budget``, else ``budget`` random rows in their original order."""
        if rows.shape[0] <= budget:
            return rows
        g = torch.Generator(device="cpu").manual_seed(seed)
        keep = torch.randperm(rows.shape[0], generator=g)[:budget].sort().values
        return rows[keep.to(rows.device)]

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(
        self, data: torch.Tensor | Sequence[torch.Tensor], distributed: bool | None = None
    ) -> KMeansPatchTokenizer:
        """Fit the codebook with k-means; returns ``self``.

        Args:
            data: spectrograms ``[B, C, F, T]`` (patchified with ``patch_size``), features ``[B, N, D]``,
                a patch/feature matrix ``[M, D]``, or a sequence of such tensors (e.g. several batches).
            distributed: synchronise over ``torch.distributed`` (all ranks must call ``fit``);
                default: whenever a process group is initialised.

        k-means runs on the device of ``data`` (move it to the GPU for large codebooks); the result is
        copied into the ``centroids`` buffer wherever the module lives.
        """
        tensors = [data] if isinstance(data, torch.Tensor) else list(data)
        if not tensors:
            raise ValueError("fit() got no data")
        rows = torch.cat([self._prepare(_as_rows(t, self.patch_size)) for t in tensors])
        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)

        budget = math.ceil(self.max_fit_patches / world)
        rows = self._subsample(rows, budget, self.seed + rank)
        if distributed:
            rows = _all_gather_rows(rows)

        if rows.shape[0] < self.num_clusters:  # checked on every rank, so no rank hangs in broadcast
            raise ValueError(
                f"fit() got {rows.shape[0]} vectors but num_clusters={self.num_clusters}; "
                "give it more spectrograms or lower num_clusters"
            )
        if self.normalize == "global":  # every rank holds the same gathered rows, so the same statistics
            mean, var = rows.double().mean(), rows.double().var(unbiased=False)
            self.mean.fill_(float(mean))
            self.std.fill_(math.sqrt(float(var) + self.eps))
            rows = self._normalise(rows)
        centroids = self.centroids
        if rank == 0:
            with torch.autocast(device_type=rows.device.type, enabled=False):
                centroids, _ = kmeans(rows, self.num_clusters, iters=self.iters, seed=self.seed, tol=self.tol)
        if distributed:
            centroids = centroids.to(device=rows.device, dtype=torch.float32).contiguous()
            dist.broadcast(centroids, src=0)
        self.centroids.copy_(centroids)
        self.fitted.fill_(True)
        return self

    # ------------------------------------------------------------------ encoding
    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                "KMeansPatchTokenizer is not fitted: call fit() or load a fitted codebook first"
            )

    @torch.no_grad()
    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid ids ``[...]`` of vectors ``[..., D]`` (normalised first as configured)."""
        self._check_fitted()
        rows = self._normalise(self._prepare(patches.reshape(-1, patches.shape[-1]).to(self.centroids.device)))
        with torch.autocast(device_type=rows.device.type, enabled=False):  # distances in float32
            ids = nearest_centroid(rows, self.centroids.float())[0]
        return ids.view(patches.shape[:-1])

    def encode(self, spec: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, N]`` of spectrograms ``[B, C, F, T]`` (frequency-major patch order, F/T cropped)."""
        if spec.dim() != 4:
            raise ValueError(f"encode expects spectrograms [B, C, F, T], got {tuple(spec.shape)}")
        return self.encode_patches(patchify(spec, self.patch_size))

    def encode_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, N]`` of encoder features ``[B, N, D]`` (``D == feature_dim``)."""
        if feats.dim() != 3:
            raise ValueError(f"encode_features expects features [B, N, D], got {tuple(feats.shape)}")
        return self.encode_patches(feats)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(spec)

    # ------------------------------------------------------------------ diagnostics
    def usage_stats(self, ids: torch.Tensor) -> dict[str, float | int]:
        """Codebook usage of token ids (any shape).

        Returns ``perplexity`` (``exp`` of the entropy of the id histogram; equals the number of used
        clusters when they are used uniformly), ``dead_clusters`` (clusters never used) and
        ``used_fraction`` (``1 - dead_clusters / K``).
        """
        flat = ids.reshape(-1).long()
        if flat.numel() == 0:
            raise ValueError("usage_stats() got an empty ids tensor")
        if int(flat.min()) < 0 or int(flat.max()) >= self.num_clusters:
            raise ValueError(
                f"ids must lie in [0, {self.num_clusters - 1}], got range [{int(flat.min())}, {int(flat.max())}]"
            )
        counts = torch.bincount(flat, minlength=self.num_clusters).double()
        p = counts / counts.sum()
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        dead = int((counts == 0).sum())
        return {
            "perplexity": float(entropy.exp()),
            "dead_clusters": dead,
            "used_fraction": 1.0 - dead / self.num_clusters,
        }

    # ------------------------------------------------------------------ standalone file
    def save(self, path: str | os.PathLike) -> None:
        """Write config + codebook to ``path`` (a ``torch.save`` of a plain dict of tensors and python values),
        atomically (a temporary file renamed into place)."""
        from audio_ssl.utils.io import atomic_write

        blob = {
            "format": "audio_ssl.KMeansPatchTokenizer",
            "version": 2,
            "config": self.config(),
            "centroids": self.centroids.detach().cpu().clone(),
            "fitted": self.fitted.detach().cpu().clone(),
            "mean": self.mean.detach().cpu().clone(),
            "std": self.std.detach().cpu().clone(),
        }
        with atomic_write(os.fspath(path)) as fh:
            torch.save(blob, fh)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> KMeansPatchTokenizer:
        """Rebuild a tokenizer written by :meth:`save` (loaded with ``torch.load(weights_only=True)``).

        A version-1 file (written before ``normalize``; its config has ``normalize_patches``) is read in the
        mode it was fitted in, ``normalize="patch"`` (``"none"`` for ``normalize_patches: false``), and the
        mode is logged; its ids are the ones it always gave. Raises ValueError naming the file and field
        for anything else that does not fit."""
        path = os.fspath(path)
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "audio_ssl.KMeansPatchTokenizer":
            raise ValueError(f"{path} is not a KMeansPatchTokenizer file (missing or wrong 'format' field)")
        version = blob.get("version", 1)
        required = ("config", "centroids", "fitted") + (("mean", "std") if version >= 2 else ())
        for key in required:
            if key not in blob:
                raise ValueError(f"{path}: missing field {key!r}")
        config = dict(blob["config"])
        if version < 2:
            if "normalize_patches" not in config:
                raise ValueError(f"{path}: version-1 tokenizer file without field 'config.normalize_patches'")
            config["normalize"] = "patch" if config.pop("normalize_patches") else "none"
            log.warning("%s: version-1 tokenizer file (before global normalisation): loaded with normalize=%r, "
                        "the mode it was fitted in", path, config["normalize"])
        tokenizer = cls(**config)
        if blob["centroids"].shape != tokenizer.centroids.shape:
            raise ValueError(
                f"{path}: field 'centroids' has shape {tuple(blob['centroids'].shape)}, expected "
                f"{tuple(tokenizer.centroids.shape)} from its config"
            )
        state = {key: blob[key] for key in ("centroids", "fitted", "mean", "std") if key in blob}
        tokenizer.load_state_dict(state)
        return tokenizer.to(map_location)
