"""Patch masks for masked-prediction pre-training (BEATs, AudioMAE, data2vec style).

A mask is a bool tensor ``[B, N]`` with ``True`` = masked, over the patch grid of
:mod:`audio_ssl.tokenizers.patches` (frequency-major order: patch ``n = i_f * n_t + i_t``).
Every example gets exactly :func:`num_masked_patches` ``(N, ratio)`` masked patches, so masked
tokens can be gathered into a dense ``[B, num_masked, D]`` tensor.

Randomness comes from an optional ``torch.Generator``; masks are drawn on the generator's device
(CPU when none is given) and then moved to ``device``, so a seeded CPU generator gives the same
mask whatever ``device`` is.
"""

from __future__ import annotations

import torch

from audio_ssl.tokenizers.patches import as_patch_size, grid_shape

__all__ = ["num_masked_patches", "random_patch_mask", "block_patch_mask", "apply_patch_mask"]


def num_masked_patches(num_patches: int, ratio: float) -> int:
    """Number of masked patches per example: ``round(ratio * num_patches)`` (Python rounding, half to even)."""
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return int(round(ratio * num_patches))


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask ``[B, N]`` that is True at the ``k`` largest scores of each row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
    return mask


def random_patch_mask(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniformly random mask ``[B, N]`` with exactly ``round(ratio * N)`` True per row."""
    k = num_masked_patches(num_patches, ratio)
    noise = torch.rand(batch, num_patches, generator=generator, device=_draw_device(generator))
    return _top_k_mask(noise, k).to(device if device is not None else noise.device)


def _uniform_int(
    low: torch.Tensor | int, high: torch.Tensor | int, shape: tuple[int, ...], generator, device
) -> torch.Tensor:
    """Integers uniform in ``[low, high]`` (inclusive, element-wise bounds)."""
    u = torch.rand(shape, generator=generator, device=device)
    low_t = torch.as_tensor(low, device=device)
    span = torch.as_tensor(high, device=device) - low_t + 1
    return low_t + torch.minimum((u * span).long(), span - 1)


def block_patch_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    min_block: int | tuple[int, int] = 2,
    max_block: int | tuple[int, int] = 4,
    blocks_per_round: int = 16,
    max_rounds: int = 64,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask of rectangular blocks on the ``(n_f, n_t)`` grid, exactly ``round(ratio * N)`` True per row.

    Blocks of ``h x w`` patches (``h`` in ``[min_f, max_f]`` frequency rows, ``w`` in ``[min_t, max_t]``
    time columns, clipped to the grid) are placed uniformly at random and OR-ed together until an
    example reaches the target count. The count is then made exact: overshoot is trimmed from the
    patches added by the last block only (earlier blocks stay whole); if the target is still not
    reached after ``max_rounds * blocks_per_round`` blocks, random unmasked patches top it up.
    """
    n_f, n_t = int(grid[0]), int(grid[1])
    num_patches = n_f * n_t
    k = num_masked_patches(num_patches, ratio)
    (min_f, min_t), (max_f, max_t) = as_patch_size(min_block), as_patch_size(max_block)
    if min_f > max_f or min_t > max_t:
        raise ValueError(f"min_block {min_block!r} must not exceed max_block {max_block!r}")
    max_f, max_t = min(max_f, n_f), min(max_t, n_t)
    min_f, min_t = min(min_f, max_f), min(min_t, max_t)
    dev = _draw_device(generator)

    rows = torch.arange(n_f, device=dev).view(1, 1, n_f, 1)
    cols = torch.arange(n_t, device=dev).view(1, 1, 1, n_t)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=dev)  # blocks before the last one
    last = torch.zeros_like(mask)  # patches newly added by the block that crossed the target
    done = torch.full((batch,), k in (0, num_patches), dtype=torch.bool, device=dev)  # trivial: none / all
    shape = (batch, blocks_per_round)
    for _ in range(max_rounds):
        if bool(done.all()):
            break
        h = _uniform_int(min_f, max_f, shape, generator, dev)
        w = _uniform_int(min_t, max_t, shape, generator, dev)
        top = _uniform_int(0, n_f - h, shape, generator, dev)
        left = _uniform_int(0, n_t - w, shape, generator, dev)
        top, left, h, w = (v[..., None, None] for v in (top, left, h, w))
        blocks = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # [B, K, n_f, n_t]
        # cumulative union of the running mask with the first j blocks of this round
        union = (blocks.flatten(2) | mask[:, None]).to(torch.uint8).cummax(dim=1).values.bool()
        counts = union.sum(-1)  # [B, K]
        reached = counts >= k
        hit = reached.any(1) & ~done
        first = torch.where(reached.any(1), reached.int().argmax(1), blocks_per_round - 1)
        b = torch.arange(batch, device=dev)
        before = torch.where((first > 0)[:, None], union[b, (first - 1).clamp(min=0)], mask)
        last = torch.where(hit[:, None], union[b, first] & ~before, last)
        mask = torch.where(done[:, None], mask, torch.where(hit[:, None], before, union[:, -1]))
        done |= hit

    # priority: earlier blocks (2 + u) > last block (1 + u) > unmasked (u); keep the top k
    noise = torch.rand(batch, num_patches, generator=generator, device=dev)
    scores = noise + 2.0 * mask.float() + 1.0 * last.float()
    out = _top_k_mask(scores, k)
    return out.to(device if device is not None else dev)


def apply_patch_mask(
    spec: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int | tuple[int, int] = (16, 16),
    fill_value: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Return a copy of ``spec [B, C, F, T]`` with the masked patches set to ``fill_value``.

    ``mask [B, N]`` follows the frequency-major grid of ``patchify(spec, patch_size)``. Bins/frames
    outside the patch grid (the cropped ``F % p_f`` / ``T % p_t`` remainder) are left unchanged.
    ``fill_value`` may be a scalar or a tensor broadcastable to ``spec`` (e.g. per-bin means ``[1, 1, F, 1]``).
    """
    if spec.dim() != 4:
        raise ValueError(f"spec must be [B, C, F, T], got shape {tuple(spec.shape)}")
    p_f, p_t = as_patch_size(patch_size)
    n_f, n_t = grid_shape(spec.shape[2], spec.shape[3], (p_f, p_t))
    if mask.shape != (spec.shape[0], n_f * n_t):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, expected [B={spec.shape[0]}, N={n_f * n_t}] for "
            f"spec {tuple(spec.shape)} with patch_size=({p_f}, {p_t})"
        )
    grid_mask = mask.to(device=spec.device, dtype=torch.bool).view(-1, 1, n_f, n_t)
    pixel_mask = grid_mask.repeat_interleave(p_f, dim=2).repeat_interleave(p_t, dim=3)
    pad_f, pad_t = spec.shape[2] - n_f * p_f, spec.shape[3] - n_t * p_t
    pixel_mask = torch.nn.functional.pad(pixel_mask, (0, pad_t, 0, pad_f), value=False)
    fill = torch.as_tensor(fill_value, dtype=spec.dtype, device=spec.device)
    return torch.where(pixel_mask, fill, spec)
