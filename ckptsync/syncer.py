"""``ckptsync.Syncer``: the daemon in a background thread of the training script itself."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .daemon import Daemon
from .errors import UsageError
from .options import DAEMON, WATCH_TIMINGS, resolve
from .session import UploadResult
from .status import DaemonReport, Status
from .waiting import WaitResult


class Syncer:
    """Upload every complete checkpoint written into ``dir`` while the ``with`` block runs.

    On exit, everything complete is committed (the script wrote its last checkpoint,
    so nothing needs to settle any more) within ``drain_timeout`` seconds::

        with ckptsync.Syncer("/opt/ml/checkpoints", "s3://bucket/run-1", keep_last=3):
            train()

    Keyword options are those of ``ckptsync watch``, with ``_`` for ``-``
    (``settle``, ``drain_timeout``, ``keep_last``, ``metric``, ``grace``,
    ``endpoint_url``, ``workers``, ``bwlimit``, ``nice``, ``retries``,
    ``state_dir``, ``config``, ...), resolved like flags: above ``CKPTSYNC_*``
    variables, the config file and SageMaker's environment; logging is the
    application's to configure. ``on_commit`` is called with each new commit,
    from the upload thread.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        remote: str,
        *,
        on_commit: Callable[[UploadResult], None] | None = None,
        **options: Any,
    ) -> None:
        accepted = {*DAEMON, "config"}
        unknown = set(options) - accepted - set(WATCH_TIMINGS)
        if unknown:
            raise UsageError(f"unknown Syncer option(s): {', '.join(sorted(unknown))}", "use the options of 'ckptsync watch'")
        given = {k: v for k, v in options.items() if k in accepted}
        timings = {k: float(v) for k, v in options.items() if k in WATCH_TIMINGS}
        self.settings = resolve(DAEMON, {**given, "dir": dir, "remote": remote}, command="watch", given_as="argument")
        self.dir = Path(self.settings["dir"])
        self.remote = self.settings.remote()
        self.options = self.settings.options()
        self.watch = self.settings.watch(**timings)
        self.state_dir: Path | None = self.settings["state_dir"]
        self.on_commit = on_commit
        self.daemon: Daemon | None = None
        self.report: DaemonReport | None = None

    def start(self) -> Syncer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon.open(self.dir, self.remote, self.options, self.watch, state_dir=self.state_dir, on_commit=self.on_commit)
        self.daemon.start()
        return self

    def status(self) -> Status:
        """The daemon's status (what ``ckptsync status`` shows)."""
        if self.daemon is None:
            raise UsageError("the Syncer is not started")
        return self.daemon.status()

    def wait(self, name: str | None = None, timeout: float | None = None, *, poll: float = 0.5) -> WaitResult:
        """Block until checkpoint ``name`` (default: the newest in ``dir``) is committed with the content
        on disk, or ``timeout`` seconds pass; see :func:`ckptsync.wait`. The result says which."""
        from .waiting import wait as _wait

        d = self.daemon
        if d is None:
            raise UsageError("the Syncer is not started")
        o = self.options
        return _wait(
            self.dir.absolute(),
            d.repo,
            name=name,
            timeout=timeout,
            poll=poll,
            state=lambda: d.state,
            status=d.status,
            host=o.host or "",
            hosts=tuple(o.hosts),
        )

    def stop(self, timeout: float | None = None) -> DaemonReport:
        """Commit everything complete (within ``timeout``, default ``drain_timeout``), then stop."""
        if self.daemon is None:
            raise UsageError("the Syncer is not started")
        limit = self.watch.drain_timeout if timeout is None else timeout
        self.daemon.drain(deadline=time.monotonic() + limit, writers_gone=True, reason="Syncer stopped")
        self.report = self.daemon.wait()
        self.daemon.repo.close()
        return self.report

    def __enter__(self) -> Syncer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        if self.daemon is not None and not self.daemon.stopped:
            self.stop()
