"""The upload path: read, hash, encode and store a checkpoint's chunks, then commit.

One :class:`Uploader` serves many checkpoints (``push`` and the daemon alike).
Files are read sequentially by the calling thread, which also computes each
file's whole-file hash; chunks are hashed, encoded and stored by a pool of
worker threads. The bytes held by chunks in flight are bounded by a byte
budget, so memory does not depend on the checkpoint's size. A chunk the remote
already holds (by hash) is never uploaded again, and two workers never upload
the same chunk at once.

The manifest is written last, with a conditional create, and only if no file
changed while the chunks were uploaded: the manifest is the commit point.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import __version__, codec, crashpoints, locks
from . import format as fmt
from .checkpoint import LocalCheckpoint, LocalFile
from .chunking import CHUNK_SIZE, Span, fixed_plan, safetensors_header_length, safetensors_plan
from .config import default_host, lower_priority
from .errors import CkptsyncError, LocalError, UsageError
from .progress import human_bytes
from .repository import Repository, StoredChunk

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


class ByteBudget:
    """A counting semaphore over bytes: ``acquire(n)`` blocks while the budget is spent.

    A single request larger than the whole budget is let through when nothing
    else is in flight, so a chunk never deadlocks the pipeline.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class ChunkIndex:
    """Chunks known to be stored on the remote, and chunks being stored right now."""

    def __init__(self, known: Iterable[StoredChunk] = ()) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, int]] = {c.hash: (c.codec, c.stored) for c in known}
        self._inflight: dict[str, threading.Event] = {}

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, digest: object) -> bool:
        return digest in self._known

    def lookup(self, digest: str) -> tuple[str, int] | None:
        with self._lock:
            return self._known.get(digest)

    def claim(self, digest: str) -> tuple[str, int] | None:
        """Known ``(codec, stored)`` for the chunk, or None: then the caller must
        store it and call :meth:`stored` or :meth:`release`."""
        while True:
            with self._lock:
                if digest in self._known:
                    return self._known[digest]
                event = self._inflight.get(digest)
                if event is None:
                    self._inflight[digest] = threading.Event()
                    return None
            event.wait()

    def stored(self, digest: str, codec_name: str, size: int) -> None:
        with self._lock:
            self._known[digest] = (codec_name, size)
            event = self._inflight.pop(digest, None)
        if event is not None:
            event.set()

    def release(self, digest: str) -> None:
        with self._lock:
            event = self._inflight.pop(digest, None)
        if event is not None:
            event.set()

    def reset(self, known: Iterable[StoredChunk]) -> None:
        """Replace what is known to be stored (after a chunk collection on the remote)."""
        with self._lock:
            self._known = {c.hash: (c.codec, c.stored) for c in known}

    def forget(self, digests: Iterable[str]) -> None:
        with self._lock:
            for d in digests:
                self._known.pop(d, None)


@dataclass
class UploadStats:
    files: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    uploaded_bytes: int = 0
    chunks: int = 0
    chunks_uploaded: int = 0
    seconds: float = 0.0


@dataclass
class UploadResult:
    """What became of one checkpoint: committed, unchanged (already committed),
    changed (modified during upload, not committed) or vanished (deleted)."""

    name: str
    status: str
    reason: str = ""
    key: str | None = None
    manifest: fmt.Manifest | None = None
    stats: UploadStats = field(default_factory=UploadStats)


class _Vanished(Exception):
    pass


class _Changed(Exception):
    pass


class _Cancelled(Exception):
    pass


