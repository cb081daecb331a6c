"""The daemon's state folder: a cache of what is committed, and the status file.

The remote is the truth; this folder only saves work. Deleting it is safe: the
next start re-reads the remote, re-hashes local checkpoints and finds their
content already committed. Files are written atomically (temp file, fsync,
rename), so a ``kill -9`` never leaves a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from .checkpoint import LocalCheckpoint
from .fsutil import write_json_atomic
from .status import Status

__all__ = ["State", "read_json", "read_status", "default_state_dir", "default_state_root"]

COMMITTED_FILE = "committed.json"
STATUS_FILE = "status.json"


def default_state_root() -> Path:
    """``$XDG_STATE_HOME/ckptsync``, else ``~/.local/state/ckptsync`` (``--state-dir`` overrides the whole path)."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "ckptsync"


def default_state_dir(folder: Path, remote: str) -> Path:
    """One state folder per (checkpoint folder, remote) pair under the default root."""
    key = hashlib.sha256(f"{os.path.abspath(folder)}\n{remote}".encode()).hexdigest()[:16]
    return default_state_root() / key


def signature_of(ckpt: LocalCheckpoint) -> list[list[Any]]:
    sig = [[f.relpath, *f.signature] for f in ckpt.files]
    if ckpt.marker is not None:
        sig.append([".ckptsync.json", *ckpt.marker])
    return sig


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class State:
    """Committed checkpoints by name, with the file signatures they were committed with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        doc = read_json(folder / COMMITTED_FILE)
        self._committed: dict[str, dict[str, Any]] = doc.get("checkpoints", {}) if isinstance(doc, dict) else {}

    def is_committed(self, ckpt: LocalCheckpoint) -> str | None:
        """The commit id if ``ckpt`` (same files, same signatures) was committed before."""
        with self._lock:
            entry = self._committed.get(ckpt.name)
        if entry and entry.get("signature") == signature_of(ckpt):
            return str(entry.get("commit"))
        return None

    def record(self, ckpt: LocalCheckpoint, commit: str) -> None:
        with self._lock:
            self._committed[ckpt.name] = {"commit": commit, "signature": signature_of(ckpt)}
            doc = {"checkpoints": dict(self._committed)}
        try:
            write_json_atomic(self.folder / COMMITTED_FILE, doc)
        except OSError:
            pass  # a cache: losing it costs a re-hash, never data

    def write_status(self, status: Status) -> None:
        """Write the daemon's status file (not fsynced: it is rewritten every few seconds)."""
        try:
            write_json_atomic(self.folder / STATUS_FILE, status.to_json(), durable=False)
        except OSError:
            pass


def read_status(folder: Path) -> Status | None:
    """The status file of the state folder ``folder``, or None if there is none (or it is unreadable)."""
    return Status.from_json(read_json(folder / STATUS_FILE))
