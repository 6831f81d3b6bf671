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

BatchNorm over processes
------------------------
:func:`convert_sync_batchnorm` makes every BatchNorm of a module compute its training statistics over the
global batch (``nn.SyncBatchNorm`` on accelerators, :class:`CrossProcessBatchNorm` on CPU/Gloo). Methods
ask for it with ``BaseMethod(sync_batchnorm=True)``.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["is_dist", "world_size", "rank", "gather_with_grad", "all_gather_no_grad", "all_gather_rows", "process_rank", "is_rank_zero",
           "barrier", "all_gather_objects", "broadcast_from_rank_zero", "CrossProcessBatchNorm",
           "convert_sync_batchnorm", "destroy_process_group_at_exit"]


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


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x [N_r, ...]`` along dim 0 without gradients when ranks hold different numbers of rows
    (e.g. evaluation shards that differ by one clip): the rows of rank 0, then rank 1, ... Every rank must call
    it with the same trailing shape and dtype. Single process: returns ``x.detach()``."""
    if world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    sizes = all_gather_no_grad(torch.tensor([len(x)], device=x.device)).tolist()
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: len(x)] = x
    parts = all_gather_no_grad(padded).split(max(sizes))
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


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


# ---------------------------------------------------------------------------------------------- BatchNorm over processes
class CrossProcessBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span every process of the default group, for CPU (Gloo) runs.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators (and DDP refuses it on CPU modules). Here, in
    training mode under a process group of more than one process, the batch mean and biased variance are
    computed over all processes' batches with two all-reduces from ``torch.distributed.nn``, whose backward
    passes sum every rank's gradient, so the gradients match one process on the concatenated batch. The
    running statistics are updated with the unbiased global variance, as ``nn.SyncBatchNorm`` does. In a
    single process or in eval mode it is a plain BatchNorm. Accepts ``[N, C, *]`` inputs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"CrossProcessBatchNorm expects input of shape [N, C, *], got {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        total = count.item()
        mean = dist_fn.all_reduce(input.sum(dims)) / total
        centred = input - mean.view(shape)
        var = dist_fn.all_reduce(centred.square().sum(dims)) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                unbiased = var * total / max(total - 1, 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _to_cross_process(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (CrossProcessBatchNorm, nn.SyncBatchNorm)):
        out = CrossProcessBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cross_process(child))
    return out


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cuda") -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` synchronised over the default process group, parameters and
    running statistics kept: ``nn.SyncBatchNorm`` on accelerators, :class:`CrossProcessBatchNorm` when
    ``device_type == "cpu"``. Returns the module (a new one if ``module`` is itself a BatchNorm)."""
    if device_type == "cpu":
        return _to_cross_process(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


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
