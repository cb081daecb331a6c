"""A thread pool whose tasks hold a share of one budget while they run (upload and restore).

As s3transfer's ``BoundedExecutor`` does with a semaphore per task kind, the
executor owns the budget: a caller reserves a share *before* it produces the
task's input (reads a chunk from disk), hands the reservation to
:meth:`BoundedExecutor.submit`, and the executor gives it back when the task
ends, whether it succeeded, failed or was cancelled. A reservation never
submitted goes back when its ``with`` block ends. Nothing is released by hand
on error paths, so the budget cannot leak, and what is held in memory never
exceeds the budget, whatever the size of the checkpoint.

The unit of the budget is the caller's: uploads count bytes, restores count
chunks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux: per thread; inherited by threads it starts)."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass


#: Environment variables :func:`quiet_blas` set in this process, which a child must not inherit.
_ADDED_ENV: set[str] = set()


def quiet_blas() -> None:
    """Start numpy's OpenBLAS with one thread, when this process is ckptsync's own (the CLI).

    numpy's OpenBLAS starts a thread per core when numpy is imported, and they spin
    while waiting for work that never comes: ckptsync makes no BLAS call. On 2 cores
    the spinning took a fifth of a restore's CPU. Call it before numpy is imported; a
    value the user set is kept, and :func:`child_environment` keeps the setting from a
    command ``ckptsync run`` starts.
    """
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        _ADDED_ENV.add("OPENBLAS_NUM_THREADS")


def child_environment() -> dict[str, str]:
    """The environment for a child process: this process's, without what :func:`quiet_blas` added."""
    return {k: v for k, v in os.environ.items() if k not in _ADDED_ENV}


class Budget:
    """A counting semaphore over units: :meth:`take` blocks while the budget is spent.

    A single request larger than the whole budget is let through when nothing
    else is held, so one large task never deadlocks the pipeline.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class Reservation:
    """Units taken from a budget, given back exactly once.

    Used as a context manager, a reservation gives its units back when the
    block ends, on success and on error alike, unless they were moved on:
    handed to :meth:`BoundedExecutor.submit` (the task then holds them until it
    ends), or moved into another reservation with :meth:`absorb` or
    :meth:`transfer`.
    """

    def __init__(self, budget: Budget, units: int) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self.units = units

    def release(self) -> None:
        """Give the units back (idempotent)."""
        units = self._take_all()
        if units:
            self._budget.give(units)

    def transfer(self) -> Reservation:
        """A new reservation holding this one's units; this one is left empty."""
        return Reservation(self._budget, self._take_all())

    def absorb(self, other: Reservation) -> None:
        """Take over ``other``'s units: they are given back with this reservation's."""
        units = other._take_all()
        with self._lock:
            self.units += units

    def _take_all(self) -> int:
        with self._lock:
            units, self.units = self.units, 0
        return units

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class BoundedExecutor:
    """Runs tasks on ``workers`` threads; each task holds its reservation until it ends."""

    def __init__(self, workers: int, budget: int, *, nice: int = 0, name: str = "ckptsync-worker") -> None:
        self.budget = Budget(budget)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name, initializer=lower_priority, initargs=(nice,))

    def reserve(self, units: int) -> Reservation:
        """Take ``units`` of the budget, blocking until they are free."""
        self.budget.take(units)
        return Reservation(self.budget, units)

    def submit(self, fn: Callable[..., T], *args: Any, hold: Reservation | None = None) -> Future[T]:
        """Run ``fn(*args)`` on a worker; ``hold`` is given back when it ends, however it ends."""
        if hold is None:
            return self._pool.submit(fn, *args)
        held = hold.transfer()
        try:
            fut = self._pool.submit(fn, *args)
        except BaseException:
            held.release()
            raise
        fut.add_done_callback(lambda _f: held.release())
        return fut

    def shutdown(self, *, cancel: bool = False) -> None:
        """Wait for running tasks (``cancel``: drop queued ones, giving back their reservations)."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> BoundedExecutor:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown(cancel=t is not None)
