"""A session with one remote, shared by ``push`` and the daemon: what is committed, and the commit.

:meth:`RemoteSession.open` removes leftovers of uploads killed long ago and
reads the committed manifests; :meth:`RemoteSession.upload` then takes one
checkpoint from the local folder to a commit:

1. hold a *shared* lock on the remote (no chunk collection meanwhile, see
   :mod:`ckptsync.locks`) and, if a collection ran since the chunks were last
   listed, list them again;
2. store every chunk (:class:`~ckptsync.upload.Uploader`);
3. if the lock may have looked stale meanwhile (a long pause), check that the
   chunks survived; if a file changed under the reader, commit nothing;
4. decide (:mod:`ckptsync.commit`) and write the manifest with a conditional
   create: the commit point.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from . import crashpoints, locks, shards
from . import format as fmt
from ._version import __version__
from .checkpoint import LocalCheckpoint
from .chunking import CHUNK_SIZE
from .commit import build_manifest, find_equivalent
from .errors import StoreError, UsageError
from .hashes import DEFAULT_HASH
from .options import Options, this_host
from .packing import Cancelled
from .policy import Retention
from .progress import human_bytes
from .repository import Repository
from .retention import PruneReport, prune
from .upload import Changed, ChunkIndex, Progress, Uploader, UploadStats, Vanished

log = logging.getLogger(__name__)

#: Multipart uploads and temp files older than this are leftovers of killed writers.
STALE_WRITES = timedelta(hours=24)

#: Unsealed checkpoints the lead keeps looking at (the oldest are forgotten beyond this).
MAX_UNSEALED = 32

#: What became of one checkpoint: committed; unchanged (an equal commit exists); changed (modified
#: during upload, not committed); vanished (deleted); cancelled (stopped before it finished).
UploadStatus = Literal["committed", "unchanged", "changed", "vanished", "cancelled"]


@dataclass
class UploadResult:
    """What became of one checkpoint, and the manifest that commits it (new or equal)."""

    name: str
    status: UploadStatus
    reason: str = ""
    key: str | None = None
    manifest: fmt.Manifest | None = None
    stats: UploadStats = field(default_factory=UploadStats)


class RemoteSession:
    """Uploads and commits checkpoints into one repository, for one host of a job.

    Thread-safe for one checkpoint at a time; the workers and the byte budget
    are shared by every checkpoint of the session.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        workers: int = 4,
        max_memory: int = 32 << 20,
        host: str | None = None,
        hosts: Iterable[str] = (),
        nice: int = 0,
        chunk_size: int = CHUNK_SIZE,
        hash_algorithm: str = DEFAULT_HASH,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.repo = repo
        #: The hash that names the chunks of a checkpoint not committed before (see :meth:`algorithm_for`).
        self.hash_algorithm = hash_algorithm
        self.host = host or this_host()
        given = list(dict.fromkeys(hosts))
        # A one-host set is a single-host job: written as such (format version 1).
        self.hosts = tuple(sorted(given)) if len(given) > 1 else ()
        if self.hosts and self.host not in self.hosts:
            raise UsageError(
                f"this host {self.host!r} is not among the job's hosts ({', '.join(self.hosts)})",
                "check --host and --hosts (or SM_CURRENT_HOST and SM_HOSTS)",
            )
        #: A multi-host job's parts (format version 5); the first host given is the lead, which seals.
        self.group = fmt.Group(fmt.group_id(given), len(given), given[0]) if self.hosts else None
        #: This host's committed parts whose checkpoint it has not seen sealed, by name.
        self.unsealed: dict[str, fmt.Manifest] = {}
        self._sealing = threading.Lock()
        self.clock = clock
        self.uploader = Uploader(repo, ChunkIndex(), workers=workers, max_memory=max_memory, nice=nice, chunk_size=chunk_size)
        #: Committed manifests by checkpoint name (those read at open, and every commit since).
        self.committed: dict[str, list[fmt.Manifest]] = defaultdict(list)
        # The chunk index is (re)built from one listing whenever the remote's chunk
        # collection generation differs from the one it was built under.
        self._generation: str | None = "unlisted"
        self._lock = threading.Lock()

    @classmethod
    def open(cls, repo: Repository, options: Options, *, names: Iterable[str] | None = None) -> RemoteSession:
        """A session on ``repo`` that knows the committed manifests (of ``names`` only, if given)."""
        session = cls(
            repo,
            workers=options.workers,
            max_memory=options.max_memory,
            host=options.host,
            hosts=options.hosts,
            nice=options.nice,
            hash_algorithm=options.hash_algorithm,
        )
        try:
            session.clean_stale_writes()
            session.learn(rec.manifest for rec in repo.load_manifests(names=names))
            if session.group is not None:
                session.learn_parts(names)
        except BaseException:
            session.close()
            raise
        log.info("remote %s: %d committed checkpoints", repo.url, sum(map(len, session.committed.values())))
        return session

    def clean_stale_writes(self) -> None:
        """Remove what writers killed long ago left (temp files, multipart uploads); best effort."""
        try:
            removed = self.repo.store.cleanup(self.repo.prefix + "/" if self.repo.prefix else "", STALE_WRITES)
        except StoreError as exc:
            log.info("skipped removing leftovers of interrupted uploads: %s", exc.message)
            return
        if removed:
            log.info("removed %d leftovers of interrupted uploads", removed)

    def learn(self, manifests: Iterable[fmt.Manifest]) -> None:
        """Record committed manifests: equal content is not committed again, packed files keep their parts."""
        manifests = list(manifests)
        with self._lock:
            for m in manifests:
                self.committed[m.name].append(m)
        self.uploader.learn(manifests)

    def learn_parts(self, names: Iterable[str] | None) -> None:
        """Record this host's committed parts of ``names`` (a multi-host job); the lead also finds those
        not sealed yet. Costs one listing per name, whatever the number of hosts."""
        assert self.group is not None
        if names is None:
            return
        sealed = {h.name for h in self.repo.list_hints() if h.group == self.group.id}
        for name in names:
            keys = self.repo.list_parts(name, self.group.id, self.host).get(self.host, [])
            if not keys:
                continue
            parts = self.repo.load_parts([max(keys, key=lambda k: k.commit)])
            self.learn(p.manifest for p in parts)
            if parts and name not in sealed:
                self.unsealed[name] = parts[0].manifest

    @property
    def is_lead(self) -> bool:
        return self.group is not None and self.group.lead == self.host

    def seal_ready(self, *, last_look: bool = False) -> list[str]:
        """Seal every checkpoint of which every host has now committed its part; returns the names sealed.

        The lead looks (one listing of each unsealed checkpoint's parts) after each
        of its commits and, in the daemon, every second; another host looks once,
        at the end of a push or a drain (``last_look``), in case it committed last.
        """
        if self.group is None or not (self.is_lead or last_look):
            return []
        with self._sealing:
            return [name for name, part in list(self.unsealed.items()) if self._seal(name, part)]

    def _seal(self, name: str, part: fmt.Manifest) -> bool:
        assert self.group is not None
        committed = self.repo.list_parts(name, self.group.id)
        missing = [h for h in self.hosts if h not in committed]
        if missing:
            log.debug("%s: waiting for the parts of %d hosts (%s...)", name, len(missing), missing[0])
            return False
        if not self.is_lead:  # step and metrics come from the lead's part, which has the trainer's state
            leads = self.repo.load_parts([max(committed[self.group.lead], key=lambda k: k.commit)])
            part = leads[0].manifest if leads else part
        created = self.clock()
        seal = fmt.Manifest(
            name=name,
            kind=part.kind,
            step=part.step,
            metrics=part.metrics,
            created=created,
            host=self.host,
            commit=fmt.new_commit_id(created, self.host),
            files=(),
            tool=f"ckptsync/{__version__}",
            group=self.group.as_seal(),
        )
        self.repo.commit(seal)
        self.unsealed.pop(name, None)
        log.info("sealed %s: all %d hosts committed their parts", name, len(self.hosts))
        return True

    def announce(self, ckpt: LocalCheckpoint) -> None:
        """In a multi-host job, a part holding the coordinator's files tells the other hosts' sidecars
        that every rank has written its files (before the upload, so that theirs start at once)."""
        if self.group is not None and ckpt.kind == "dir" and shards.holds_coordinator_files(f.relpath for f in ckpt.files):
            self.repo.announce(ckpt.name, self.group.id, self.host, self.clock())

    def coordinator_done(self, name: str) -> bool:
        """Whether some host announced the coordinator's files of checkpoint ``name`` (one HEAD request)."""
        return self.group is not None and self.repo.announced(name, self.group.id)

    def forget(self, names: Iterable[str]) -> None:
        """Drop what is known of checkpoints deleted from the remote."""
        with self._lock:
            for name in names:
                self.committed.pop(name, None)

    def close(self) -> None:
        self.uploader.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one checkpoint

    def upload(self, ckpt: LocalCheckpoint, *, progress: Progress | None = None, cancel: threading.Event | None = None) -> UploadResult:
        """Store every chunk of ``ckpt``, then commit its manifest unless an equal one is
        committed or a file changed meanwhile.

        Setting ``cancel`` stops the upload between chunks; it then ends as
        ``cancelled`` and nothing is committed (chunks already stored stay).
        Raises :class:`~ckptsync.errors.UnstorableEntry` at once, before any
        request, if the scan refused the checkpoint (:attr:`LocalCheckpoint.refused`).
        """
        ckpt.check()
        self.announce(ckpt)
        lock = self._lock_remote()
        try:
            result = self._upload_locked(ckpt, lock, progress, cancel)
        finally:
            lock.release()
        if result.status == "committed" and self.group is not None and result.manifest is not None:
            with self._sealing:
                self.unsealed[ckpt.name] = result.manifest
                while len(self.unsealed) > MAX_UNSEALED:  # parts whose other hosts never came: stop looking
                    self.unsealed.pop(next(iter(self.unsealed)))
        if self.is_lead and result.status in ("committed", "unchanged"):
            self.seal_ready()
        return result

    def _lock_remote(self) -> locks.Lock:
        """Hold a shared lock (no chunk collection meanwhile) and make the chunk index current."""
        lock, view = locks.acquire_shared(self.repo.store, self.repo.prefix, host=self.host)
        if view.generation != self._generation:
            try:
                self.uploader.index.reset(self.repo.list_chunks().values())
            except BaseException:
                lock.release()
                raise
            self._generation = view.generation
        return lock

    def _upload_locked(
        self, ckpt: LocalCheckpoint, lock: locks.Lock, progress: Progress | None, cancel: threading.Event | None
    ) -> UploadResult:
        started = time.monotonic()
        stats = UploadStats(files=len(ckpt.files))
        try:
            entries = self.uploader.store(ckpt, stats, progress, cancel, self.algorithm_for(ckpt.name))
        except Cancelled:
            return UploadResult(ckpt.name, "cancelled", "stopped before it finished", stats=stats)
        except Vanished as exc:
            return UploadResult(ckpt.name, "vanished", str(exc) or "it was deleted during upload", stats=stats)
        except Changed as exc:
            return UploadResult(ckpt.name, "changed", str(exc), stats=stats)
        if not lock.fresh() and not self._still_stored(entries, lock):
            # Paused so long (suspend, stalls) that our lock may have looked stale
            # to a collector: some chunk we rely on is gone. Upload it all again later.
            self._generation = "unlisted"
            return UploadResult(ckpt.name, "changed", "chunks were collected while the upload was paused", stats=stats)
        stats.seconds = time.monotonic() - started
        change = ckpt.changed()
        if change is not None:
            return UploadResult(ckpt.name, "vanished" if change == "it was deleted" else "changed", change, stats=stats)
        manifest = build_manifest(ckpt, entries, host=self.host, group=self.group, created=self.clock(), tool=f"ckptsync/{__version__}")
        stats.raw_bytes = manifest.raw_bytes
        stats.stored_bytes = manifest.stored_bytes
        with self._lock:
            committed = list(self.committed[ckpt.name])
        same = find_equivalent(manifest, committed, score_source=ckpt.score.source)
        if same is not None:
            return UploadResult(ckpt.name, "unchanged", same.reason, manifest=same.manifest, stats=stats)
        crashpoints.reached("before-manifest")
        key = self.repo.commit(manifest)
        crashpoints.reached("after-manifest")
        self.learn([manifest])
        stats.seconds = time.monotonic() - started
        return UploadResult(ckpt.name, "committed", key=key, manifest=manifest, stats=stats)

    def algorithm_for(self, name: str) -> str:
        """The hash to name checkpoint ``name``'s chunks by: its newest committed manifest's, else the session's.

        A checkpoint committed under another hash (by an older ckptsync, or with another
        ``--hash``) keeps it, so that restoring it and seeing it again in the folder finds it
        already committed instead of storing every chunk a second time under new names.
        """
        with self._lock:
            committed = [m for m in self.committed.get(name, ()) if m.files]
        return max(committed, key=lambda m: m.created).hash_algorithm if committed else self.hash_algorithm

    def _still_stored(self, entries: list[fmt.FileEntry], lock: locks.Lock) -> bool:
        """After a long pause: let a running collection finish, then check our chunks survived it."""
        view = locks.wait_for_collection(lock)
        lock.max_gap = 0.0  # the lock is current again; later pauses are measured afresh
        if view.generation == self._generation:
            return True
        present = self.repo.list_chunk_objects()
        return all((c.hash, c.codec) in present for f in entries for c in f.chunks)

    # -- retention

    def apply_retention(self, rules: Retention, grace: timedelta) -> PruneReport:
        """Delete what ``rules`` do not keep (see :func:`ckptsync.retention.prune`), and forget it.

        In a multi-host job only the lead prunes, and leaves chunk collection (which
        reads every host's parts) to ``ckptsync prune``."""
        if self.group is not None and not self.is_lead:
            return PruneReport()
        report = prune(self.repo, rules, grace=grace, host=self.host, collect=self.group is None)
        self.forget(set(report.deleted) - set(report.kept))
        return report


