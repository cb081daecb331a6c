"""The daemon's upload side: its connection to the remote, and the thread that uploads.

:class:`RemoteLink` opens the :class:`~ckptsync.session.RemoteSession` on first
need and backs off after failures, so a remote that is down at start (or a
network that comes up late) never stops the daemon. :class:`UploadWorker` is
one thread that uploads one checkpoint at a time through that session and
hands each outcome back; it decides nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from . import snapshot
from .backoff import Backoff
from .checkpoint import LocalCheckpoint, scan_entry
from .errors import CkptsyncError, StoreError
from .executor import lower_priority
from .options import Options
from .policy import Retention
from .progress import human_bytes
from .readiness import Entry
from .repository import Repository
from .session import RemoteSession, UploadResult
from .status import InFlight

log = logging.getLogger(__name__)


class RemoteLink:
    """The remote as the daemon sees it: a session once it could be opened, and the last error."""

    def __init__(self, repo: Repository, options: Options, backoff: Backoff, *, names: Callable[[], list[str]] | None = None) -> None:
        self.repo = repo
        self.options = options
        self.backoff = backoff
        #: The local checkpoint names, whose committed parts a multi-host session learns at open.
        self.names = names
        self.session: RemoteSession | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def connect(self) -> RemoteSession:
        """The session, opening it if needed (reads every committed manifest). Raises on failure."""
        with self._lock:
            if self.session is None:
                names = self.names() if self.names is not None and len(self.options.hosts) > 1 else None
                self.session = RemoteSession.open(self.repo, self.options, names=names)
                self.error = None
                self.backoff.succeeded()
            return self.session

    def try_connect(self, now: float) -> None:
        """Connect at start: an error that may heal is remembered and retried later; others are raised."""
        try:
            self.connect()
        except StoreError as exc:
            if not exc.transient:
                raise
            self.failed(exc, now)

    def failed(self, exc: StoreError, now: float) -> None:
        with self._lock:
            if self.session is not None:
                return  # the session works; the error was about one request
            self.error = exc.message
            delay = self.backoff.failed(now)
        log.warning("remote not reachable yet (%s); will retry in %.0fs", exc.message, delay)

    def usable(self, now: float) -> bool:
        """True if an upload may be tried now (connected, or the backoff has passed)."""
        return self.session is not None or self.backoff.ready(now)

    def apply_retention(self, rules: Retention, grace: timedelta) -> None:
        """Apply the retention rules after a commit; a failure is logged and waits for the next commit."""
        if self.session is None or not rules.active:
            return
        try:
            report = self.session.apply_retention(rules, grace)
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

    def seal_ready(self, *, last_look: bool = False) -> None:
        """Seal the checkpoints whose parts are all committed now (the lead; any host on its ``last_look``)."""
        session = self.session
        if session is None or not session.unsealed:
            return
        try:
            session.seal_ready(last_look=last_look)
        except CkptsyncError as exc:
            log.warning("sealing deferred: %s", exc.message)

    def coordinator_done(self, name: str) -> bool:
        """Whether the coordinator's files of ``name`` are announced on the remote (False when unknown)."""
        session = self.session
        if session is None:
            return False
        try:
            return session.coordinator_done(name)
        except CkptsyncError as exc:
            log.debug("cannot ask the remote about %s: %s", name, exc.message)
            return False

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


@dataclass
class Outcome:
    """How one upload ended: a result (with the snapshot that was uploaded), or an error."""

    entry: Entry
    result: UploadResult | None = None
    ckpt: LocalCheckpoint | None = None
    error: str | None = None
    #: For an error: ``remote`` (the store), ``local`` (the checkpoint's files) or ``internal`` (a bug).
    kind: str = ""


