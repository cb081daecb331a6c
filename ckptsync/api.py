"""The Python API: the one-shot operations the CLI is built on.

The modules behind each operation (the upload and restore pipelines, and numpy and
zstandard under them) are imported by the operation that uses them, so that
``import ckptsync`` and commands that need none of them start fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from . import catalog, policy
from .catalog import Checkpoint
from .errors import CkptsyncError, UsageError
from .options import CONNECTION, Options, resolve
from .repository import ManifestRecord, Repository
from .retention import DEFAULT_GRACE, PruneReport
from .retention import prune as _prune
from .store import StoreWrapper, open_remote, parse_remote

if TYPE_CHECKING:
    from .checkpoint import LocalCheckpoint
    from .download import RestoreResult
    from .policy import Selection
    from .session import UploadResult
    from .verification import CheckpointReport

log = logging.getLogger(__name__)


def default_options(command: str = "") -> Options:
    """The options when the caller gives none: ``CKPTSYNC_*`` variables, the config file (its table for
    ``command`` too, as on the command line), SageMaker, defaults."""
    return resolve(CONNECTION, command=command).options()


def open_repository(remote: str, options: Options | None = None, *, wrap: StoreWrapper | None = None) -> Repository:
    """Parse a remote URI and build its store stack (backend, retries)."""
    opts = options or default_options()
    r = parse_remote(remote)
    s3 = replace(opts.s3, max_connections=max(opts.s3.max_connections, opts.workers + 4))
    store = open_remote(r, s3, opts.retry, wrap, bwlimit=opts.bwlimit)
    return Repository(store, r.prefix, workers=opts.workers)


@dataclass
class PushReport:
    """Outcome of :func:`push`: one result per checkpoint, newest first."""

    results: list[UploadResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        """False if a checkpoint changed while it was uploaded (and so was not committed)."""
        return self.count("changed") == 0


def push(
    dir: str | Path,
    remote: str,
    options: Options | None = None,
    *,
    progress: Callable[[LocalCheckpoint], Callable[[int], None] | None] | None = None,
    wrap: StoreWrapper | None = None,
) -> PushReport:
    """Upload every checkpoint in ``dir`` that is not committed yet, newest first.

    Each checkpoint is committed only if none of its files changed during its
    upload; chunks already on the remote are not uploaded again.
    """
    from .checkpoint import check_folder

    opts = options or default_options("push")
    folder = check_folder(Path(dir))
    with open_repository(remote, opts, wrap=wrap) as repo:
        return _push(folder, repo, opts, progress)


def _push(
    folder: Path,
    repo: Repository,
    opts: Options,
    progress: Callable[[LocalCheckpoint], Callable[[int], None] | None] | None,
) -> PushReport:
    from .checkpoint import scan_folder
    from .session import RemoteSession, describe

    report = PushReport()
    ckpts = scan_folder(folder)
    if not ckpts:
        log.info("no checkpoints in %s", folder)
        return report
    ckpts.sort(key=lambda c: (c.score.step is not None, c.score.step or -1, c.name), reverse=True)
    with RemoteSession.open(repo, opts, names=[c.name for c in ckpts]) as session:
        for ckpt in ckpts:
            result = session.upload(ckpt, progress=progress(ckpt) if progress else None)
            log.log(logging.WARNING if result.status == "changed" else logging.INFO, "%s", describe(result))
            report.results.append(result)
        session.seal_ready(last_look=True)
    return report


def restore(
    remote: str,
    dir: str | Path,
    select: str = "latest",
    metric: str | None = None,
    mode: str | None = None,
    *,
    name: str | None = None,
    step: int | None = None,
    strict: bool = False,
    all_hosts: bool = False,
    options: Options | None = None,
    wrap: StoreWrapper | None = None,
    progress: Callable[[ManifestRecord], Callable[[int], None] | None] | None = None,
) -> RestoreResult | None:
    """Restore a committed checkpoint into ``dir/<name>``; None if nothing is committed.

    ``select`` is ``"latest"`` (highest step, then newest) or ``"best"`` (by
    ``metric``, ``mode`` ``"min"``/``"max"``); ``name`` or ``step`` pick one
    checkpoint. A damaged candidate is skipped for the next one unless ``strict``.
    """
    from .recovery import Selector
    from .recovery import restore as _restore

    opts = options or default_options("restore")
    sel = Selector(how=cast("Selection", select), metric=metric, mode=mode, name=name, step=step)  # checked by policy.candidates
    with open_repository(remote, opts, wrap=wrap) as repo:
        return _restore(
            repo,
            Path(dir).absolute(),
            sel,
            strict=strict,
            workers=opts.workers,
            progress_factory=progress,
            host=opts.host,
            hosts=opts.hosts,
            all_hosts=all_hosts,
        )


def list_checkpoints(
    remote: str, options: Options | None = None, *, wrap: StoreWrapper | None = None, read: bool = True
) -> list[Checkpoint]:
    """Every committed checkpoint of a remote, newest first (multi-host ones grouped, complete or not).

    ``read``: with each manifest (or a multi-host checkpoint's seal) read; without,
    checkpoints with a catalog entry are known from it alone (one small object each).
    """
    with open_repository(remote, options or default_options("list"), wrap=wrap) as repo:
        found = catalog.load(repo, metrics=True)
        return policy.by_latest([catalog.resolve(repo, c) for c in found] if read else found)


def verify(
    remote: str,
    name: str | None = None,
    deep: bool = False,
    options: Options | None = None,
    *,
    wrap: StoreWrapper | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[CheckpointReport]:
    """Check that every committed checkpoint's chunks exist (``deep``: and hash right)."""
    from .verification import verify as _verify

    opts = options or default_options("verify")
    with open_repository(remote, opts, wrap=wrap) as repo:
        reports = _verify(repo, name=name, deep=deep, workers=opts.workers, progress=progress)
    return sorted(reports, key=lambda r: policy.latest_key(r.record.manifest), reverse=True)


def prune(
    remote: str,
    rules: policy.Retention,
    *,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    options: Options | None = None,
    wrap: StoreWrapper | None = None,
) -> PruneReport:
    """Delete the committed checkpoints ``rules`` do not keep, then the chunks nothing references.

    The newest checkpoint, and the best one by the rules' metric, are always
    kept; chunks younger than ``grace`` stay (an upload may be about to use
    them). ``dry_run`` reports what would be deleted and deletes nothing.
    """
    if not rules.active:
        raise UsageError("no retention rule given", "pass --keep-last N, --keep-best K --metric NAME, or --keep-every STEPS")
    opts = options or default_options("prune")
    with open_repository(remote, opts, wrap=wrap) as repo:
        return _prune(repo, rules, grace=grace, dry_run=dry_run, host=opts.host or "")


__all__ = ["push", "restore", "list_checkpoints", "verify", "prune", "open_repository", "PushReport", "CkptsyncError"]
