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
from dataclasses import dataclass
from pathlib import Path

from .backoff import Backoff
from .checkpoint import LocalCheckpoint, scan_entry
from .errors import CkptsyncError, StoreError
from .executor import lower_priority
from .options import Options
from .readiness import Entry
from .repository import Repository
from .session import RemoteSession, UploadResult

log = logging.getLogger(__name__)


class RemoteLink:
    """The remote as the daemon sees it: a session once it could be opened, and the last error."""

    def __init__(self, repo: Repository, options: Options, backoff: Backoff) -> None:
        self.repo = repo
        self.options = options
        self.backoff = backoff
        self.session: RemoteSession | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def connect(self) -> RemoteSession:
        """The session, opening it if needed (reads every committed manifest). Raises on failure."""
        with self._lock:
            if self.session is None:
                self.session = RemoteSession.open(self.repo, self.options)
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


class UploadWorker:
    """One thread uploading the entries it is given, one at a time."""

    def __init__(
        self,
        folder: Path,
        link: RemoteLink,
        *,
        clock: Callable[[], float],
        cancel: threading.Event,
        progress: Callable[[int], None],
        done: Callable[[Outcome], None],
        nice: int = 0,
    ) -> None:
        self.folder = folder
        self.link = link
        self.clock = clock
        self.cancel = cancel
        self.progress = progress
        self.done = done
        self.nice = nice
        self._jobs: queue.Queue[Entry | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="ckptsync-uploader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, entry: Entry) -> None:
        self._jobs.put(entry)

    def stop(self) -> None:
        """Ask the thread to end after the upload in flight (set ``cancel`` to cut that short)."""
        self._jobs.put(None)

    def _loop(self) -> None:
        lower_priority(self.nice)
        while True:
            e = self._jobs.get()
            if e is None:
                return
            self.done(self._upload(e))

    def _upload(self, e: Entry) -> Outcome:
        try:
            session = self.link.connect()
            # Scan right before reading: the snapshot must be current for the post-upload check.
            ckpt = scan_entry(self.folder / e.name)
            result = session.upload(ckpt, progress=self.progress, cancel=self.cancel)
        except FileNotFoundError:
            return Outcome(e, UploadResult(e.name, "vanished", "it was deleted"))
        except CkptsyncError as exc:
            if isinstance(exc, StoreError):
                self.link.failed(exc, self.clock())
            return Outcome(e, error=exc.message)
        except Exception as exc:  # a bug: keep serving the other checkpoints
            log.exception("upload of %s failed", e.name)
            return Outcome(e, error=f"{type(exc).__name__}: {exc}")
        return Outcome(e, result, ckpt if result.status != "vanished" else None)
