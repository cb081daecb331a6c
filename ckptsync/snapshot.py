"""Hard-link snapshots: a checkpoint being uploaded keeps its content even if the trainer deletes it.

A trainer with ``save_total_limit=1`` deletes the previous checkpoint at every
save. When a checkpoint uploads slower than the next one is written, deleting it
mid-upload would drop every upload, and nothing would ever be committed. So
before an upload the daemon hard-links every file of the checkpoint into a
hidden folder beside it (``<dir>/.ckptsync-snapshot-<pid>-<host>-<hex>/<name>``,
on the same file system by construction) and reads from there. Deleting the
original then removes names, not content; the snapshot is removed once the
upload ended, whatever its outcome.

What a snapshot costs and what bounds it:

- Taking it writes no data: links only. It holds disk space only for files the
  trainer deleted meanwhile, and only one snapshot exists at a time (one upload at
  a time), so the most it holds is one checkpoint.
- While it holds deleted files, :class:`Guard` checks the file system's free space
  every second; below the checkpoint's own size (what the trainer's next save is
  likely to need) it cancels the upload, and the snapshot is released: the trainer's
  writes never fail for want of the space it holds.
- A file changed in place (same inode) is seen through the link: the upload's
  final check then finds it changed and commits nothing, as without a snapshot.
- Where links cannot be made (another owner's files under ``protected_hardlinks``,
  a read-only folder, a file system without hard links), the upload reads the
  folder itself, as before; a checkpoint deleted during its upload is then dropped.

A daemon killed during an upload leaves its snapshot behind; the next daemon on
this machine removes snapshots of processes that are gone (:func:`remove_stale`).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
from dataclasses import replace
from pathlib import Path

from .checkpoint import LocalCheckpoint
from .fsutil import remove_dead_staging, remove_tree, staging_slug
from .progress import human_bytes

log = logging.getLogger(__name__)

#: Hidden folders holding snapshots: ``<prefix><pid>-<host slug>-<12 hex digits>``.
SNAPSHOT_PREFIX = ".ckptsync-snapshot-"

#: Errors that say links cannot be made here (not that the checkpoint changed).
_NO_LINKS = frozenset({errno.EPERM, errno.EACCES, errno.EXDEV, errno.EMLINK, errno.EROFS, errno.ENOTSUP, errno.ENOSPC, errno.EDQUOT})


class SnapshotChanged(Exception):
    """A file of the checkpoint changed between its scan and its link: scan again later."""


class Snapshot:
    """A checkpoint's files, hard-linked into a private folder; :attr:`ckpt` reads from there."""

    def __init__(self, root: Path, ckpt: LocalCheckpoint) -> None:
        self.root = root
        self.ckpt = ckpt

    def held_bytes(self) -> int:
        """Bytes only the snapshot still references (their files were deleted from the checkpoint)."""
        held = 0
        for f in self.ckpt.files:
            try:
                if os.stat(f.abspath).st_nlink == 1:
                    held += f.size
            except OSError:
                pass
        return held

    def release(self) -> None:
        """Remove the snapshot (its links; content the trainer deleted is freed now)."""
        remove_tree(self.root)


def take(ckpt: LocalCheckpoint, folder: Path) -> Snapshot | None:
    """Hard-link every file of ``ckpt`` into a new snapshot folder in ``folder``.

    Returns None where links cannot be made (the caller reads the checkpoint in
    place). Raises FileNotFoundError if the checkpoint was deleted meanwhile and
    :class:`SnapshotChanged` if one of its files changed since ``ckpt`` was scanned.
    """
    root = folder / f"{SNAPSHOT_PREFIX}{os.getpid()}-{staging_slug()}-{secrets.token_hex(6)}"
    try:
        os.mkdir(root, 0o700)
    except OSError as exc:
        if exc.errno in _NO_LINKS:
            _no_links(folder, exc)
            return None
        raise
    base = root / ckpt.name
    try:
        files = []
        if ckpt.kind == "dir":
            os.mkdir(base, 0o700)
        for f in ckpt.files:
            dst = base / f.relpath if ckpt.kind == "dir" else base
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                _link(f.abspath, dst)
            except FileNotFoundError:
                if not ckpt.path.exists():
                    raise
                raise SnapshotChanged(f"{f.relpath} was deleted") from None
            st = os.stat(dst)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != f.signature:
                raise SnapshotChanged(f"{f.relpath} was modified")
            files.append(replace(f, abspath=dst))
    except OSError as exc:
        remove_tree(root)
        if exc.errno in _NO_LINKS:
            _no_links(folder, exc)
            return None
        raise
    except BaseException:
        remove_tree(root)
        raise
    return Snapshot(root, replace(ckpt, path=base, files=tuple(files)))


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``dst`` to ``src``'s content (a symlink is followed: the link is to what was scanned)."""
    os.link(src, dst, follow_symlinks=True)


_warned: set[str] = set()


def _no_links(folder: Path, exc: OSError) -> None:
    """Say once per folder and reason that uploads read the folder in place."""
    key = f"{folder}:{exc.errno}"
    if key not in _warned:
        _warned.add(key)
        log.info(
            "cannot hard-link checkpoint files in %s (%s): uploading from the checkpoints themselves; "
            "one the trainer deletes during its upload is dropped",
            folder,
            exc.strerror,
        )


def remove_stale(folder: Path) -> None:
    """Remove snapshots left by daemons of this machine that were killed during an upload."""
    try:
        remove_dead_staging(folder, log, prefix=SNAPSHOT_PREFIX, left_by="an interrupted upload")
    except OSError as exc:
        log.warning("cannot look for stale snapshots in %s: %s", folder, exc.strerror)


class Guard:
    """While an upload reads from ``snapshot``, keeps the disk from filling up because of it.

    Every ``interval`` seconds: if the file system's free space is below
    ``reserve`` bytes (default: the checkpoint's size) and the snapshot holds files
    the trainer deleted, set ``cancel`` (the upload stops between chunks, and the
    caller releases the snapshot).
    """

    def __init__(self, snapshot: Snapshot, cancel: threading.Event, *, reserve: int | None = None, interval: float = 1.0) -> None:
        self.snapshot = snapshot
        self.cancel = cancel
        self.reserve = snapshot.ckpt.size if reserve is None else reserve
        self.interval = interval
        self.released: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ckptsync-snapshot-guard", daemon=True)

    def __enter__(self) -> Guard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> bool:
        """Look once; True if the upload was told to stop."""
        try:
            st = os.statvfs(self.snapshot.root)
        except OSError:
            return False
        free = st.f_bavail * st.f_frsize
        if free >= self.reserve:
            return False
        held = self.snapshot.held_bytes()
        if not held:
            return False
        self.released = f"the disk is nearly full ({human_bytes(free)} free): released {human_bytes(held)} the trainer had deleted"
        log.warning("%s: %s; its upload stops", self.snapshot.ckpt.name, self.released)
        self.cancel.set()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.check():
                return
