"""Helpers for the sidecar tests: ``ckptsync watch``/``run`` as child processes against a local S3 server.

Nothing here sleeps to synchronise: every wait is a poll of an observable condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import ONE_BLAS_THREAD, run_cli, start_python, wait_until

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "train.py"


def ckptsync(server: Any, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ckptsync ARGS`` to completion, with the server's environment."""
    return run_cli(*args, env=env, server=server, timeout=timeout)


def list_json(server: Any, remote: str) -> list[dict[str, Any]]:
    p = ckptsync(server, "list", "--remote", remote, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# --------------------------------------------------------------------------- the remote, read directly


def object_keys(server: Any, bucket: str, prefix: str) -> list[str]:
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", ()))
    return keys


def manifest_keys(server: Any, bucket: str, prefix: str, name: str | None = None) -> list[str]:
    """Keys of the committed manifests under ``prefix`` (of checkpoint ``name`` only, if given)."""
    sub = f"{prefix}/manifests/" + (f"{name}/" if name is not None else "")
    return [k for k in object_keys(server, bucket, sub) if k.endswith(".json")]


def committed_names(server: Any, bucket: str, prefix: str) -> set[str]:
    return {k.split("/")[-2] for k in manifest_keys(server, bucket, prefix)}


def read_manifest(server: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def chunk_keys_of(prefix: str, manifest: dict[str, Any]) -> set[str]:
    """The chunk object keys a manifest names."""
    return {f"{prefix}/chunks/{c['hash'][:2]}/{c['hash']}.{c['codec']}" for f in manifest["files"] for c in f["chunks"]}


# --------------------------------------------------------------------------- local checkpoints


def write_checkpoint(root: Path, name: str, files: dict[str, bytes], *, step: int | None = None, marker: bool = True) -> Path:
    """A checkpoint folder with ``files``, and the ``ckptsync.json`` marker last (if ``marker``)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if marker:
        (d / "ckptsync.json").write_text(json.dumps({"step": step, "metrics": {"loss": 0.5}}))
    return d


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --------------------------------------------------------------------------- child processes


@dataclass
class Line:
    at: float  # time.monotonic() when it was read
    text: str


@dataclass
class Child:
    """A child process whose stdout is read line by line (timestamped) by a thread and whose stderr goes to a file."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    lines: list[Line] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False

    @classmethod
    def start(cls, args: list[str], server: Any, logdir: Path, name: str, env: dict[str, str] | None = None) -> Child:
        """``python ARGS`` with the server's environment (and ``env``), numpy in the trainer on one thread."""
        logdir.mkdir(parents=True, exist_ok=True)
        err = logdir / f"{name}.stderr"
        with open(err, "w") as errf:
            proc = start_python(
                *args,
                env={**ONE_BLAS_THREAD, **(env or {})},
                server=server,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errf,
                bufsize=1,
            )
        child = cls(proc, err)
        threading.Thread(target=child._pump, name=f"pump-{name}", daemon=True).start()
        return child

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(Line(time.monotonic(), raw.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout_lines(self) -> list[str]:
        with self._cond:
            return [ln.text for ln in self.lines]

    def wait_line(self, predicate: Callable[[str], bool], timeout: float, what: str = "") -> Line:
        """The first stdout line (read so far or to come) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ln in self.lines:
                    if predicate(ln.text):
                        return ln
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(
                        f"no stdout line {what!r} ({'EOF' if self._eof else 'timeout'}); stdout so far: "
                        f"{[ln.text for ln in self.lines][-20:]}\nstderr:\n{self.stderr()[-3000:]}"
                    )
                self._cond.wait(min(left, 0.5))

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_stderr(self, needle: str, timeout: float) -> str:
        """The stderr so far, once it contains ``needle``."""

        def found() -> str | None:
            text = self.stderr()
            return text if needle in text else None

        return wait_until(found, timeout, f"{needle!r} on stderr")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pid {self.pid} still running after {timeout}s; stderr:\n{self.stderr()[-3000:]}") from None

    def stop(self) -> None:
        """Cleanup: SIGKILL it if still running, and its descendants (``run`` starts CMD in a session of its own,
        which would outlive it), then reap."""
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()


class Children:
    """Every child a test started; ``close()`` kills whatever is still running (use in ``finally``)."""

    def __init__(self, server: Any, logdir: Path) -> None:
        self.server = server
        self.logdir = logdir
        self.started: list[Child] = []

    def ckptsync(self, *args: str, env: dict[str, str] | None = None, name: str | None = None, server: Any = None) -> Child:
        name = name or f"{args[0]}-{len(self.started)}"
        child = Child.start(["-m", "ckptsync", *args], server or self.server, self.logdir, name, env)
        self.started.append(child)
        return child

    def python(self, code: str, *args: str, name: str) -> Child:
        child = Child.start(["-c", code, *args], self.server, self.logdir, name)
        self.started.append(child)
        return child

    def close(self) -> None:
        for c in reversed(self.started):
            c.stop()


def watch_args(folder: Path, remote: str, state_dir: Path, *extra: str, settle: float = 0.5) -> list[str]:
    """``watch`` of ``folder`` to ``remote``, its status in ``state_dir``, with ``extra`` options."""
    return ["watch", "--dir", str(folder), "--remote", remote, "--state-dir", str(state_dir), "--settle", str(settle), *extra]


def run_args(folder: Path, remote: str, state_dir: Path, command: list[str], *extra: str, settle: float = 0.5) -> list[str]:
    """``run`` of ``command`` with ``extra`` options, syncing ``folder`` to ``remote``, its status in ``state_dir``."""
    return ["run", "--dir", str(folder), "--remote", remote, "--state-dir", str(state_dir), "--settle", str(settle), *extra, "--", *command]


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and "internal error" not in text


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids: list[int] = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                kids += [int(x) for x in (task / "children").read_text().split()]
        out += kids
        todo += kids
    return out


SIGTERM = signal.SIGTERM
