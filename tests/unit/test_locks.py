"""Lock objects without their refresh thread: generations, giving up a wait, staleness after pauses, liveness on the
store's clock. With the refresh thread running: tests/pipeline/test_locks.py."""

from __future__ import annotations

import time

import pytest

from ckptsync import locks
from ckptsync.errors import StoreError
from ckptsync.store import LocalStore


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def test_generation_differs_for_every_collection_even_within_one_second(store):
    seen = set()
    lock = locks.Lock(store, "p", "shared")
    for _ in range(5):
        locks.write_generation(store, "p")
        seen.add(lock.write_and_look().generation)
    assert len(seen) == 5 and None not in seen


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


def test_stale_is_measured_against_the_stores_clock(store, tmp_path):
    """A lock written 'now' by a client whose clock is off still counts as live."""
    other = locks.Lock(store, "p", "shared")
    other.write_and_look()
    mine = locks.Lock(store, "p", "exclusive")
    view = mine.write_and_look()
    assert [o.key for o in view.shared] == [other.key]
