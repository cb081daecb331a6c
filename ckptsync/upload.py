"""The upload pipeline: read a checkpoint's files, hash, encode and store their chunks.

Files are read in order by the calling thread, which also computes each file's
whole-file hash; chunks are hashed, encoded and stored by the workers of a
:class:`~ckptsync.executor.BoundedExecutor`, whose byte budget bounds what is
held in memory whatever the checkpoint's size. A chunk the remote already
holds (by hash) is never stored again, and two workers never store the same
chunk at once. Small files are packed (:mod:`ckptsync.packing`).

The pipeline stores chunks only; committing them (the manifest) is the
session's decision (:mod:`ckptsync.session`).
"""

from __future__ import annotations

import functools
import os
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from . import codec, crashpoints
from . import format as fmt
from .checkpoint import LocalCheckpoint, LocalFile
from .chunking import CHUNK_SIZE, Span, fixed_plan, safetensors_header_length, safetensors_plan
from .errors import LocalError
from .executor import BoundedExecutor
from .hashes import DEFAULT_HASH, hash_hex
from .packing import PACK_TARGET, SMALL_FILE, Cancelled, Pack, PartIndex, PendingPart
from .repository import Repository, StoredChunk

Progress = Callable[[int], None]
_Ref = Future[fmt.ChunkRef] | PendingPart


class Vanished(Exception):
    """The checkpoint was deleted while it was read."""


class Changed(Exception):
    """A file of the checkpoint changed while it was read."""


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


@dataclass
class UploadStats:
    """What one checkpoint's upload read and stored."""

    files: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    uploaded_bytes: int = 0
    chunks: int = 0
    chunks_uploaded: int = 0
    seconds: float = 0.0


class _Run:
    """One checkpoint going through the pipeline: its references, hashes and failure flag."""

    def __init__(
        self, ckpt: LocalCheckpoint, stats: UploadStats, progress: Progress | None, cancel: threading.Event, algorithm: str
    ) -> None:
        self.ckpt = ckpt
        self.algorithm = algorithm
        self.stats = stats
        self.progress = progress
        self.cancel = cancel
        self.failed = threading.Event()
        self.refs: list[list[_Ref]] = [[] for _ in ckpt.files]
        self.hashes = [""] * len(ckpt.files)

    @property
    def stopped(self) -> bool:
        return self.failed.is_set() or self.cancel.is_set()

    def chunk_done(self, fut: Future[fmt.ChunkRef], n: int) -> None:
        if fut.exception() is not None:
            self.failed.set()
        elif self.progress is not None:
            self.progress(n)

    def futures(self) -> list[_Ref]:
        return [ref for refs in self.refs for ref in refs]


