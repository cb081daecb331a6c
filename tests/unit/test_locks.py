"""Lock objects: liveness on the store's clock, generations, waiting, and staleness after pauses."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ckptsync import locks
from ckptsync.errors import StoreError
from ckptsync.store import LocalStore


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def age(store_root, key, seconds):
    path = store_root / key
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_generation_differs_for_every_collection_even_within_one_second(store):
    seen = set()
    lock = locks.Lock(store, "p", "shared")
    for _ in range(5):
        locks.write_generation(store, "p")
        seen.add(lock.write_and_look().generation)
    assert len(seen) == 5 and None not in seen


def test_a_live_exclusive_lock_makes_a_shared_one_wait_until_it_is_released(store):
    collector = locks.Lock(store, "p", "exclusive")
    collector.write_and_look()
    threading.Timer(0.5, collector.release).start()
    waited = []
    lock, view = locks.acquire_shared(store, "p", sleep=lambda s: (waited.append(s), time.sleep(0.1)))
    lock.release()
    assert waited and view.exclusive == []


def test_a_dead_collectors_lock_goes_stale_and_stops_blocking(store, tmp_path):
    dead = locks.Lock(store, "p", "exclusive")
    dead.write_and_look()
    age(tmp_path, dead.key, locks.STALE.total_seconds() + 60)  # not rewritten for longer than STALE
    lock, view = locks.acquire_shared(store, "p", sleep=lambda s: pytest.fail("waited for a dead lock"))
    lock.release()
    assert view.exclusive == []


def test_waiting_gives_up_after_the_limit_with_a_transient_error_and_leaves_no_lock(store, tmp_path):
    collector = locks.Lock(store, "p", "exclusive")
    collector.write_and_look()
    with pytest.raises(StoreError) as e:
        locks.acquire_shared(store, "p", wait=0.2, sleep=lambda s: time.sleep(0.05))
    assert e.value.transient
    left = [p.name for p in (tmp_path / "p" / "locks").iterdir()]
    assert left == [collector.key.rsplit("/", 1)[-1]]


def test_a_long_gap_between_writes_makes_the_lock_not_fresh(store, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(locks, "elapsed_clock", lambda: now[0])
    lock = locks.Lock(store, "p", "shared")
    lock.write_and_look()
    assert lock.fresh()
    now[0] += locks.STALE.total_seconds()  # e.g. the machine was suspended
    lock.write_and_look()  # the refresher catches up right after the pause...
    assert not lock.fresh()  # ...but the gap is remembered


def test_released_lock_is_not_recreated_by_a_late_refresh(store, tmp_path):
    lock = locks.Lock(store, "p", "shared", refresh=0.01)
    lock.write_and_look()
    lock.start_refreshing()
    time.sleep(0.05)
    lock.release()
    time.sleep(0.05)
    assert not list((tmp_path / "p" / "locks").glob("*.json"))


def test_stale_is_measured_against_the_stores_clock(store, tmp_path):
    """A lock written 'now' by a client whose clock is off still counts as live."""
    other = locks.Lock(store, "p", "shared")
    other.write_and_look()
    mine = locks.Lock(store, "p", "exclusive")
    view = mine.write_and_look()
    assert [o.key for o in view.shared] == [other.key]
