"""Watching the checkpoint folder (the only watchdog import).

Events are reduced to "top-level entry NAME changed" (and, with inotify, "a
file of NAME was closed after writing"). Reads do not count: ckptsync's own
reads of a checkpoint would otherwise keep it from ever settling. inotify is
used when available; ``poll=True``, or a failure to start inotify (watch limit,
some network file systems), falls back to watchdog's polling observer.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from .completion import is_temporary_name
from .readiness import ChangeKind

log = logging.getLogger(__name__)


class _QuietShutdown(logging.Filter):
    """watchdog logs an ERROR when an event arrives while its observer stops; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietShutdown())
# watchdog warns when the inotify watch of a renamed folder's sub-folder is registered again under
# its new path. It is the same watch, and ckptsync scans the renamed entry itself: the warning
# would only alarm whoever reads the daemon's output.
warnings.filterwarnings("ignore", message=r"Callback with id .* will be Overwritten", category=RuntimeWarning)

#: ``on_change(name, kind)``: ``kind`` is ``"write"`` (bytes written to a file: it is
#: open for writing), ``"closed"`` (closed after writing, or renamed into place), ``"renamed"``
#: (renamed into place from a temporary name such as ``tmp-checkpoint-N``: finished by its writer)
#: or ``"change"`` (created, deleted, renamed away).
OnChange = Callable[[str, ChangeKind], None]

_CHANGES = (
    FileCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    DirModifiedEvent,
)


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: Path, on_change: OnChange) -> None:
        self.folder = os.path.abspath(folder)
        self.on_change = on_change

    def _top(self, path: str | bytes | None) -> str | None:
        if not path:
            return None
        p = os.fsdecode(path)
        rel = os.path.relpath(p, self.folder)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return None
        return rel.split(os.sep, 1)[0]

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            kinds: dict[str | None, ChangeKind] = {self._top(event.src_path): "closed"}
        elif isinstance(event, _CHANGES):
            if isinstance(event, DirModifiedEvent) and self._top(event.src_path) is None:
                return
            # A file renamed into place was closed under its old name: the move completes it.
            dest: ChangeKind = "closed" if isinstance(event, FileMovedEvent) else "change"
            src_name = self._top(event.src_path)
            kinds = {src_name: "write" if isinstance(event, FileModifiedEvent) else "change"}
            dest_name = self._top(getattr(event, "dest_path", None))
            if dest_name:
                # Renamed from a temporary name into place (tmp-checkpoint-N -> checkpoint-N): the writer says it is finished.
                renamed = src_name is not None and src_name != dest_name and is_temporary_name(src_name)
                kinds[dest_name] = "renamed" if renamed else dest
        else:
            return  # opened, closed-without-write, attribute changes (atime): reads, not writes
        for name, kind in kinds.items():
            if name:
                self.on_change(name, kind)


class FolderWatcher:
    """Recursively watches ``folder`` and reports which top-level entries change."""

    def __init__(self, folder: Path, on_change: OnChange, *, poll: bool = False, poll_interval: float = 2.0) -> None:
        self.folder = folder
        self.on_change = on_change
        self.poll = poll
        self.poll_interval = poll_interval
        self.mode = ""
        self._observer: BaseObserver | None = None

    def start(self) -> str:
        """Start watching; returns ``"inotify"`` (or the native backend) or ``"polling"``."""
        handler = _Handler(self.folder, self.on_change)
        if not self.poll:
            try:
                observer: BaseObserver = Observer()
                observer.schedule(handler, str(self.folder), recursive=True)
                observer.start()
                self._observer, self.mode = observer, "native"
                return self.mode
            except OSError as exc:
                log.warning("native file watching unavailable (%s); falling back to polling every %.0fs", exc, self.poll_interval)
        observer = PollingObserver(timeout=self.poll_interval)
        observer.schedule(handler, str(self.folder), recursive=True)
        observer.start()
        self._observer, self.mode = observer, "polling"
        return self.mode

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