class Uploader:
    """Uploads checkpoints into one repository. Thread-safe for one checkpoint at a time
    per caller; the worker pool and the byte budget are shared."""

    def __init__(
        self,
        repo: Repository,
        index: ChunkIndex | None = None,
        *,
        workers: int = 4,
        max_memory: int = 128 << 20,
        host: str | None = None,
        hosts: tuple[str, ...] = (),
        nice: int = 0,
        chunk_size: int = CHUNK_SIZE,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.repo = repo
        self.index = index or ChunkIndex()
        # The index is (re)built from one listing whenever the remote's chunk
        # collection generation differs from the one it was built under.
        self._generation: str | None = "unlisted"
        self.host = host or default_host()
        # A one-host set is a single-host job: written as such (format version 1).
        self.hosts = tuple(sorted(set(hosts))) if len(set(hosts)) > 1 else ()
        if self.hosts and self.host not in self.hosts:
            raise UsageError(
                f"this host {self.host!r} is not among the job's hosts ({', '.join(self.hosts)})",
                "check --host and --hosts (or SM_CURRENT_HOST and SM_HOSTS)",
            )
        self.chunk_size = chunk_size
        self.small_file = min(SMALL_FILE, chunk_size // 4)
        self.pack_target = min(PACK_TARGET, chunk_size)
        # Where small files sit inside packs already committed: file hash -> part.
        self._parts: dict[str, fmt.ChunkRef] = {}
        self.clock = clock
        # Each chunk in flight holds its raw bytes and, briefly, its encoded copy.
        self.budget = ByteBudget(max(chunk_size, max_memory // 2))
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="ckptsync-upload", initializer=lower_priority, initargs=(nice,)
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one checkpoint

    def upload(
        self,
        ckpt: LocalCheckpoint,
        committed: Iterable[fmt.Manifest] = (),
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> UploadResult:
        """Store every chunk of ``ckpt``, then commit its manifest unless a manifest with
        the same content already exists in ``committed`` or a file changed meanwhile.

        Setting ``cancel`` stops the upload between chunks; it then ends as
        ``cancelled`` and nothing is committed (chunks already stored stay).
        """
        lock = self._lock_remote()
        try:
            return self._upload_locked(ckpt, committed, lock, progress=progress, cancel=cancel)
        finally:
            lock.release()

    def _lock_remote(self) -> locks.Lock:
        """Hold a shared lock (no chunk collection meanwhile) and make the index current."""
        lock, view = locks.acquire_shared(self.repo.store, self.repo.prefix, host=self.host)
        if view.generation != self._generation:
            try:
                self.index.reset(self.repo.list_chunks().values())
            except BaseException:
                lock.release()
                raise
            self._generation = view.generation
        return lock

    def _upload_locked(
        self,
        ckpt: LocalCheckpoint,
        committed: Iterable[fmt.Manifest],
        lock: locks.Lock,
        *,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> UploadResult:
        started = time.monotonic()
        stats = UploadStats(files=len(ckpt.files))
        committed = list(committed)
        self.learn(committed)
        stop = cancel or threading.Event()
        try:
            entries = self._store_files(ckpt, stats, progress, stop)
        except _Cancelled:
            return UploadResult(ckpt.name, "cancelled", "stopped before it finished", stats=stats)
        except _Vanished as exc:
            return UploadResult(ckpt.name, "vanished", str(exc) or "it was deleted during upload", stats=stats)
        except _Changed as exc:
            return UploadResult(ckpt.name, "changed", str(exc), stats=stats)
        if not lock.fresh() and not self._still_stored(entries, lock):
            # Paused so long (suspend, stalls) that our lock may have looked stale
            # to a collector: some chunk we rely on is gone. Upload it all again later.
            self._generation = "unlisted"
            return UploadResult(ckpt.name, "changed", "chunks were collected while the upload was paused", stats=stats)
        stats.seconds = time.monotonic() - started
        change = ckpt.changed()
        if change is not None:
            status = "vanished" if change == "it was deleted" else "changed"
            return UploadResult(ckpt.name, status, change, stats=stats)
        created = self.clock()
        manifest = fmt.Manifest(
            name=ckpt.name,
            kind=ckpt.kind,
            step=ckpt.score.step,
            metrics=dict(ckpt.score.metrics),
            created=created,
            host=self.host,
            commit=fmt.new_commit_id(created, self.host),
            files=tuple(entries),
            tool=f"ckptsync/{__version__}",
            hosts=self.hosts,
        )
        stats.raw_bytes = manifest.raw_bytes
        stats.stored_bytes = manifest.stored_bytes
        for other in committed:
            # Only this host's own commit of the same host set counts: another host's
            # identical files do not complete this host's part of a multi-host checkpoint.
            mine = other.hosts == self.hosts and (not self.hosts or other.host == self.host)
            if not (mine and other.name == manifest.name and other.kind == manifest.kind):
                continue
            # Same bytes: a new commit only if a marker now says something new about them
            # (a restored copy without its marker says less, not something new).
            same_score = (other.step, dict(other.metrics)) == (manifest.step, dict(manifest.metrics))
            if other.content_key() == manifest.content_key() and (same_score or ckpt.score.source != "ckptsync.json"):
                return UploadResult(ckpt.name, "unchanged", "already committed", manifest=other, stats=stats)
            if _strict_subset(manifest, other):
                # e.g. the trainer's rotation died halfway through deleting a committed folder
                return UploadResult(ckpt.name, "unchanged", "a partial copy of a committed checkpoint", manifest=other, stats=stats)
        crashpoints.reached("before-manifest")
        key = self.repo.commit(manifest)
        crashpoints.reached("after-manifest")
        self.learn([manifest])
        stats.seconds = time.monotonic() - started
        return UploadResult(ckpt.name, "committed", key=key, manifest=manifest, stats=stats)

    def _still_stored(self, entries: list[fmt.FileEntry], lock: locks.Lock) -> bool:
        """After a long pause: let a running collection finish, then check our chunks survived it."""
        view = locks.wait_for_collection(lock)
        lock.max_gap = 0.0  # the lock is current again; later pauses are measured afresh
        if view.generation == self._generation:
            return True
        present = self.repo.list_chunk_objects()
        return all((c.hash, c.codec) in present for f in entries for c in f.chunks)

    def _store_files(
        self, ckpt: LocalCheckpoint, stats: UploadStats, progress: Progress | None, cancel: threading.Event
    ) -> list[fmt.FileEntry]:
        failed = threading.Event()
        futures: list[list[_Ref]] = [[] for _ in ckpt.files]
        hashes: list[str] = [""] * len(ckpt.files)
        small = [i for i, f in enumerate(ckpt.files) if 0 < f.size <= self.small_file]
        large = [i for i, f in enumerate(ckpt.files) if not 0 < f.size <= self.small_file]
        pack = _Pack()
        try:
            # Small files first, so the open pack is stored before any large file
            # takes the byte budget (the pack's bytes count against it).
            for i in small:
                if failed.is_set() or cancel.is_set():
                    break
                hashes[i] = self._read_small_file(ckpt, ckpt.files[i], futures[i], pack, failed, stats, progress)
            if not (failed.is_set() or cancel.is_set()):
                self._flush_pack(pack, failed, stats, progress)
            for i in large:
                if failed.is_set() or cancel.is_set():
                    break
                hashes[i] = self._read_file(ckpt, ckpt.files[i], futures[i], failed, cancel, stats, progress)
        finally:
            pack.drop(self.budget)
            # Never return while workers still run on our buffers: wait for every chunk.
            for fut in (fut for ff in futures for fut in ff):
                fut.exception()
        for fut in (fut for ff in futures for fut in ff):
            if fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
        if cancel.is_set():
            raise _Cancelled()
        return [
            fmt.FileEntry(f.relpath, f.size, f.mode, digest, tuple(fut.result() for fut in ff))
            for f, ff, digest in zip(ckpt.files, futures, hashes, strict=True)
        ]

    def _read_small_file(
        self,
        ckpt: LocalCheckpoint,
        f: LocalFile,
        refs: list[_Ref],
        pack: _Pack,
        failed: threading.Event,
        stats: UploadStats,
        progress: Progress | None,
    ) -> str:
        """Read a small file whole. Content already stored (alone, or as a part of an
        earlier pack) is referred to; anything else joins the open pack."""
        if pack.size + f.size > self.pack_target:
            # Before taking budget for the file: the pack's own bytes never wait on it.
            self._flush_pack(pack, failed, stats, progress)
        self.budget.acquire(f.size)
        try:
            data = self._read_whole(ckpt, f)
        except BaseException:
            self.budget.release(f.size)
            raise
        digest = codec.sha256_hex(data)
        known = self._stored_ref(digest, len(data))
        if known is not None or digest in pack:
            self.budget.release(f.size)
            if progress is not None:
                progress(f.size)
        refs.append(_done(known) if known is not None else pack.add(data, digest))
        return digest

    def _stored_ref(self, digest: str, size: int) -> fmt.ChunkRef | None:
        """A reference to content the remote holds: a chunk of its own, or a part of a pack."""
        alone = self.index.lookup(digest)
        if alone is not None:
            return fmt.ChunkRef(digest, size, alone[1], alone[0])
        part = self._parts.get(digest)
        if part is not None and part.used == size:
            pack = self.index.lookup(part.hash)
            if pack is not None:
                return fmt.ChunkRef(part.hash, part.size, pack[1], pack[0], part.offset, size)
        return None

    def _flush_pack(self, pack: _Pack, failed: threading.Event, stats: UploadStats, progress: Progress | None) -> None:
        """Store the open pack as one chunk; its files' references resolve to their parts."""
        if not pack.members:
            return
        data, size, members = b"".join(pack.members), pack.size, pack.parts
        pack.reset()
        fut = self.pool.submit(self._store_chunk, data, None, stats)
        fut.add_done_callback(functools.partial(self._chunk_done, n=size, failed=failed, progress=progress))
        for part in members:
            part.resolve(fut)

    def learn(self, manifests: Iterable[fmt.Manifest]) -> None:
        """Remember where small files sit inside packs, so an unchanged one refers to its old part."""
        for m in manifests:
            for f in m.files:
                if len(f.chunks) == 1 and f.chunks[0].is_part:
                    self._parts[f.hash] = f.chunks[0]
        if len(self._parts) > _MAX_PARTS:
            for key in list(self._parts)[: len(self._parts) - _MAX_PARTS]:
                del self._parts[key]

    def _read_whole(self, ckpt: LocalCheckpoint, f: LocalFile) -> bytes:
        fd = self._open(ckpt, f)
        try:
            data = os.pread(fd, f.size, 0)
        except OSError as exc:
            raise LocalError(f"cannot read {f.abspath}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) != f.size:
            raise _Changed(f"{f.relpath} shrank during upload")
        return data

    def _open(self, ckpt: LocalCheckpoint, f: LocalFile) -> int:
        """Open one of the checkpoint's files for reading, checking it is still the same file."""
        try:
            fd = os.open(f.abspath, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not ckpt.path.exists():
                raise _Vanished("it was deleted during upload") from None
            raise _Changed(f"{f.relpath} was deleted during upload") from None
        except OSError as exc:
            raise LocalError(f"cannot read {f.abspath}: {exc.strerror}") from None
        if os.fstat(fd).st_ino != f.signature[2]:
            os.close(fd)
            raise _Changed(f"{f.relpath} was replaced during upload")
        return fd

    def _read_file(
        self,
        ckpt: LocalCheckpoint,
        f: LocalFile,
        futures: list[_Ref],
        failed: threading.Event,
        cancel: threading.Event,
        stats: UploadStats,
        progress: Progress | None,
    ) -> str:
        """Read one file in order, hand its chunks to the workers; return its hash."""
        fd = self._open(ckpt, f)
        hasher = codec.new_file_hasher()
        try:
            for span in self._plan(fd, f):
                offset, length = span.offset, span.length
                if failed.is_set() or cancel.is_set():
                    break
                self.budget.acquire(length)
                try:
                    data = os.pread(fd, length, offset)
                except OSError as exc:
                    self.budget.release(length)
                    raise LocalError(f"cannot read {f.abspath}: {exc.strerror}") from None
                if len(data) != length:
                    self.budget.release(length)
                    raise _Changed(f"{f.relpath} shrank during upload")
                hasher.update(data)
                fut = self.pool.submit(self._store_chunk, data, span.width, stats)
                fut.add_done_callback(functools.partial(self._chunk_done, n=length, failed=failed, progress=progress))
                futures.append(fut)
        finally:
            os.close(fd)
        return hasher.hexdigest()

    def _chunk_done(self, fut: Future[fmt.ChunkRef], n: int, failed: threading.Event, progress: Progress | None) -> None:
        self.budget.release(n)
        if fut.exception() is not None:
            failed.set()
        elif progress is not None:
            progress(n)

    def _plan(self, fd: int, f: LocalFile) -> list[Span]:
        """Tensor-aligned spans for a safetensors file, fixed ones for anything else."""
        if f.relpath.endswith(".safetensors") and self.chunk_size == CHUNK_SIZE:
            n = safetensors_header_length(os.pread(fd, 8, 0), f.size)
            if n is not None:
                plan = safetensors_plan(os.pread(fd, n, 8), f.size)
                if plan is not None:
                    return plan
        return fixed_plan(f.size, self.chunk_size)

    def _store_chunk(self, data: bytes, width: int | None, stats: UploadStats) -> fmt.ChunkRef:
        digest = codec.sha256_hex(data)
        known = self.index.claim(digest)
        if known is not None:
            return fmt.ChunkRef(digest, len(data), known[1], known[0])
        try:
            codec_name, stored = codec.encode(data, width)
            self.repo.put_chunk(digest, codec_name, stored)
        except BaseException:
            self.index.release(digest)
            raise
        self.index.stored(digest, codec_name, len(stored))
        crashpoints.reached("chunk-stored")
        with _stats_lock:
            stats.chunks_uploaded += 1
            stats.uploaded_bytes += len(stored)
        return fmt.ChunkRef(digest, len(data), len(stored), codec_name)


_stats_lock = threading.Lock()

#: Files up to this size are packed together into chunks of up to PACK_TARGET
#: bytes: a checkpoint's config files, tokenizer, RNG and scheduler state cost
#: one request, not one each.
SMALL_FILE = 1 << 20
PACK_TARGET = CHUNK_SIZE
_MAX_PARTS = 100_000


class _Part:
    """A small file's range of a pack that is being stored; resolves to a part reference."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length
        self._fut: Future[fmt.ChunkRef] | None = None

    def resolve(self, fut: Future[fmt.ChunkRef]) -> None:
        self._fut = fut

    def exception(self) -> BaseException | None:
        return None if self._fut is None else self._fut.exception()

    def result(self) -> fmt.ChunkRef:
        if self._fut is None:
            raise _Cancelled()  # the pack was never stored: the upload stopped first
        return self._fut.result().part(self.offset, self.length)


_Ref = Future[fmt.ChunkRef] | _Part


class _Pack:
    """The small files waiting to be stored together as one chunk."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.members: list[bytes] = []
        self.parts: list[_Part] = []
        self.size = 0
        self._by_hash: dict[str, _Part] = {}

    def __contains__(self, digest: object) -> bool:
        return digest in self._by_hash

    def add(self, data: bytes, digest: str) -> _Part:
        same = self._by_hash.get(digest)
        if same is not None:
            return same  # the same content twice in one checkpoint: stored once
        part = _Part(self.size, len(data))
        self.members.append(data)
        self.parts.append(part)
        self._by_hash[digest] = part
        self.size += len(data)
        return part

    def drop(self, budget: ByteBudget) -> None:
        """Forget files never stored (the upload stopped), returning their bytes to the budget."""
        if self.size:
            budget.release(self.size)
        self.reset()


def _done(ref: fmt.ChunkRef) -> Future[fmt.ChunkRef]:
    fut: Future[fmt.ChunkRef] = Future()
    fut.set_result(ref)
    return fut


def _strict_subset(part: fmt.Manifest, whole: fmt.Manifest) -> bool:
    mine = {(f.path, f.size, f.hash, f.mode) for f in part.files}
    theirs = {(f.path, f.size, f.hash, f.mode) for f in whole.files}
    return mine < theirs


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


__all__ = ["Uploader", "ChunkIndex", "UploadResult", "UploadStats", "ByteBudget", "describe", "human_bytes", "CkptsyncError"]
