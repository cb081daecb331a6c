"""``ckptsync.Syncer``: the daemon in a background thread of the training script itself."""

from __future__ import annotations

import os
import time
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any

from .api import open_repository
from .daemon import Daemon
from .errors import UsageError
from .options import Options, WatchOptions
from .policy import Retention
from .state import State, default_state_dir
from .status import DaemonReport, Status
from .store import S3Options

_S3 = {f.name for f in fields(S3Options)}
_WATCH = {f.name for f in fields(WatchOptions)} - {"retention"}
_RETENTION = {f.name for f in fields(Retention)}
_OPTIONS = {"workers", "max_memory", "host", "hosts"}


class Syncer:
    """Upload every complete checkpoint written into ``dir`` while the ``with`` block runs.

    On exit, everything complete is committed (the script wrote its last checkpoint,
    so nothing needs to settle any more) within ``drain_timeout`` seconds::

        with ckptsync.Syncer("/opt/ml/checkpoints", "s3://bucket/run-1", keep_last=3):
            train()

    Keyword options are those of ``ckptsync watch``: ``settle``, ``drain_timeout``,
    ``keep_last``, ``keep_best``, ``metric``, ``mode``, ``keep_every``, ``grace``,
    ``endpoint_url``, ``region``, ``workers``, ``state_dir``, ...
    """

    def __init__(self, dir: str | os.PathLike[str], remote: str, **options: Any) -> None:
        self.dir = Path(dir)
        self.remote = remote
        unknown = set(options) - _S3 - _WATCH - _RETENTION - _OPTIONS - {"state_dir"}
        if unknown:
            raise UsageError(f"unknown Syncer option(s): {', '.join(sorted(unknown))}")
        s3 = S3Options(**{k: v for k, v in options.items() if k in _S3})
        base = Options()
        self.options = Options(
            s3=s3,
            workers=options.get("workers", base.workers),
            max_memory=options.get("max_memory", base.max_memory),
            host=options.get("host"),
            hosts=tuple(options.get("hosts", ())),
        )
        retention = Retention(**{k: v for k, v in options.items() if k in _RETENTION})
        if retention.active:
            retention.check()
        self.watch = WatchOptions(retention=retention, **{k: v for k, v in options.items() if k in _WATCH})
        self.state_dir = Path(options["state_dir"]) if options.get("state_dir") else default_state_dir(self.dir, remote)
        self.daemon: Daemon | None = None
        self.report: DaemonReport | None = None

    def start(self) -> Syncer:
        self.dir.mkdir(parents=True, exist_ok=True)
        repo = open_repository(self.remote, self.options)
        self.daemon = Daemon(self.dir, repo, self.options, self.watch, state=State(self.state_dir))
        self.daemon.start()
        return self

    def status(self) -> Status:
        """The daemon's status (what ``ckptsync status`` shows)."""
        if self.daemon is None:
            raise UsageError("the Syncer is not started")
        return self.daemon.status()

    def stop(self, timeout: float | None = None) -> DaemonReport:
        """Commit everything complete (within ``timeout``, default ``drain_timeout``), then stop."""
        if self.daemon is None:
            raise UsageError("the Syncer is not started")
        limit = self.watch.drain_timeout if timeout is None else timeout
        self.daemon.drain(deadline=time.monotonic() + limit, writers_gone=True, reason="Syncer stopped")
        self.report = self.daemon.wait()
        self.daemon.repo.store.close()
        return self.report

    def __enter__(self) -> Syncer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        if self.daemon is not None and not self.daemon.stopped:
            self.stop()