def log_result(result: UploadResult) -> None:
    """Log an upload's outcome: one line, with its figures as fields for JSON logs."""
    if result.status == "vanished":
        log.info("%s was deleted during upload (rotated away); dropped", result.name)
    elif result.status == "changed":
        log.info("%s changed during upload (%s); waiting for it to settle again", result.name, result.reason)
    else:
        st = result.stats
        fields = {
            "event": result.status,
            "checkpoint": result.name,
            "files": st.files,
            "raw_bytes": st.raw_bytes,
            "stored_bytes": st.stored_bytes,
            "uploaded_bytes": st.uploaded_bytes,
            "seconds": round(st.seconds, 3),
        }
        log.info("%s", describe(result), extra={"fields": fields})
        log_metric_line(result)


def log_metric_line(result: UploadResult) -> None:
    """For a commit with a step, one line with fixed keys and plain numbers, for log scrapers such as
    SageMaker's ``metric_definitions`` (docs/INTEGRATIONS.md)."""
    if result.status == "committed" and result.manifest is not None and result.manifest.step is not None:
        log.info("metrics: ckptsync_committed_step=%d ckptsync_upload_seconds=%.3f", result.manifest.step, result.stats.seconds)


def describe(result: UploadResult) -> str:
    """One human line about an upload result."""
    s = result.stats
    if result.status == "committed":
        return (
            f"committed {result.name}: {s.files} files, {human_bytes(s.raw_bytes)} raw, "
            f"{human_bytes(s.stored_bytes)} stored, {human_bytes(s.uploaded_bytes)} uploaded in {s.seconds:.1f}s"
        )
    if result.status == "unchanged":
        return f"{result.name} is already committed"
    if result.status == "cancelled":
        return f"{result.name} was not finished before the deadline; not committed"
    if result.status == "vanished":
        return f"{result.name} was deleted during upload; skipped"
    return f"{result.name} changed during upload ({result.reason}); not committed"
