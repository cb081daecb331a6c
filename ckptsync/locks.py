"""Lock objects that make chunk collection safe beside concurrent uploads and restores.

Protocol (docs/FORMAT.md section 8; why it is safe: docs/DESIGN.md section 6): every upload and restore holds
a *shared* lock object while it decides which chunks exist and uses them;
chunk collection holds an *exclusive* one. Each side first writes its own lock,
then lists the others, so of two that start together at least one sees the
other (listings are strongly consistent): an uploader that sees an exclusive
lock waits for it to go; a collector that sees a live shared lock gives up
(manifests may still be deleted; chunks wait for the next run).

Locks are refreshed every :data:`REFRESH` seconds while held. A lock whose
object was not rewritten for :data:`STALE` is stale (its holder died) and is
ignored. Ages are measured on the server's clock: against the LastModified of
the caller's own freshly written lock, so client clock skew does not matter.
Before collection, the collector rewrites the ``generation`` object; an
uploader that sees it changed since it last listed chunks lists them again.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from . import format as fmt
from .errors import NotFound, StoreError
from .store import ObjectInfo, Store

log = logging.getLogger(__name__)

LOCKS_DIR = "locks"
GENERATION = "generation"
REFRESH = 60.0
STALE = timedelta(minutes=10)


@dataclass(frozen=True)
class LockView:
    """The other locks a holder saw right after writing its own."""

    mine: ObjectInfo
    shared: list[ObjectInfo]
    exclusive: list[ObjectInfo]
    generation: str | None  # LastModified (or size+key) of the generation object


class Lock:
    """One lock object under ``<prefix>/locks/``, refreshed in the background while held."""

    def __init__(self, store: Store, prefix: str, kind: str, *, host: str = "", refresh: float = REFRESH) -> None:
        assert kind in ("shared", "exclusive")
        self.store = store
        self.prefix = prefix
        self.kind = kind
        self.host = host
        self.refresh_every = refresh
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.key = fmt.join_key(prefix, LOCKS_DIR, f"{stamp}-{secrets.token_hex(8)}.{kind}.json")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self.last_write: float | None = None
        self._last_start: float | None = None
        #: The longest time between two writes of this lock (wall and boot clocks, so
        #: a suspended machine counts too): past STALE/2, others may have thought it dead.
        self.max_gap = 0.0

    def _write(self) -> None:
        body = json.dumps({"kind": self.kind, "host": self.host, "pid": os.getpid(), "time": fmt.format_time(datetime.now(timezone.utc))})
        with self._write_lock:
            if self._stop.is_set() and self.last_write is not None:
                return  # released: never recreate the object
            start = elapsed_clock()
            self.store.put(self.key, body.encode())
            end = elapsed_clock()
            if self._last_start is not None:
                # From the start of the previous write (its earliest possible timestamp)
                # to the end of this one: the longest the object could have looked old.
                self.max_gap = max(self.max_gap, end - self._last_start)
            self._last_start = start
            self.last_write = end

    def write_and_look(self) -> LockView:
        """Write (or rewrite) this lock, then list every lock."""
        self._write()
        return look(self.store, self.prefix, self.key)

    def start_refreshing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.refresh_every):
                try:
                    self._write()
                except StoreError as exc:
                    log.warning("could not refresh lock %s: %s", self.key, exc.message)

        self._thread = threading.Thread(target=loop, name="ckptsync-lock", daemon=True)
        self._thread.start()

    def fresh(self, margin: float = 0.5) -> bool:
        """True if the lock never went unwritten long enough that anyone could take it for stale."""
        limit = STALE.total_seconds() * margin
        now = elapsed_clock()
        return self.last_write is not None and self.max_gap < limit and now - self.last_write < limit

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._write_lock:  # a refresh in flight finishes before the delete
            pass
        try:
            self.store.delete(self.key)
        except StoreError as exc:
            log.warning("could not remove lock %s (it goes stale by itself): %s", self.key, exc.message)


def elapsed_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.time()


def look(store: Store, prefix: str, mine_key: str) -> LockView:
    """List the locks; those older than STALE (relative to ``mine_key``'s age) are left out."""
    objs = store.list(fmt.join_key(prefix, LOCKS_DIR) + "/")
    mine = next((o for o in objs if o.key == mine_key), None)
    if mine is None:
        raise StoreError(f"lock {mine_key} vanished right after it was written", transient=True)
    now = mine.modified
    shared, exclusive, generation = [], [], None
    for o in objs:
        name = o.key.rsplit("/", 1)[-1]
        if name == GENERATION:
            try:  # the body is random per collection: times can tie, bodies cannot
                generation = store.get(o.key, max_size=1024).decode("ascii", "replace")
            except NotFound:
                generation = None
            continue
        if o.key == mine_key:
            continue
        if now is not None and o.modified is not None and o.modified < now - STALE:
            continue
        if name.endswith(".shared.json"):
            shared.append(o)
        elif name.endswith(".exclusive.json"):
            exclusive.append(o)
    return LockView(mine, shared, exclusive, generation)


def acquire_shared(
    store: Store,
    prefix: str,
    *,
    host: str = "",
    wait: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Lock, LockView]:
    """Hold a shared lock, waiting (up to ``wait`` s) while a chunk collection runs."""
    lock = Lock(store, prefix, "shared", host=host)
    try:
        view = wait_for_collection(lock, wait=wait, sleep=sleep)
    except BaseException:
        lock.release()
        raise
    lock.start_refreshing()
    return lock, view


def wait_for_collection(lock: Lock, *, wait: float = 300.0, sleep: Callable[[float], None] = time.sleep) -> LockView:
    """(Re)write ``lock`` and look until no live exclusive lock remains; StoreError after ``wait`` s.

    The lock is rewritten on every look, so a waiting holder never looks stale itself,
    and a dead collector's lock, no longer rewritten, goes stale and stops counting.
    """
    deadline = time.monotonic() + wait
    view = lock.write_and_look()
    while view.exclusive:
        if time.monotonic() >= deadline:
            raise StoreError(
                "the remote's unused chunks are being deleted by 'ckptsync prune' and it has not finished",
                "wait for it, or remove a stale lock under <remote>/locks/ if its process is gone",
                transient=True,
            )
        log.info("waiting for a chunk collection on the remote to finish")
        sleep(1.0)
        view = lock.write_and_look()
    return view


def write_generation(store: Store, prefix: str) -> None:
    """Announce a chunk collection: uploaders must list chunks again."""
    store.put(fmt.join_key(prefix, LOCKS_DIR, GENERATION), secrets.token_hex(8).encode())
