"""Cutting spectrograms into non-overlapping patches and putting them back together.

Conventions used throughout ``audio_ssl``:

* Spectrograms are ``[B, C, F, T]`` (usually ``C == 1``): frequency on dim 2, time on dim 3.
* The patch grid has ``n_f = F // p_f`` rows (frequency) and ``n_t = T // p_t`` columns (time).
* **Patch order is frequency-major** (row-major over the ``(n_f, n_t)`` grid): patch
  ``n = i_f * n_t + i_t`` covers ``spec[..., i_f*p_f:(i_f+1)*p_f, i_t*p_t:(i_t+1)*p_t]``.
  This is the order produced by ``nn.Conv2d(C, D, kernel_size=p, stride=p)(spec).flatten(2)``,
  so token ids from a tokenizer line up with the tokens of a conv patch embedding (ViT/AST style).
* Inside a patch the values are flattened in ``(c, p_f, p_t)`` order, i.e. the layout of a
  ``Conv2d`` weight ``[D, C, p_f, p_t]`` reshaped to ``[D, C*p_f*p_t]``.
* Spectrograms whose ``F`` or ``T`` is not a multiple of the patch size are **cropped**: the last
  ``F % p_f`` frequency bins (highest bins) and ``T % p_t`` frames (end of the clip) are dropped.
  ``unpatchify`` therefore returns the cropped spectrogram ``[B, C, n_f*p_f, n_t*p_t]``.
"""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["as_patch_size", "grid_shape", "crop_to_patch_grid", "patchify", "unpatchify"]


def as_patch_size(patch_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Return ``(p_f, p_t)`` from an int (square patches) or a pair; validate positivity."""
    if isinstance(patch_size, int):
        size = (patch_size, patch_size)
    else:
        size = tuple(int(p) for p in patch_size)
        if len(size) != 2:
            raise ValueError(f"patch_size must be an int or a (freq, time) pair, got {patch_size!r}")
    if min(size) < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size!r}")
    return size  # type: ignore[return-value]


def grid_shape(num_freq: int, num_time: int, patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """Patch grid ``(n_f, n_t)`` of an ``F x T`` spectrogram (remainders are cropped away)."""
    p_f, p_t = as_patch_size(patch_size)
    n_f, n_t = num_freq // p_f, num_time // p_t
    if n_f == 0 or n_t == 0:
        raise ValueError(
            f"spectrogram of F={num_freq} x T={num_time} is smaller than one patch of "
            f"patch_size=({p_f}, {p_t})"
        )
    return n_f, n_t


def crop_to_patch_grid(spec: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Crop ``[..., F, T]`` to ``[..., n_f*p_f, n_t*p_t]`` (drops the highest bins / last frames)."""
    p_f, p_t = as_patch_size(patch_size)
    n_f, n_t = grid_shape(spec.shape[-2], spec.shape[-1], (p_f, p_t))
    return spec[..., : n_f * p_f, : n_t * p_t]


def _check_spec(spec: torch.Tensor) -> None:
    if spec.dim() != 4:
        raise ValueError(f"spec must be [B, C, F, T], got shape {tuple(spec.shape)}")


def patchify(spec: torch.Tensor, patch_size: int | tuple[int, int] = (16, 16)) -> torch.Tensor:
    """Cut ``spec [B, C, F, T]`` into patches ``[B, N, C*p_f*p_t]`` (frequency-major, see module doc).

    ``F``/``T`` remainders that do not fill a whole patch are cropped.
    """
    _check_spec(spec)
    p_f, p_t = as_patch_size(patch_size)
    spec = crop_to_patch_grid(spec, (p_f, p_t))
    return rearrange(spec, "b c (nf pf) (nt pt) -> b (nf nt) (c pf pt)", pf=p_f, pt=p_t)


def unpatchify(
    patches: torch.Tensor,
    grid: tuple[int, int],
    patch_size: int | tuple[int, int] = (16, 16),
    channels: int = 1,
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, C*p_f*p_t]`` -> ``[B, C, n_f*p_f, n_t*p_t]``.

    ``grid`` is the ``(n_f, n_t)`` patch grid, e.g. from :func:`grid_shape`.
    """
    if patches.dim() != 3:
        raise ValueError(f"patches must be [B, N, D], got shape {tuple(patches.shape)}")
    p_f, p_t = as_patch_size(patch_size)
    n_f, n_t = int(grid[0]), int(grid[1])
    if patches.shape[1] != n_f * n_t:
        raise ValueError(f"patches has N={patches.shape[1]} but grid {grid} has {n_f * n_t} patches")
    if patches.shape[2] != channels * p_f * p_t:
        raise ValueError(
            f"patches has D={patches.shape[2]} but channels*p_f*p_t = {channels}*{p_f}*{p_t} "
            f"= {channels * p_f * p_t}"
        )
    return rearrange(
        patches, "b (nf nt) (c pf pt) -> b c (nf pf) (nt pt)", nf=n_f, nt=n_t, c=channels, pf=p_f, pt=p_t
    )
