"""Run a function in several Gloo processes on CPU and collect what each rank returns.

Usage in a test (the worker must be a module-level function so that it can be pickled)::

    from ddp_utils import run_distributed  # tests/ is on sys.path via tests/conftest.py

    def _worker(rank: int, world_size: int, data: torch.Tensor) -> dict:
        ...  # torch.distributed is initialised here
        return {"loss": loss.detach()}

    results = run_distributed(_worker, world_size=2, args=(data,))  # one result per rank

Each worker gets ``torch.set_num_threads(1)``; a worker exception fails the call with the child's
traceback (``torch.multiprocessing.ProcessRaisedException``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["find_free_port", "run_distributed"]


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    out_dir: str,
    args: Sequence[Any],
    timeout_s: float,
) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any], world_size: int = 2, args: Sequence[Any] = (), timeout_s: float = 60.0
) -> list[Any]:
    """Spawn ``world_size`` Gloo processes running ``fn(rank, world_size, *args)``.

    Returns the per-rank return values (anything ``torch.save`` can store), indexed by rank.
    ``timeout_s`` bounds each collective, so a deadlock fails instead of hanging the test run.
    """
    port = find_free_port()
    with tempfile.TemporaryDirectory(prefix="ddp_test_") as out_dir:
        mp.spawn(
            _entry, args=(fn, world_size, port, out_dir, tuple(args), timeout_s), nprocs=world_size, join=True
        )
        # Results the test's own worker processes just wrote (may hold NamedTuples), not outside checkpoints.
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
