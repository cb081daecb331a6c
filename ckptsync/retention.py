"""Retention: delete the manifests the rules do not keep, then the chunks nothing references.

Manifests go first, so a checkpoint disappears whole before any of its data
does. Chunks are collected only under an exclusive lock (see
:mod:`ckptsync.locks`), only if no manifest references them after the lock
was taken, and only if they are older than ``grace``: a chunk stored by an
upload that has not committed yet is never deleted.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from . import catalog, layout, locks, policy
from . import format as fmt
from .repository import ManifestRecord, Repository
from .store import delete_many

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=2)


@dataclass
class PruneReport:
    """What a prune deleted (or, with ``dry_run``, would delete)."""

    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    manifests_deleted: int = 0
    chunks_deleted: int = 0
    bytes_freed: int = 0
    chunks_in_grace: int = 0
    collection_deferred: str | None = None
    dry_run: bool = False


def prune(
    repo: Repository,
    rules: policy.Retention,
    *,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    collect: bool = True,
    host: str = "",
) -> PruneReport:
    """Apply ``rules`` to the committed checkpoints of ``repo``."""
    rules.check()
    report = PruneReport(dry_run=dry_run)
    checkpoints = catalog.load(repo, metrics=bool(rules.metric))
    complete = [c for c in checkpoints if c.complete]
    keep_flags = policy.retain(complete, rules)
    newest_complete = max((policy.latest_key(c.manifest) for c in complete), default=None)
    doomed: list[catalog.Checkpoint] = [c for c, keep in zip(complete, keep_flags, strict=True) if not keep]
    for c in checkpoints:
        if not c.complete:
            # A multi-host checkpoint still being committed stays; one that a newer
            # complete checkpoint has superseded can never be chosen and goes.
            if newest_complete is not None and policy.latest_key(c.manifest) < newest_complete:
                doomed.append(c)
    doomed_ids = {id(c) for c in doomed}
    report.kept = [c.name for c in policy.by_latest(checkpoints) if id(c) not in doomed_ids]
    report.deleted = [c.name for c in policy.by_latest(doomed)]
    doomed_keys: set[str] = set()
    for c in doomed:
        keys = _keys(repo, c)
        doomed_keys.update(keys)
        if not dry_run and keys:
            repo.store.delete(keys[0])  # the commit point first: the checkpoint disappears whole
            delete_many(repo.store, keys[1:])  # then its catalog entry and parts, a request per 1,000
        report.manifests_deleted += sum(1 for k in keys if fmt.parse_manifest_key(k) or layout.parse_part_key(k))
    if collect:
        sealed = {(c.name, c.entry.group if c.entry else (c.group.id if c.group else None)) for c in complete}
        newest = newest_complete if newest_complete is not None else (0, -1, 0.0, "")
        _collect(repo, grace, report, dry_run=dry_run, host=host, doomed_keys=doomed_keys, sealed=sealed, newest=newest)
    return report


def _keys(repo: Repository, c: catalog.Checkpoint) -> list[str]:
    """Every object of a checkpoint, its commit point first: manifests, or the seal, its catalog entry
    and every part (listed: a sealed checkpoint's parts are found by its name and group)."""
    keys = c.object_keys()
    group = c.entry.group if c.entry is not None else (c.group.id if c.group else None)
    if group is not None:
        keys += [info.key for info in repo.store.list(layout.group_prefix(repo.prefix, c.name, group))]
    return keys


def _collect(
    repo: Repository,
    grace: timedelta,
    report: PruneReport,
    *,
    dry_run: bool,
    host: str,
    doomed_keys: set[str],
    sealed: set[tuple[str, str | None]],
    newest: tuple[int, int, float, str],
) -> None:
    lock = locks.Lock(repo.store, repo.prefix, "exclusive", host=host)
    try:
        started = locks.elapsed_clock()  # counts suspend too: the lock ages while we sleep
        view = lock.write_and_look()
        if view.shared or view.exclusive:
            report.collection_deferred = f"{len(view.shared)} upload(s) or restore(s) and {len(view.exclusive)} other prune(s) in progress"
            log.info("chunk collection deferred: %s; the next prune collects them", report.collection_deferred)
            return
        if not dry_run:
            locks.write_generation(repo.store, repo.prefix)
        # Read the manifests again under the lock: whatever was committed meanwhile counts.
        records = repo.load_manifests() + _live_parts(repo, doomed_keys, sealed, newest, report, dry_run=dry_run)
        referenced = {h for rec in records if rec.key not in doomed_keys for h in rec.manifest.chunk_refs()}
        now = view.mine.modified  # the server's clock
        victims = []
        for (digest, codec_name), chunk in repo.list_chunk_objects().items():
            if digest in referenced:
                continue
            if now is None or chunk.modified is None or chunk.modified > now - grace:
                report.chunks_in_grace += 1
                continue
            victims.append((digest, codec_name, chunk.stored))
        if dry_run:
            report.chunks_deleted = len(victims)
            report.bytes_freed = sum(v[2] for v in victims)
            return
        limit = locks.STALE.total_seconds() / 2  # past this, others could take our lock for stale

        def delete(v: tuple[str, str, int]) -> int:
            if locks.elapsed_clock() - started > limit:
                return 0
            repo.store.delete(repo.chunk_key(v[0], v[1]))
            return v[2]

        with ThreadPoolExecutor(max_workers=repo.workers, thread_name_prefix="ckptsync-prune") as pool:
            for freed in pool.map(delete, victims):
                if freed:
                    report.chunks_deleted += 1
                    report.bytes_freed += freed
    finally:
        lock.release()


def _live_parts(
    repo: Repository,
    doomed_keys: set[str],
    sealed: set[tuple[str, str | None]],
    newest: tuple[int, int, float, str],
    report: PruneReport,
    *,
    dry_run: bool,
) -> list[ManifestRecord]:
    """Every multi-host part still needed; parts of a checkpoint never sealed and older than the newest
    complete checkpoint can never complete usefully, and go (with their coordinator object)."""
    parts = repo.load_parts([k for k in repo.list_all_parts() if k.key not in doomed_keys])
    groups: dict[tuple[str, str], list[ManifestRecord]] = {}
    for rec in parts:
        assert rec.manifest.group is not None
        groups.setdefault((rec.name, rec.manifest.group.id), []).append(rec)
    live = []
    for (name, group), members in groups.items():
        if (name, group) in sealed or max(policy.latest_key(r.manifest) for r in members) >= newest:
            live += members
            continue
        for rec in members:
            if not dry_run:
                repo.store.delete(rec.key)
            report.manifests_deleted += 1
        if not dry_run:
            repo.store.delete(layout.coordinator_key(repo.prefix, name, group))
        report.deleted.append(name)
    return live
