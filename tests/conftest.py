"""Fixtures for every test: no leaked threads or processes; real S3-compatible servers (see tests/s3servers.py).

* every test fails if it leaves a thread or a child process running (``no_leaks``, automatic);
* ``seaweedfs``, ``rclone_s3``, ``moto_s3``: one server each, started on first use, stopped at session end;
* ``s3_server``: parametrized over the three (ids ``seaweedfs``, ``rclone``, ``moto``);
* ``s3_remote``: a fresh bucket on ``s3_server`` as ``s3://<bucket>/ckpts``, with the process environment
  pointed at that server for the duration of the test.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import use_env
from tests.s3servers import S3Server, start_moto, start_rclone, start_seaweedfs

#: How long a test's threads and processes get to end after its teardown before they count as leaked, in seconds
#: (``CKPTSYNC_TEST_LEAK_GRACE`` if set: the test of this fixture, tests/pipeline/test_no_leaks.py, makes it short).
LEAK_GRACE = float(os.environ.get("CKPTSYNC_TEST_LEAK_GRACE", "5"))
# Threads and processes of the session's servers: they outlive every test on purpose.
_session_threads: set[int] = set()
_session_pids: set[int] = set()


def _children() -> set[int]:
    """Live (not zombie) child processes of this process.

    Each thread's ``children`` file names the processes it started (one small read a thread); where the
    kernel has none, every process's parent is read from ``/proc``.
    """
    me = os.getpid()
    try:
        pids = {int(p) for task in os.listdir("/proc/self/task") for p in _read(f"/proc/self/task/{task}/children", strict=True).split()}
    except FileNotFoundError:
        pids = {int(e) for e in os.listdir("/proc") if e.isdigit()}
    out = set()
    for pid in pids:
        fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == me and fields[0] != "Z":
            out.add(pid)
    return out


def _read(path: str, *, strict: bool = False) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        if strict and not os.path.exists(os.path.dirname(path)):
            return ""  # the thread ended meanwhile
        if strict:
            raise
        return ""
    except OSError:
        return ""


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None and t.is_alive()}


@contextlib.contextmanager
def _session_resources() -> Iterator[None]:
    """Remember what starting a session server starts, so that no test is blamed for it."""
    threads, pids = _threads(), _children()
    try:
        yield
    finally:
        _session_threads.update(_threads() - threads)
        _session_pids.update(_children() - pids)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if a thread or a child process it started is still running after its teardown."""
    threads, pids = _threads(), _children()
    yield
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        new_threads = _threads() - threads - _session_threads
        new_pids = _children() - pids - _session_pids
        if not (new_threads or new_pids) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    names = sorted(t.name for t in threading.enumerate() if t.ident in new_threads)
    if new_threads or new_pids:
        pytest.fail(f"the test leaked {len(new_threads)} thread(s) {names} and {len(new_pids)} child process(es) {sorted(new_pids)}")


_FIXTURE_FOR = {"seaweedfs": "seaweedfs", "rclone": "rclone_s3", "moto": "moto_s3"}


def _session_server(start: Callable[[], tuple[S3Server, Callable[[], None]]]) -> Iterator[S3Server]:
    """A server for the whole session, stopped at its end; what starting it starts is not blamed on a test."""
    with _session_resources():
        server, stop = start()
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from _session_server(lambda: start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")))


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from _session_server(lambda: start_rclone(tmp_path_factory.mktemp("rclone")))


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    yield from _session_server(start_moto)


@pytest.fixture(scope="session", params=list(_FIXTURE_FOR), ids=list(_FIXTURE_FOR))
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue(_FIXTURE_FOR[request.param])


@pytest.fixture
def s3_remote(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    # nothing of the host's AWS or ckptsync settings (profile, session token, endpoint overrides) may leak in
    use_env(monkeypatch, server=s3_server)
    return f"s3://{s3_server.create_bucket()}/ckpts"
