"""Bandwidth limit as a store wrapper: a token bucket shared by every transfer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from .base import ObjectInfo, Store, delete_many


class TokenBucket:
    """``take(n)`` blocks until ``n`` bytes fit under ``rate`` bytes/s (bursts up to one second's worth)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.rate
        self._last = clock()

    def take(self, n: int) -> None:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n  # may go negative: the debt is paid by waiting
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


class ThrottledStore:
    """Limits the bytes per second of puts and gets to ``rate``."""

    def __init__(self, inner: Store, rate: float) -> None:
        self.inner = inner
        self.bucket = TokenBucket(rate)
        self.url = inner.url

    @property
    def conditional_writes(self) -> bool | None:
        return self.inner.conditional_writes

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.bucket.take(len(data))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        self.bucket.take(len(data))
        self.inner.put_if_absent(key, data)

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        data = self.inner.get(key, max_size=max_size)
        self.bucket.take(len(data))
        return data

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        delete_many(self.inner, keys)

    def cleanup(self, prefix: str, older_than: timedelta) -> int:
        return self.inner.cleanup(prefix, older_than)

    def close(self) -> None:
        self.inner.close()
