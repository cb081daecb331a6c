"""tests/unit holds pure tests: a test here that starts a thread, a process or a server fails at once.

Tests of anything that runs threads (push, restore, the daemon, the thread pools) or talks to a server
live in tests/pipeline, tests/store, tests/integration and tests/faults.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest


def _refuse(what: str):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a unit test must not {what}: move it to tests/pipeline or tests/integration")

    return refuse


@pytest.fixture(autouse=True)
def pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(threading.Thread, "start", _refuse("start a thread"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(socket.socket, "listen", _refuse("start a server"))
    yield
