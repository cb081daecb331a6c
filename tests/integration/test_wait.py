"""``ckptsync wait`` beside a running ``ckptsync watch`` and without one, against rclone serve s3."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers import wait_until
from tests.integration.sidecar_helpers import ckptsync, committed_names, no_traceback, watch_args, write_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _wait_args(ckpt, remote, state, *extra):
    return ["wait", "--dir", str(ckpt), "--remote", remote, "--state-dir", str(state), *extra]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("ckptsync: ")]
    assert len(lines) == 1 and no_traceback(stderr), stderr
    return lines[0]


def test_wait_beside_watch_returns_0_only_once_the_checkpoint_is_listed_as_committed(rclone_s3, kids, tmp_path):
    bucket = rclone_s3.create_bucket()
    remote, ckpt, state = f"s3://{bucket}/job", tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    kids.ckptsync(*watch_args(ckpt, remote, state))
    waiter = kids.ckptsync(*_wait_args(ckpt, remote, state, "--name", "checkpoint-40", "--timeout", "60"))
    # Not there yet: a short wait fails, naming why.
    early = ckptsync(rclone_s3, *_wait_args(ckpt, remote, state, "--name", "checkpoint-40", "--timeout", "0.5"))
    assert early.returncode == 1
    assert "checkpoint-40 is not in" in _one_error_line(early.stderr)
    assert waiter.alive()

    write_checkpoint(ckpt, "checkpoint-40", {"model.bin": os.urandom(3 << 20), "config.json": b"{}"}, step=40)
    assert waiter.wait(60) == 0, waiter.stderr()
    assert "checkpoint-40" in committed_names(rclone_s3, bucket, "job")
    assert any("checkpoint-40 (step 40) is committed" in line for line in waiter.stdout_lines())


def test_wait_for_a_name_that_never_appears_times_out_with_exit_1_and_one_line(rclone_s3, kids, tmp_path):
    bucket = rclone_s3.create_bucket()
    remote, ckpt, state = f"s3://{bucket}/job", tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    p = ckptsync(rclone_s3, *_wait_args(ckpt, remote, state, "--name", "checkpoint-9", "--timeout", "1"))
    assert p.returncode == 1
    line = _one_error_line(p.stderr)
    assert "checkpoint-9 is not committed after" in line and "is not in" in line


def test_wait_says_why_a_checkpoint_is_pending_from_the_daemons_status(rclone_s3, kids, tmp_path):
    bucket = rclone_s3.create_bucket()
    remote, ckpt, state = f"s3://{bucket}/job", tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    watch = kids.ckptsync(*watch_args(ckpt, remote, state, settle=600))
    wait_until(lambda: (state / "status.json").is_file(), 15, "the daemon's status file")
    write_checkpoint(ckpt, "checkpoint-5", {"model.bin": os.urandom(100_000)}, marker=False)

    def pending() -> str | None:
        p = ckptsync(rclone_s3, *_wait_args(ckpt, remote, state, "--name", "checkpoint-5", "--timeout", "0"))
        assert p.returncode == 1
        line = _one_error_line(p.stderr)
        return line if "not complete yet" in line else None

    line = wait_until(pending, 20, "the daemon's reason")
    assert "checkpoint-5 is not committed" in line
    waiter = kids.ckptsync(*_wait_args(ckpt, remote, state, "--name", "checkpoint-5", "--timeout", "60"))
    p = ckptsync(rclone_s3, "mark", str(ckpt / "checkpoint-5"), "--step", "5")  # the completion signal: no settling left
    assert p.returncode == 0, p.stderr
    assert waiter.wait(60) == 0, waiter.stderr()
    watch.signal(signal.SIGTERM)
    assert watch.wait(30) == 0, watch.stderr()


def test_wait_without_a_daemon_compares_the_files_on_disk_with_the_commit(rclone_s3, tmp_path):
    bucket = rclone_s3.create_bucket()
    remote, ckpt, state = f"s3://{bucket}/job", tmp_path / "ckpt", tmp_path / "none"
    write_checkpoint(ckpt, "checkpoint-1", {"w.bin": os.urandom(9 << 20)}, step=1)
    write_checkpoint(ckpt, "checkpoint-2", {"w.bin": os.urandom(100)}, step=2)
    p = ckptsync(rclone_s3, "push", "--dir", str(ckpt), "--remote", remote)
    assert p.returncode == 0, p.stderr
    newest = ckptsync(rclone_s3, *_wait_args(ckpt, remote, state, "--timeout", "5"))
    assert newest.returncode == 0 and "checkpoint-2 (step 2) is committed" in newest.stdout, newest.stderr
    # a file of several chunks changed in place, same size: the hashes tell
    with open(ckpt / "checkpoint-1" / "w.bin", "r+b") as f:
        f.seek(5 << 20)
        f.write(b"changed")
    p = ckptsync(rclone_s3, *_wait_args(ckpt, remote, state, "--name", "checkpoint-1", "--timeout", "1"))
    assert p.returncode == 1
    line = _one_error_line(p.stderr)
    assert "differ from its last commit" in line and "no ckptsync daemon is running" in line
