"""Checking a remote: every manifest's chunks exist (and, deep, hash right)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import IntegrityError, NothingToRestore
from .format import ChunkRef
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
    stored = repo.list_chunk_objects()
    bad: dict[str, str] = {}
    wanted: dict[str, ChunkRef] = {}
    for rec in records:
        for digest, ref in rec.manifest.chunk_refs().items():
            have = stored.get((digest, ref.codec))
            if have is None:
                bad[digest] = f"chunk {digest} is missing"
            elif have.stored != ref.stored:
                bad[digest] = f"chunk {digest} is {have.stored} bytes, the manifest says {ref.stored}"
            else:
                wanted[digest] = ref
    if deep and wanted:

        def check(ref: ChunkRef) -> tuple[str, str | None]:
            try:
                repo.get_chunk(ref)
                return ref.hash, None
            except IntegrityError as exc:
                return ref.hash, exc.message
            finally:
                if progress:
                    progress(ref.size)

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ckptsync-verify") as pool:
            for digest, problem in pool.map(check, wanted.values()):
                if problem:
                    bad[digest] = problem
    reports = []
    for rec in records:
        report = CheckpointReport(rec)
        for f in rec.manifest.files:
            for ref in f.chunks:
                problem = f"{f.path}: {bad[ref.hash]}" if ref.hash in bad else None
                if problem and problem not in report.problems:
                    report.problems.append(problem)
        reports.append(report)
    return reports


__all__ = ["verify", "CheckpointReport"]
