"""Prune on a file:// remote: which checkpoints a retention policy deletes, and the lock-protected garbage
collection of their chunks (grace period, dry run, a racing upload). The rules alone are in tests/unit/test_policy.py."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import ckptsync
from ckptsync import format as fmt
from ckptsync import locks, policy
from ckptsync.api import open_repository
from ckptsync.checkpoint import scan_entry
from ckptsync.retention import prune
from ckptsync.session import RemoteSession
from tests.helpers import tree

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make(folder: Path, step: int, loss: float, shared: bytes) -> None:
    d = folder / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "frozen.bin").write_bytes(shared)  # the same in every checkpoint: shared chunks
    (d / "weights.bin").write_bytes(os.urandom(50_000 + step))
    (d / "ckptsync.json").write_text(f'{{"step": {step}, "metrics": {{"eval_loss": {loss}}}}}')


def chunk_keys(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "chunks").rglob("*") if p.is_file()}


def referenced_keys(remote: str) -> set[str]:
    repo = open_repository(remote)
    return {fmt.chunk_key("", h, c.codec) for r in repo.load_manifests() for h, c in r.manifest.chunk_refs().items()}


@pytest.fixture
def remote(tmp_path):
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


def test_keep_last_3_and_best_2_of_20_leaves_exactly_5_intact_checkpoints_and_only_referenced_chunks(tmp_path, remote):
    src = tmp_path / "src"
    shared = os.urandom(200_000)
    losses = {step: round(0.5 + ((step * 37) % 20) / 40, 4) for step in range(1, 21)}
    losses[4], losses[9] = 0.11, 0.12  # the two best, neither among the last three
    for step, loss in losses.items():
        make(src, step, loss, shared)
    ckptsync.push(src, remote)
    root = Path(remote[7:])
    report = prune(open_repository(remote), policy.Retention(keep_last=3, keep_best=2, metric="eval_loss"), grace=timedelta(0))
    kept = sorted(r.name for r in ckptsync.list_checkpoints(remote))
    assert kept == sorted(["checkpoint-20", "checkpoint-19", "checkpoint-18", "checkpoint-4", "checkpoint-9"])
    assert report.manifests_deleted == 15 and report.chunks_deleted > 0
    assert chunk_keys(root) == referenced_keys(remote)
    for name in kept:
        out = tmp_path / "out" / name
        assert ckptsync.restore(remote, out.parent, name=name).name == name
        assert tree(out) == tree(src / name)


def test_dry_run_deletes_nothing(tmp_path, remote):
    src = tmp_path / "src"
    for step in range(1, 5):
        make(src, step, 0.5, b"x" * 1000)
    ckptsync.push(src, remote)
    before = chunk_keys(Path(remote[7:]))
    report = prune(open_repository(remote), policy.Retention(keep_last=1), grace=timedelta(0), dry_run=True)
    assert report.deleted == ["checkpoint-3", "checkpoint-2", "checkpoint-1"] and report.chunks_deleted > 0
    assert len(ckptsync.list_checkpoints(remote)) == 4 and chunk_keys(Path(remote[7:])) == before


def test_unreferenced_chunks_younger_than_grace_are_kept(tmp_path, remote):
    src = tmp_path / "src"
    for step in range(1, 4):
        make(src, step, 0.5, b"y" * 1000)
    ckptsync.push(src, remote)
    report = prune(open_repository(remote), policy.Retention(keep_last=1), grace=timedelta(hours=1))
    assert report.manifests_deleted == 2 and report.chunks_deleted == 0 and report.chunks_in_grace > 0


def test_collection_is_deferred_while_an_upload_holds_a_shared_lock(tmp_path, remote):
    src = tmp_path / "src"
    for step in range(1, 4):
        make(src, step, 0.5, b"z" * 1000)
    ckptsync.push(src, remote)
    repo = open_repository(remote)
    lock, _ = locks.acquire_shared(repo.store, repo.prefix)
    try:
        report = prune(repo, policy.Retention(keep_last=1), grace=timedelta(0))
    finally:
        lock.release()
    assert report.manifests_deleted == 2 and report.chunks_deleted == 0 and report.collection_deferred
    assert prune(repo, policy.Retention(keep_last=1), grace=timedelta(0)).chunks_deleted > 0


def test_a_prune_racing_an_upload_never_breaks_the_uploaded_checkpoint(tmp_path, remote):
    """The uploaded checkpoint reuses chunks of checkpoints being pruned at the same moment."""
    src = tmp_path / "src"
    shared = os.urandom(300_000)
    for step in range(1, 6):
        make(src, step, 0.5, shared)
    ckptsync.push(src, remote)
    for d in src.iterdir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    make(src, 6, 0.4, shared)  # reuses the shared chunks, which prune would free
    repo = open_repository(remote)
    stored = threading.Event()
    go_on = threading.Event()

    class Pausing:
        def __init__(self, inner):
            self.inner, self.url, self.conditional_writes = inner, inner.url, True

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def put(self, key, data):
            self.inner.put(key, data)
            if "/chunks/" in f"/{key}":
                stored.set()
                go_on.wait(10)

    up_repo = open_repository(remote, wrap=Pausing)
    results = []
    uploader = RemoteSession(up_repo, workers=1)
    t = threading.Thread(target=lambda: results.append(uploader.upload(scan_entry(src / "checkpoint-6"))))
    t.start()
    assert stored.wait(10)
    pruned = prune(repo, policy.Retention(keep_last=1), grace=timedelta(0))  # checkpoint-6 is not committed yet
    go_on.set()
    t.join(20)
    uploader.close()
    assert results[0].status == "committed"
    assert pruned.collection_deferred  # the upload's shared lock stopped chunk collection
    out = tmp_path / "out"
    assert ckptsync.restore(remote, out).name == "checkpoint-6"
    assert tree(out / "checkpoint-6") == tree(src / "checkpoint-6")
    [report] = [r for r in ckptsync.verify(remote, deep=True) if r.record.name == "checkpoint-6"]
    assert report.ok
