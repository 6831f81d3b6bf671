"""Samplers of the data modules: an evaluation sampler for DDP that reads every clip exactly once, and the training
samplers that hand out a crop draw with every index.

``torch.utils.data.DistributedSampler`` pads the index list with repeated clips until it divides by the
number of processes, so a 15-clip fold evaluated on 2 ranks scores 16 clips (one twice) and its metrics
differ from a single process. :class:`ShardSampler` gives rank ``r`` of ``W`` the indices ``r, r + W,
r + 2W, ...``: disjoint shards that together hold each index once, whose sizes differ by at most one (so a
rank may run one batch fewer: nothing per batch in evaluation may be a collective). It subclasses
``DistributedSampler`` so that Lightning keeps it instead of injecting its own.

:class:`CropDraws` (one process) and :class:`DistributedCropDraws` (DDP) yield ``(index, draw)`` pairs: a shuffled
order (under DDP ``DistributedSampler(shuffle=True)``'s) and with each index a uniform integer draw in
``[0, 2**63)`` from which :func:`~audio_ssl.data.datasets.crop_windows` places the item's random crop. The draws
are made in the main process, so crops do not depend on which worker reads an item (nor on ``num_workers``),
and a loader over the device-resident clips (:class:`~audio_ssl.data.datasets.ResidentClips`) given the same
sampler gets the same crops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

DRAW_BOUND = 2**63
"""Crop draws are uniform integers in ``[0, DRAW_BOUND)`` (int64-safe)."""


def with_draws(order: list[int], rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """``(index, draw)`` for each index of ``order``, the draws ``rng.integers(0, 2**63)`` in that order."""
    draws = rng.integers(0, DRAW_BOUND, size=len(order), dtype=np.int64).tolist()
    return iter(zip(order, draws))


class ShardSampler(DistributedSampler):
    """Unpadded, unshuffled shard ``rank`` of ``num_replicas`` of ``range(len(dataset))``."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int):
        if len(dataset) < num_replicas:
            raise ValueError(f"cannot shard {len(dataset)} clip(s) over {num_replicas} processes without leaving a "
                             "process with nothing to evaluate (its collectives would hang): use fewer devices")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class CropDraws(Sampler):
    """A random order of ``range(len(dataset))`` per pass (epoch), each index with a crop draw (see the module
    docstring).

    Each pass draws one seed from ``generator`` (default: torch's global generator) and derives the order
    (``torch.randperm``) and the draws from it, so a private generator makes the batches independent of what
    else consumes random numbers (the DataLoader's worker seeds, the model).
    """

    def __init__(self, dataset: Sized, generator: torch.Generator | None = None):
        self.num_samples, self.generator = len(dataset), generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed)).tolist()
        return with_draws(order, np.random.default_rng(seed))

    def __len__(self) -> int:
        return self.num_samples


class DistributedCropDraws(DistributedSampler):
    """``DistributedSampler(dataset, num_replicas, rank, shuffle=True, seed=seed)`` (what Lightning injects for a
    shuffled training loader under DDP), each index with a crop draw seeded from ``(seed, epoch, rank)``
    (Lightning calls ``set_epoch`` every epoch). A ``DistributedSampler``, so Lightning keeps it."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(super().__iter__())
        return with_draws(order, np.random.default_rng([self.seed, self.epoch, self.rank]))
