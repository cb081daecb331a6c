"""Atomic local writes and the one host slug (file-system primitives, no threads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckptsync import format as fmt
from ckptsync import fsutil
from ckptsync.store.local import LocalStore


def test_a_write_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    fsutil.write_atomic(target, b"first")
    fsutil.write_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert os.listdir(target.parent) == ["state.json"]
    assert (target.stat().st_mode & 0o777) == 0o600


def test_an_exclusive_write_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    fsutil.write_atomic(target, b"one", exclusive=True)
    with pytest.raises(FileExistsError):
        fsutil.write_atomic(target, b"two", exclusive=True)
    assert target.read_bytes() == b"one" and os.listdir(tmp_path) == ["manifest.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "status.json"
    fsutil.write_atomic(target, b"old")

    def full_disk(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        fsutil.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["status.json"]


def test_the_local_store_writes_through_the_same_atomic_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []
    real = fsutil.write_atomic

    def spy(path: Path, data: bytes | memoryview, **kw: object) -> None:
        calls.append((path.name, bool(kw.get("exclusive"))))
        real(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("ckptsync.store.local.write_atomic", spy)
    store = LocalStore(tmp_path)
    store.put("chunks/ab/x.raw", b"x")
    store.put_if_absent("manifests/c/1.json", b"m")
    assert calls == [("x.raw", False), ("1.json", True)]


@pytest.mark.parametrize(
    ("host", "commit_slug", "staging_slug"),
    [
        ("algo-1", "algo-1", "algo_1"),
        ("ip-10-0-0-1.ec2.internal", "ip-10-0-0-1.ec2.internal", "ip_10_0_0_1.ec2.internal"),
        ("modèle 1", "mod_le_1", "mod_le_1"),
        ("", "host", "host"),
    ],
)
def test_commit_ids_and_staging_folders_share_one_slug_rule(
    host: str, commit_slug: str, staging_slug: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fmt.host_slug(host) == commit_slug
    monkeypatch.setattr("socket.gethostname", lambda: host)
    assert fsutil.staging_slug() == staging_slug
    assert fmt.host_slug("h" * 80) == "h" * 63
