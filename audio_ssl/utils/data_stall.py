"""How long each training step waited for its batch: the data stall, logged as ``perf/data_stall_fraction``.

:class:`DataStallMonitor` (a Lightning callback, on by default in the CLI) splits every training step ``k`` of an
epoch into

- ``wait_k``: from the end of step ``k - 1`` (``on_train_batch_end``) to the start of step ``k``
  (``on_train_batch_start``): fetching the batch from the loader, its transfer to the device and
  ``on_after_batch_transfer`` (the methods' device-side augmentation and front end), plus what other callbacks
  and the loop do between steps (logging, a checkpoint every N steps);
- ``step_k``: from the start to the end of step ``k`` (forward, backward, optimizer step).

The epoch's stall fraction is ``sum(wait) / sum(wait + step)`` over its steps but the first (whose wait holds
the loader's start-up, reported apart as ``first_wait_s``); a wait that holds a validation run (a
``val_check_interval`` inside the epoch) is not counted.

Timing: on a CUDA device the boundaries are CUDA events recorded on the current stream, which cost no
synchronisation; the elapsed times are read at the epoch's end after one ``synchronize``. They measure the
device's timeline: ``wait_k`` is then the time between the end of step ``k - 1``'s kernels and the end of the
transfer and augmentation of batch ``k``, i.e. what the device spent idle or on the data path, and a loader that
keeps ahead of an asynchronous device shows no stall (host-side timing would count the host's waits for the
device queue). On any other device: ``time.perf_counter``.
"""

from __future__ import annotations

import time

import lightning as L
import torch

__all__ = ["STALL_METRIC", "DataStallMonitor"]

STALL_METRIC = "perf/data_stall_fraction"


class DataStallMonitor(L.Callback):
    """Writes :data:`STALL_METRIC` (the epoch's data stall fraction, see the module docstring) to the trainer's
    loggers at every training epoch's end (this process's value; rank 0's loggers write); :attr:`epochs` keeps one dict per epoch (``fraction``, ``wait_s``, ``step_s``, ``steps``,
    ``first_wait_s``) and :meth:`summary` their mean."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self._marks: list[tuple] = []  # (previous end or epoch start or None, start, end, first) per step
        self._last_end = None
        self._start = None
        self._epoch_start = None
        self._cuda: torch.device | None = None

    def _now(self):
        if self._cuda is None:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self._cuda))
        return event

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self._cuda is not None else end - start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._cuda = device if device.type == "cuda" else None
        self._marks, self._last_end, self._start = [], None, None
        self._epoch_start = self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        end = self._now()
        first = not self._marks
        self._marks.append((self._epoch_start if first else self._last_end, self._start, end, first))
        self._last_end, self._start = end, None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last_end = None  # the next wait holds this validation run: leave it out

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._marks:
            return
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)  # once per epoch: every event has completed
        wait = step = 0.0
        first_wait = None
        for before, start, end, first in self._marks:
            if first:
                first_wait = self._seconds(before, start) if before is not None else None
                continue
            step += self._seconds(start, end)
            if before is not None:
                wait += self._seconds(before, start)
        counted = len(self._marks) - 1
        self._marks = []
        if counted < 1 or wait + step <= 0:
            return
        record = {"epoch": int(trainer.current_epoch), "fraction": wait / (wait + step), "wait_s": wait,
                  "step_s": step, "steps": counted, "first_wait_s": first_wait}
        self.epochs.append(record)
        # Straight to the loggers (rank 0 writes), not through self.log: each rank's own value, no collective
        # at the epoch's end and no warning about sync_dist under DDP.
        for logger in trainer.loggers:
            logger.log_metrics({STALL_METRIC: record["fraction"]}, step=trainer.global_step)

    def summary(self) -> dict | None:
        """``{"data_stall_fraction": mean over epochs, "data_stall_epochs": n}``; ``None`` before any epoch."""
        if not self.epochs:
            return None
        return {"data_stall_fraction": sum(e["fraction"] for e in self.epochs) / len(self.epochs),
                "data_stall_epochs": len(self.epochs)}

    @staticmethod
    def of(trainer: L.Trainer) -> DataStallMonitor | None:
        """The trainer's monitor, if it has one."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, DataStallMonitor)), None)
