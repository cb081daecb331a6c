"""What a daemon is doing and what it did: the status document and the exit report.

:class:`Status` is written to ``status.json`` in the daemon's state folder every
status interval (its ``updated`` time shows the daemon is alive) and read back
by ``ckptsync status``; both sides use this one type. :class:`DaemonReport` is
what the daemon did, logged at exit and written as SageMaker's sync report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Phase = Literal["starting", "watching", "draining", "stopped"]


@dataclass(frozen=True)
class InFlight:
    """The checkpoint being uploaded."""

    name: str
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class LastCommit:
    """The daemon's most recent commit."""

    name: str
    commit: str
    time: str
    step: int | None


@dataclass(frozen=True)
class Status:
    """One snapshot of a daemon (the ``status.json`` document)."""

    pid: int
    state: Phase
    folder: str
    remote: str
    watcher: str
    updated: str
    uptime_seconds: float = 0.0
    #: Complete checkpoints waiting to be uploaded, in upload order.
    queue: list[str] = field(default_factory=list)
    #: Checkpoints not complete yet, and why.
    pending: dict[str, str] = field(default_factory=dict)
    in_flight: InFlight | None = None
    last_commit: LastCommit | None = None
    committed: int = 0
    bytes_uploaded: int = 0
    bytes_raw: int = 0
    failures: int = 0
    #: The last ten errors, each prefixed with its time.
    errors: list[str] = field(default_factory=list)
    remote_error: str | None = None
    #: How long the longest-waiting complete checkpoint has waited.
    lag_seconds: float = 0.0
    spot_notice: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: object) -> Status | None:
        """Read a status document; None if it is not one (missing fields of older writers default)."""
        if not isinstance(doc, dict):
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        try:
            if isinstance(values.get("in_flight"), dict):
                values["in_flight"] = InFlight(**values["in_flight"])
            if isinstance(values.get("last_commit"), dict):
                values["last_commit"] = LastCommit(**values["last_commit"])
            return cls(**values)
        except TypeError:
            return None


@dataclass
class DaemonReport:
    """What a daemon did, for the exit summary and the SageMaker sync report."""

    committed: list[str] = field(default_factory=list)
    unsynced: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0
    bytes_uploaded: int = 0
    bytes_raw: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The sync report document (``ckptsync-report.json``)."""
        return {
            "checkpoints_committed": self.committed,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_raw": self.bytes_raw,
            "seconds": round(self.seconds, 3),
            "failures": self.failures,
            "not_synced": [{"name": n, "reason": r} for n, r in self.unsynced],
        }


#: Upper bounds, in seconds, of the buckets counting upload durations (the last one is every upload).
UPLOAD_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, float("inf"))


class Journal:
    """What a daemon has done so far: its report, the last commit, the recent errors, and the counts
    its metrics show (``--metrics-addr``): uploads by outcome, failures by kind, upload durations.

    Not thread-safe: the daemon serialises calls.
    """

    #: How many recent errors the status keeps.
    ERRORS = 10

    def __init__(self) -> None:
        self.report = DaemonReport()
        self.last_commit: LastCommit | None = None
        self.last_commit_time: float | None = None  # Unix time
        self.errors: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.failure_kinds: Counter[str] = Counter()
        #: Cumulative: uploads that took at most each of UPLOAD_BUCKETS seconds; and their total.
        self.upload_buckets = [0] * len(UPLOAD_BUCKETS)
        self.upload_seconds = 0.0
        #: The last drain's outcome, once one ended: checkpoints it left not synced.
        self.drain_unsynced: int | None = None

    def committed(self, name: str, commit: str, step: int | None, uploaded: int, raw: int, when: str, unix: float = 0.0) -> None:
        self.report.committed.append(name)
        self.report.bytes_uploaded += uploaded
        self.report.bytes_raw += raw
        self.last_commit = LastCommit(name, commit, when, step)
        self.last_commit_time = unix

    def uploaded(self, outcome: str, seconds: float) -> None:
        """An upload ended with ``outcome`` (committed, unchanged, changed, vanished) after ``seconds``."""
        self.outcomes[outcome] += 1
        self.upload_seconds += seconds
        for i, bound in enumerate(UPLOAD_BUCKETS):
            if seconds <= bound:
                self.upload_buckets[i] += 1

    def failed(self, name: str, message: str, when: str, kind: str = "other") -> None:
        """An upload failed: ``kind`` is ``remote`` (the store), ``local`` (the files) or ``internal`` (a bug)."""
        self.report.failures += 1
        self.failure_kinds[kind] += 1
        self.errors = (self.errors + [f"{when} {name}: {message}"])[-self.ERRORS :]
