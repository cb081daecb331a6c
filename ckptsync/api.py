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
from .errors import CkptsyncError, StoreError, UnstorableEntry, UsageError
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
    from .waiting import WaitResult

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


@dataclass(frozen=True)
class PushFailure:
    """A checkpoint :func:`push` did not commit, or skipped: its name, what went wrong (naming it), and a hint."""

    name: str
    message: str
    hint: str | None = None


@dataclass
class PushReport:
    """Outcome of :func:`push`: one result per checkpoint uploaded, newest first; the checkpoints that
    failed (an unreadable file, an entry that cannot be stored), and the top-level entries skipped
    (links leaving the folder, not followed)."""

    results: list[UploadResult] = field(default_factory=list)
    failed: list[PushFailure] = field(default_factory=list)
    skipped: list[PushFailure] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        """False if a checkpoint failed, or changed while it was uploaded (and so was not committed)."""
        return self.count("changed") == 0 and not self.failed


def push(
    dir: str | Path,
    remote: str,
    options: Options | None = None,
    *,
    progress: Callable[[LocalCheckpoint], Callable[[int], None] | None] | None = None,
    wrap: StoreWrapper | None = None,
    follow_symlinks: bool | None = None,
) -> PushReport:
    """Upload every checkpoint in ``dir`` that is not committed yet, newest first.

    Each checkpoint is committed only if none of its files changed during its
    upload; chunks already on the remote are not uploaded again. A checkpoint that
    cannot be committed whole (an unreadable file, an entry that cannot be stored)
    is reported in :attr:`PushReport.failed` and the others still go; a store error
    that cannot heal stops the push. Links leaving ``dir`` are followed only with
    ``follow_symlinks`` (None: ``CKPTSYNC_FOLLOW_SYMLINKS``, the config file, else off).
    """
    from .checkpoint import check_folder

    opts = options or default_options("push")
    if follow_symlinks is None:
        follow_symlinks = bool(resolve(["follow_symlinks"], command="push")["follow_symlinks"])
    folder = check_folder(Path(dir))
    with open_repository(remote, opts, wrap=wrap) as repo:
        return _push(folder, repo, opts, progress, follow_symlinks=follow_symlinks)


def _push(
    folder: Path,
    repo: Repository,
    opts: Options,
    progress: Callable[[LocalCheckpoint], Callable[[int], None] | None] | None,
    *,
    follow_symlinks: bool = False,
) -> PushReport:
    from .checkpoint import scan_folder, shown
    from .session import RemoteSession, describe, log_metric_line

    report = PushReport()
    ckpts = []
    for ckpt in scan_folder(folder, follow_symlinks=follow_symlinks):
        if ckpt.refused is not None and ckpt.refused.skipped:
            report.skipped.append(PushFailure(ckpt.name, ckpt.refused.message, ckpt.refused.hint))
            log.warning("%s; %s", ckpt.refused.message, ckpt.refused.hint)
        else:
            ckpts.append(ckpt)
    if not ckpts:
        log.info("no checkpoints in %s", folder)
        return report
    ckpts.sort(key=lambda c: (c.score.step is not None, c.score.step or -1, c.name), reverse=True)
    with RemoteSession.open(repo, opts, names=[c.name for c in ckpts if c.refused is None]) as session:
        for ckpt in ckpts:
            # One checkpoint's local trouble never stops the others; the store's does (it would fail them all).
            try:
                result = session.upload(ckpt, progress=progress(ckpt) if progress and ckpt.refused is None else None)
            except StoreError:
                raise
            except CkptsyncError as exc:
                err = exc if isinstance(exc, UnstorableEntry) else exc.prefixed(f"{shown(ckpt.name)} not committed")
                report.failed.append(PushFailure(ckpt.name, err.message, err.hint))
                log.debug("%s", err.message)
                continue
            log.log(logging.WARNING if result.status == "changed" else logging.INFO, "%s", describe(result))
            log_metric_line(result)
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


def wait(
    dir: str | Path,
    remote: str,
    options: Options | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    state_dir: str | Path | None = None,
    poll: float = 1.0,
    wrap: StoreWrapper | None = None,
) -> WaitResult:
    """Block until checkpoint ``name`` of ``dir`` (default: the newest there) is committed on ``remote``
    with the content that is on disk, or ``timeout`` seconds pass (None: no limit).

    Works beside a ``ckptsync watch`` of the same ``dir`` and ``remote`` (its state folder,
    ``state_dir`` if it was given one, tells why the checkpoint is pending) and without
    one (after a ``push`` elsewhere). Returns a :class:`~ckptsync.waiting.WaitResult`:
    ``committed`` with the commit id and step, or the reason it is still pending.
    """
    from .checkpoint import check_folder
    from .state import State, default_state_dir, read_status
    from .waiting import wait as _wait

    opts = options or default_options("wait")
    folder = check_folder(Path(dir)).absolute()
    sdir = Path(state_dir) if state_dir is not None else default_state_dir(folder, remote)
    with open_repository(remote, opts, wrap=wrap) as repo:
        return _wait(
            folder,
            repo,
            name=name,
            timeout=timeout,
            poll=poll,
            state=lambda: State(sdir) if sdir.is_dir() else None,  # read again at each look: the daemon writes it
            status=lambda: read_status(sdir),
            host=opts.host or "",
            hosts=tuple(opts.hosts),
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


__all__ = [
    "push",
    "restore",
    "wait",
    "list_checkpoints",
    "verify",
    "prune",
    "open_repository",
    "PushReport",
    "PushFailure",
    "CkptsyncError",
]