class Uploader:
    """Stores checkpoints' chunks into one repository; the workers and the byte budget are shared.

    One checkpoint at a time per caller. Each chunk in flight holds its raw bytes
    and, briefly, its encoded copy: the budget is half of ``max_memory``.
    """

    def __init__(
        self,
        repo: Repository,
        index: ChunkIndex | None = None,
        *,
        workers: int = 4,
        max_memory: int = 32 << 20,
        nice: int = 0,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.repo = repo
        self.index = index or ChunkIndex()
        self.chunk_size = chunk_size
        self.small_file = min(SMALL_FILE, chunk_size // 4)
        self.pack_target = min(PACK_TARGET, chunk_size)
        self.parts = PartIndex()
        self.executor = BoundedExecutor(workers, max(chunk_size, max_memory // 2), nice=nice, name="ckptsync-upload")

    def close(self) -> None:
        self.executor.shutdown(cancel=True)

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store(
        self,
        ckpt: LocalCheckpoint,
        stats: UploadStats,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        algorithm: str = DEFAULT_HASH,
    ) -> list[fmt.FileEntry]:
        """Store every chunk of ``ckpt``, named by their hash under ``algorithm``; return its file entries.

        Raises :class:`Cancelled` if ``cancel`` was set (chunks stored so far
        stay), :class:`Vanished` or :class:`Changed` if the checkpoint was
        deleted or changed under the reader, and whatever a chunk's store raised.
        """
        run = _Run(ckpt, stats, progress, cancel or threading.Event(), algorithm)
        small = [i for i, f in enumerate(ckpt.files) if 0 < f.size <= self.small_file]
        large = [i for i, f in enumerate(ckpt.files) if not 0 < f.size <= self.small_file]
        pack = Pack()
        try:
            # Small files first, so the open pack is stored before any large file
            # waits for the byte budget (the pack's bytes count against it).
            for i in small:
                if run.stopped:
                    break
                pack = self._read_small_file(run, i, pack)
            if not run.stopped:
                pack = self._flush(run, pack)
            for i in large:
                if run.stopped:
                    break
                self._read_file(run, ckpt.files[i], run.refs[i])
        finally:
            pack.drop()
            # Never return while workers still run on our buffers: wait for every chunk.
            for ref in run.futures():
                ref.exception()
        for ref in run.futures():
            exc = ref.exception()
            if exc is not None:
                raise exc
        if run.cancel.is_set():
            raise Cancelled()
        entries = []
        for f, refs, digest in zip(ckpt.files, run.refs, run.hashes, strict=True):
            chunks = tuple(ref.result() for ref in refs)
            # A small file was hashed whole (its one piece); a large one's pieces are whole chunks.
            digest = digest or fmt.piece_digest([c.hash for c in chunks], algorithm)
            entries.append(fmt.FileEntry(f.relpath, f.size, f.mode, digest, chunks, True, algorithm))
        return entries

    def learn(self, manifests: Iterable[fmt.Manifest]) -> None:
        """Remember where committed small files sit inside packs (see :class:`PartIndex`)."""
        self.parts.learn(manifests)

    # -- small files

    def _read_small_file(self, run: _Run, i: int, pack: Pack) -> Pack:
        """Read a small file whole. Content already stored (alone, or as a part of an
        earlier pack) is referred to; anything else joins the open pack. Returns the open pack."""
        f = run.ckpt.files[i]
        if pack.size + f.size > self.pack_target:
            # Before taking budget for the file: the pack's own bytes never wait on it.
            pack = self._flush(run, pack)
        with self.executor.reserve(f.size) as hold:
            data = self._read_whole(run.ckpt, f)
            digest = hash_hex(run.algorithm, data)
            known = self._stored_ref(digest, len(data), run.algorithm)
            if known is not None or digest in pack:
                if run.progress is not None:
                    run.progress(f.size)
            run.refs[i].append(_done(known) if known is not None else pack.add(data, digest, hold))
        run.hashes[i] = digest
        return pack

    def _stored_ref(self, digest: str, size: int, algorithm: str) -> fmt.ChunkRef | None:
        """A reference to content the remote holds: a chunk of its own, or a part of a pack."""
        alone = self.index.lookup(digest)
        if alone is not None:
            return fmt.ChunkRef(digest, size, alone[1], alone[0], algorithm=algorithm)
        part = self.parts.get(digest, size, algorithm)
        if part is not None:
            pack = self.index.lookup(part.hash)
            if pack is not None:
                return fmt.ChunkRef(part.hash, part.size, pack[1], pack[0], part.offset, size, algorithm)
        return None

    def _flush(self, run: _Run, pack: Pack) -> Pack:
        """Store the open pack as one chunk (its files' references resolve to their parts); return a new one."""
        if pack.members and pack.hold is not None:
            data = b"".join(pack.members)
            fut = self.executor.submit(self._store_chunk, data, None, run, hold=pack.hold)
            fut.add_done_callback(functools.partial(run.chunk_done, n=pack.size))
            for part in pack.parts:
                part.resolve(fut)
        return Pack()

    # -- large files

    def _read_file(self, run: _Run, f: LocalFile, refs: list[_Ref]) -> None:
        """Read one file in order and hand its chunks to the workers. Its hash is the digest of
        their hashes (format version 6): the content is hashed once, by the workers."""
        fd = self._open(run.ckpt, f)
        try:
            for span in self._plan(fd, f):
                if run.stopped:
                    break
                with self.executor.reserve(span.length) as hold:
                    data = _pread(fd, f, span.offset, span.length)
                    fut = self.executor.submit(self._store_chunk, data, span.width, run, hold=hold)
                fut.add_done_callback(functools.partial(run.chunk_done, n=span.length))
                refs.append(fut)
        finally:
            os.close(fd)

    def _plan(self, fd: int, f: LocalFile) -> list[Span]:
        """Tensor-aligned spans for a safetensors file, fixed ones for anything else."""
        if f.relpath.endswith(".safetensors") and self.chunk_size == CHUNK_SIZE:
            n = safetensors_header_length(os.pread(fd, 8, 0), f.size)
            if n is not None:
                plan = safetensors_plan(os.pread(fd, n, 8), f.size)
                if plan is not None:
                    return plan
        return fixed_plan(f.size, self.chunk_size)

    # -- reading

    def _read_whole(self, ckpt: LocalCheckpoint, f: LocalFile) -> bytes:
        fd = self._open(ckpt, f)
        try:
            return _pread(fd, f, 0, f.size)
        finally:
            os.close(fd)

    def _open(self, ckpt: LocalCheckpoint, f: LocalFile) -> int:
        """Open one of the checkpoint's files for reading, checking it is still the same file."""
        try:  # O_NONBLOCK: a FIFO swapped in for the file must not block the open
            fd = os.open(f.abspath, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            if not ckpt.path.exists():
                raise Vanished("it was deleted during upload") from None
            raise Changed(f"{f.relpath} was deleted during upload") from None
        except OSError as exc:
            hint = "make it readable by the user ckptsync runs as" if isinstance(exc, PermissionError) else None
            raise LocalError(f"cannot read {f.abspath}: {exc.strerror}", hint) from None
        st = os.fstat(fd)
        if st.st_ino != f.signature[2] or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise Changed(f"{f.relpath} was replaced during upload")
        return fd

    # -- the workers

    def _store_chunk(self, data: bytes, width: int | None, run: _Run) -> fmt.ChunkRef:
        digest, stats = hash_hex(run.algorithm, data), run.stats
        known = self.index.claim(digest)
        if known is not None:
            return fmt.ChunkRef(digest, len(data), known[1], known[0], algorithm=run.algorithm)
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
        return fmt.ChunkRef(digest, len(data), len(stored), codec_name, algorithm=run.algorithm)


_stats_lock = threading.Lock()


def _pread(fd: int, f: LocalFile, offset: int, length: int) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise LocalError(f"cannot read {f.abspath}: {exc.strerror}") from None
    if len(data) != length:
        raise Changed(f"{f.relpath} shrank during upload")
    return data


def _done(ref: fmt.ChunkRef) -> Future[fmt.ChunkRef]:
    fut: Future[fmt.ChunkRef] = Future()
    fut.set_result(ref)
    return fut
