"""Waiting until a local checkpoint is committed: ``ckptsync wait``, :func:`ckptsync.wait`, :meth:`Syncer.wait`.

A checkpoint counts as committed when the remote holds a manifest of its name
whose files are the files on disk: the same paths and sizes, and the same
hashes. The hashes are compared cheaply where a daemon recorded the commit with
the files' current signatures (its ``committed.json``); otherwise the local files
are hashed once per (commit, signatures) pair, so waiting on a large checkpoint
reads it at most once while nothing changes.

While it is not, the reason comes from the daemon's status (its ``status.json``,
or the in-process daemon of a :class:`~ckptsync.Syncer`): still settling, queued,
uploading, failing with an error, or no daemon at all. Waiting polls the remote
once per ``poll`` seconds; it never uploads anything itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import LocalCheckpoint, scan_entry, scan_folder, shown
from .errors import FormatError
from .format import group_id
from .jsonfields import parse_time
from .progress import human_bytes
from .repository import ManifestRecord, Repository
from .state import State, signature_of
from .status import Status

#: A daemon whose status file is older than this is taken as gone.
STALE_STATUS = 30.0


@dataclass(frozen=True)
class WaitResult:
    """What :func:`wait` found: the checkpoint committed (``commit`` set), or why not when time ran out."""

    name: str | None
    commit: str | None = None
    step: int | None = None
    seconds: float = 0.0
    #: Why it is not committed yet (empty once it is).
    reason: str = ""

    @property
    def committed(self) -> bool:
        return self.commit is not None


def wait(
    folder: Path,
    repo: Repository,
    *,
    name: str | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
    state: Callable[[], State | None] = lambda: None,
    status: Callable[[], Status | None] = lambda: None,
    host: str = "",
    hosts: tuple[str, ...] = (),
    follow_symlinks: bool = False,
    stop: threading.Event | None = None,
) -> WaitResult:
    """Block until checkpoint ``name`` of ``folder`` (default: the newest there when the wait starts)
    is committed on ``repo`` with the content on disk, or ``timeout`` seconds pass (None: no limit).

    ``state`` returns the daemon's state (its record of commits, read again at each look),
    ``status`` the daemon's current status (for the reason when pending). In a multi-host job
    (``hosts``, two or more), the checkpoint counts once it is sealed and ``host``'s part holds
    the files on disk. ``stop`` ends the wait early (a result with a reason).
    """
    start = time.monotonic()
    stop = stop or threading.Event()
    hashed: dict[tuple[str, str], bool] = {}
    while True:
        ckpt, why = _local(folder, name, follow_symlinks)
        if ckpt is not None:
            name = ckpt.name
            records, sealed = _records(repo, ckpt, host, hosts)
            record, older = _committed(records, ckpt, state(), hashed)
            if record is not None and sealed is False:
                record, why = None, "this host's part is committed; waiting for the other hosts' parts (the seal)"
            elif record is not None:
                m = record.manifest
                return WaitResult(name, m.commit, m.step, time.monotonic() - start)
            else:
                why = pending_reason(ckpt.name, status())
            if older:
                why = f"the files on disk differ from its last commit ({older}); {why}"
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if (left is not None and left <= 0) or stop.is_set():
            return WaitResult(name, seconds=time.monotonic() - start, reason=why)
        stop.wait(poll if left is None else min(poll, left))


def _records(repo: Repository, ckpt: LocalCheckpoint, host: str, hosts: tuple[str, ...]) -> tuple[list[ManifestRecord], bool | None]:
    """The committed manifests of ``ckpt``'s name (a multi-host job: this host's parts), and whether a
    multi-host checkpoint of that name is sealed (None for a single host)."""
    if len(hosts) < 2:
        return [r for r in repo.load_manifests([ckpt.name]) if not r.manifest.is_seal], None
    group = group_id(hosts)
    parts = repo.load_parts(repo.list_parts(ckpt.name, group, host).get(host, []))
    seals = [r for r in repo.load_manifests([ckpt.name]) if r.manifest.is_seal and r.manifest.group and r.manifest.group.id == group]
    return parts, bool(seals)


def _local(folder: Path, name: str | None, follow_symlinks: bool) -> tuple[LocalCheckpoint | None, str]:
    """The checkpoint waited for, scanned now; or None and why not."""
    if name is None:
        found = [c for c in scan_folder(folder, follow_symlinks=follow_symlinks) if c.refused is None]
        if not found:
            return None, f"no checkpoint in {folder} yet"
        return max(found, key=lambda c: (c.score.step is not None, c.score.step or -1, c.name)), ""
    try:
        ckpt = scan_entry(folder / name, root=folder, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        return None, f"{shown(name)} is not in {folder}"
    if ckpt.refused is not None:
        return None, f"{ckpt.refused.message}; {ckpt.refused.hint}"
    return ckpt, ""


def _committed(
    records: list[ManifestRecord], ckpt: LocalCheckpoint, state: State | None, hashed: dict[tuple[str, str], bool]
) -> tuple[ManifestRecord | None, str]:
    """The newest of ``records`` that holds exactly the files on disk, or None and the commit id of the
    newest one that does not (empty if there is none)."""
    local = {f.relpath: f for f in ckpt.files}
    records = [r for r in records if r.manifest.kind == ckpt.kind]
    signature = signature_of(ckpt)
    recorded = state.is_committed(ckpt) if state is not None else None
    for record in sorted(records, key=lambda r: r.manifest.commit, reverse=True):
        m = record.manifest
        if {f.path: f.size for f in m.files} == {p: f.size for p, f in local.items()}:
            if recorded == m.commit:
                return record, ""
            key = (m.commit, json.dumps(signature))
            if key not in hashed:
                hashed[key] = _same_content(ckpt, record)
            if hashed[key]:
                return record, ""
    return None, max((r.manifest.commit for r in records), default="")


def _same_content(ckpt: LocalCheckpoint, record: ManifestRecord) -> bool:
    from .download import file_hash

    local = {f.relpath: f for f in ckpt.files}
    try:
        return all(file_hash(local[e.path].abspath, e) == e.hash for e in record.manifest.files)
    except OSError:
        return False  # changed or gone meanwhile: the next poll looks again


def pending_reason(name: str, status: Status | None) -> str:
    """Why checkpoint ``name`` is not committed yet, as far as the daemon's status says."""
    if status is None or status.state == "stopped" or _age(status.updated) > STALE_STATUS:
        return "no ckptsync daemon is running for this folder and remote (start 'ckptsync watch', or run 'ckptsync push')"
    if status.in_flight is not None and status.in_flight.name == name:
        fl = status.in_flight
        return f"uploading ({human_bytes(fl.bytes_done)} of {human_bytes(fl.bytes_total)})"
    if name in status.pending:
        return f"not complete yet: {status.pending[name]}"
    if name in status.queue:
        return f"complete, queued for upload (position {status.queue.index(name) + 1} of {len(status.queue)})"
    if status.remote_error:
        return f"the remote fails: {status.remote_error}"
    mine = [e for e in status.errors if f" {name}: " in e]
    if mine:
        return f"failing: {mine[-1].split(f' {name}: ', 1)[1]}"
    return "the daemon has not seen it complete yet"


def _age(updated: str) -> float:
    """Seconds since a status file's ``updated`` time (infinite if it is not one)."""
    try:
        return (datetime.now(timezone.utc) - parse_time(updated)).total_seconds()
    except FormatError:
        return float("inf")
