"""Checking a remote: every manifest's chunks exist (and, deep, hash right)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import IntegrityError, NothingToRestore
from .format import ChunkRef, Manifest
from .repository import ManifestRecord, Repository

log = logging.getLogger(__name__)


@dataclass
class CheckpointReport:
    """Problems found in one committed checkpoint (empty when intact)."""

    record: ManifestRecord
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    repo: Repository,
    *,
    name: str | None = None,
    deep: bool = False,
    workers: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[CheckpointReport]:
    """Check the committed checkpoints (or those named ``name``) of a remote."""
    records = repo.load_manifests(names=[name] if name is not None else None)
    if name is not None and not records:
        raise NothingToRestore(f"no committed checkpoint named {name!r} in {repo.url}", "run 'ckptsync list' to see what is committed")
    members = {rec.key: _members(repo, rec) for rec in records if not rec.manifest.is_part}
    stored = repo.list_chunk_objects()
    # Each reference is judged as its manifest states it (hash, codec, size, stored size): another
    # manifest's valid reference to the same hash says nothing about this one.
    bad: dict[RefKey, str] = {}
    wanted: dict[RefKey, ChunkRef] = {}
    for _, manifest in (m for ms in members.values() for m in ms[0]):
        for ref in (c.whole() for f in manifest.files for c in f.chunks):
            key = _ref_key(ref)
            if key in bad or key in wanted:
                continue
            have = stored.get((ref.hash, ref.codec))
            if have is None:
                bad[key] = f"chunk {ref.hash}.{ref.codec} is missing"
            elif have.stored != ref.stored:
                bad[key] = f"chunk {ref.hash}.{ref.codec} is {have.stored} bytes, the manifest says {ref.stored}"
            else:
                wanted[key] = ref
    if deep and wanted:

        def check(ref: ChunkRef) -> tuple[RefKey, str | None]:
            try:
                repo.get_chunk(ref)
                return _ref_key(ref), None
            except IntegrityError as exc:
                return _ref_key(ref), exc.message
            finally:
                if progress:
                    progress(ref.size)

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ckptsync-verify") as pool:
            for key, problem in pool.map(check, wanted.values()):
                if problem:
                    bad[key] = problem
    reports = []
    for rec in records:
        if rec.key not in members:
            continue
        parts, missing = members[rec.key]
        report = CheckpointReport(rec, list(missing))
        for label, manifest in parts:
            for f in manifest.files:
                for ref in f.chunks:
                    key = _ref_key(ref.whole())
                    problem = f"{label}{f.path}: {bad[key]}" if key in bad else None
                    if problem and problem not in report.problems:
                        report.problems.append(problem)
        reports.append(report)
    return reports


#: A chunk reference as a manifest states it: hash, codec, raw size, stored size, and the hash's algorithm
#: (a manifest naming a chunk under the other hash never shares another's verdict on it).
RefKey = tuple[str, str, int, int, str]


def _ref_key(ref: ChunkRef) -> RefKey:
    return (ref.hash, ref.codec, ref.size, ref.stored, ref.algorithm)


def _members(repo: Repository, rec: ManifestRecord) -> tuple[list[tuple[str, Manifest]], list[str]]:
    """What a checkpoint's files are listed in, with a label for problems, and its missing parts:
    the manifest itself, or for a seal every host's newest part (one listing and one read per host)."""
    group = rec.manifest.group
    if group is None:
        return [("", rec.manifest)], []
    by_host = repo.list_parts(rec.name, group.id)
    parts = repo.load_parts([max(keys, key=lambda k: k.commit) for keys in by_host.values()])
    found = [(f"{p.manifest.host}: ", p.manifest) for p in sorted(parts, key=lambda p: p.manifest.host)]
    missing = [] if len(parts) >= group.hosts else [f"only {len(parts)} of its {group.hosts} hosts' parts are readable"]
    return found, missing


__all__ = ["verify", "CheckpointReport"]
