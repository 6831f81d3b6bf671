"""A Gloo rank must destroy its process group before the interpreter finalizes: Lightning does it only for
NCCL, and a rank that exits with a live ProcessGroupGloo aborts at random ("terminate called without an
active exception", SIGABRT) after its work is done."""

from __future__ import annotations

import atexit
from datetime import timedelta

import torch.distributed as dist

from audio_ssl.utils import distributed as D


def test_the_group_is_destroyed_at_exit_once(monkeypatch, tmp_path):
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(D, "_destroy_registered", False)
    D.destroy_process_group_at_exit()  # no group yet: nothing to destroy, nothing registered
    assert registered == []
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=timedelta(seconds=30))
    try:
        D.destroy_process_group_at_exit()
        D.destroy_process_group_at_exit()  # every setup calls it: registered once
        assert len(registered) == 1
        registered[0]()  # what atexit runs
        assert not dist.is_initialized()
        registered[0]()  # and again: a no-op
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
