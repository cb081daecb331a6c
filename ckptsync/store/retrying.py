"""Retries as a wrapper around any store (tenacity).

Transient failures (throttling, 5xx, timeouts, dropped connections) are
retried with exponential backoff and full jitter, bounded both in attempts and
in total time. Failures that cannot heal (access denied, missing bucket, bad
credentials, not found) are raised at once. botocore's own retries are off
(see :mod:`ckptsync.store.s3`), so ``attempts`` is the whole budget of
requests for one operation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from ..errors import AlreadyExists, StoreError
from .base import ObjectInfo, Store, delete_many

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """The retry budget of one store operation."""

    attempts: int = 6
    max_seconds: float = 90.0
    initial_wait: float = 0.5
    max_wait: float = 15.0


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if tried again."""
    return isinstance(exc, StoreError) and exc.transient


class RetryingStore:
    """Wraps a store; every operation is retried on transient errors."""

    def __init__(self, inner: Store, policy: RetryPolicy | None = None, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.url = inner.url

    @property
    def conditional_writes(self) -> bool | None:
        return self.inner.conditional_writes

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        p = self.policy
        retrying = Retrying(
            stop=stop_after_attempt(p.attempts) | stop_after_delay(p.max_seconds),
            wait=wait_random_exponential(multiplier=p.initial_wait, max=p.max_wait),
            retry=retry_if_exception(is_transient),
            sleep=self.sleep,
            reraise=True,
            before_sleep=lambda rs: log.info(
                "retrying %s (attempt %d failed: %s)", what, rs.attempt_number, rs.outcome.exception() if rs.outcome else "?"
            ),
        )
        return retrying(fn)

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
