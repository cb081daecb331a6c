"""Which checkpoints of a watched folder are ready to upload: a per-entry state machine (pure).

Every top-level entry of the folder goes ``pending`` -> ``ready`` ->
``uploading`` -> ``committed`` (and back to ``pending`` when it changes). The
:class:`Tracker` decides from observations only: a change reported by the
watcher, a scan of the entry (its files, their signatures, the completion
verdict of :mod:`ckptsync.completion`), and the result of an upload. It does
no I/O, starts no thread and reads no clock: the caller passes ``now`` (a
monotonic clock) and ``wall`` (seconds since the epoch, to compare with file
mtimes), and serialises calls.

An entry is *ready* when its completion signals permit a commit and, while
writers may still be active, nothing in it changed for ``settle`` seconds (2 s
with a completion signal; an entry renamed into place from a temporary name
counts as signalled until something writes in it again), both by the watcher's account and by its files'
mtimes, and no file of a single-file checkpoint is still open for writing.
A signalled entry needs no settling once it is *superseded*: a checkpoint with a
higher step, every file of which is newer than every file of this one, says its
writer finished this one and moved on (trainers save in order; a rank still
saving holds the others at their next collective). Only the newest signalled
entry is taken so, so that the newest complete checkpoint still goes first; entries
renamed into place from a temporary name are the exception, since such writers give
every newer checkpoint its signal at once. That is what lets a trainer that saves
every few hundred milliseconds and rotates its folders quickly still get
checkpoints committed. Two scans that agree are still required, so that a
folder the trainer's rotation is deleting is never taken from one scan.
During a drain, an entry that became complete only after the drain began
needs a completion signal: a trainer killed mid-save must not be committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import completion
from .backoff import Backoff
from .checkpoint import LocalCheckpoint

EntryStatus = Literal["pending", "ready", "uploading", "committed"]
#: What the watcher says happened to an entry (see :mod:`ckptsync.watcher`); ``renamed``: it was
#: renamed into place from a temporary name, which says its writer finished it.
ChangeKind = Literal["write", "closed", "change", "renamed"]


@dataclass(frozen=True)
class Observation:
    """One scan of an entry, and what the caller knows about it."""

    ckpt: LocalCheckpoint
    verdict: completion.Readiness
    #: Committed before with exactly these files (the state folder's cache).
    cached: bool = False

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        return (*((f.relpath, f.signature) for f in self.ckpt.files), self.ckpt.marker)

    @property
    def newest_mtime(self) -> float:
        """The newest mtime of its files, in seconds."""
        return max((f.signature[1] for f in self.ckpt.files), default=0) / 1e9


@dataclass
class Entry:
    """One top-level entry of the watched folder."""

    name: str
    last_change: float
    backoff: Backoff
    status: EntryStatus = "pending"
    reason: str = "new"
    open_writes: bool = False
    #: Renamed into place from a temporary name, and not written since: a completion signal.
    renamed: bool = False
    #: Holds an entry that cannot be stored (the reason says which): not uploaded until it changes.
    refused: bool = False
    fingerprint: tuple[Any, ...] | None = None
    signal: bool = False
    ckpt: LocalCheckpoint | None = None
    ready_since: float | None = None
    ready_at_drain: bool = False

    def rank(self) -> tuple[int, int, float]:
        """Upload order, highest first: entries with a step by step, then the most recently changed."""
        step = self.ckpt.score.step if self.ckpt is not None else None
        return (1 if step is not None else 0, step if step is not None else -1, self.last_change)


@dataclass
class Tracker:
    """The entries of one folder and the decisions about them."""

    settle: float = 10.0
    retry_initial: float = 10.0
    retry_max: float = 600.0
    entries: dict[str, Entry] = field(default_factory=dict)
    #: Entries to look at again at the next evaluation.
    dirty: set[str] = field(default_factory=set)
    draining: bool = False
    #: Nothing writes into the folder any more (the trainer exited): no settling needed.
    writers_gone: bool = False
    #: A spot interruption notice arrived: entries with a completion signal need no settling.
    urgent: bool = False

    # -- observations

    def discovered(self, name: str, last_change: float) -> None:
        """An entry found by a scan at start, last changed at ``last_change`` (from its mtimes)."""
        self.entries[name] = self._new(name, last_change)
        self.dirty.add(name)

    def changed(self, name: str, kind: ChangeKind, now: float, *, writing: bool = False) -> None:
        """The watcher saw a change; ``writing``: a single file is open for writing (``kind == "write"``)."""
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = self._new(name, now)
        if kind in ("closed", "renamed"):
            e.open_writes = False
        elif kind == "write":
            e.open_writes = writing
        if kind == "renamed":
            e.renamed = True
        elif kind != "closed":
            e.renamed = False
        e.last_change = now
        self.dirty.add(name)

    def rescanned(self, names: Iterable[str], now: float) -> None:
        """A listing of the folder (the safety net for missed events): every entry is looked at again."""
        names = set(names)
        for name in names - self.entries.keys():
            self.entries[name] = self._new(name, now)
        self.dirty.update(names | self.entries.keys())

    def look_again(self) -> None:
        self.dirty.update(self.entries)

    def to_evaluate(self) -> set[str]:
        """The entries to scan now (and forget as dirty).

        An entry that changed while it uploads stays dirty, to be scanned once its upload
        ended: the upload reads a snapshot, so it commits the version it started with, and
        the new one must not wait for the next rescan of the folder.
        """
        names = set(self.dirty) | {n for n, e in self.entries.items() if e.status in ("pending", "ready")}
        uploading = {n for n in names if n in self.entries and self.entries[n].status == "uploading"}
        self.dirty &= uploading
        return {n for n in names if n in self.entries} - uploading

    def gone(self, name: str) -> None:
        """A scan found the entry deleted."""
        e = self.entries.get(name)
        if e is not None and e.status != "uploading":
            del self.entries[name]

    def observe(self, name: str, obs: Observation, now: float, wall: float) -> None:
        """Decide an entry's status from a scan of it."""
        e = self.entries.get(name)
        if e is None or e.status == "uploading":
            return
        fingerprint = obs.fingerprint
        stable = e.fingerprint == fingerprint
        if e.fingerprint is not None and e.fingerprint != fingerprint:
            e.last_change = max(e.last_change, now)
            if e.status == "committed":
                e.status = "pending"
        e.fingerprint, e.ckpt, e.signal = fingerprint, obs.ckpt, obs.verdict.signal is not None or e.renamed
        e.refused = obs.ckpt.refused is not None and not obs.ckpt.refused.skipped
        if obs.cached:
            e.status, e.reason = "committed", "committed"
            return
        if e.status == "committed":
            return
        if obs.ckpt.refused is not None:  # never uploaded as it lies: waits for a change
            self._pending(e, obs.ckpt.refused.message)
            return
        if not obs.verdict.ready:
            self._pending(e, obs.verdict.reason)
            return
        if not self.writers_gone and not (e.signal and stable and not e.open_writes and self._superseded(e, obs)):
            waiting = self._still_settling(e, obs, now, wall)
            if waiting:
                self._pending(e, waiting)
                return
        if e.status != "ready":
            e.status, e.reason, e.ready_since = "ready", "complete", now

    def _still_settling(self, e: Entry, obs: Observation, now: float, wall: float) -> str | None:
        """Why an entry whose files are complete must still wait, or None."""
        settle = 0.0 if (self.urgent and e.signal) else self.settle
        quiet = completion.settled(e.last_change, now, settle, signal=e.signal)
        quiet = quiet and wall - obs.newest_mtime >= (min(settle, completion.SIGNAL_SETTLE) if e.signal else settle)
        if e.open_writes:
            return "still open for writing"
        if not quiet:
            return "settling"
        if self.draining and not e.ready_at_drain and not e.signal:
            return "became complete after shutdown began without a completion signal"
        return None

    def _superseded(self, e: Entry, obs: Observation) -> bool:
        """Whether a checkpoint with a higher step was written entirely after every file of ``e``,
        and none with a higher step carries a signal (that one goes first, after its own settling).

        An entry renamed into place is exempt from the second condition: writers that finish a
        save by renaming it from a temporary name (``tmp-checkpoint-N``) give every newer
        checkpoint that signal at once, and saving faster than the settle time would then leave
        none to take.
        """
        step = obs.ckpt.score.step
        if step is None:
            return False
        newest, superseded = obs.newest_mtime, False
        for other in self.entries.values():
            o = other.ckpt
            if other is e or o is None or o.score.step is None or o.score.step <= step:
                continue
            if other.signal and not e.renamed:
                return False
            superseded = superseded or (bool(o.files) and min(f.signature[1] for f in o.files) / 1e9 > newest)
        return superseded

    @staticmethod
    def _pending(e: Entry, reason: str) -> None:
        e.status, e.reason, e.ready_since = "pending", reason, None

    # -- scheduling

    def next_upload(self, now: float) -> Entry | None:
        """The ready entry to upload next (highest rank, not backing off), now marked uploading."""
        candidates = [e for e in self.entries.values() if e.status == "ready" and e.backoff.ready(now)]
        if not candidates:
            return None
        e = max(candidates, key=Entry.rank)
        e.status = "uploading"
        return e

    def uploaded(self, e: Entry, outcome: str, reason: str, now: float) -> None:
        """The upload ended as ``outcome`` (an upload status: committed, unchanged, vanished, changed, cancelled)."""
        if outcome in ("committed", "unchanged"):
            e.status, e.reason = "committed", "committed"
            e.backoff.succeeded()
        elif outcome == "vanished":
            self.entries.pop(e.name, None)
        elif outcome == "changed":
            e.status, e.reason, e.last_change = "pending", f"changed during upload ({reason})", now
        else:  # cancelled: ready for the next attempt
            e.status, e.reason = "ready", reason

    def failed(self, e: Entry, message: str, now: float) -> float:
        """The upload failed; returns the delay before the entry is tried again."""
        delay = e.backoff.failed(now)
        e.status, e.reason = "ready", f"upload failed: {message}"
        return delay

    def begin_drain(self, *, writers_gone: bool) -> None:
        """Shutdown began: remember what was complete at that moment; look at everything again."""
        if not self.draining:
            for e in self.entries.values():
                e.ready_at_drain = e.status in ("ready", "uploading")
        self.draining = True
        self.writers_gone = self.writers_gone or writers_gone
        self.look_again()

    # -- reports

    def queue(self) -> list[Entry]:
        """Ready entries in upload order."""
        return sorted((e for e in self.entries.values() if e.status == "ready"), key=Entry.rank, reverse=True)

    def pending(self) -> dict[str, str]:
        return {e.name: e.reason for e in self.entries.values() if e.status == "pending"}

    def unsynced(self) -> list[tuple[str, str]]:
        """Complete entries not committed, and refused ones: ``(name, reason)``, in upload order."""
        waiting = (e for e in self.entries.values() if e.status in ("ready", "uploading") or (e.status == "pending" and e.refused))
        return [(e.name, e.reason) for e in sorted(waiting, key=Entry.rank, reverse=True)]

    def oldest_ready(self) -> float | None:
        """When the longest-waiting complete entry became ready (the sync lag's start)."""
        return min((e.ready_since for e in self.entries.values() if e.status in ("ready", "uploading") and e.ready_since), default=None)

    def _new(self, name: str, last_change: float) -> Entry:
        return Entry(name, last_change=last_change, backoff=Backoff(self.retry_initial, self.retry_max))
