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

from . import snapshot
from .api import open_repository
from .backoff import Backoff
from .checkpoint import LocalCheckpoint, check_folder, list_entries
from .executor import lower_priority
from .exporter import MetricsServer, NoMetrics, serve_metrics
from .format import format_time
from .notify import sd_notify, watchdog_period
from .observer import FolderObserver
from .options import Options, WatchOptions
from .readiness import ChangeKind, Entry, Tracker
from .repository import Repository
from .session import UploadResult, log_result
from .spot import SpotNoticePoller
from .state import State, default_state_dir
from .status import DaemonReport, Journal, Phase, Status
from .watcher import FolderWatcher
from .worker import Outcome, RemoteLink, UploadWorker

log = logging.getLogger(__name__)

#: After the drain deadline, how long an upload in flight may take to stop.
_CANCEL_GRACE = 1.0
#: How often the lead of a multi-host job looks whether every part of an unsealed checkpoint is committed.
_SEAL_INTERVAL = 1.0
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
        self.journal = Journal()
        self.tracker = Tracker(settle=watch.settle, retry_initial=watch.retry_initial, retry_max=watch.retry_max)
        self.link = RemoteLink(repo, options, Backoff(watch.retry_initial, watch.retry_max), names=lambda: list_entries(self.folder))
        self._lock = threading.Lock()
        coordinator = self.link.coordinator_done if len(options.hosts) > 1 else None
        self.observer = FolderObserver(self.folder, self.tracker, self._lock, state, watch, clock, wall, coordinator)
        self._wake = threading.Event()
        self._cancel = threading.Event()
        self._stopped = threading.Event()
        self._deadline: float | None = None
        self._rescan_now = False
        self._started = clock()
        self._phase: Phase = "starting"
        self._watcher = FolderWatcher(self.folder, self._on_change, poll=watch.poll, poll_interval=watch.poll_interval)
        self._spot: SpotNoticePoller | None = None
        self._metrics: MetricsServer | NoMetrics = NoMetrics()
        done, idle = self._on_outcome, self._wake.set
        self._worker = UploadWorker(
            self.folder, self.link, clock, self._cancel, done, idle, options.nice, follow_symlinks=watch.follow_symlinks
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
        state = State(state_dir or default_state_dir(folder, remote))
        return cls(folder, open_repository(remote, options), options, watch, state=state, on_commit=on_commit)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect to the remote, start watching and uploading. Raises on errors that cannot heal."""
        self._metrics = serve_metrics(self, self.watch.metrics_addr)  # first: a port in use fails before anything runs
        try:
            self.link.try_connect(self.clock())
        except BaseException:
            self._metrics.close()
            raise
        snapshot.remove_stale(self.folder)
        mode = self._watcher.start()
        found = self.observer.discover()
        log.info("watching %s (%s) -> %s: %d entries", self.folder, mode, self.repo.url, found)
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
    def report(self) -> DaemonReport:
        """What the daemon did so far (complete once it stopped)."""
        return self.journal.report

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def run(self) -> DaemonReport:
        """start() then wait() (until someone calls drain() or abort())."""
        self.start()
        return self.wait()

    # ------------------------------------------------------------ events (watcher and spot threads)

    def _on_change(self, name: str, kind: ChangeKind) -> None:
        if self.observer.changed(name, kind, native=self._watcher.mode == "native"):
            self._wake.set()

    def _on_spot_notice(self, body: str) -> None:
        log.warning("spot interruption notice received (%s): syncing every complete checkpoint now", body.strip()[:200])
        with self._lock:
            self.tracker.urgent = True
            self.tracker.look_again()
            self._rescan_now = True
        self._wake.set()

    # ------------------------------------------------------------ control loop

    def _control_loop(self) -> None:
        lower_priority(self.options.nice)
        ping = watchdog_period()
        pinger = Every(ping or 0.0, lambda: sd_notify("WATCHDOG=1"))
        status = Every(self.watch.status_interval, self._write_status)
        rescan = Every(self.watch.rescan_interval, lambda: self.observer.rescan(self.clock()), start=self.clock())
        seal = Every(_SEAL_INTERVAL, self.link.seal_ready)
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
                force, self._rescan_now = self._rescan_now, False
                rescan(now, force=force)
                self.observer.evaluate(now)
                self._dispatch(now)
                seal(now)
                pinger(now)
                status(now)
                if self._finished(now):
                    break
        except Exception:  # a bug must not leave the process hanging without a report
            log.exception("daemon control loop failed")
        finally:
            self._shutdown()

    def _dispatch(self, now: float) -> None:
        with self._lock:
            if self._worker.busy or (self._deadline is not None and now >= self._deadline) or not self.link.usable(now):
                return
            e = self.tracker.next_upload(now)
            if e is None:
                return
            self._worker.submit(e)

    def _finished(self, now: float) -> bool:
        with self._lock:
            if not self.tracker.draining or self._rescan_now:
                return False
            if self._deadline is not None and now >= self._deadline:
                self._cancel.set()
                # Give the upload in flight a moment to stop between chunks, no more.
                return not self._worker.busy or now >= self._deadline + _CANCEL_GRACE
            if self._worker.busy:
                return False
            waiting = self.tracker.queue()
            if self.link.session is None and waiting:
                return False  # the remote is not reachable yet; keep trying until the deadline
            return not waiting

    # ------------------------------------------------------------ upload outcomes (worker thread)

    def _on_outcome(self, outcome: Outcome) -> None:
        e, result = outcome.entry, outcome.result
        if result is None:
            message = outcome.error or "unknown error"
            with self._lock:
                delay = self.tracker.failed(e, message, self.clock())
                self.journal.failed(e.name, message, self._timestamp(), outcome.kind or "other")
            log.warning("upload of %s failed (%s); retrying in %.0fs", e.name, message, delay)
            return
        self._record(e, result)
        log_result(result)
        if result.status in ("committed", "unchanged") and outcome.ckpt is not None:
            self._after_commit(outcome.ckpt, result)

    def _record(self, e: Entry, result: UploadResult) -> None:
        """Move the entry on, and count a new commit."""
        with self._lock:
            self.tracker.uploaded(e, result.status, result.reason, self.clock())
            self.journal.uploaded(result.status, result.stats.seconds)
            if result.status == "committed" and result.manifest is not None:
                m, st = result.manifest, result.stats
                self.journal.committed(e.name, m.commit, m.step, st.uploaded_bytes, st.raw_bytes, self._timestamp(), self.wall())

    def _after_commit(self, ckpt: LocalCheckpoint, result: UploadResult) -> None:
        """Remember the commit locally, tell the hook, apply retention."""
        assert result.manifest is not None
        if self.state is not None:
            self.state.record(ckpt, result.manifest.commit)
        if result.status != "committed":
            return
        if self.on_commit is not None:
            try:
                self.on_commit(result)
            except Exception:
                log.exception("post-commit hook failed")
        self.link.apply_retention(self.watch.retention, self.watch.grace)

    # ------------------------------------------------------------ status and shutdown

    def status(self) -> Status:
        """The daemon's state, as written to the status file."""
        now = self.clock()
        with self._lock:
            oldest_ready = self.tracker.oldest_ready()
            return Status(
                pid=os.getpid(),
                state=self._phase,
                folder=str(self.folder),
                remote=self.repo.url,
                watcher=self._watcher.mode,
                updated=self._timestamp(),
                uptime_seconds=round(now - self._started, 1),
                queue=[e.name for e in self.tracker.queue()],
                pending=self.tracker.pending(),
                in_flight=self._worker.in_flight(),
                last_commit=self.journal.last_commit,
                committed=len(self.report.committed),
                bytes_uploaded=self.report.bytes_uploaded,
                bytes_raw=self.report.bytes_raw,
                failures=self.report.failures,
                errors=list(self.journal.errors),
                remote_error=self.link.error,
                lag_seconds=round(now - oldest_ready, 1) if oldest_ready is not None else 0.0,
                spot_notice=self._spot.notice if self._spot else None,
            )

    def _write_status(self) -> None:
        """Write the status file (every status interval: its ``updated`` time shows the daemon is alive)."""
        if self.state is not None:
            self.state.write_status(self.status())

    def _timestamp(self) -> str:
        """Now, on the injected wall clock, as an RFC 3339 UTC time."""
        return format_time(datetime.fromtimestamp(self.wall(), timezone.utc))

    def _shutdown(self) -> None:
        self._watcher.stop()
        if self._spot is not None:
            self._spot.stop()
        self._cancel.set()
        self._worker.stop()
        self._worker.thread.join(timeout=_CANCEL_GRACE)
        if not self._worker.thread.is_alive():
            if self.tracker.draining:  # in case this host committed the last part of a multi-host checkpoint
                self.link.seal_ready(last_look=True)
            self.link.close()
        with self._lock:
            self.report.unsynced = self.tracker.unsynced()
            self.report.seconds = self.clock() - self._started
            self.journal.drain_unsynced = len(self.report.unsynced)
            self._phase = "stopped"
        self._write_status()
        for name, reason in self.report.unsynced:
            log.warning("not synced: %s (%s)", name, reason)
        self._metrics.close()
        self._stopped.set()


class Every:
    """Calls ``action`` when ``period`` seconds passed since the last call (never if ``period`` is 0)."""

    def __init__(self, period: float, action: Callable[[], object], *, start: float = float("-inf")) -> None:
        self.period = period
        self.action = action
        self.last = start

    def __call__(self, now: float, *, force: bool = False) -> None:
        if force or (self.period and now - self.last >= self.period):
            self.action()
            self.last = now
