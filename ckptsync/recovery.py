"""Bringing a checkpoint back: choose among the committed ones, restore the first intact one.

Candidates come from the selection policy (:func:`ckptsync.policy.candidates`)
over complete checkpoints only (a multi-host checkpoint is complete once every
host committed its part). Each candidate is restored by
:func:`ckptsync.download.restore_checkpoint`; a damaged one is reported and the
next one is tried, unless ``strict``. A shared lock on the remote keeps chunk
collection from deleting chunks under the restore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from . import catalog, locks, policy
from .assembly import DamagedHere, for_node
from .download import Progress, RestoreResult, restore_checkpoint
from .errors import FormatError, IntegrityError, NewerFormatError, NothingToRestore, StoreError
from .options import this_host
from .policy import Selector
from .repository import ManifestRecord, Repository

log = logging.getLogger(__name__)

__all__ = ["RestoreResult", "Selector", "restore"]


def restore(
    repo: Repository,
    target_dir: Path,
    sel: Selector,
    *,
    strict: bool = False,
    workers: int = 8,
    progress_factory: Callable[[ManifestRecord], Progress | None] | None = None,
    host: str | None = None,
    hosts: Sequence[str] = (),
    all_hosts: bool = False,
) -> RestoreResult | None:
    """Restore the first intact checkpoint among the candidates ``sel`` names.

    Returns None when nothing is committed (when nothing matches ``--name`` or
    ``--step``, NothingToRestore is raised). A damaged candidate is reported and
    the next one is tried, unless ``strict``. Of a multi-host checkpoint, this
    ``host``'s files are restored, with the coordinator's that its ranks need to
    load (``all_hosts``: everyone's); ``hosts`` is the job's host set.
    """
    me = host or this_host()
    lock = _shared_lock(repo, me)
    try:
        order = _candidates(repo, sel)
        if not order:
            _nothing_usable(repo, strict)
            return None
        return _first_intact(repo, order, target_dir, strict, workers, progress_factory, (me, tuple(hosts)), all_hosts)
    finally:
        if lock is not None:
            lock.release()


def _nothing_usable(repo: Repository, strict: bool) -> None:
    """No candidate: an empty remote, or one whose manifests are all unusable, which is not the same."""
    if not repo.unusable:
        return
    message = f"no usable checkpoint in {repo.url}: {repo.unusable} manifest(s) are invalid or unreadable"
    if strict:
        raise IntegrityError(message, "run 'ckptsync verify' to see why; without --strict restore starts from scratch")
    log.warning("%s; starting from scratch", message)


def _shared_lock(repo: Repository, host: str) -> locks.Lock | None:
    """A shared lock, so no chunk collection deletes chunks under the restore.
    A read-only remote (credentials without write access) is restored without one."""
    try:
        return locks.acquire_shared(repo.store, repo.prefix, host=host)[0]
    except StoreError as exc:
        if exc.transient:
            raise
        log.info("restoring without a lock (%s)", exc.message)
        return None


def _candidates(repo: Repository, sel: Selector) -> list[catalog.Checkpoint]:
    """Complete committed checkpoints in the order ``sel`` tries them."""
    names = [sel.name] if sel.name is not None else None
    checkpoints = catalog.load(repo, names=names, metrics=sel.how == "best" and sel.name is None and sel.step is None)
    for ck in checkpoints:
        if not ck.complete:
            log.info("skipping %s: not committed yet by %s", ck.name, ", ".join(ck.missing))
    order = policy.candidates([ck for ck in checkpoints if ck.complete], sel)
    if not order and (sel.name is not None or sel.step is not None):
        raise NothingToRestore(
            f"no complete committed checkpoint {sel.describe()} in {repo.url}", "run 'ckptsync list' to see what is committed"
        )
    return order


def _alone(name: str, exc: IntegrityError) -> IntegrityError:
    """The error of a multi-host checkpoint damaged in this host's files: the other hosts may restore
    it, so falling back alone would resume the job from two different steps."""
    return IntegrityError(
        f"checkpoint {name} is damaged in this host's files ({exc.message}); not falling back alone",
        f"other hosts may restore {name}: run 'ckptsync verify --name {name}', then restore --name of an intact checkpoint on every host",
        chunk=exc.chunk,
        path=exc.path,
    )


def _restore_one(
    repo: Repository,
    ck: catalog.Checkpoint,
    target_dir: Path,
    workers: int,
    progress_factory: Callable[[ManifestRecord], Progress | None] | None,
    node: tuple[str, tuple[str, ...]],
    all_hosts: bool,
) -> RestoreResult:
    rec = for_node(repo, ck, node[0], node[1], all_hosts=all_hosts)
    try:
        return restore_checkpoint(repo, rec, target_dir, workers=workers, progress=progress_factory(rec) if progress_factory else None)
    except IntegrityError as exc:
        if ck.sealed and not all_hosts:  # this host's files: the other hosts may not see it
            raise DamagedHere(exc.message, chunk=exc.chunk, path=exc.path) from None
        raise


def _first_intact(
    repo: Repository,
    order: list[catalog.Checkpoint],
    target_dir: Path,
    strict: bool,
    workers: int,
    progress_factory: Callable[[ManifestRecord], Progress | None] | None,
    node: tuple[str, tuple[str, ...]],
    all_hosts: bool,
) -> RestoreResult:
    skipped: list[str] = []
    last_error: IntegrityError | None = None
    for ck in order:
        try:
            result = _restore_one(repo, ck, target_dir, workers, progress_factory, node, all_hosts)
        except NewerFormatError:
            raise
        except DamagedHere as exc:
            raise _alone(ck.name, exc) from None
        except FormatError as exc:
            log.warning("skipping %s: %s", ck.name, exc.message)
            skipped.append(ck.name)
            continue
        except IntegrityError as exc:
            last_error = exc
            log.warning("checkpoint %s (commit %s) is damaged: %s", ck.name, ck.manifest.commit, exc.message)
            skipped.append(ck.name)
            if strict:
                raise IntegrityError(
                    f"checkpoint {ck.name} is damaged: {exc.message}",
                    "run 'ckptsync verify --deep' to see every damaged chunk; without --strict restore falls back to the next checkpoint",
                    chunk=exc.chunk,
                    path=exc.path,
                ) from None
            continue
        result.skipped = skipped
        return result
    assert last_error is not None
    if len(order) == 1:
        raise IntegrityError(
            f"checkpoint {order[0].name} is damaged: {last_error.message}",
            "run 'ckptsync verify --deep' to see every damaged chunk",
            chunk=last_error.chunk,
            path=last_error.path,
        )
    raise IntegrityError(
        f"no intact checkpoint to restore: {len(skipped)} tried, all damaged (last: {last_error.message})",
        "run 'ckptsync verify --deep' to see the damage",
    )
