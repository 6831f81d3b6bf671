"""Dynamic batching on one model: requests queue their windows, one worker thread runs them in batches.

Every request hands its windows ([N, T] tensors; a long recording has many) to :meth:`Batcher.score`. The
worker thread takes the oldest pending windows, waits up to ``max_wait_ms`` for more to arrive from other
requests while the batch holds fewer than ``max_batch`` windows, runs the model once on the batch and hands
each request its rows back. A long recording's windows are split across batches and share them with other
requests' windows, so a long file never holds up short ones for more than one batch at a time. Work that must
run alone on the model (the feature maps the page draws) is queued as a call and runs between batches.

The model is used by this one thread only, so it needs no locks, and there is one copy of it in memory.
Admission is bounded by the server (:class:`audio_ssl.serve.app.Admission`); the batcher itself keeps no
limit, and ``max_batch = 1`` gives one-by-one scoring (the baseline of ``benchmarks/serve_load.py``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import numpy as np
import torch

__all__ = ["Batcher"]


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless the request already gave up on it (cancelled from the event loop's thread)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class _Job:
    """One request's windows and where their probabilities go."""

    __slots__ = ("windows", "done", "outputs", "future", "cancelled")

    def __init__(self, windows):
        self.windows = windows
        self.done = 0  # windows already handed to a batch
        self.outputs: list[np.ndarray] = []
        self.future: Future = Future()
        self.cancelled = False

    @property
    def remaining(self) -> int:
        return len(self.windows) - self.done


class _Call:
    """A function to run alone on the worker thread (e.g. feature maps of one window)."""

    __slots__ = ("fn", "future", "cancelled")

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.future, self.cancelled = fn, Future(), False


class Batcher:
    """Runs ``score_fn(windows [B, T]) -> probs [B, C]`` on batches gathered from concurrent requests.

    Args:
        score_fn: the model; called only from the worker thread.
        max_batch: most windows per call of ``score_fn`` (1: one window at a time, no batching).
        max_wait_ms: how long a batch that is not yet full waits for more windows.
        threads: torch intra-op threads of the worker (``None``: leave torch's setting).
    """

    def __init__(self, score_fn: Callable[[torch.Tensor], np.ndarray], max_batch: int = 16,
                 max_wait_ms: float = 5.0, threads: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.score_fn = score_fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.threads = threads
        self._inbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0
        """Calls of ``score_fn`` so far."""
        self.windows_scored = 0
        self.largest_batch = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="audio-ssl-serve-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work and stop the worker."""
        if self._thread is not None:
            self._stopping = True
            self._inbox.put(None)
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        """Batches run, windows scored, mean and largest batch, and the batch settings."""
        return {"batches": self.batches, "windows": self.windows_scored,
                "mean_batch": round(self.windows_scored / self.batches, 3) if self.batches else 0.0,
                "largest_batch": self.largest_batch, "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait * 1000.0}

    # ------------------------------------------------------------------ submitting work
    async def score(self, windows) -> np.ndarray:
        """Probabilities [N, C] of ``windows`` (a tensor [N, T], or anything whose ``windows[i:j]`` is one, such as
        :class:`audio_ssl.serve.model.Windows`), scored in the shared batches. Cancelling the awaiting task (e.g.
        a request timeout) drops the windows not yet scored."""
        if len(windows) == 0:
            raise ValueError("no windows to score")
        job = _Job(windows)
        self._inbox.put(job)
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the worker thread, between batches, and return its result."""
        item = _Call(fn)
        self._inbox.put(item)
        try:
            return await asyncio.wrap_future(item.future)
        except asyncio.CancelledError:
            item.cancelled = True
            raise

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        pending: deque[_Job] = deque()
        while True:
            if not pending:
                item = self._inbox.get()
                if item is None:
                    return
                if not self._accept(item, pending):
                    continue
            # A batch that is not full waits a little for windows of other requests.
            deadline = time.monotonic() + self.max_wait
            while sum(job.remaining for job in pending) < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    item = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stopping = True
                    break
                self._accept(item, pending)
            self._run_batch(pending)
            if self._stopping and not pending and self._inbox.empty():
                return

    def _accept(self, item, pending: deque) -> bool:
        """Queue a job, or run a call at once; True when a job was queued."""
        if isinstance(item, _Call):
            if not item.cancelled and item.future.set_running_or_notify_cancel():
                try:
                    result = item.fn()
                except BaseException as err:  # handed to the request, never kills the worker
                    _settle(item.future, error=err)
                else:
                    _settle(item.future, result)
            return False
        pending.append(item)
        return True

    def _run_batch(self, pending: deque) -> None:
        while pending and pending[0].cancelled:
            pending.popleft()
        parts: list[tuple[_Job, int]] = []
        size = 0
        for job in pending:
            if job.cancelled:
                continue
            take = min(job.remaining, self.max_batch - size)
            if take <= 0:
                break
            parts.append((job, take))
            size += take
        if not parts:
            pending.clear()
            return
        batch = torch.cat([job.windows[job.done : job.done + take] for job, take in parts])
        try:
            probs = self.score_fn(batch)
        except BaseException as err:  # the model failed on this batch: fail its requests, keep serving
            for job, _ in parts:
                _settle(job.future, error=err)
                job.cancelled = True
            self._drop_finished(pending)
            return
        self.batches += 1
        self.windows_scored += size
        self.largest_batch = max(self.largest_batch, size)
        row = 0
        for job, take in parts:
            job.outputs.append(probs[row : row + take])
            row += take
            job.done += take
            if job.remaining == 0:
                _settle(job.future, np.concatenate(job.outputs))
        self._drop_finished(pending)

    @staticmethod
    def _drop_finished(pending: deque) -> None:
        for job in list(pending):
            if job.cancelled or job.remaining == 0:
                pending.remove(job)
