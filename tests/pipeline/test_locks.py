"""Lock objects with their refresh thread running: a shared lock waits for a live exclusive one, a dead collector's
lock goes stale and stops blocking, and a released lock is never written again by its refresher.

The rest of the lock rules (generations, giving up, pauses, the store's clock) are in tests/unit/test_locks.py.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from ckptsync import locks
from ckptsync.store import LocalStore
from tests.helpers import wait_until


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def age(store_root, key, seconds):
    path = store_root / key
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_live_exclusive_lock_makes_a_shared_one_wait_until_it_is_released(store):
    collector = locks.Lock(store, "p", "exclusive")
    collector.write_and_look()
    waited = []

    def sleep(seconds: float) -> None:  # the collector finishes while the uploader waits for the second time
        waited.append(seconds)
        if len(waited) == 2:
            collector.release()

    lock, view = locks.acquire_shared(store, "p", sleep=sleep)
    lock.release()
    assert waited and view.exclusive == []


def test_a_dead_collectors_lock_goes_stale_and_stops_blocking(store, tmp_path):
    dead = locks.Lock(store, "p", "exclusive")
    dead.write_and_look()
    age(tmp_path, dead.key, locks.STALE.total_seconds() + 60)  # not rewritten for longer than STALE
    lock, view = locks.acquire_shared(store, "p", sleep=lambda s: pytest.fail("waited for a dead lock"))
    lock.release()
    assert view.exclusive == []


def test_released_lock_is_not_recreated_by_a_late_refresh(store, tmp_path):
    lock = locks.Lock(store, "p", "shared", refresh=0.01)
    lock.write_and_look()
    first = lock.last_write
    lock.start_refreshing()
    wait_until(lambda: lock.last_write != first, 10, "a refresh of the lock")
    lock.release()
    # the refresher has ended with the release: no write can come after this point
    assert not [t for t in threading.enumerate() if t.name == "ckptsync-lock"]
    assert not list((tmp_path / "p" / "locks").glob("*.json"))
