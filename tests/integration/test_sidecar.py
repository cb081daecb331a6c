"""The sidecar end to end: ``ckptsync watch`` and ``ckptsync run`` as child processes against local S3 servers.

Each test pins one behaviour of the daemon or the supervisor as a user sees it: what is committed on the remote,
the exit status, what is logged, what the status file and the service manager are told. Children write their
stderr to files under tmp_path; stdout is read line by line where the test reacts to a trainer's output.
Nothing sleeps to synchronise: every wait polls an observable condition with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.faults.proxy import S3Proxy
from tests.helpers import tree, wait_until
from tests.imds import FakeImds
from tests.integration.sidecar_helpers import (
    TRAIN,
    Children,
    chunk_keys_of,
    ckptsync,
    committed_names,
    list_json,
    manifest_keys,
    no_traceback,
    object_keys,
    read_manifest,
    read_status,
    run_args,
    watch_args,
    write_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MiB = 1 << 20


@pytest.fixture
def bucket(rclone_s3):
    return rclone_s3.create_bucket()


def _watching(state_dir: Path, pid: int):
    """The status file of the daemon with this pid, once it says it is watching."""
    doc = read_status(state_dir)
    return doc if doc and doc.get("pid") == pid and doc.get("state") == "watching" else None


def _puts(proxy: S3Proxy, part: str) -> list[str]:
    """Keys (``prefix/...``) of the PUTs the proxy forwarded whose path contains ``part``, in order."""
    return [r.path.split("/", 2)[2] for r in proxy.requests() if r.method == "PUT" and part in r.path and r.backend_status is not None]


def _trainer(ckpt: Path, *args: str) -> list[str]:
    return [sys.executable, str(TRAIN), "--dir", str(ckpt), "--size-mb", "0.2", *args]


# --------------------------------------------------------------------------- run


def test_run_commits_checkpoints_while_the_trainer_is_still_running(rclone_s3, bucket, kids, tmp_path):
    remote = f"s3://{bucket}/job"
    ckpt = tmp_path / "ckpt"
    # 120 steps of 50 ms: about 6 s of training, a checkpoint every 0.5 s, 3 kept on disk
    trainer = _trainer(ckpt, "--steps", "120", "--every", "10", "--step-seconds", "0.05", "--keep", "3")
    run = kids.ckptsync(*run_args(ckpt, remote, tmp_path / "state", trainer))
    run.wait_line(lambda s: s == "resumed from step 0", 20, "resumed from step 0")
    wait_until(lambda: committed_names(rclone_s3, bucket, "job"), 20, "a first commit")

    rows = list_json(rclone_s3, remote)
    listed_at = time.monotonic()
    assert run.alive(), run.stderr()
    assert rows, "list shows nothing although a manifest is stored"
    assert all(r["name"].startswith("checkpoint-") and r["step"] < 120 and r["step"] % 10 == 0 for r in rows), rows

    last = run.wait_line(lambda s: s.startswith("saved checkpoint-120 "), 30, "saved checkpoint-120")
    assert last.at > listed_at, "the trainer had already finished when the first commit was listed"
    assert run.wait(30) == 0, run.stderr()

    final = list_json(rclone_s3, remote)
    assert final[0]["name"] == "checkpoint-120" and final[0]["step"] == 120
    assert {r["name"] for r in rows} <= {r["name"] for r in final}
    assert no_traceback(run.stderr()), run.stderr()


@pytest.mark.parametrize(
    ("command", "expected"),
    [(["sh", "-c", "exit 3"], 3), (["sh", "-c", "kill -9 $$"], 128 + signal.SIGKILL)],
    ids=["exit-3", "sigkill-137"],
)
def test_run_exits_with_the_commands_status(rclone_s3, bucket, tmp_path, command, expected):
    p = ckptsync(rclone_s3, *run_args(tmp_path / "ckpt", f"s3://{bucket}/job", tmp_path / "state", command))
    assert p.returncode == expected, p.stderr
    assert no_traceback(p.stderr), p.stderr


def test_run_forwards_sigterm_and_commits_the_final_checkpoint_before_exiting(rclone_s3, bucket, kids, tmp_path):
    remote = f"s3://{bucket}/job"
    ckpt = tmp_path / "ckpt"
    trainer = _trainer(ckpt, "--steps", "5000", "--every", "50", "--step-seconds", "0.05")  # a save every 2.5 s
    run = kids.ckptsync(*run_args(ckpt, remote, tmp_path / "state", trainer, "--drain-timeout", "30"))
    run.wait_line(lambda s: s.startswith("saved checkpoint-50 "), 30, "saved checkpoint-50")
    # SIGTERM once checkpoint-50 is committed (settle + at most a tick, ~0.5-1.5 s after its save), not right after
    # the 'saved' line: a signal that lands while the trainer is still inside save() stops it at step 50 with nothing
    # new to save; this way it lands mid-interval, far from both saves.
    wait_until(lambda: "checkpoint-50" in committed_names(rclone_s3, bucket, "job"), 20, "checkpoint-50 committed")
    assert run.alive() and not any(s.startswith("saved checkpoint-100 ") for s in run.stdout_lines())
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 0, run.stderr()

    err = run.stderr()
    assert "forwarded SIGTERM" in err, err
    saved = [s.split()[1] for s in run.stdout_lines() if s.startswith("saved ")]
    final = int(saved[-1].split("-")[1])
    assert final % 50 != 0, f"the trainer stopped right at a regular save ({saved}); no final checkpoint to check"
    assert f"received SIGTERM at step {final}; writing a final checkpoint" in err, err
    rows = list_json(rclone_s3, remote)
    assert rows[0]["name"] == f"checkpoint-{final}" and rows[0]["step"] == final, rows
    assert no_traceback(err), err


@pytest.mark.parametrize("damage", ["missing-bucket", "all-checkpoints-damaged"])
def test_run_does_not_start_the_command_when_restore_fails(rclone_s3, tmp_path, damage):
    if damage == "missing-bucket":
        remote = "s3://no-such-bucket-ckptsync/job"
    else:
        bucket = rclone_s3.create_bucket()
        remote = f"s3://{bucket}/job"
        src = tmp_path / "src"
        write_checkpoint(src, "checkpoint-1", {"w.bin": os.urandom(100_000)}, step=1)
        write_checkpoint(src, "checkpoint-2", {"w.bin": os.urandom(100_000)}, step=2)
        p = ckptsync(rclone_s3, "push", "--dir", str(src), "--remote", remote)
        assert p.returncode == 0, p.stderr
        client = rclone_s3.client()
        for key in object_keys(rclone_s3, bucket, "job/chunks/"):
            client.put_object(Bucket=bucket, Key=key, Body=b"garbage")
    ran = tmp_path / "command-ran"
    p = ckptsync(rclone_s3, *run_args(tmp_path / "ckpt", remote, tmp_path / "state", ["sh", "-c", f"touch {ran}"], "--restore", "latest"))
    assert p.returncode == 1, p.stderr
    assert "ckptsync: error: restore failed, not starting the command" in p.stderr, p.stderr
    assert not ran.exists(), "the command ran although the restore failed"
    assert no_traceback(p.stderr), p.stderr


# --------------------------------------------------------------------------- watch


WRITER = r"""
import json, os, sys, time
root = sys.argv[1]
c1 = os.path.join(root, "checkpoint-1")
os.mkdir(c1)
with open(os.path.join(c1, "weights.bin"), "wb") as f:
    f.write(os.urandom(300_000))
