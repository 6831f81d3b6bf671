"""Schedules continue at a new length when a finished run is extended, and restore exactly otherwise."""

from __future__ import annotations

import pytest
import torch

from audio_ssl.utils.optim import build_scheduler


def run(name: str, total: int, steps: int, state=None):
    """(optimizer, schedule, lrs before each of ``steps`` steps) of a one-parameter AdamW; ``state`` =
    ``(optimizer_state, schedule_state)`` to load first, as Lightning does on resume."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = build_scheduler(name, optimizer, total, warmup_fraction=0.1, max_lr=4e-3 if name == "onecycle" else None)
    if state is not None:
        optimizer.load_state_dict(state[0])
        schedule.load_state_dict(state[1])
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return optimizer, schedule, lrs


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_extended_schedule_continues_as_a_fresh_schedule_of_the_new_length(name):
    optimizer, schedule, _ = run(name, total=10, steps=10)  # a finished 10-step run
    resumed_opt, resumed, lrs = run(name, total=15, steps=5, state=(optimizer.state_dict(), schedule.state_dict()))
    reference_opt, _, reference = run(name, total=15, steps=15)
    assert lrs == pytest.approx(reference[10:], rel=1e-9)
    assert resumed.last_epoch == 15 and resumed.total_steps == 15
    assert resumed_opt.param_groups[0]["betas"] == pytest.approx(reference_opt.param_groups[0]["betas"])


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_same_length_resume_is_exact(name):
    optimizer, schedule, _ = run(name, total=12, steps=5)
    _, _, lrs = run(name, total=12, steps=7, state=(optimizer.state_dict(), schedule.state_dict()))
    _, _, reference = run(name, total=12, steps=12)
    assert lrs == pytest.approx(reference[5:], rel=1e-9)


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_shortening_below_the_steps_taken_is_refused(name):
    optimizer, schedule, _ = run(name, total=12, steps=10)
    with pytest.raises(ValueError, match="has taken 10 of 12 steps, but this run's schedule has only 8"):
        run(name, total=8, steps=0, state=(optimizer.state_dict(), schedule.state_dict()))
