"""The sidecar daemon: watch a checkpoint folder, upload every complete checkpoint.

Three threads: the watcher reports which top-level entries changed; the
control loop decides which entries are complete (see
:mod:`ckptsync.completion`) and hands the newest one to the upload thread,
which runs the same :class:`~ckptsync.upload.Uploader` as ``push``. One
checkpoint is uploaded at a time (its chunks in parallel), so one checkpoint is
never uploaded twice at once and memory stays bounded.

Shutdown: :meth:`Daemon.drain` stops taking new checkpoints except complete
ones, finishes the upload in flight and the complete ones newest first, until
a deadline; then :meth:`Daemon.wait` returns a report of what was committed
and what was not. Transient remote errors never stop the daemon: a checkpoint
whose upload fails is retried later with exponential backoff.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import completion
from .checkpoint import LocalCheckpoint, check_folder, list_entries, scan_entry, sidecar_marker
from .config import Options, lower_priority
from .errors import CkptsyncError, StoreError
from .format import Manifest, format_time
from .notify import sd_notify, watchdog_period
from .policy import Retention
from .prune import DEFAULT_GRACE, prune
from .repository import Repository
from .spot import DEFAULT_ENDPOINT, SpotNoticePoller
from .state import State
from .upload import ChunkIndex, Uploader, UploadResult, describe, human_bytes
from .watcher import FolderWatcher

log = logging.getLogger(__name__)

#: After the drain deadline, how long an upload in flight may take to stop.
_CANCEL_GRACE = 1.0
#: Time kept for shutting down (joining threads, the report, the status file) inside the drain budget.
_EXIT_MARGIN = 1.0


@dataclass(frozen=True)
class WatchOptions:
    """How the daemon decides and schedules (each maps to a ``watch`` flag)."""

    settle: float = 10.0
    drain_timeout: float = 100.0
    poll: bool = False
    poll_interval: float = 2.0
    rescan_interval: float = 60.0
    require_marker: bool = False
    spot_notice: bool = False
    imds_endpoint: str = DEFAULT_ENDPOINT
    spot_interval: float = 5.0
    retry_initial: float = 10.0
    retry_max: float = 600.0
    tick: float = 1.0
    status_interval: float = 2.0
    retention: Retention = field(default_factory=Retention)
    grace: timedelta = DEFAULT_GRACE


@dataclass
class _Entry:
    name: str
    last_change: float
    status: str = "pending"  # pending, ready, uploading, committed
    reason: str = "new"
    open_writes: bool = False
    fingerprint: tuple[Any, ...] | None = None
    signal: bool = False
    ckpt: LocalCheckpoint | None = None
    ready_since: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    ready_at_drain: bool = False

    def rank(self) -> tuple[int, int, float]:
        step = self.ckpt.score.step if self.ckpt is not None else None
        return (1 if step is not None else 0, step if step is not None else -1, self.last_change)


def _niced(target: Callable[[], None], nice: int) -> Callable[[], None]:
    def run() -> None:
        lower_priority(nice)
        target()

    return run


@dataclass
class DaemonReport:
    """What a daemon did, for the exit summary and the SageMaker sync report."""

    committed: list[str] = field(default_factory=list)
    unsynced: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0
    bytes_uploaded: int = 0
    bytes_raw: int = 0
    seconds: float = 0.0


class Daemon:
    """Watches ``folder`` and commits its complete checkpoints to ``repo``."""

    def __init__(
        self,
        folder: Path,
        repo: Repository,
        options: Options,
        watch: WatchOptions,
        *,
        state: State | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_commit: Callable[[UploadResult], None] | None = None,
    ) -> None:
        self.folder = check_folder(folder).absolute()
        self.repo = repo
        self.options = options
        self.watch = watch
        self.state = state
        self.clock = clock
        self.wall = wall
        self.on_commit = on_commit
        self.report = DaemonReport()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._entries: dict[str, _Entry] = {}
        self._dirty: set[str] = set()
        self._jobs: queue.Queue[_Entry | None] = queue.Queue()
        self._busy: _Entry | None = None
        self._progress = [0, 0]
        self._cancel = threading.Event()
        self._stopped = threading.Event()
        self._draining = False
        self._writers_gone = False
        self._deadline: float | None = None
        self._urgent = False
        self._rescan_now = False
        self._started = clock()
        self._committed: dict[str, list[Manifest]] = defaultdict(list)
        self._index: ChunkIndex | None = None
        self._uploader: Uploader | None = None
        self._remote_error: str | None = None
        self._remote_retry_at = 0.0
        self._errors: list[str] = []
        self._last_commit: dict[str, Any] | None = None
        self._watcher = FolderWatcher(self.folder, self._on_change, poll=watch.poll, poll_interval=watch.poll_interval)
        self._spot: SpotNoticePoller | None = None
        self._threads: list[threading.Thread] = []
        self._phase = "starting"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect to the remote, start watching and uploading. Raises on errors that cannot heal."""
        try:
            self._open_remote()
        except StoreError as exc:
            if not exc.transient:
                raise
            self._remote_failed(exc)
        mode = self._watcher.start()
        now = self.clock()
        for name in list_entries(self.folder):
            self._entries[name] = _Entry(name, last_change=self._settled_time(name, now))
            self._dirty.add(name)
        log.info("watching %s (%s) -> %s: %d entries", self.folder, mode, self.repo.url, len(self._entries))
        if self.watch.spot_notice:
            self._spot = SpotNoticePoller(self._on_spot_notice, endpoint=self.watch.imds_endpoint, interval=self.watch.spot_interval)
            self._spot.start()
        for target, name in ((self._control_loop, "ckptsync-control"), (self._upload_loop, "ckptsync-uploader")):
            t = threading.Thread(target=_niced(target, self.options.nice), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._phase = "watching"
        sd_notify("READY=1\nSTATUS=watching " + str(self.folder))

    def drain(self, *, deadline: float | None = None, writers_gone: bool = False, reason: str = "") -> None:
        """Stop taking new checkpoints except complete ones; finish by ``deadline`` (monotonic).

        ``writers_gone`` says nothing writes into the folder any more (the trainer
        exited): a checkpoint then needs no settling, only its completion signals.
        """
        with self._lock:
            if not self._draining:
                log.info("draining%s: committing complete checkpoints, newest first", f" ({reason})" if reason else "")
                sd_notify("STOPPING=1\nSTATUS=draining")
                for e in self._entries.values():
                    e.ready_at_drain = e.status in ("ready", "uploading")
            self._draining = True
            self._writers_gone = self._writers_gone or writers_gone
            now = self.clock()
            if deadline is None:
                deadline = now + self.watch.drain_timeout
            # Stop uploading early enough that cancelling and shutting down also fit in the budget.
            deadline = max(now, deadline - _CANCEL_GRACE - _EXIT_MARGIN)
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._dirty.update(self._entries)
            self._rescan_now = True  # events may still be in flight: look at the folder itself
            self._phase = "draining"
        self._wake.set()

    def abort(self) -> None:
        """Stop now: cancel the upload in flight (nothing half-done is committed)."""
        with self._lock:
            self._draining = True
            self._deadline = self.clock()
        self._cancel.set()
        self._wake.set()

    def wait(self, timeout: float | None = None) -> DaemonReport:
        """Block until the daemon stopped (after :meth:`drain`); return its report."""
        self._stopped.wait(timeout)
        return self.report

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def run(self) -> DaemonReport:
        """start() then wait() (until someone calls drain() or abort())."""
        self.start()
        return self.wait()

    # ------------------------------------------------------------ events

    def _on_change(self, name: str, kind: str) -> None:
        if name.endswith(completion.SIDECAR_SUFFIX):  # a single file's marker: its checkpoint changed
            name, kind = name[: -len(completion.SIDECAR_SUFFIX)], "change"
        if not completion.is_checkpoint_name(name):
            return
        with self._lock:
            e = self._entries.get(name)
            if e is None:
                e = self._entries[name] = _Entry(name, last_change=self.clock())
            if kind == "closed":
                e.open_writes = False
            elif kind == "write":
                e.open_writes = self._watcher.mode == "native" and (self.folder / name).is_file()
            e.last_change = self.clock()
            self._dirty.add(name)
        self._wake.set()

    def _on_spot_notice(self, body: str) -> None:
        log.warning("spot interruption notice received (%s): syncing every complete checkpoint now", body.strip()[:200])
        with self._lock:
            self._urgent = True
            self._rescan_now = True
            self._dirty.update(self._entries)
        self._wake.set()

    # ------------------------------------------------------------ control loop

    def _control_loop(self) -> None:
        last_status = 0.0
        last_rescan = self.clock()
        last_ping = 0.0
        ping = watchdog_period()
        # systemd kills a service whose pings come later than WATCHDOG_USEC: wake often enough.
        tick = min(self.watch.tick, ping) if ping else self.watch.tick
        try:
            while True:
                wait = tick
                if self._deadline is not None:  # wake right at the drain deadline, not a tick later
                    wait = max(0.02, min(tick, self._deadline - self.clock()))
                self._wake.wait(wait)
                self._wake.clear()
                now = self.clock()
                if self._rescan_now or now - last_rescan >= self.watch.rescan_interval:
                    self._rescan_now = False
                    self._rescan(now)
                    last_rescan = now
                self._evaluate_all(now)
                self._dispatch(now)
                if ping and now - last_ping >= ping:
                    sd_notify("WATCHDOG=1")
                    last_ping = now
                if now - last_status >= self.watch.status_interval:
                    self._write_status()
                    last_status = now
                if self._finished(now):
                    break
        except Exception:  # a bug must not leave the process hanging without a report
            log.exception("daemon control loop failed")
        finally:
            self._shutdown()

    def _rescan(self, now: float) -> None:
        """Safety net for missed events (inotify queue overflow, polling gaps)."""
        try:
            names = set(list_entries(self.folder))
        except CkptsyncError as exc:
            log.warning("cannot list %s: %s", self.folder, exc.message)
            return
        with self._lock:
            for name in names - self._entries.keys():
                self._entries[name] = _Entry(name, last_change=now)
            self._dirty.update(names | self._entries.keys())

    def _evaluate_all(self, now: float) -> None:
        with self._lock:
            names = set(self._dirty) | {n for n, e in self._entries.items() if e.status in ("pending", "ready")}
            self._dirty.clear()
        for name in names:
            self._evaluate(name, now)

    def _evaluate(self, name: str, now: float) -> None:
        with self._lock:
            e = self._entries.get(name)
            if e is None or e.status == "uploading":
                return
        try:
            ckpt = scan_entry(self.folder / name)
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                if self._entries.get(name) is e and e.status != "uploading":
                    del self._entries[name]
            return
        except OSError as exc:
            log.debug("cannot scan %s: %s", name, exc)
            return
        fingerprint = (*((f.relpath, f.signature) for f in ckpt.files), ckpt.marker)
        marker = sidecar_marker(self.folder / name) is not None if ckpt.kind == "file" else False
        verdict = completion.assess(
            ckpt.kind, (f.relpath for f in ckpt.files), require_marker=self.watch.require_marker, marker_present=marker, name=name
        )
        newest_mtime = max((f.signature[1] for f in ckpt.files), default=0) / 1e9
        with self._lock:
            if e.fingerprint is not None and e.fingerprint != fingerprint:
                e.last_change = max(e.last_change, now)
                if e.status == "committed":
                    e.status = "pending"
            e.fingerprint = fingerprint
            e.ckpt = ckpt
            e.signal = verdict.signal is not None
            if self.state is not None and self.state.is_committed(ckpt):
                e.status, e.reason = "committed", "committed"
                return
            if e.status == "committed":
                return
            if not verdict.ready:
                e.status, e.reason, e.ready_since = "pending", verdict.reason, None
                return
            if not self._writers_gone:
                settle = 0.0 if (self._urgent and e.signal) else self.watch.settle
                quiet = completion.settled(e.last_change, now, settle, signal=e.signal)
                quiet = quiet and self.wall() - newest_mtime >= (min(settle, completion.SIGNAL_SETTLE) if e.signal else settle)
                if e.open_writes:
                    e.status, e.reason, e.ready_since = "pending", "still open for writing", None
                    return
                if not quiet:
                    e.status, e.reason, e.ready_since = "pending", "settling", None
                    return
                if self._draining and not e.ready_at_drain and not e.signal:
                    e.status, e.reason = "pending", "became complete after shutdown began without a completion signal"
                    return
            if e.status != "ready":
                e.status, e.reason = "ready", "complete"
                e.ready_since = now

    def _dispatch(self, now: float) -> None:
        with self._lock:
            if self._busy is not None:
                return
            if self._deadline is not None and now >= self._deadline:
                return
            if self._index is None:
                if now < self._remote_retry_at:
                    return
            candidates = [e for e in self._entries.values() if e.status == "ready" and e.retry_at <= now]
            if not candidates:
                return
            e = max(candidates, key=_Entry.rank)
            e.status = "uploading"
            self._busy = e
            self._progress = [0, e.ckpt.size if e.ckpt else 0]
        self._jobs.put(e)

    def _finished(self, now: float) -> bool:
        with self._lock:
            if not self._draining or self._rescan_now:
                return False
            if self._deadline is not None and now >= self._deadline:
                self._cancel.set()
                # Give the upload in flight a moment to stop between chunks, no more.
                return self._busy is None or now >= self._deadline + _CANCEL_GRACE
            if self._busy is not None:
                return False
            waiting = [e for e in self._entries.values() if e.status == "ready"]
            if self._index is None and waiting:
                return False  # the remote is not reachable yet; keep trying until the deadline
            return not waiting

    # ------------------------------------------------------------ upload thread

    def _upload_loop(self) -> None:
        while True:
            e = self._jobs.get()
            if e is None:
                return
            try:
                self._upload(e)
            finally:
                with self._lock:
                    self._busy = None
                self._wake.set()

    def _upload(self, e: _Entry) -> None:
        assert e.ckpt is not None
        try:
            if self._uploader is None:
                self._open_remote()
            assert self._uploader is not None
            # Re-scan right before reading: the snapshot must be current for the post-upload check.
            ckpt = scan_entry(self.folder / e.name)
            result = self._uploader.upload(ckpt, list(self._committed[e.name]), progress=self._on_progress, cancel=self._cancel)
        except FileNotFoundError:
            result = UploadResult(e.name, "vanished", "it was deleted")
        except CkptsyncError as exc:
            if isinstance(exc, StoreError) and self._index is None:
                self._remote_failed(exc)
            self._failed(e, exc.message)
            return
        except Exception as exc:  # a bug: keep serving the other checkpoints
            log.exception("upload of %s failed", e.name)
            self._failed(e, f"{type(exc).__name__}: {exc}")
            return
        self._finish(e, ckpt if result.status != "vanished" else None, result)

    def _finish(self, e: _Entry, ckpt: LocalCheckpoint | None, result: UploadResult) -> None:
        now = self.clock()
        with self._lock:
            if result.status in ("committed", "unchanged"):
                assert result.manifest is not None and ckpt is not None
                e.status, e.reason, e.failures = "committed", "committed", 0
                if result.status == "committed":
                    self._committed[e.name].append(result.manifest)
                    self.report.committed.append(e.name)
                    self.report.bytes_uploaded += result.stats.uploaded_bytes
                    self.report.bytes_raw += result.stats.raw_bytes
                    self._last_commit = {
                        "name": e.name,
                        "commit": result.manifest.commit,
                        "time": format_time(datetime.now(timezone.utc)),
                        "step": result.manifest.step,
                    }
            elif result.status == "vanished":
                self._entries.pop(e.name, None)
            elif result.status == "changed":
                e.status, e.reason, e.last_change = "pending", f"changed during upload ({result.reason})", now
            else:  # cancelled
                e.status, e.reason = "ready", result.reason
        if result.status == "vanished":
            log.info("%s was deleted during upload (rotated away); dropped", e.name)
        elif result.status == "changed":
            log.info("%s changed during upload (%s); waiting for it to settle again", e.name, result.reason)
        else:
            st = result.stats
            fields = {
                "event": result.status,
                "checkpoint": e.name,
                "files": st.files,
                "raw_bytes": st.raw_bytes,
                "stored_bytes": st.stored_bytes,
                "uploaded_bytes": st.uploaded_bytes,
                "seconds": round(st.seconds, 3),
            }
            log.info("%s", describe(result), extra={"fields": fields})
        if result.status in ("committed", "unchanged") and ckpt is not None:
            if self.state is not None:
                self.state.record(ckpt, result.manifest.commit)  # type: ignore[union-attr]
            if self.on_commit is not None and result.status == "committed":
                try:
                    self.on_commit(result)
                except Exception:
                    log.exception("post-commit hook failed")
            if result.status == "committed" and self.watch.retention.active:
                self._apply_retention()

    def _apply_retention(self) -> None:
        try:
            report = prune(self.repo, self.watch.retention, grace=self.watch.grace, host=self.options.host or "")
        except CkptsyncError as exc:
            log.warning("retention skipped this time: %s", exc.message)
            return
        with self._lock:
            for name in set(report.deleted) - set(report.kept):
                self._committed.pop(name, None)
        if report.manifests_deleted or report.chunks_deleted:
            log.info(
                "retention: deleted %s; %d chunks (%s) collected",
                ", ".join(report.deleted) or "no checkpoint",
                report.chunks_deleted,
                human_bytes(report.bytes_freed),
            )

    def _failed(self, e: _Entry, message: str) -> None:
        now = self.clock()
        with self._lock:
            e.failures += 1
            delay = min(self.watch.retry_max, self.watch.retry_initial * 2 ** (e.failures - 1))
            e.status, e.reason, e.retry_at = "ready", f"upload failed: {message}", now + delay
            self.report.failures += 1
            self._errors = (self._errors + [f"{format_time(datetime.now(timezone.utc))} {e.name}: {message}"])[-10:]
        # One warning per failure streak step; the retry itself is logged at info.
        log.warning("upload of %s failed (%s); retrying in %.0fs", e.name, message, delay)

    def _on_progress(self, n: int) -> None:
        self._progress[0] += n

    # ------------------------------------------------------------ remote

    def _open_remote(self) -> None:
        committed: dict[str, list[Manifest]] = defaultdict(list)
        for rec in self.repo.load_manifests():
            committed[rec.name].append(rec.manifest)
        try:
            removed = self.repo.store.cleanup(self.repo.prefix + "/" if self.repo.prefix else "", timedelta(hours=24))
            if removed:
                log.info("removed %d leftovers of interrupted uploads", removed)
        except StoreError as exc:
            log.debug("cleanup skipped: %s", exc.message)
        with self._lock:
            self._index = ChunkIndex()
            self._committed = committed
            self._uploader = Uploader(
                self.repo,
                self._index,
                workers=self.options.workers,
                max_memory=self.options.max_memory,
                host=self.options.host,
                hosts=self.options.hosts,
                nice=self.options.nice,
            )
            self._uploader.learn(m for ms in committed.values() for m in ms)
            self._remote_error = None
        log.info("remote %s: %d committed checkpoints", self.repo.url, sum(map(len, committed.values())))

    def _remote_failed(self, exc: StoreError) -> None:
        with self._lock:
            self._remote_error = exc.message
            self._remote_retry_at = self.clock() + self.watch.retry_initial
        log.warning("remote not reachable yet (%s); will retry", exc.message)

    # ------------------------------------------------------------ status and shutdown

    def status(self) -> dict[str, Any]:
        """The daemon's state, as written to the status file."""
        now = self.clock()
        with self._lock:
            entries = list(self._entries.values())
            busy = self._busy
            ready = sorted((e for e in entries if e.status == "ready"), key=_Entry.rank, reverse=True)
            oldest_ready = min((e.ready_since for e in ready + ([busy] if busy else []) if e.ready_since), default=None)
            return {
                "pid": os.getpid(),
                "state": self._phase,
                "folder": str(self.folder),
                "remote": self.repo.url,
                "watcher": self._watcher.mode,
                "updated": format_time(datetime.now(timezone.utc)),
                "uptime_seconds": round(now - self._started, 1),
                "queue": [e.name for e in ready],
                "pending": {e.name: e.reason for e in entries if e.status == "pending"},
                "in_flight": None
                if busy is None
                else {"name": busy.name, "bytes_done": self._progress[0], "bytes_total": self._progress[1]},
                "last_commit": self._last_commit,
                "committed": len(self.report.committed),
                "bytes_uploaded": self.report.bytes_uploaded,
                "bytes_raw": self.report.bytes_raw,
                "failures": self.report.failures,
                "errors": list(self._errors),
                "remote_error": self._remote_error,
                "lag_seconds": round(now - oldest_ready, 1) if oldest_ready is not None else 0.0,
                "spot_notice": self._spot.notice if self._spot else None,
            }

    def _write_status(self, force: bool = False) -> None:
        """Write the status file (every status interval: its ``updated`` time shows the daemon is alive)."""
        if self.state is not None:
            self.state.write_status(self.status())

    def _shutdown(self) -> None:
        self._watcher.stop()
        if self._spot is not None:
            self._spot.stop()
        self._cancel.set()
        self._jobs.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=_CANCEL_GRACE)
        if self._uploader is not None and not any(t.is_alive() for t in self._threads if t is not threading.current_thread()):
            self._uploader.close()
        with self._lock:
            self.report.unsynced = [
                (e.name, e.reason)
                for e in sorted(self._entries.values(), key=_Entry.rank, reverse=True)
                if e.status in ("ready", "uploading")
            ]
            self.report.seconds = self.clock() - self._started
            self._phase = "stopped"
        self._write_status(force=True)
        for name, reason in self.report.unsynced:
            log.warning("not synced: %s (%s)", name, reason)
        self._stopped.set()

    def _settled_time(self, name: str, now: float) -> float:
        """For entries found at start: pretend their last change was at their newest mtime."""
        try:
            ckpt = scan_entry(self.folder / name, score=False)
        except OSError:
            return now
        newest = max((f.signature[1] for f in ckpt.files), default=0) / 1e9
        age = max(0.0, self.wall() - newest)
        return now - age
