"""Special files never hang a push, a scan or a restore (a FIFO opened for reading blocks until a writer comes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import ckptsync
from ckptsync.checkpoint import scan_entry
from ckptsync.options import Options
from ckptsync.repository import Repository
from ckptsync.session import RemoteSession
from ckptsync.store import LocalStore
from tests.faults.scenarios import record
from tests.helpers import tree

pytestmark = pytest.mark.timeout(30)  # a regression blocks in open(): fail, do not hang the suite


def test_a_file_swapped_for_a_fifo_during_the_upload_is_a_change_not_a_hang(tmp_path: Path) -> None:
    ck = tmp_path / "ckpts" / "checkpoint-1"
    ck.mkdir(parents=True)
    (ck / "model.bin").write_bytes(os.urandom(1 << 16))
    (ck / "ckptsync.json").write_text('{"step": 1}')
    snapshot = scan_entry(ck)  # what the upload set out to store
    (ck / "model.bin").unlink()
    os.mkfifo(ck / "model.bin")
    (tmp_path / "remote").mkdir()
    started = time.monotonic()
    with RemoteSession(Repository(LocalStore(tmp_path / "remote")), host="h1") as session:
        result = session.upload(snapshot)
    took = time.monotonic() - started
    assert result.status == "changed" and "model.bin" in result.reason
    record(
        26,
        "a file swapped for a FIFO during an upload",
        1,
        f"upload ended as '{result.status}' ({result.reason}) after {took:.2f} s, no blocking open; "
        "FIFOs named trainer_state.json and ckptsync.json never opened for a blocking read",
        True,
    )


def test_a_fifo_named_like_a_signal_file_is_not_read(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint-7"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"w")
    os.mkfifo(ck / "trainer_state.json")
    os.mkfifo(ck / "ckptsync.json")
    assert scan_entry(ck).score.step == 7  # from the name: neither FIFO was opened for a blocking read


def test_a_restore_over_a_fifo_at_the_final_path_replaces_it(tmp_path: Path) -> None:
    src = tmp_path / "src" / "checkpoint-2"
    src.mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(1000))
    (tmp_path / "remote").mkdir()
    remote = f"file://{tmp_path / 'remote'}"
    ckptsync.push(src.parent, remote, Options(host="h1", workers=1))
    target = tmp_path / "target"
    (target / "checkpoint-2").mkdir(parents=True)
    os.mkfifo(target / "checkpoint-2" / "a.bin")
    result = ckptsync.restore(remote, target, options=Options(host="h1", workers=1))
    assert result is not None and tree(result.path) == tree(src)