with open(os.path.join(c1, "ckptsync.json"), "w") as f:  # the marker, last
    json.dump({"step": 1, "metrics": {"loss": 1.0}}, f)
print("checkpoint-1 written", flush=True)
c2 = os.path.join(root, "checkpoint-2")  # in place, no temporary name, and no marker ever
os.mkdir(c2)
with open(os.path.join(c2, "weights.bin"), "wb") as f:
    print("checkpoint-2 started", flush=True)
    while True:
        f.write(os.urandom(4096))
        f.flush()
        time.sleep(0.05)
"""


def test_sigterm_to_watch_commits_the_complete_checkpoint_and_not_the_half_written_one(rclone_s3, bucket, kids, tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    watch = kids.ckptsync(*watch_args(ckpt, f"s3://{bucket}/job", state, "--drain-timeout", "15", settle=1.0))
    wait_until(lambda: _watching(state, watch.pid), 15, "the daemon watching")
    writer = kids.python(WRITER, str(ckpt), name="writer")
    writer.wait_line(lambda s: s == "checkpoint-1 written", 10, "checkpoint-1 written")
    wait_until(lambda: "checkpoint-1" in committed_names(rclone_s3, bucket, "job"), 20, "checkpoint-1 committed")
    wait_until(lambda: (ckpt / "checkpoint-2" / "weights.bin").stat().st_size > 0, 10, "checkpoint-2 has bytes")

    watch.signal(signal.SIGTERM)
    sent = time.monotonic()
    assert watch.wait(20) == 0, watch.stderr()
    assert time.monotonic() - sent < 15, "exited only after the drain timeout"
    assert writer.alive(), "the writer must still be writing checkpoint-2 when the daemon stops"

    assert committed_names(rclone_s3, bucket, "job") == {"checkpoint-1"}
    assert [r["name"] for r in list_json(rclone_s3, f"s3://{bucket}/job")] == ["checkpoint-1"]
    assert no_traceback(watch.stderr()), watch.stderr()


def test_watch_killed_mid_upload_resumes_without_resending_stored_chunks(rclone_s3, tmp_path):
    bucket = rclone_s3.create_bucket()
    remote = f"s3://{bucket}/job"
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    # 3 x 16 MiB of random data: 12 chunks of 4 MiB plus the marker's, uploaded at 16 MiB/s (~3 s), two at a time
    write_checkpoint(ckpt, "checkpoint-1", {f"part-{i}.bin": os.urandom(16 * MiB) for i in range(3)}, step=1)
    with S3Proxy(rclone_s3, bwlimit=16 * MiB) as proxy:
        via = proxy.wrap(rclone_s3)
        kids = Children(via, tmp_path / "logs")
        args = watch_args(ckpt, remote, state, "--workers", "2")
        try:
            first = kids.ckptsync(*args, name="watch-1")
            wait_until(lambda: len(_puts(proxy, "/chunks/")) >= 4, 30, "4 chunk PUTs")
            first.proc.kill()
            assert first.wait(10) == -signal.SIGKILL
            wait_until(proxy.idle, 10, "the proxy done with the killed daemon's requests")
            assert not _puts(proxy, "/manifests/"), "the upload finished before the kill; the test needs a slower link"
            stored = set(object_keys(rclone_s3, bucket, "job/chunks/"))
            assert set(_puts(proxy, "/chunks/")) == stored
            assert committed_names(rclone_s3, bucket, "job") == set()

            proxy.reset()
            second = kids.ckptsync(*args, name="watch-2")
            wait_until(lambda: manifest_keys(rclone_s3, bucket, "job", "checkpoint-1"), 30, "checkpoint-1 committed")
            second.signal(signal.SIGTERM)
            assert second.wait(20) == 0, second.stderr()
            (key,) = manifest_keys(rclone_s3, bucket, "job", "checkpoint-1")
            wanted = chunk_keys_of("job", read_manifest(rclone_s3, bucket, key))
            resent = _puts(proxy, "/chunks/")
            assert len(resent) == len(set(resent)), "a chunk was PUT twice in one run"
            assert not set(resent) & stored, f"{len(set(resent) & stored)} chunk(s) stored by the first run were PUT again"
            assert len(resent) == len(wanted - stored)
            assert set(resent) | stored >= wanted
            assert no_traceback(second.stderr()), second.stderr()

            proxy.reset()
            third = kids.ckptsync(*args, name="watch-3")
            wait_until(
                lambda: (d := _watching(state, third.pid)) and not d["queue"] and not d["pending"] and d["in_flight"] is None,
                15,
                "the restarted daemon idle",
            )
            third.signal(signal.SIGTERM)
            assert third.wait(20) == 0, third.stderr()
            assert proxy.count("PUT") == 0, [r.path for r in proxy.requests() if r.method == "PUT"]
            assert manifest_keys(rclone_s3, bucket, "job") == [key]
        finally:
            kids.close()


def test_checkpoint_deleted_mid_upload_is_committed_from_its_snapshot_and_watch_keeps_going(rclone_s3, tmp_path):
    bucket = rclone_s3.create_bucket()
    remote = f"s3://{bucket}/job"
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    # 4 files of 8 MiB, read one chunk at a time (--max-memory 8M), uploaded at 16 MiB/s
    first = write_checkpoint(ckpt, "checkpoint-1", {f"part-{i}.bin": os.urandom(8 * MiB) for i in range(4)}, step=1)
    content = tree(first)
    with S3Proxy(rclone_s3, bwlimit=16 * MiB) as proxy:
        kids = Children(proxy.wrap(rclone_s3), tmp_path / "logs")
        try:
            watch = kids.ckptsync(*watch_args(ckpt, remote, state, "--workers", "2", "--max-memory", "8M"))
            wait_until(lambda: _puts(proxy, "/chunks/"), 30, "a first chunk PUT")
            shutil.rmtree(first)  # the trainer's rotation, mid-upload
            wait_until(lambda: "checkpoint-1" in committed_names(rclone_s3, bucket, "job"), 30, "checkpoint-1 committed")
            assert watch.alive(), watch.stderr()

            write_checkpoint(ckpt, "checkpoint-2", {"w.bin": os.urandom(200_000)}, step=2)
            wait_until(lambda: "checkpoint-2" in committed_names(rclone_s3, bucket, "job"), 20, "checkpoint-2 committed")
            watch.signal(signal.SIGTERM)
            assert watch.wait(20) == 0, watch.stderr()
        finally:
            kids.close()
    err = watch.stderr()
    assert committed_names(rclone_s3, bucket, "job") == {"checkpoint-1", "checkpoint-2"}
    assert "rotated away" not in err and "upload of checkpoint-1 failed" not in err, err
    assert no_traceback(err), err
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".ckptsync-snapshot-")]  # released after the commit
    out = tmp_path / "out"
    restored = ckptsync(rclone_s3, "restore", "--remote", remote, "--dir", str(out), "--name", "checkpoint-1")
    assert restored.returncode == 0 and tree(out / "checkpoint-1") == content, restored.stderr


def test_temporary_folder_renamed_into_place_is_committed_once_under_its_final_name(rclone_s3, bucket, kids, tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    watch = kids.ckptsync(*watch_args(ckpt, f"s3://{bucket}/job", state))
    wait_until(lambda: _watching(state, watch.pid), 15, "the daemon watching")

    write_checkpoint(ckpt, "tmp-checkpoint-7", {"model.bin": os.urandom(500_000), "opt/state.bin": os.urandom(300_000)}, step=7)
    written = time.time()
    # long enough for a complete folder with a marker to settle (0.5 s) and be picked up, had the name not been skipped
    doc = wait_until(
        lambda: (d := read_status(state)) and datetime.fromisoformat(d["updated"].replace("Z", "+00:00")).timestamp() > written + 2 and d,
        10,
        "a status written 2 s after the temporary folder was complete",
    )
    assert "tmp-checkpoint-7" not in json.dumps(doc), doc
    assert committed_names(rclone_s3, bucket, "job") == set()

    os.rename(ckpt / "tmp-checkpoint-7", ckpt / "checkpoint-7")
    wait_until(lambda: "checkpoint-7" in committed_names(rclone_s3, bucket, "job"), 20, "checkpoint-7 committed")
    # a later checkpoint committed too: the daemon has handled every event of the rename by now
    write_checkpoint(ckpt, "checkpoint-8", {"model.bin": os.urandom(100_000)}, step=8)
    wait_until(lambda: "checkpoint-8" in committed_names(rclone_s3, bucket, "job"), 20, "checkpoint-8 committed")
    watch.signal(signal.SIGTERM)
    assert watch.wait(20) == 0, watch.stderr()

    assert len(manifest_keys(rclone_s3, bucket, "job", "checkpoint-7")) == 1
    assert committed_names(rclone_s3, bucket, "job") == {"checkpoint-7", "checkpoint-8"}
    assert not [k for k in object_keys(rclone_s3, bucket, "job/") if "tmp-" in k]
    assert [r["name"] for r in list_json(rclone_s3, f"s3://{bucket}/job")] == ["checkpoint-8", "checkpoint-7"]
    assert "tmp-checkpoint-7" not in watch.stderr(), [line for line in watch.stderr().splitlines() if "tmp-checkpoint-7" in line]


def test_status_shows_watching_and_the_last_commit(rclone_s3, bucket, kids, tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    watch = kids.ckptsync(*watch_args(ckpt, f"s3://{bucket}/job", state))
    wait_until(lambda: _watching(state, watch.pid), 15, "a status file")

    def status() -> dict:
        p = ckptsync(rclone_s3, "status", "--state-dir", str(state), "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    doc = status()
    assert doc["state"] == "watching" and doc["running"] is True and doc["pid"] == watch.pid
    assert doc["last_commit"] is None

    write_checkpoint(ckpt, "checkpoint-3", {"model.bin": os.urandom(200_000)}, step=3)
    wait_until(lambda: (d := read_status(state)) and d.get("last_commit"), 20, "a last commit in the status file")
    doc = status()
    assert doc["state"] == "watching" and doc["running"] is True
    assert doc["last_commit"]["name"] == "checkpoint-3" and doc["last_commit"]["step"] == 3
    assert doc["committed"] == 1

    watch.signal(signal.SIGTERM)
    assert watch.wait(20) == 0, watch.stderr()
    doc = status()
    assert doc["state"] == "stopped" and doc["running"] is False


# --------------------------------------------------------------------------- systemd notify


class _NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET; messages are collected by a thread."""

    def __init__(self, folder: Path) -> None:
        path = folder / "notify.sock"
        if len(os.fsencode(path)) > 100:  # sun_path holds 108 bytes
            path = Path(tempfile.mkdtemp(prefix="ckn-")) / "n.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def first(self, field: str, after: float = 0.0) -> float | None:
        """When the first message carrying ``field`` (e.g. ``READY=1``) arrived after ``after``."""
        return next((t for t, m in list(self.messages) if t >= after and field in m.split("\n")), None)

    def times(self, field: str) -> list[float]:
        return [t for t, m in list(self.messages) if field in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if self.path.exists():
            self.path.unlink()


@pytest.fixture
def notify(tmp_path):
    s = _NotifySocket(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_watch_tells_systemd_ready_watchdog_and_stopping(bucket, kids, tmp_path, notify):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    watch = kids.ckptsync(*watch_args(ckpt, f"s3://{bucket}/job", state), env=env)
    ready = wait_until(lambda: notify.first("READY=1"), 15, "READY=1")
    wait_until(lambda: notify.first("WATCHDOG=1", after=ready), 5, "WATCHDOG=1 after READY=1")
    assert notify.first("STOPPING=1") is None

    watch.signal(signal.SIGTERM)
    wait_until(lambda: notify.first("STOPPING=1", after=ready), 10, "STOPPING=1")
    assert watch.wait(20) == 0, watch.stderr()
    assert not notify.times("WATCHDOG=1") or min(notify.times("WATCHDOG=1")) >= ready, "WATCHDOG=1 before READY=1"


# --------------------------------------------------------------------------- spot notices


SPOT_POLL_INTERVAL = 1.0  # --spot-interval (default 5 s)


def test_spot_notice_is_logged_within_one_poll_interval(bucket, kids, tmp_path):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    with FakeImds() as imds:
        watch = kids.ckptsync(
            *watch_args(
                ckpt,
                f"s3://{bucket}/job",
                state,
                "--spot-notice",
                "--imds-endpoint",
                imds.endpoint,
                "--spot-interval",
                str(SPOT_POLL_INTERVAL),
            )
        )
        wait_until(lambda: imds.authorized_gets >= 1, 15, "a first IMDSv2 poll with the token")
        imds.notice = json.dumps({"action": "terminate", "time": "2030-01-01T00:02:00Z"})
        flipped = time.monotonic()
        watch.wait_stderr("spot interruption notice received", SPOT_POLL_INTERVAL + 3)
        took = time.monotonic() - flipped
        assert took <= SPOT_POLL_INTERVAL + 2, took
        assert watch.alive(), watch.stderr()
        wait_until(lambda: (d := read_status(state)) and d.get("spot_notice"), 5, "the notice in the status file")
        assert json.loads(read_status(state)["spot_notice"])["action"] == "terminate"
        watch.signal(signal.SIGTERM)
        assert watch.wait(20) == 0, watch.stderr()
        assert imds.unauthorized_gets == 0
        assert no_traceback(watch.stderr()), watch.stderr()


# --------------------------------------------------------------------------- systemd watchdog period


def test_watchdog_pings_come_more_often_than_watchdog_usec(bucket, kids, tmp_path, notify):
    """systemd kills a service whose pings are WATCHDOG_USEC apart; sd_watchdog_enabled(3) says ping at half of it."""
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    watch = kids.ckptsync(*watch_args(ckpt, f"s3://{bucket}/job", state), env=env)
    wait_until(lambda: len(notify.times("WATCHDOG=1")) >= 3, 15, "3 WATCHDOG=1 pings")
    watch.signal(signal.SIGTERM)
    assert watch.wait(20) == 0, watch.stderr()
    pings = notify.times("WATCHDOG=1")
    gaps = [round(b - a, 3) for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 1.0, f"gaps between WATCHDOG=1 pings with WATCHDOG_USEC=1000000: {gaps} s"