@dataclass
class UploadWorker:
    """One thread uploading the entries it is given, one at a time, and what it is uploading now.

    ``done`` is called with each outcome; then the worker is idle again and calls ``idle``.
    """

    folder: Path
    link: RemoteLink
    clock: Callable[[], float]
    cancel: threading.Event
    done: Callable[[Outcome], None]
    idle: Callable[[], None]
    nice: int = 0
    #: Follow links leaving the folder (``--follow-symlinks``).
    follow_symlinks: bool = False

    def __post_init__(self) -> None:
        self._jobs: queue.Queue[Entry | None] = queue.Queue()
        self._lock = threading.Lock()
        self._current: Entry | None = None
        self._bytes = [0, 0]
        self.thread = threading.Thread(target=self._loop, name="ckptsync-uploader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def in_flight(self) -> InFlight | None:
        """The checkpoint being uploaded and its bytes done so far, if any."""
        with self._lock:
            e, (done, total) = self._current, self._bytes
        return None if e is None else InFlight(e.name, done, total)

    def submit(self, entry: Entry) -> None:
        """Upload ``entry`` next; the worker counts as busy from now on."""
        with self._lock:
            self._current = entry
            self._bytes = [0, entry.ckpt.size if entry.ckpt else 0]
        self._jobs.put(entry)

    def _progress(self, n: int) -> None:
        with self._lock:
            self._bytes[0] += n

    def stop(self) -> None:
        """Ask the thread to end after the upload in flight (set ``cancel`` to cut that short)."""
        self._jobs.put(None)

    def _loop(self) -> None:
        lower_priority(self.nice)
        while True:
            e = self._jobs.get()
            if e is None:
                return
            try:
                self.done(self._upload(e))
            except Exception:  # a bug in handling one outcome must not stop the uploads
                log.exception("handling the upload of %s failed", e.name)
            finally:
                with self._lock:
                    self._current = None
                self.idle()

    def _upload(self, e: Entry) -> Outcome:
        try:
            session = self.link.connect()
            # Scan right before reading: the scan must be current for the post-upload check.
            ckpt = scan_entry(self.folder / e.name, root=self.folder, follow_symlinks=self.follow_symlinks)
            result = self._upload_snapshot(session, ckpt)
        except FileNotFoundError:
            return Outcome(e, UploadResult(e.name, "vanished", "it was deleted"))
        except snapshot.SnapshotChanged as exc:
            return Outcome(e, UploadResult(e.name, "changed", str(exc)))
        except CkptsyncError as exc:
            if isinstance(exc, StoreError):
                self.link.failed(exc, self.clock())
            return Outcome(e, error=exc.message, kind="remote" if isinstance(exc, StoreError) else "local")
        except Exception as exc:  # a bug: keep serving the other checkpoints
            log.exception("upload of %s failed", e.name)
            return Outcome(e, error=f"{type(exc).__name__}: {exc}", kind="internal")
        return Outcome(e, result, ckpt if result.status != "vanished" else None)

    def _upload_snapshot(self, session: RemoteSession, ckpt: LocalCheckpoint) -> UploadResult:
        """Upload ``ckpt`` from a hard-link snapshot, so the trainer deleting it cannot stop the upload."""
        ckpt.check()  # a checkpoint that will be refused is not linked first
        snap = snapshot.take(ckpt, self.folder)
        if snap is None:
            return session.upload(ckpt, progress=self._progress, cancel=self.cancel)
        try:
            cancel = _EitherEvent(self.cancel)
            with snapshot.Guard(snap, cancel) as guard:
                result = session.upload(snap.ckpt, progress=self._progress, cancel=cancel)
            if guard.released is not None and result.status == "cancelled":
                result = replace(result, reason=guard.released)
        except CkptsyncError as exc:  # name the checkpoint's own files, not their links
            exc.message = exc.message.replace(str(snap.ckpt.path), str(ckpt.path))
            raise
        finally:
            snap.release()
        return replace(result, reason=result.reason.replace(str(snap.ckpt.path), str(ckpt.path)))


class _EitherEvent(threading.Event):
    """Set when it is set itself or when ``outer`` is (one upload's stop, or the daemon's)."""

    def __init__(self, outer: threading.Event) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return super().is_set() or self.outer.is_set()
