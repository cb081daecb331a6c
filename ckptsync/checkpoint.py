"""Checkpoints as they lie in a local folder: scanning, scoring and change detection.

A :class:`LocalCheckpoint` is a snapshot of one entry: its files with the
``(size, mtime_ns, inode)`` signature each had when scanned, so an upload can
tell afterwards whether anything changed under it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics
from .completion import is_checkpoint_name
from .errors import FormatError, LocalError, UsageError
from .format import Kind, check_name, check_relpath

Signature = tuple[int, int, int]


@dataclass(frozen=True)
class LocalFile:
    """One regular file of a checkpoint as scanned."""

    relpath: str  # relative to the checkpoint root (the name itself for a file checkpoint)
    abspath: Path
    size: int
    mode: int
    signature: Signature


@dataclass(frozen=True)
class LocalCheckpoint:
    """One top-level entry of the checkpoint folder, scanned."""

    name: str
    path: Path
    kind: Kind
    files: tuple[LocalFile, ...]
    score: metrics.Score
    #: For a single-file checkpoint, the signature of its sidecar marker (step and metrics).
    marker: Signature | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def changed(self) -> str | None:
        """Describe what changed since the scan, or None if nothing did."""
        try:
            now = scan_entry(self.path, score=False)
        except FileNotFoundError:
            return "it was deleted"
        before = {f.relpath: f.signature for f in self.files}
        after = {f.relpath: f.signature for f in now.files}
        for rel in sorted(before.keys() | after.keys()):
            if rel not in after:
                return f"{rel} was deleted"
            if rel not in before:
                return f"{rel} was added"
            if before[rel] != after[rel]:
                return f"{rel} was modified"
        return None


def check_folder(folder: Path) -> Path:
    """The checkpoint folder must exist and be a directory."""
    if not folder.exists():
        raise UsageError(f"checkpoint folder {folder} does not exist", "create it or pass the right --dir")
    if not folder.is_dir():
        raise UsageError(f"checkpoint folder {folder} is not a directory", "pass the folder that holds the checkpoints with --dir")
    return folder


def list_entries(folder: Path) -> list[str]:
    """Names of the non-temporary top-level entries of ``folder``, sorted."""
    try:
        names = os.listdir(check_folder(folder))
    except PermissionError as exc:
        raise LocalError(f"cannot read checkpoint folder {folder}: {exc.strerror}") from None
    out = []
    for name in sorted(names):
        if not is_checkpoint_name(name):
            continue
        try:
            check_name(name)
        except FormatError:
            continue
        out.append(name)
    return out


def scan_folder(folder: Path) -> list[LocalCheckpoint]:
    """Scan every non-temporary entry of ``folder``; entries that vanish meanwhile are skipped."""
    out = []
    for name in list_entries(folder):
        try:
            ckpt = scan_entry(folder / name)
        except FileNotFoundError:
            continue
        if ckpt is not None:
            out.append(ckpt)
    return out


def scan_entry(path: Path, *, score: bool = True) -> LocalCheckpoint:
    """Snapshot one entry (file or folder). Raises FileNotFoundError if it vanishes."""
    st = os.stat(path)
    name = path.name
    kind: Kind
    if stat.S_ISREG(st.st_mode):
        files: tuple[LocalFile, ...] = (_local_file(name, path, st),)
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        files = tuple(_walk(path))
        kind = "dir"
    else:
        raise FileNotFoundError(path)  # sockets, fifos, devices: not a checkpoint
    sc = read_score(path, kind) if score else metrics.Score()
    marker = None
    if kind == "file":
        m = sidecar_marker(path)
        if m is not None:
            try:
                ms = os.stat(m)
                marker = (ms.st_size, ms.st_mtime_ns, ms.st_ino)
            except OSError:
                pass
    return LocalCheckpoint(name=name, path=path, kind=kind, files=files, score=sc, marker=marker)


def _walk(root: Path) -> list[LocalFile]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            abspath = Path(dirpath) / fn
            rel = abspath.relative_to(root).as_posix()
            try:
                check_relpath(rel)
                st = os.stat(abspath)  # follows symlinks: a linked file is stored by content
            except FormatError:
                continue
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(_local_file(rel, abspath, st))
    out.sort(key=lambda f: f.relpath)
    return out


def _local_file(rel: str, path: Path, st: os.stat_result) -> LocalFile:
    return LocalFile(rel, path, st.st_size, stat.S_IMODE(st.st_mode), (st.st_size, st.st_mtime_ns, st.st_ino))


def sidecar_marker(path: Path) -> Path | None:
    """The sidecar marker of a single-file checkpoint, if it exists and is not older than the file.

    A marker older than its file belongs to a previous save of that name: trusting
    it would record the previous step and metrics for new content.
    """
    marker = path.with_name(path.name + "." + metrics.MARKER_FILE)
    try:
        return marker if os.stat(marker).st_mtime_ns >= os.stat(path).st_mtime_ns else None
    except OSError:
        return None


def read_score(path: Path, kind: Kind) -> metrics.Score:
    """Step and metrics of a checkpoint, first match wins (see :mod:`ckptsync.metrics`).

    A marker or trainer state without a step takes the step from the name, and
    metrics from the name fill in those the file does not have.
    """
    by_name = metrics.from_name(path.name)
    sources: tuple[tuple[Path, Callable[[Any], metrics.Score | None]], ...]
    if kind == "dir":
        sources = ((path / metrics.MARKER_FILE, metrics.from_marker), (path / metrics.HF_STATE_FILE, metrics.from_trainer_state))
    else:
        marker = sidecar_marker(path)
        sources = ((marker, metrics.from_marker),) if marker is not None else ()
    for file, parse in sources:
        doc = _read_json(file)
        sc = parse(doc) if doc is not None else None
        if sc is not None and (sc.step is not None or sc.metrics or parse is metrics.from_marker):
            step = sc.step if sc.step is not None else by_name.step
            return metrics.Score(step, {**by_name.metrics, **sc.metrics}, sc.source)
    return by_name


def _read_json(path: Path) -> object | None:
    """A small JSON file (a marker, trainer_state.json), or None; never blocks on a FIFO put in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(16 << 20)
        return json.loads(data)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
