"""Backpressure for model inference: at most N passes run at once, at most Q more wait, the rest are refused.

A slot is held by the worker thread doing the work, not by the request waiting for it: when a request is cancelled
(its timeout, a client gone) the thread cannot be stopped, so it keeps its slot until the pass really ends, and a
pass that has not started yet is skipped. The count of admitted passes (waiting + running + abandoned-but-running)
never exceeds N + Q, so neither threads nor memory grow without bound under load.

Nothing here imports FastAPI; refusals are :class:`app.usecases.ServiceError` subclasses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from app.core.errors import ServiceError

T = TypeVar("T")

#: Initial guess of one pass's duration (seconds) before any was measured, for ``Retry-After``.
DEFAULT_PASS_S = 1.0
#: Bounds of the ``Retry-After`` suggestion, seconds.
RETRY_AFTER_BOUNDS = (1, 300)


class OverloadedError(ServiceError):
    """Every inference slot is busy and the waiting queue is full; ``retry_after_s`` suggests when to retry."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Abandoned(Exception):
    """The request gave up before its pass started (the pass is skipped)."""


@dataclass
class _Ticket:
    abandoned: bool = False
    started: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class InferenceGate:
    """Admission control for CPU-bound inference run in worker threads."""

    def __init__(self, max_concurrent: int, max_queued: int, on_pass: Callable[[float], None] | None = None) -> None:
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._slots = threading.Semaphore(max_concurrent)
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._mean_pass_s = DEFAULT_PASS_S
        self._on_pass = on_pass
        # Threads for this gate only, so waiting passes never starve the default pool (database calls).
        self._threads = anyio.CapacityLimiter(max_concurrent + max_queued)

    @property
    def running(self) -> int:
        """Passes running now (including abandoned ones not finished yet)."""
        return self._running

    @property
    def waiting(self) -> int:
        """Admitted passes waiting for a slot (the queue depth)."""
        with self._lock:
            return max(0, self._admitted - self._running)

    def retry_after_s(self) -> int:
        """Seconds after which a refused request may expect a free place: the queue's expected drain time."""
        with self._lock:
            backlog = self._admitted
            mean = self._mean_pass_s
        estimate = math.ceil(mean * max(1, backlog) / self.max_concurrent)
        return int(min(max(estimate, RETRY_AFTER_BOUNDS[0]), RETRY_AFTER_BOUNDS[1]))

    def _admit(self) -> _Ticket:
        with self._lock:
            if self._admitted >= self.max_concurrent + self.max_queued:
                full = True
            else:
                full = False
                self._admitted += 1
        if full:
            raise OverloadedError(
                f"the service is busy: {self.max_concurrent} inference(s) running and {self.max_queued} waiting "
                "(WAGON_MAX_CONCURRENT_INFERENCES, WAGON_MAX_QUEUED_INFERENCES); retry later",
                self.retry_after_s(),
            )
        return _Ticket()

    def _work(self, ticket: _Ticket, fn: Callable[..., T], *args: object) -> T:
        """Run in a worker thread: wait for a slot, run unless abandoned, release the slot when really done."""
        try:
            with self._slots:
                with ticket.lock:
                    if ticket.abandoned:
                        raise _Abandoned
                    ticket.started = True
                with self._lock:
                    self._running += 1
                t0 = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    elapsed = time.perf_counter() - t0
                    with self._lock:
                        self._running -= 1
                        self._mean_pass_s = 0.8 * self._mean_pass_s + 0.2 * elapsed
                    if self._on_pass is not None:
                        self._on_pass(elapsed)
        finally:
            with self._lock:
                self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in a worker thread under the gate; :class:`OverloadedError` when the queue is full.

        Cancelling the caller (a request timeout) returns at once; the thread finishes (or skips, if it had not
        started) on its own and only then frees its slot.
        """
        ticket = self._admit()
        try:
            return await anyio.to_thread.run_sync(
                self._work, ticket, fn, *args, abandon_on_cancel=True, limiter=self._threads
            )
        except BaseException:
            with ticket.lock:
                ticket.abandoned = True
            raise
