"""Reliability scenario 29: an S3 endpoint that accepts connections and never answers.

Each command (``list``, ``push``, ``restore --latest``) must fail within about one retry budget
(``--retry-budget``), not one budget per request, with a one-line error and a hint, and log its
first retry at INFO. The CLI runs as a subprocess with a small budget to keep the test short.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.scenarios import record
from tests.helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BUDGET = 8.0  # seconds, --retry-budget (the default is 90)
SLACK = 5.0  # for starting Python and botocore on a busy machine
SECRET = "silent-server-secret-key-123456"


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: each is held open, unread, until :meth:`close`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # the accept loop looks at the stop event this often
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_a_server_that_never_answers_fails_each_command_within_the_retry_budget(silent_server: SilentServer, tmp_path: Path) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLESILENT123",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "CKPTSYNC_RETRY_BUDGET": f"{BUDGET:g}",
    }
    ckpt = tmp_path / "ckpts" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    (ckpt / "model.bin").write_bytes(os.urandom(1000))
    remote = ["--remote", "s3://bucket/prefix", "--endpoint-url", f"http://127.0.0.1:{silent_server.port}"]
    commands = {
        "list": ["list"],
        "push": ["push", "--dir", str(ckpt.parent)],
        "restore": ["restore", "--latest", "--dir", str(tmp_path / "restored")],
    }
    bound = BUDGET * 1.5 + SLACK
    runs = {}
    for name, args in commands.items():
        started = time.monotonic()
        try:
            p = run_cli(*args, *remote, env=env, timeout=bound + 60)
        except subprocess.TimeoutExpired as exc:  # killed; as before the fix, when each command took minutes
            p = subprocess.CompletedProcess(exc.cmd, -9, str(exc.stdout or ""), str(exc.stderr or ""))
        runs[name] = (p, time.monotonic() - started)

    def meets(p: subprocess.CompletedProcess[str], elapsed: float) -> bool:
        lines = p.stderr.splitlines()
        return (
            p.returncode == 1
            and elapsed <= bound
            and len(lines) >= 2
            and lines[-2].startswith("ckptsync: error: ")
            and lines[-1].startswith("ckptsync: hint: ")
            and sum(line.startswith("ckptsync: error") for line in lines) == 1
            and "Traceback" not in p.stderr
            and any(re.search(r" INFO .* failed \(attempt 1 of at most 6: .*\); retrying in ", line) for line in lines)
        )

    ok = all(meets(p, elapsed) for p, elapsed in runs.values())
    times = "/".join(f"{elapsed:.1f}" for _, elapsed in runs.values())
    record(
        29,
        "silent server",
        len(runs),
        f"list/push/restore failed after {times} s (budget {BUDGET:g} s), one-line error with hint; first retry logged at INFO",
        ok,
    )
    for name, (p, elapsed) in runs.items():
        lines = p.stderr.splitlines()
        assert p.returncode == 1, (name, p.stderr)
        assert elapsed <= bound, (name, elapsed, p.stderr)
        assert "Traceback" not in p.stderr and SECRET not in p.stderr + p.stdout, (name, p.stderr)
        errors = [line for line in lines if line.startswith("ckptsync: error")]
        assert len(errors) == 1 and lines[-2] == errors[0], (name, p.stderr)
        assert f"http://127.0.0.1:{silent_server.port} accepted the connection but sent nothing" in errors[0], (name, errors[0])
        assert f"(retry budget {BUDGET:g} s)" in errors[0], (name, errors[0])
        assert lines[-1].startswith("ckptsync: hint: check that --endpoint-url points at an S3 server"), (name, p.stderr)
        info = [line for line in lines if re.search(r" INFO .* failed \(attempt 1 of at most 6: .*\); retrying in ", line)]
        assert info, (name, p.stderr)
        assert f"of the {BUDGET:g} s retry budget left" in info[0], (name, info[0])
    assert silent_server.connections  # the commands did reach it
