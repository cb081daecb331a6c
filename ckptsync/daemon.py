"""The sidecar daemon: watch a checkpoint folder, upload every complete checkpoint.

Three threads: the watcher (:mod:`ckptsync.watcher`) reports which top-level
entries changed; the control loop scans them and lets the
:class:`~ckptsync.readiness.Tracker` decide which are complete, then hands the
newest one to the :class:`~ckptsync.worker.UploadWorker`, which uploads it
through the same :class:`~ckptsync.session.RemoteSession` as ``push``. One
checkpoint is uploaded at a time (its chunks in parallel), so one checkpoint
is never uploaded twice at once and memory stays bounded.

Shutdown: :meth:`Daemon.drain` stops taking new checkpoints except complete
ones, finishes the upload in flight and the complete ones newest first, until
a deadline; then :meth:`Daemon.wait` returns a report of what was committed
and what was not. Transient remote errors never stop the daemon: a checkpoint
whose upload fails is retried later with exponential backoff.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from . import completion
from .backoff import Backoff
from .checkpoint import LocalCheckpoint, check_folder, list_entries, scan_entry, sidecar_marker
from .errors import CkptsyncError
from .executor import lower_priority
from .format import format_time
from .notify import sd_notify, watchdog_period
from .options import Options, WatchOptions
from .progress import human_bytes
from .readiness import Entry, Observation, Tracker
from .repository import Repository
from .session import UploadResult, describe
from .spot import SpotNoticePoller
from .state import State, default_state_dir
from .status import DaemonReport, InFlight, LastCommit, Phase, Status
from .watcher import FolderWatcher
from .worker import Outcome, RemoteLink, UploadWorker

log = logging.getLogger(__name__)

#: After the drain deadline, how long an upload in flight may take to stop.
_CANCEL_GRACE = 1.0
#: Time kept for shutting down (joining threads, the report, the status file) inside the drain budget.
_EXIT_MARGIN = 1.0


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
        self.tracker = Tracker(settle=watch.settle, retry_initial=watch.retry_initial, retry_max=watch.retry_max)
        self.link = RemoteLink(repo, options, Backoff(watch.retry_initial, watch.retry_max))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._cancel = threading.Event()
        self._stopped = threading.Event()
        self._busy: Entry | None = None
        self._progress = [0, 0]
        self._deadline: float | None = None
        self._rescan_now = False
        self._started = clock()
        self._errors: list[str] = []
        self._last_commit: LastCommit | None = None
        self._phase: Phase = "starting"
        self._watcher = FolderWatcher(self.folder, self._on_change, poll=watch.poll, poll_interval=watch.poll_interval)
        self._spot: SpotNoticePoller | None = None
        self._worker = UploadWorker(
            self.folder,
            self.link,
            clock=clock,
            cancel=self._cancel,
            progress=self._on_progress,
            done=self._on_outcome,
            nice=options.nice,
        )
        self._control = threading.Thread(target=self._control_loop, name="ckptsync-control", daemon=True)

    @classmethod
    def open(
        cls,
        folder: Path,
        remote: str,
        options: Options,
        watch: WatchOptions,
        *,
        state_dir: Path | None = None,
        on_commit: Callable[[UploadResult], None] | None = None,
    ) -> Daemon:
        """A daemon for ``folder`` and ``remote``, its state in ``state_dir`` (default: one per folder and remote)."""
        from .api import open_repository

        state = State(state_dir or default_state_dir(folder, remote))
        return cls(folder, open_repository(remote, options), options, watch, state=state, on_commit=on_commit)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect to the remote, start watching and uploading. Raises on errors that cannot heal."""
        self.link.try_connect(self.clock())
        mode = self._watcher.start()
        now = self.clock()
        for name in list_entries(self.folder):
            self.tracker.discovered(name, self._settled_time(name, now))
        log.info("watching %s (%s) -> %s: %d entries", self.folder, mode, self.repo.url, len(self.tracker.entries))
        if self.watch.spot_notice:
            self._spot = SpotNoticePoller(self._on_spot_notice, endpoint=self.watch.imds_endpoint, interval=self.watch.spot_interval)
            self._spot.start()
        self._control.start()
        self._worker.start()
        self._phase = "watching"
        sd_notify("READY=1\nSTATUS=watching " + str(self.folder))

    def drain(self, *, deadline: float | None = None, writers_gone: bool = False, reason: str = "") -> None:
        """Stop taking new checkpoints except complete ones; finish by ``deadline`` (monotonic).

        ``writers_gone`` says nothing writes into the folder any more (the trainer
        exited): a checkpoint then needs no settling, only its completion signals.
        """
        with self._lock:
            if not self.tracker.draining:
                log.info("draining%s: committing complete checkpoints, newest first", f" ({reason})" if reason else "")
                sd_notify("STOPPING=1\nSTATUS=draining")
            self.tracker.begin_drain(writers_gone=writers_gone)
            now = self.clock()
            if deadline is None:
                deadline = now + self.watch.drain_timeout
            # Stop uploading early enough that cancelling and shutting down also fit in the budget.
            deadline = max(now, deadline - _CANCEL_GRACE - _EXIT_MARGIN)
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._rescan_now = True  # events may still be in flight: look at the folder itself
            self._phase = "draining"
        self._wake.set()

    def abort(self) -> None:
        """Stop now: cancel the upload in flight (nothing half-done is committed)."""
        with self._lock:
            self.tracker.draining = True
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

    # ------------------------------------------------------------ events (watcher and spot threads)

    def _on_change(self, name: str, kind: str) -> None:
        if name.endswith(completion.SIDECAR_SUFFIX):  # a single file's marker: its checkpoint changed
            name, kind = name[: -len(completion.SIDECAR_SUFFIX)], "change"
        if not completion.is_checkpoint_name(name):
            return
        writing = kind == "write" and self._watcher.mode == "native" and (self.folder / name).is_file()
        with self._lock:
            self.tracker.changed(name, kind, self.clock(), writing=writing)  # type: ignore[arg-type]
        self._wake.set()

    def _on_spot_notice(self, body: str) -> None:
        log.warning("spot interruption notice received (%s): syncing every complete checkpoint now", body.strip()[:200])
        with self._lock:
            self.tracker.urgent = True
            self.tracker.look_again()
            self._rescan_now = True
        self._wake.set()

    def _on_progress(self, n: int) -> None:
        self._progress[0] += n

    # ------------------------------------------------------------ control loop

    def _control_loop(self) -> None:
        lower_priority(self.options.nice)
        last_status = last_ping = 0.0
        last_rescan = self.clock()
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
            names = list_entries(self.folder)
        except CkptsyncError as exc:
            log.warning("cannot list %s: %s", self.folder, exc.message)
            return
        with self._lock:
            self.tracker.rescanned(names, now)

    def _evaluate_all(self, now: float) -> None:
        with self._lock:
            names = self.tracker.to_evaluate()
        for name in names:
            self._evaluate(name, now)

    def _evaluate(self, name: str, now: float) -> None:
        """Scan one entry (outside the lock: it reads the disk) and let the tracker decide."""
        try:
            ckpt = scan_entry(self.folder / name)
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self.tracker.gone(name)
            return
        except OSError as exc:
            log.debug("cannot scan %s: %s", name, exc)
            return
        marker = sidecar_marker(self.folder / name) is not None if ckpt.kind == "file" else False
        verdict = completion.assess(
            ckpt.kind, (f.relpath for f in ckpt.files), require_marker=self.watch.require_marker, marker_present=marker, name=name
        )
        cached = self.state is not None and self.state.is_committed(ckpt) is not None
        with self._lock:
            self.tracker.observe(name, Observation(ckpt, verdict, cached), now, self.wall())

    def _dispatch(self, now: float) -> None:
        with self._lock:
            if self._busy is not None or (self._deadline is not None and now >= self._deadline) or not self.link.usable(now):
                return
            e = self.tracker.next_upload(now)
            if e is None:
                return
            self._busy = e
            self._progress = [0, e.ckpt.size if e.ckpt else 0]
        self._worker.submit(e)

    def _finished(self, now: float) -> bool:
        with self._lock:
            if not self.tracker.draining or self._rescan_now:
                return False
            if self._deadline is not None and now >= self._deadline:
                self._cancel.set()
                # Give the upload in flight a moment to stop between chunks, no more.
                return self._busy is None or now >= self._deadline + _CANCEL_GRACE
            if self._busy is not None:
                return False
            waiting = self.tracker.queue()
            if self.link.session is None and waiting:
                return False  # the remote is not reachable yet; keep trying until the deadline
            return not waiting

    # ------------------------------------------------------------ upload outcomes (worker thread)

    def _on_outcome(self, outcome: Outcome) -> None:
        try:
            if outcome.result is None:
                self._failed(outcome.entry, outcome.error or "unknown error")
            else:
                self._finish(outcome.entry, outcome.ckpt, outcome.result)
        finally:
            with self._lock:
                self._busy = None
            self._wake.set()

    def _finish(self, e: Entry, ckpt: LocalCheckpoint | None, result: UploadResult) -> None:
        with self._lock:
            if result.status in ("committed", "unchanged"):
                self.tracker.committed(e)
                if result.status == "committed":
                    self._count_commit(e, result)
            elif result.status == "vanished":
                self.tracker.vanished(e)
            elif result.status == "changed":
                self.tracker.changed_during_upload(e, result.reason, self.clock())
            else:  # cancelled
                self.tracker.interrupted(e, result.reason)
        self._log_result(result)
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

    def _count_commit(self, e: Entry, result: UploadResult) -> None:
        assert result.manifest is not None
        self.report.committed.append(e.name)
        self.report.bytes_uploaded += result.stats.uploaded_bytes
        self.report.bytes_raw += result.stats.raw_bytes
        self._last_commit = LastCommit(e.name, result.manifest.commit, format_time(self._now()), result.manifest.step)

    @staticmethod
    def _log_result(result: UploadResult) -> None:
        if result.status == "vanished":
            log.info("%s was deleted during upload (rotated away); dropped", result.name)
        elif result.status == "changed":
            log.info("%s changed during upload (%s); waiting for it to settle again", result.name, result.reason)
        else:
            st = result.stats
            fields = {
                "event": result.status,
                "checkpoint": result.name,
                "files": st.files,
                "raw_bytes": st.raw_bytes,
                "stored_bytes": st.stored_bytes,
                "uploaded_bytes": st.uploaded_bytes,
                "seconds": round(st.seconds, 3),
            }
            log.info("%s", describe(result), extra={"fields": fields})

    def _apply_retention(self) -> None:
        session = self.link.session
        if session is None:
            return
        try:
            report = session.apply_retention(self.watch.retention, self.watch.grace)
        except CkptsyncError as exc:
            log.warning("retention skipped this time: %s", exc.message)
            return
        if report.manifests_deleted or report.chunks_deleted:
            log.info(
                "retention: deleted %s; %d chunks (%s) collected",
                ", ".join(report.deleted) or "no checkpoint",
                report.chunks_deleted,
                human_bytes(report.bytes_freed),
            )

    def _failed(self, e: Entry, message: str) -> None:
        with self._lock:
            delay = self.tracker.failed(e, message, self.clock())
            self.report.failures += 1
            self._errors = (self._errors + [f"{format_time(self._now())} {e.name}: {message}"])[-10:]
        log.warning("upload of %s failed (%s); retrying in %.0fs", e.name, message, delay)

    # ------------------------------------------------------------ status and shutdown

    def status(self) -> Status:
        """The daemon's state, as written to the status file."""
        now = self.clock()
        with self._lock:
            busy = self._busy
            oldest_ready = self.tracker.oldest_ready()
            return Status(
                pid=os.getpid(),
                state=self._phase,
                folder=str(self.folder),
                remote=self.repo.url,
                watcher=self._watcher.mode,
                updated=format_time(self._now()),
                uptime_seconds=round(now - self._started, 1),
                queue=[e.name for e in self.tracker.queue()],
                pending=self.tracker.pending(),
                in_flight=None if busy is None else InFlight(busy.name, self._progress[0], self._progress[1]),
                last_commit=self._last_commit,
                committed=len(self.report.committed),
                bytes_uploaded=self.report.bytes_uploaded,
                bytes_raw=self.report.bytes_raw,
                failures=self.report.failures,
                errors=list(self._errors),
                remote_error=self.link.error,
                lag_seconds=round(now - oldest_ready, 1) if oldest_ready is not None else 0.0,
                spot_notice=self._spot.notice if self._spot else None,
            )

    def _write_status(self) -> None:
        """Write the status file (every status interval: its ``updated`` time shows the daemon is alive)."""
        if self.state is not None:
            self.state.write_status(self.status())

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), timezone.utc)

    def _shutdown(self) -> None:
        self._watcher.stop()
        if self._spot is not None:
            self._spot.stop()
        self._cancel.set()
        self._worker.stop()
        self._worker.thread.join(timeout=_CANCEL_GRACE)
        if not self._worker.thread.is_alive():
            self.link.close()
        with self._lock:
            self.report.unsynced = self.tracker.unsynced()
            self.report.seconds = self.clock() - self._started
            self._phase = "stopped"
        self._write_status()
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
        return now - max(0.0, self.wall() - newest)
