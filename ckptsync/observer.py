"""The daemon's view of the folder: watcher events and scans, fed to the readiness tracker.

The :class:`~ckptsync.readiness.Tracker` decides from observations; this module
makes them: it turns the watcher's events into changes, lists the folder (at
start, and as a safety net for missed events), and scans each entry that needs
a look (its files and their signatures, its completion verdict, whether the
state folder knows it as committed). Scans read the disk, so they run outside
the daemon's lock; the tracker is only touched under it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import completion
from .checkpoint import list_entries, scan_entry, sidecar_marker
from .errors import CkptsyncError
from .options import WatchOptions
from .readiness import ChangeKind, Observation, Tracker
from .state import State

log = logging.getLogger(__name__)


@dataclass
class FolderObserver:
    """Feeds ``tracker`` with what happens in ``folder``; every tracker call holds ``lock``."""

    folder: Path
    tracker: Tracker
    lock: threading.Lock
    state: State | None
    #: The daemon's settings this reads: ``require_marker`` and ``follow_symlinks``.
    watch: WatchOptions
    clock: Callable[[], float]
    wall: Callable[[], float]
    #: In a multi-host job: whether the coordinator's files of a checkpoint are announced on the remote.
    coordinator: Callable[[str], bool] | None = None
    #: Seconds between two questions to the remote about one checkpoint.
    ask_every: float = 2.0
    _answers: dict[str, tuple[float, bool]] = field(default_factory=dict)
    #: Refusals already logged, by entry: each is said once until the entry changes.
    _refusals: dict[str, str] = field(default_factory=dict)

    def discover(self) -> int:
        """List the folder at start: each entry counts as last changed at its newest mtime. Returns how many."""
        now, wall = self.clock(), self.wall()
        names = list_entries(self.folder)
        with self.lock:
            for name in names:
                self.tracker.discovered(name, last_change(self.folder / name, now, wall, self.watch.follow_symlinks))
        return len(names)

    def changed(self, name: str, kind: ChangeKind, native: bool) -> bool:
        """A watcher event about top-level entry ``name``; False if it is not about a checkpoint."""
        if name.endswith(completion.SIDECAR_SUFFIX):  # a single file's marker: its checkpoint changed
            name, kind = name[: -len(completion.SIDECAR_SUFFIX)], "change"
        if not completion.is_checkpoint_name(name):
            return False
        writing = kind == "write" and native and (self.folder / name).is_file()
        with self.lock:
            self.tracker.changed(name, kind, self.clock(), writing=writing)
        return True

    def rescan(self, now: float) -> None:
        """List the folder again: the safety net for missed events (inotify queue overflow, polling gaps)."""
        try:
            names = list_entries(self.folder)
        except CkptsyncError as exc:
            log.warning("cannot list %s: %s", self.folder, exc.message)
            return
        with self.lock:
            self.tracker.rescanned(names, now)

    def evaluate(self, now: float) -> None:
        """Scan every entry the tracker wants to look at, and let it decide."""
        with self.lock:
            names = self.tracker.to_evaluate()
        for name in names:
            try:
                obs = self.observe(name)
            except (FileNotFoundError, NotADirectoryError):
                with self.lock:
                    self.tracker.gone(name)
                continue
            except OSError as exc:
                log.debug("cannot scan %s: %s", name, exc)
                continue
            self._say_refusal(name, obs)
            with self.lock:
                self.tracker.observe(name, obs, now, self.wall())

    def _say_refusal(self, name: str, obs: Observation) -> None:
        """Log why an entry is refused, once until what it says changes."""
        refused = obs.ckpt.refused
        if refused is None:
            self._refusals.pop(name, None)
            return
        if self._refusals.get(name) != refused.message:
            self._refusals[name] = refused.message
            log.warning("%s; %s", refused.message, refused.hint)

    def observe(self, name: str) -> Observation:
        """Scan one entry. Raises FileNotFoundError if it is gone, OSError if it cannot be read."""
        ckpt = scan_entry(self.folder / name, root=self.folder, follow_symlinks=self.watch.follow_symlinks)
        marker = sidecar_marker(self.folder / name) is not None if ckpt.kind == "file" else False
        relpaths = (f.relpath for f in ckpt.files)
        verdict = completion.assess(ckpt.kind, relpaths, require_marker=self.watch.require_marker, marker_present=marker, name=name)
        if not verdict.ready and verdict.coordinator and self._coordinator_done(name):
            verdict = completion.Readiness(True, signal="coordinator")
        return Observation(ckpt, verdict, cached=self.state is not None and self.state.is_committed(ckpt) is not None)

    def _coordinator_done(self, name: str) -> bool:
        """Ask the remote (at most every ``ask_every`` seconds per checkpoint) whether another node's
        part announced the coordinator's files: then every rank, ours included, finished writing."""
        if self.coordinator is None:
            return False
        now = self.clock()
        asked, answer = self._answers.get(name, (float("-inf"), False))
        if not answer and now - asked >= self.ask_every:
            answer = self.coordinator(name)
            self._answers[name] = (now, answer)
        return answer


def last_change(path: Path, now: float, wall: float, follow_symlinks: bool = False) -> float:
    """For an entry found at start: its newest mtime, on the monotonic clock that reads ``now``."""
    try:
        ckpt = scan_entry(path, score=False, root=path.parent, follow_symlinks=follow_symlinks)
    except OSError:
        return now
    newest = max((f.signature[1] for f in ckpt.files), default=0) / 1e9
    return now - max(0.0, wall - newest)
