"""Tests for random / block patch masks and applying masks to spectrograms."""

import pytest
import torch

from audio_ssl.features.masking import (
    apply_patch_mask,
    block_patch_mask,
    num_masked_patches,
    random_patch_mask,
)
from audio_ssl.tokenizers.patches import patchify, unpatchify

RATIOS = [0.0, 0.1, 0.3, 0.5, 0.75, 0.9, 1.0]


def test_num_masked_patches():
    assert num_masked_patches(512, 0.75) == 384
    assert num_masked_patches(10, 0.33) == 3
    assert num_masked_patches(10, 0.37) == 4
    with pytest.raises(ValueError, match="ratio"):
        num_masked_patches(10, 1.5)


@pytest.mark.parametrize("num_patches", [1, 7, 100, 512])
@pytest.mark.parametrize("ratio", RATIOS)
def test_random_mask_exact_count(num_patches, ratio):
    g = torch.Generator().manual_seed(0)
    mask = random_patch_mask(16, num_patches, ratio, generator=g)
    assert mask.dtype == torch.bool and mask.shape == (16, num_patches)
    assert (mask.sum(1) == round(ratio * num_patches)).all()


def test_random_mask_seeded_and_varied():
    a = random_patch_mask(8, 100, 0.5, generator=torch.Generator().manual_seed(1))
    b = random_patch_mask(8, 100, 0.5, generator=torch.Generator().manual_seed(1))
    c = random_patch_mask(8, 100, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) == 8  # examples differ from each other


@pytest.mark.parametrize("grid", [(8, 32), (1, 50), (5, 7), (8, 64)])
@pytest.mark.parametrize("ratio", RATIOS)
def test_block_mask_exact_count(grid, ratio):
    g = torch.Generator().manual_seed(0)
    mask = block_patch_mask(12, grid, ratio, generator=g)
    n = grid[0] * grid[1]
    assert mask.dtype == torch.bool and mask.shape == (12, n)
    assert (mask.sum(1) == round(ratio * n)).all()


def test_block_mask_top_up_when_blocks_run_out():
    # a single round of one block cannot reach 90% of the grid: the rest is topped up at random
    g = torch.Generator().manual_seed(0)
    mask = block_patch_mask(4, (8, 32), 0.9, blocks_per_round=1, max_rounds=1, generator=g)
    assert (mask.sum(1) == round(0.9 * 256)).all()


def _isolated(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per example, number of masked patches with no masked 4-neighbour."""
    m = mask.view(-1, 1, *grid).float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    neighbours = torch.nn.functional.conv2d(m, kernel, padding=1)
    return ((m > 0) & (neighbours == 0)).flatten(1).sum(1)


def test_block_mask_is_made_of_blocks():
    """With 2x2 blocks only the trimmed last block can leave isolated patches (at most 2)."""
    grid = (8, 32)
    g = torch.Generator().manual_seed(0)
    block = block_patch_mask(32, grid, 0.3, min_block=2, max_block=2, generator=g)
    assert (_isolated(block, grid) <= 2).all()
    # a uniformly random mask of the same density has many isolated patches (the check can fail)
    rand = random_patch_mask(32, grid[0] * grid[1], 0.3, generator=g)
    assert _isolated(rand, grid).float().mean() > 10


def test_block_mask_seeded_and_device():
    a = block_patch_mask(4, (8, 16), 0.5, generator=torch.Generator().manual_seed(3), device="cpu")
    b = block_patch_mask(4, (8, 16), 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.device.type == "cpu"


def test_block_mask_rejects_bad_block_range():
    with pytest.raises(ValueError, match="min_block"):
        block_patch_mask(2, (8, 8), 0.5, min_block=4, max_block=2)


def test_apply_patch_mask_matches_patch_space_reference():
    torch.manual_seed(0)
    spec = torch.randn(3, 1, 70, 37)  # grid (4, 2) with 16x16 patches, remainders 6 bins / 5 frames
    mask = random_patch_mask(3, 8, 0.5, generator=torch.Generator().manual_seed(0))
    out = apply_patch_mask(spec, mask, 16, fill_value=-5.0)
    patches = patchify(spec, 16)
    patches[mask] = -5.0
    assert torch.equal(out[..., :64, :32], unpatchify(patches, (4, 2), 16))
    # the cropped remainder is untouched, and the input was not modified in place
    assert torch.equal(out[..., 64:, :], spec[..., 64:, :])
    assert torch.equal(out[..., :, 32:], spec[..., :, 32:])
    assert not torch.equal(out, spec)


def test_apply_patch_mask_tensor_fill_and_shape_error():
    spec = torch.zeros(1, 1, 32, 32)
    mask = torch.tensor([[True, False, False, True]])
    fill = torch.arange(32.0).view(1, 1, 32, 1)  # per-bin fill
    out = apply_patch_mask(spec, mask, 16, fill_value=fill)
    assert torch.equal(out[0, 0, :16, :16], fill[0, 0, :16].expand(16, 16))
    assert torch.equal(out[0, 0, 16:, 16:], fill[0, 0, 16:].expand(16, 16))
    assert (out[0, 0, :16, 16:] == 0).all() and (out[0, 0, 16:, :16] == 0).all()
    with pytest.raises(ValueError, match="mask has shape"):
        apply_patch_mask(spec, torch.zeros(1, 5, dtype=torch.bool), 16)
