"""Hard-link snapshots: an upload keeps its checkpoint's content when the trainer deletes it, never fills
the disk for it, falls back where links are impossible; and a rename from a temporary name is a signal."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ckptsync
from ckptsync import snapshot
from ckptsync.checkpoint import scan_entry
from ckptsync.daemon import Daemon
from ckptsync.fsutil import staging_slug
from ckptsync.options import Options, WatchOptions
from ckptsync.repository import Repository
from ckptsync.state import State
from ckptsync.store import LocalStore
from ckptsync.watcher import FolderWatcher
from tests.helpers import tree, wait_until


def _checkpoint(folder: Path, name: str = "checkpoint-1", step: int = 1) -> Path:
    d = folder / name
    (d / "sub").mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(300_000))
    (d / "sub" / "optim.bin").write_bytes(os.urandom(100_000))
    (d / "ckptsync.json").write_text(json.dumps({"step": step}))
    return d


def test_a_snapshot_keeps_the_content_after_the_checkpoint_is_deleted_and_release_removes_it(tmp_path):
    d = _checkpoint(tmp_path)
    before = tree(d)
    snap = snapshot.take(scan_entry(d), tmp_path)
    assert snap is not None and snap.root.parent == tmp_path and snap.root.name.startswith(snapshot.SNAPSHOT_PREFIX)
    assert snap.held_bytes() == 0  # nothing deleted yet: the snapshot holds no space of its own
    shutil.rmtree(d)
    assert tree(snap.ckpt.path) == before
    assert snap.ckpt.changed() is None  # same inodes, sizes and mtimes as scanned
    assert snap.held_bytes() == snap.ckpt.size
    snap.release()
    assert not snap.root.exists()


def test_a_file_modified_between_scan_and_snapshot_is_a_change(tmp_path):
    d = _checkpoint(tmp_path)
    ckpt = scan_entry(d)
    (d / "model.bin").write_bytes(b"other")
    with pytest.raises(snapshot.SnapshotChanged, match="model.bin"):
        snapshot.take(ckpt, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(snapshot.SNAPSHOT_PREFIX)]


def test_where_links_cannot_be_made_the_upload_reads_the_checkpoint_in_place(tmp_path, monkeypatch, caplog):
    d = _checkpoint(tmp_path)

    def refuse(src, dst, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(snapshot, "_link", refuse)
    with caplog.at_level(logging.INFO, logger="ckptsync.snapshot"):
        assert snapshot.take(scan_entry(d), tmp_path) is None
    assert "cannot hard-link" in caplog.text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(snapshot.SNAPSHOT_PREFIX)]


def test_the_guard_releases_a_snapshot_only_when_the_disk_is_low_and_it_holds_deleted_files(tmp_path):
    d = _checkpoint(tmp_path)
    snap = snapshot.take(scan_entry(d), tmp_path)
    assert snap is not None
    try:
        huge = 1 << 62  # more than any disk has free: "low" for the test
        cancel = threading.Event()
        assert not snapshot.Guard(snap, cancel, reserve=huge).check() and not cancel.is_set()  # holds nothing yet
        shutil.rmtree(d)
        assert not snapshot.Guard(snap, cancel, reserve=0).check() and not cancel.is_set()  # plenty of space
        guard = snapshot.Guard(snap, cancel, reserve=huge)
        assert guard.check() and cancel.is_set()
        assert guard.released is not None and "disk is nearly full" in guard.released
    finally:
        snap.release()


def test_snapshots_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess_pid_that_exited()
    stale = tmp_path / f"{snapshot.SNAPSHOT_PREFIX}{dead}-{staging_slug()}-0123456789ab"
    live = tmp_path / f"{snapshot.SNAPSHOT_PREFIX}{os.getppid()}-{staging_slug()}-0123456789ab"
    other_host = tmp_path / f"{snapshot.SNAPSHOT_PREFIX}{dead}-elsewhere-0123456789ab"
    for p in (stale, live, other_host):
        (p / "checkpoint-1").mkdir(parents=True)
    snapshot.remove_stale(tmp_path)
    assert not stale.exists() and live.exists() and other_host.exists()


def subprocess_pid_that_exited() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class SlowStore:
    """Each chunk put waits until ``release`` is set: the upload stays in flight while the test deletes."""

    def __init__(self, inner):
        self.inner, self.url, self.conditional_writes = inner, inner.url, True
        self.started, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data):
        if "/chunks/" in f"/{key}":
            self.started.set()
            assert self.release.wait(30)
        self.inner.put(key, data)


def test_a_checkpoint_deleted_during_its_upload_is_still_committed_whole(tmp_path):
    folder, root = tmp_path / "ckpts", tmp_path / "remote"
    folder.mkdir()
    root.mkdir()
    store = SlowStore(LocalStore(root))
    daemon = Daemon(folder, Repository(store), Options(workers=2), WatchOptions(settle=0.1, tick=0.02), state=State(tmp_path / "s"))
    daemon.start()
    try:
        d = _checkpoint(folder)
        expected = tree(d)
        assert store.started.wait(30)
        shutil.rmtree(d)  # the trainer's rotation, mid-upload
        store.release.set()
        wait_until(lambda: daemon.report.committed, 30, "the deleted checkpoint committed")
        wait_until(lambda: not [p for p in folder.iterdir() if p.name.startswith(snapshot.SNAPSHOT_PREFIX)], 10, "snapshot released")
    finally:
        store.release.set()
        daemon.drain(deadline=time.monotonic() + 10)
        daemon.wait(30)
    out = tmp_path / "out"
    ckptsync.restore(f"file://{root}", out)
    assert tree(out / "checkpoint-1") == expected


def test_a_folder_renamed_into_place_from_a_temporary_name_is_reported_as_renamed(tmp_path):
    seen: list[tuple[str, str]] = []
    watcher = FolderWatcher(tmp_path, lambda name, kind: seen.append((name, kind)))
    watcher.start()  # native or polling: both report a folder's move as a move
    try:
        tmp = tmp_path / "tmp-checkpoint-1"
        tmp.mkdir()
        (tmp / "model.bin").write_bytes(b"x" * 1000)
        os.rename(tmp / "model.bin", tmp / "weights.bin")
        os.rename(tmp, tmp_path / "checkpoint-1")
        wait_until(lambda: ("checkpoint-1", "renamed") in seen, 10, "the rename reported")
        (tmp_path / "checkpoint-2").mkdir()
        wait_until(lambda: ("checkpoint-2", "change") in seen, 10, "the new folder reported (and watched)")
        (tmp_path / "checkpoint-2" / ".tmp1").write_bytes(b"y")
        os.rename(tmp_path / "checkpoint-2" / ".tmp1", tmp_path / "checkpoint-2" / "model.bin")  # a rename inside: not one into place
        wait_until(lambda: ("checkpoint-2", "closed") in seen, 10, "the inner rename reported")
        assert ("checkpoint-2", "renamed") not in seen
    finally:
        watcher.stop()
