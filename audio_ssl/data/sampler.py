"""An evaluation sampler for DDP that reads every clip exactly once.

``torch.utils.data.DistributedSampler`` pads the index list with repeated clips until it divides by the
number of processes, so a 15-clip fold evaluated on 2 ranks scores 16 clips (one twice) and its metrics
differ from a single process. :class:`ShardSampler` gives rank ``r`` of ``W`` the indices ``r, r + W,
r + 2W, ...``: disjoint shards that together hold each index once, whose sizes differ by at most one (so a
rank may run one batch fewer: nothing per batch in evaluation may be a collective). It subclasses
``DistributedSampler`` so that Lightning keeps it instead of injecting its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


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
