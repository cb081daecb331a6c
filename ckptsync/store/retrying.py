"""Retries as a wrapper around any store (tenacity).

Transient failures (throttling, 5xx, timeouts, dropped connections) are
retried with exponential backoff and full jitter. Failures that cannot heal
(access denied, missing bucket, bad credentials, not found) are raised at once.
botocore's own retries are off (see :mod:`ckptsync.store.s3`), so
``attempts`` is the whole budget of requests for one operation.

The time budget, ``max_seconds``, holds for one operation with all its attempts
and waits: no attempt starts unless it would end within the budget even if it
got no answer (``attempt_timeout``: for S3, the connect and read timeouts), and
the wait before a retry is shortened to fit. So an operation that gets no
answer ends within the budget; only a server that keeps sending, however
slowly, keeps one longer.

A store that gave an operation no answer up to its last attempt
(:class:`~ckptsync.errors.NoAnswer`) counts as *silent* for the next budget:
operations fail at once with that operation's error, and those retrying
meanwhile stop, so that a command facing a server that accepts connections and
never answers fails within about one budget, not one budget per request. Any
answer, success or error, ends the silence.

The first retry of an operation is logged at INFO (what failed, the wait, the
budget left), later ones at DEBUG.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from ..errors import AlreadyExists, NoAnswer, StoreError
from .base import ObjectInfo, Store, delete_many

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """The retry budget of one store operation: at most ``attempts`` requests, within ``max_seconds``
    when they get no answer (see above), waiting between them up to ``initial_wait`` seconds, then
    twice as long each time, up to ``max_wait`` (each wait drawn at random below its bound)."""

    attempts: int = 6
    max_seconds: float = 90.0
    initial_wait: float = 0.5
    max_wait: float = 15.0


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if tried again."""
    return isinstance(exc, StoreError) and exc.transient


class RetryingStore:
    """Wraps a store; every operation is retried on transient errors, within the policy's budget.

    ``attempt_timeout`` is the longest one call of ``inner`` waits for a store that
    does not answer (0 for a store that never waits on a network). ``clock`` and
    ``sleep`` measure and spend the budget.
    """

    def __init__(
        self,
        inner: Store,
        policy: RetryPolicy | None = None,
        *,
        attempt_timeout: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.attempt_timeout = attempt_timeout
        self.sleep = sleep
        self.clock = clock
        self.url = inner.url
        self._silence_lock = threading.Lock()
        self._silence: NoAnswer | None = None  # the error of the operation that got no answer, while silent
        self._silent_until = -math.inf

    @property
    def conditional_writes(self) -> bool | None:
        return self.inner.conditional_writes

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        p = self.policy
        silence = self.silence()
        if silence is not None:
            raise silence
        started = self.clock()
        # No attempt starts later: one that got no answer would end past the budget.
        last_start = started + p.max_seconds - self.attempt_timeout
        backoff = wait_random_exponential(multiplier=p.initial_wait, max=p.max_wait)
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            try:
                result = fn()
            except NoAnswer:
                raise
            except BaseException:
                self._answered()
                raise
            self._answered()
            return result

        def stop(rs: RetryCallState) -> bool:
            # tenacity decides the wait first: upcoming_sleep is the wait before the next attempt
            late = self.clock() + rs.upcoming_sleep > last_start
            return rs.attempt_number >= p.attempts or late or self.silence() is not None

        def before_sleep(rs: RetryCallState) -> None:
            left = started + p.max_seconds - self.clock()
            log.log(
                logging.INFO if rs.attempt_number == 1 else logging.DEBUG,
                "%s failed (attempt %d of at most %d: %s); retrying in %.1f s, %.0f s of the %g s retry budget left",
                what,
                rs.attempt_number,
                p.attempts,
                rs.outcome.exception() if rs.outcome else "?",
                rs.upcoming_sleep,
                left,
                p.max_seconds,
            )

        retrying = Retrying(
            stop=stop,
            wait=lambda rs: max(0.0, min(backoff(rs), last_start - self.clock())),
            retry=retry_if_exception(is_transient),
            sleep=self.sleep,
            reraise=True,
            before_sleep=before_sleep,
        )
        try:
            return retrying(attempt)
        except NoAnswer as exc:
            raise self._gave_up(exc, attempts, self.clock() - started) from None

    def silence(self) -> NoAnswer | None:
        """While the store counts as silent, the error every operation fails with; else None."""
        with self._silence_lock:
            if self._silence is None or self.clock() >= self._silent_until:
                return None
            return copy.copy(self._silence)

    def _gave_up(self, exc: NoAnswer, attempts: int, elapsed: float) -> NoAnswer:
        """The error of an operation whose last attempt got no answer; the store is silent from now on."""
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        message = f"{exc.message}; gave up after {tries} in {elapsed:.0f} s (retry budget {self.policy.max_seconds:g} s)"
        err = NoAnswer(message, exc.hint, key=exc.key)
        with self._silence_lock:
            self._silence, self._silent_until = err, self.clock() + self.policy.max_seconds
        return err

    def _answered(self) -> None:
        if self._silence is not None:
            with self._silence_lock:
                self._silence = None

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._call(f"put {key}", lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        attempts = 0

        def once() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self.inner.put_if_absent(key, data)
            except AlreadyExists:
                # An earlier attempt may have been applied by the server although
                # its response was lost: then the object holds exactly our bytes.
                if attempts > 1 and self._holds(key, data):
                    return
                raise

        self._call(f"put {key}", once)

    def _holds(self, key: str, data: bytes | memoryview) -> bool:
        try:
            return self.inner.get(key, max_size=len(data)) == bytes(data)
        except StoreError:
            return False

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, max_size=max_size))

    def exists(self, key: str) -> bool:
        return self._call(f"head {key}", lambda: self.inner.exists(key))

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self._call(f"list {prefix}", lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            self._call(f"delete {keys[0]} and {len(keys) - 1} more", lambda: delete_many(self.inner, keys))

    def cleanup(self, prefix: str, older_than: timedelta) -> int:
        return self._call(f"cleanup {prefix}", lambda: self.inner.cleanup(prefix, older_than))

    def close(self) -> None:
        self.inner.close()
