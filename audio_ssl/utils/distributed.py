"""Small helpers around ``torch.distributed`` that degrade to identities in a single process.

Gathering with gradients
------------------------
Contrastive losses need the embeddings of *all* processes as negatives, and the gradient of a
negative must flow back to the process that produced it. :func:`gather_with_grad` relies on
:func:`torch.distributed.nn.functional.all_gather`, whose backward pass sums the incoming gradients
of every rank and hands each rank the slice that belongs to its own input (a reduce-scatter on
NCCL, an all-to-all followed by a sum on Gloo). That is exactly the gradient of
``sum_over_ranks(loss_r)`` w.r.t. the local input, so no custom ``autograd.Function`` is needed.

Note that ``torch.distributed.all_gather`` (without ``.nn``) returns tensors that are cut off from
the graph; :func:`all_gather_no_grad` uses it on purpose for metrics and evaluation features.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

__all__ = ["is_dist", "world_size", "rank", "gather_with_grad", "all_gather_no_grad", "process_rank", "is_rank_zero",
           "barrier", "all_gather_objects", "broadcast_from_rank_zero", "destroy_process_group_at_exit"]


def is_dist() -> bool:
    """Whether ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 from every rank, keeping the autograd graph.

    The result is ``torch.cat([x_rank0, x_rank1, ...], dim=0)``. In the backward pass the
    gradients that all ranks computed for the gathered tensor are summed and each rank receives
    the slice of its own ``x``. Every rank must pass a tensor of the same shape.

    Single process (or world size 1): returns ``x`` unchanged.
    """
    if world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 without gradients (for metrics, features, labels).

    Every rank must pass a tensor of the same shape. Single process: returns ``x.detach()``.
    """
    if world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x)
    return torch.cat(out, dim=0)


# ---------------------------------------------------------------------------------------------- rank-safe side effects
def process_rank() -> int:
    """Global rank of this process, also before the process group exists.

    Lightning's ``ddp`` strategy starts the other ranks as copies of the command with ``RANK``/``LOCAL_RANK``
    (and ``NODE_RANK``) in their environment; code that runs before the first ``Trainer`` call (e.g. the CV
    runner writing its run file) must already know it is not rank 0.
    """
    if is_dist():
        return dist.get_rank()
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local = os.environ.get("LOCAL_RANK", "")
    if local.isdigit():
        node = int(os.environ.get("NODE_RANK", "0") or 0)
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # unknown: still nonzero on node > 0
        return int(local) + node * max(devices, 1)
    return 0


def is_rank_zero() -> bool:
    """Whether this process writes shared files (the only process when not distributed)."""
    return process_rank() == 0


def barrier() -> None:
    """Wait for every process of the default group (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable, any size per rank), indexed by rank; ``[obj]`` when not distributed."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_rank_zero(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (other ranks pass anything, e.g. ``None``); ``obj`` when not distributed."""
    if world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------- process-group teardown
_destroy_registered = False


def _destroy_process_group() -> None:
    if is_dist():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy this process's default group when the interpreter exits, before it tears itself down.

    Lightning destroys the group it creates only for NCCL, so a Gloo rank (``ddp`` or ``ddp_spawn`` on CPU)
    exits with a live ``ProcessGroupGloo``: its C++ worker threads then meet the interpreter's finalization
    (a thread that still holds tensors needs the GIL, or its ``std::thread`` is destroyed unjoined) and the
    rank dies with SIGABRT, "terminate called without an active exception", after its work is done, at
    random. An ``atexit`` handler runs while the interpreter is still whole (also in ``ddp_spawn`` workers,
    which leave through ``sys.exit``) and joins those threads. Destroying the group is local to the process
    (no collective), so ranks may reach it at different times. Idempotent; a no-op without a process group.
    """
    global _destroy_registered
    if _destroy_registered or not is_dist():
        return
    atexit.register(_destroy_process_group)
    _destroy_registered = True
