"""``ckptsync run -- CMD``: restore, watch while CMD runs, forward signals, drain on exit.

Meant as a container ENTRYPOINT, so it behaves as PID 1 should: explicit
handlers for SIGTERM, SIGINT and SIGHUP forward the signal to the child's
process group (SageMaker's own toolkit is known not to forward SIGTERM), and
when running as PID 1 every orphaned descendant is reaped. When CMD exits, the
daemon drains — nothing writes any more, so complete checkpoints need no
settling — and ``run`` exits with CMD's status (128+N for a signal N).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from .executor import child_environment
from .status import DaemonReport

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Supervisor:
    """Runs one child command beside a daemon."""

    def __init__(self, cmd: Sequence[str], daemon: Daemon, *, drain_timeout: float, env: Mapping[str, str] | None = None) -> None:
        self.cmd = list(cmd)
        #: Variables the child gets on top of this process's environment (what it needs to find the sidecar).
        self.env = dict(env or {})
        self.daemon = daemon
        self.drain_timeout = drain_timeout
        self.child: subprocess.Popen[bytes] | None = None
        self.first_signal_at: float | None = None
        self.signals: list[int] = []
        self._child_done = threading.Event()
        self._pid1 = os.getpid() == 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        if self.first_signal_at is None:
            self.first_signal_at = time.monotonic()
        if self._child_done.is_set():
            # The child is gone and we are draining: a signal now means "stop at once".
            log.warning("%s during drain: stopping now", signal.Signals(signum).name)
            self.daemon.abort()
            return
        child = self.child
        if child is not None:
            try:
                os.killpg(child.pid, signum)
                log.info("forwarded %s to %s", signal.Signals(signum).name, self.cmd[0])
            except ProcessLookupError:
                pass

    def run(self) -> tuple[int, DaemonReport]:
        """Start the child, wait for it, drain; return (exit status, daemon report)."""
        previous = {s: signal.signal(s, self._handle) for s in FORWARDED}
        try:
            try:
                self.child = subprocess.Popen(
                    self.cmd, env={**child_environment(), **self.env}, start_new_session=True, preexec_fn=_die_with_parent
                )
            except OSError as exc:
                self.daemon.drain(deadline=time.monotonic(), reason="command did not start")
                self.daemon.wait()
                raise _StartError(f"cannot run {self.cmd[0]!r}: {exc.strerror or exc}") from None
            status = self._wait_child()
            self._child_done.set()
            code = _exit_code(status)
            log.info("%s exited with status %d; draining", self.cmd[0], code)
            start = self.first_signal_at if self.first_signal_at is not None else time.monotonic()
            self.daemon.drain(deadline=start + self.drain_timeout, writers_gone=True, reason="command exited")
            reaper = self._start_reaper() if self._pid1 else None
            report = self.daemon.wait()
            if reaper is not None:
                reaper.set()
            return code, report
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _wait_child(self) -> int:
        assert self.child is not None
        pid = self.child.pid
        while True:
            try:
                # As PID 1, orphans are reparented to us: reap them along the way.
                got, status = os.waitpid(-1 if self._pid1 else pid, 0)
            except ChildProcessError:
                return 0
            if got == pid:
                self.child.returncode = _exit_code(status)
                return status

    def _start_reaper(self) -> threading.Event:
        stop = threading.Event()

        def reap() -> None:
            while not stop.wait(0.5):
                try:
                    while os.waitpid(-1, os.WNOHANG)[0] > 0:
                        pass
                except ChildProcessError:
                    pass

        threading.Thread(target=reap, name="ckptsync-reaper", daemon=True).start()
        return stop


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be killed if ``run`` dies (even by SIGKILL), never left writing unsynced."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _StartError(Exception):
    pass


StartError = _StartError


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def flush_and_exit(code: int) -> None:
    """Exit now, without waiting for worker threads that may still be stuck on the network."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        logging.shutdown()
        os._exit(code)
