"""The daemon in-process on a file:// remote: what it commits, in which order, and how it stops."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import ckptsync
from ckptsync import snapshot
from ckptsync.daemon import Daemon
from ckptsync.errors import StoreError
from ckptsync.options import Options, WatchOptions
from ckptsync.repository import Repository
from ckptsync.state import State
from ckptsync.store import LocalStore, RetryingStore, RetryPolicy
from tests.helpers import make_hf_checkpoint, tree, wait_until

FAST = WatchOptions(settle=0.3, drain_timeout=10, tick=0.05, status_interval=0.1, retry_initial=0.1, retry_max=0.5)


class Env:
    def __init__(self, tmp_path: Path, wrap=None, watch: WatchOptions = FAST):
        self.folder = tmp_path / "ckpts"
        self.folder.mkdir()
        self.root = tmp_path / "remote"
        self.root.mkdir()
        self.remote = f"file://{self.root}"
        self.state = State(tmp_path / "state")
        inner = LocalStore(self.root)
        self.store = wrap(inner) if wrap else inner
        repo = Repository(RetryingStore(self.store, RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02)))
        self.daemon = Daemon(self.folder, repo, Options(workers=2), watch, state=self.state)

    def names(self):
        return [r.name for r in ckptsync.list_checkpoints(self.remote)]

    def stop(self):
        if not self.daemon.stopped:
            self.daemon.drain(deadline=time.monotonic() + 5)
        return self.daemon.wait(20)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.stop()


def write_marked(folder: Path, name: str, step: int, size: int = 1 << 16) -> Path:
    d = folder / f"tmp-{name}"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(size))
    (d / "ckptsync.json").write_text(f'{{"step": {step}}}')
    os.rename(d, folder / name)
    return folder / name


def test_existing_checkpoints_are_committed_at_start_and_new_ones_as_they_appear(env):
    make_hf_checkpoint(env.folder, 10, 0.5, params=1 << 12)
    env.daemon.start()
    wait_until(lambda: env.names() == ["checkpoint-10"], message="first commit")
    write_marked(env.folder, "checkpoint-20", 20)
    wait_until(lambda: env.names() == ["checkpoint-20", "checkpoint-10"], message="second commit")
    report = env.stop()
    assert report.committed == ["checkpoint-10", "checkpoint-20"] and report.unsynced == []


def test_incomplete_hf_folder_is_never_committed_until_trainer_state_appears(env):
    env.daemon.start()
    d = env.folder / "checkpoint-5"
    d.mkdir()
    (d / "model.safetensors").write_bytes(os.urandom(1000))
    (d / "optimizer.pt").write_bytes(os.urandom(1000))
    wait_until(lambda: env.daemon.status().pending.get("checkpoint-5") == "waiting for trainer_state.json")
    assert env.names() == []
    (d / "trainer_state.json").write_text('{"global_step": 5}')
    wait_until(lambda: env.names() == ["checkpoint-5"])


def test_temporary_folder_is_committed_once_under_its_final_name(env):
    env.daemon.start()
    d = env.folder / "tmp-checkpoint-7"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(5000))
    (d / "ckptsync.json").write_text('{"step": 7}')
    os.rename(d, env.folder / "checkpoint-7")
    wait_until(lambda: env.names() == ["checkpoint-7"])
    env.stop()
    manifests = list((env.root / "manifests").rglob("*.json"))
    assert [p.parent.name for p in manifests] == ["checkpoint-7"]


def test_newest_complete_checkpoint_goes_first(env):
    for step in (1, 3, 2):
        write_marked(env.folder, f"checkpoint-{step}", step)
    env.daemon.start()
    wait_until(lambda: len(env.names()) == 3)
    assert env.stop().committed == ["checkpoint-3", "checkpoint-2", "checkpoint-1"]


def test_restart_recognises_committed_checkpoints_from_the_state_without_reading_them(tmp_path):
    first = Env(tmp_path)
    write_marked(first.folder, "checkpoint-1", 1)
    first.daemon.start()
    wait_until(lambda: first.names() == ["checkpoint-1"])
    first.stop()
    opened = []
    real_open = os.open

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    repo = Repository(LocalStore(first.root))
    again = Daemon(first.folder, repo, Options(workers=2), FAST, state=State(tmp_path / "state"))
    os.open = spy
    try:
        again.start()
        wait_until(lambda: again.status().pending == {} and again.status().queue == [] and again.status().in_flight is None)
        again.drain(deadline=time.monotonic() + 5)
        report = again.wait(10)
    finally:
        os.open = real_open
    assert report.committed == []
    assert not [p for p in opened if p.endswith("weights.bin")]


class FailingPuts:
    """A store whose chunk puts fail with a transient error while ``failing`` is set."""

    def __init__(self, inner):
        self.inner = inner
        self.url, self.conditional_writes = inner.url, True
        self.failing = threading.Event()
        self.failing.set()
        self.failures = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data):
        if self.failing.is_set():
            self.failures += 1
            raise StoreError("503 SlowDown", transient=True)
        self.inner.put(key, data)


def test_transient_remote_errors_are_retried_later_and_the_daemon_keeps_running(tmp_path):
    e = Env(tmp_path, wrap=FailingPuts)
    write_marked(e.folder, "checkpoint-1", 1)
    e.daemon.start()
    wait_until(lambda: e.daemon.report.failures >= 2, message="two failed upload attempts")
    assert not e.daemon.stopped and e.names() == []
    assert "checkpoint-1: 503 SlowDown" in e.daemon.status().errors[-1]
    e.store.failing.clear()
    wait_until(lambda: e.names() == ["checkpoint-1"], message="commit after recovery")
    report = e.stop()
    assert report.failures >= 2 and report.committed == ["checkpoint-1"]


class SlowPuts:
    """Chunk puts wait for ``gate``; ``started`` is set at the first one."""

    def __init__(self, inner):
        self.inner = inner
        self.url, self.conditional_writes = inner.url, True
        self.started = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data):
        self.started.set()
        self.gate.wait(10)
        self.inner.put(key, data)


def test_checkpoint_deleted_during_upload_is_committed_whole_from_its_snapshot(tmp_path):
    e = Env(tmp_path, wrap=SlowPuts)
    victim = write_marked(e.folder, "checkpoint-1", 1, size=3 << 20)
    e.daemon.start()
    assert e.store.started.wait(10)
    shutil.rmtree(victim)  # the trainer's rotation (save_total_limit) while the upload runs
    e.store.gate.set()
    wait_until(lambda: e.names() == ["checkpoint-1"])
    write_marked(e.folder, "checkpoint-2", 2)
    wait_until(lambda: sorted(e.names()) == ["checkpoint-1", "checkpoint-2"])
    report = e.stop()
    assert report.committed == ["checkpoint-1", "checkpoint-2"] and report.failures == 0


def test_without_hard_links_a_checkpoint_deleted_during_upload_is_dropped_and_others_continue(tmp_path, monkeypatch):
    def no_links(src, dst, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(snapshot, "_link", no_links)
    e = Env(tmp_path, wrap=SlowPuts)
    victim = write_marked(e.folder, "checkpoint-1", 1, size=3 << 20)
    e.daemon.start()
    assert e.store.started.wait(10)
    shutil.rmtree(victim)
    e.store.gate.set()
    wait_until(lambda: "checkpoint-1" not in e.daemon.status().pending and e.daemon.status().in_flight is None)
    write_marked(e.folder, "checkpoint-2", 2)
    wait_until(lambda: e.names() == ["checkpoint-2"])
    report = e.stop()
    assert report.committed == ["checkpoint-2"] and report.failures == 0


def test_drain_deadline_cancels_the_upload_in_flight_and_commits_nothing_partial(tmp_path):
    e = Env(tmp_path, wrap=SlowPuts)
    write_marked(e.folder, "checkpoint-1", 1, size=6 << 20)
    e.daemon.start()
    assert e.store.started.wait(10)
    started = time.monotonic()
    e.daemon.drain(deadline=time.monotonic() + 0.3)
    e.store.gate.set()  # let the stuck put return so the cancel is observed between chunks
    report = e.daemon.wait(20)
    assert time.monotonic() - started < 5
    assert e.names() == [] or e.names() == ["checkpoint-1"]  # committed whole, or not at all
    if e.names() == []:
        assert report.unsynced and report.unsynced[0][0] == "checkpoint-1"


def test_drain_after_writers_exit_commits_complete_checkpoints_without_settling(tmp_path):
    e = Env(tmp_path, watch=WatchOptions(settle=3600, drain_timeout=10, tick=0.05))
    e.daemon.start()
    write_marked(e.folder, "checkpoint-4", 4)
    d = e.folder / "checkpoint-5"  # an HF folder cut short: never complete
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"partial")
    e.daemon.drain(deadline=time.monotonic() + 10, writers_gone=True)
    report = e.daemon.wait(20)
    assert report.committed == ["checkpoint-4"]
    assert e.names() == ["checkpoint-4"]


def test_status_reports_state_queue_and_last_commit(env):
    write_marked(env.folder, "checkpoint-1", 1)
    env.daemon.start()
    wait_until(lambda: env.names() == ["checkpoint-1"])
    wait_until(lambda: env.daemon.status().last_commit is not None and env.daemon.status().last_commit.name == "checkpoint-1")
    st = env.daemon.status()
    assert st.state == "watching" and st.committed == 1 and st.lag_seconds == 0.0
    wait_until(lambda: (env.state.folder / "status.json").exists())


def test_restore_then_daemon_does_not_upload_the_restored_checkpoint_again(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_hf_checkpoint(src, 3, 0.5, params=1 << 12)
    e = Env(tmp_path)
    ckptsync.push(src, e.remote)
    result = ckptsync.restore(e.remote, e.folder)
    assert tree(result.path) == tree(src / "checkpoint-3")
    e.daemon.start()
    wait_until(lambda: e.daemon.status().pending == {} and e.daemon.status().in_flight is None and e.daemon.status().queue == [])
    report = e.stop()
    assert report.committed == [] and len(ckptsync.list_checkpoints(e.remote)) == 1
