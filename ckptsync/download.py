"""The restore executor: carry out a :class:`~ckptsync.restore_plan.RestorePlan` and place the checkpoint atomically.

A checkpoint is assembled in a hidden staging folder inside the target folder
(same file system, so the final move is a rename), every chunk is verified
against its hash as it arrives and every file against its whole-file hash
once written, and only then is it renamed into place. On any failure the
staging folder is removed and the target folder is left exactly as it was.

Files get the permission bits their manifest records, but only the read, write
and execute bits the restoring process's umask allows (:func:`restored_mode`),
as ``cp`` and ``tar`` without ``-p`` give them.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from . import crashpoints, heap
from . import format as fmt
from .errors import IntegrityError, LocalError, UsageError
from .executor import BoundedExecutor
from .fsutil import drop_staging, fsync_dir, new_staging, place, remove_dead_staging, remove_tree
from .hashes import hash_hex, new_hasher
from .logs import printable
from .repository import ManifestRecord, Repository
from .restore_plan import Fetch, LocalView, RestorePlan, plan_restore
from .writeback import Flusher, write_at

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
_READ_BLOCK = 8 << 20


@dataclass
class RestoreResult:
    """A checkpoint restored (or found already present) at ``path``."""

    name: str
    path: Path
    manifest: fmt.Manifest
    key: str
    already_present: bool = False
    files: int = 0
    bytes_written: int = 0
    bytes_downloaded: int = 0
    chunks_fetched: int = 0
    files_reused: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        m = self.manifest
        return {
            "name": self.name,
            "path": str(self.path),
            "step": m.step,
            "metrics": dict(m.metrics),
            "created": fmt.format_time(m.created),
            "host": m.host,
            "commit": m.commit,
            "key": self.key,
            "already_present": self.already_present,
            "files": self.files,
            "bytes_written": self.bytes_written,
            "bytes_downloaded": self.bytes_downloaded,
            "files_reused": self.files_reused,
            "seconds": round(self.seconds, 3),
            "skipped_damaged": self.skipped,
        }


def restore_checkpoint(
    repo: Repository,
    rec: ManifestRecord,
    target_dir: Path,
    *,
    workers: int = 8,
    progress: Progress | None = None,
) -> RestoreResult:
    """Fetch, verify and place one checkpoint at ``target_dir/<name>``, atomically."""
    started = time.monotonic()
    m = rec.manifest
    fmt.check_name(m.name)
    created_dir = _ensure_dir(target_dir)
    final = target_dir / m.name
    result = RestoreResult(m.name, final, m, rec.key, files=len(m.files))
    umask = current_umask()
    local = probe_local(final, m, umask)
    plan = plan_restore(m, local)
    if plan.already_present:
        result.already_present = True
        result.files_reused = len(m.files)
        result.seconds = time.monotonic() - started
        return result
    staging: Path | None = None
    try:
        _check_space(target_dir, m, plan.bytes_to_write)
        remove_dead_staging(target_dir, log)
        staging = new_staging(target_dir)
        built = staging / m.name
        heap.keep_buffers()
        try:
            _build(repo, plan, built, result, workers, progress, umask)
        finally:
            heap.give_back()
        fsync_dir(staging)
        replaced = describe_replaced(final, m, local)
        crashpoints.reached("before-rename")
        place(built, final)
        fsync_dir(target_dir)
    except BaseException as exc:
        if staging is not None:
            drop_staging(staging)
        if created_dir:
            remove_tree(target_dir)
        if isinstance(exc, OSError):
            raise _local_error(exc, final) from None
        raise
    drop_staging(staging)
    if replaced:
        log.warning("%s", replaced)
    result.seconds = time.monotonic() - started
    return result


def restored_mode(mode: int, umask: int) -> int:
    """The permission bits a file recorded with ``mode`` gets: its read, write and execute bits less ``umask``.

    Never the set-user-ID, set-group-ID or sticky bits, never more than the umask
    allows (a manifest is remote data; see docs/FORMAT.md, section 5.4).
    """
    return mode & 0o777 & ~umask


def current_umask() -> int:
    """This process's umask, read from ``/proc/self/status`` where the kernel shows it (Linux 4.7 and later)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere reading it means setting it: put back at once
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- building


def _build(
    repo: Repository, plan: RestorePlan, root: Path, result: RestoreResult, workers: int, progress: Progress | None, umask: int
) -> None:
    """Assemble the checkpoint at ``root`` (inside the staging folder)."""
    m = plan.manifest
    if m.kind == "dir":
        os.mkdir(root, 0o755)
        for folder in plan.folders:
            _make_folder(root, folder)
    plan = _reuse(plan, root, result, progress)
    sinks: list[int] = []
    try:
        for entry in plan.write:
            sinks.append(_create(_path(root, m, entry), entry.size))
        hashes = FileHashes(plan.write, sinks)
        _fetch_all(repo, plan.fetches, sinks, plan, result, workers, progress, hashes)
        hashes.check()
        for entry, fd in zip(plan.write, sinks, strict=True):
            os.fchmod(fd, restored_mode(entry.mode, umask))  # through the open file: no second lookup
            os.fsync(fd)
            result.bytes_written += entry.size
    finally:
        for fd in sinks:
            os.close(fd)
    written = {entry.path for entry in plan.write}
    for entry in m.files:
        if entry.path not in written:  # linked or copied from a local file
            os.chmod(_path(root, m, entry), restored_mode(entry.mode, umask), follow_symlinks=False)
    if m.kind == "dir":
        for folder in sorted(plan.folders, key=lambda f: -f.count("/")):
            fsync_dir(root.joinpath(*folder.split("/")))
        fsync_dir(root)


def _reuse(plan: RestorePlan, root: Path, result: RestoreResult, progress: Progress | None) -> RestorePlan:
    """Link (or copy) the reusable local files into place; plan again without those that failed."""
    placed: dict[str, Path] = {}
    for entry, source in plan.reuse:
        if _link_or_copy(source, _path(root, plan.manifest, entry)):
            placed[entry.path] = source
            result.files_reused += 1
            result.bytes_written += entry.size
            if progress:
                progress(entry.size)
    if len(placed) == len(plan.reuse):
        return plan
    again = plan_restore(plan.manifest, LocalView(placed))
    return RestorePlan(again.manifest, reuse=(), write=again.write, folders=again.folders, fetches=again.fetches)


def _path(root: Path, m: fmt.Manifest, entry: fmt.FileEntry) -> Path:
    return root if m.kind == "file" else root.joinpath(*entry.path.split("/"))


def _make_folder(root: Path, relpath: str) -> None:
    """Create one folder of the checkpoint (its parents exist already), never through a symlink."""
    d = root.joinpath(*relpath.split("/"))
    try:
        os.mkdir(d, 0o755)
    except FileExistsError:
        if d.is_symlink() or not d.is_dir():
            raise IntegrityError(f"manifest path {relpath!r} would be written through a non-folder") from None


def _create(path: Path, size: int) -> int:
    """A new file of ``size`` bytes to write into; never an existing one, never through a link."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if size:
        os.ftruncate(fd, size)
    return fd


def _fetch_all(
    repo: Repository,
    fetches: tuple[Fetch, ...],
    sinks: list[int],
    plan: RestorePlan,
    result: RestoreResult,
    workers: int,
    progress: Progress | None,
    hashes: FileHashes,
) -> None:
    """Download every chunk once, write its bytes where they go and hash them into their files'
    hashes; stop at the first failure."""
    lock = threading.Lock()
    failed = threading.Event()
    # One writer per file at a time: concurrent writes to one file contend for its inode lock,
    # and the kernel spins on that lock, burning CPU, where a Python lock sleeps.
    writing = [threading.Lock() for _ in sinks]
    flusher = Flusher(sinks)

    def fetch(job: Fetch) -> None:
        ref = job.ref
        try:
            if failed.is_set():
                return
            try:
                raw = repo.get_chunk(ref)
            except IntegrityError:
                raw = repo.get_chunk(ref)  # once more: the first read may have been damaged in transit
            view = memoryview(raw)
            for t in job.targets:
                if t.start + t.length > len(view):
                    raise IntegrityError(f"chunk {ref.hash} is {len(view)} bytes, shorter than the part the manifest names")
                with writing[t.file]:
                    write_at(sinks[t.file], view[t.start : t.start + t.length], t.offset)
                flusher.landed(t.file, t.length)
                hashes.landed(t.file, t.offset, view[t.start : t.start + t.length])
            crashpoints.reached("restore-chunk")
            with lock:
                result.bytes_downloaded += ref.stored
                result.chunks_fetched += 1
            if progress:
                progress(job.length)
        except IntegrityError as exc:
            failed.set()
            paths = sorted({plan.write[t.file].path for t in job.targets})
            raise IntegrityError(f"{exc.message}; needed by {', '.join(paths)}", chunk=ref.hash, path=paths[0]) from None
        except BaseException:
            failed.set()
            raise

    # At most two chunks per worker between fetch and write: memory stays bounded.
    # Finished fetches are dropped as the loop goes (their errors kept): memory does not grow with
    # the number of chunks.
    pending: list[Future[None]] = []
    errors: list[BaseException] = []
    try:
        with BoundedExecutor(workers, 2 * max(1, workers), name="ckptsync-restore") as pool:
            for job in fetches:
                with pool.reserve(1) as hold:
                    if failed.is_set():
                        break
                    pending.append(pool.submit(fetch, job, hold=hold))
                if len(pending) > 8 * max(1, workers):
                    pending = _unfinished(pending, errors)
        _unfinished(pending, errors, wait=True)
    finally:
        flusher.close()  # before the files are closed
    if errors:
        raise errors[0]


def _unfinished(futures: list[Future[None]], errors: list[BaseException], *, wait: bool = False) -> list[Future[None]]:
    """The futures still running (all of them finish first with ``wait``); finished ones' errors go to ``errors``."""
    left = []
    for fut in futures:
        if not (wait or fut.done()):
            left.append(fut)
            continue
        exc = fut.exception()
        if exc is not None:
            errors.append(exc)
    return left


class FileHashes:
    """The whole-file hash of every file being assembled, taken as its bytes land rather than in a
    second pass over the files once they are written.

    A file is hashed in order, by one thread at a time and without making the others
    wait: bytes landing at the file's hash cursor while nobody hashes that file are
    hashed from memory by the thread that wrote them, which then hashes, read back from
    the file (the page cache), whatever landed right after meanwhile; bytes landing
    anywhere else are only noted. So each byte is hashed once, most of them without
    being read again, and checking overlaps the downloads.
    """

    def __init__(self, entries: tuple[fmt.FileEntry, ...], sinks: list[int]) -> None:
        self.entries = entries
        self.sinks = sinks
        self._hashers = [new_hasher(e.algorithm) for e in entries]
        self._cursor = [0] * len(entries)
        self._ahead: list[dict[int, int]] = [{} for _ in entries]  # offset -> length, landed but not hashed
        self._busy = [False] * len(entries)
        self._lock = threading.Lock()
        # Files whose hash is a piece digest (format version 6): the hash of each piece, by its
        # offset in the file, once it landed. A whole chunk's is its name (checked on download).
        self._pieces: dict[int, dict[int, tuple[int, fmt.ChunkRef]]] = {}
        self._landed: dict[int, list[str | None]] = {}
        for i, entry in enumerate(entries):
            if entry.needs_pieces:
                at, offset = {}, 0
                for k, ref in enumerate(entry.chunks):
                    at[offset] = (k, ref)
                    offset += ref.used
                self._pieces[i] = at
                self._landed[i] = [None] * len(entry.chunks)

    def landed(self, file: int, offset: int, data: memoryview) -> None:
        """Bytes ``data`` were written at ``offset`` of file ``file``."""
        pieces = self._pieces.get(file)
        if pieces is not None:
            k, ref = pieces[offset]
            self._landed[file][k] = hash_hex(ref.algorithm, data) if ref.is_part else ref.hash
            return
        with self._lock:
            if self._busy[file] or offset != self._cursor[file]:
                self._ahead[file][offset] = len(data)
                return
            self._busy[file] = True
        try:
            self._hashers[file].update(data)
            end = offset + len(data)
            while True:
                with self._lock:
                    self._cursor[file] = end
                    length = self._ahead[file].pop(end, None)
                    if length is None:
                        self._busy[file] = False
                        return
                self._hash_back(file, end, length)
                end += length
        except BaseException:
            with self._lock:
                self._busy[file] = False
            raise

    def _hash_back(self, file: int, offset: int, length: int) -> None:
        """Hash bytes ``[offset, offset + length)`` of file ``file``, read back from it."""
        end, fd, h = offset + length, self.sinks[file], self._hashers[file]
        while offset < end:
            block = os.pread(fd, min(_READ_BLOCK, end - offset), offset)
            if not block:
                raise IntegrityError(f"file {self.entries[file].path} is shorter than written (inconsistent manifest)")
            h.update(block)
            offset += len(block)

    def check(self) -> None:
        """Every file whole and matching its hash; IntegrityError naming the first that does not."""
        for i, entry in enumerate(self.entries):
            if i in self._landed:
                got = self._landed[i]
                if None in got or fmt.piece_digest(cast(list[str], got), entry.algorithm) != entry.hash:
                    raise IntegrityError(
                        f"file {entry.path} does not match its hash after assembly (inconsistent manifest)", path=entry.path
                    )
                continue
            if self._cursor[i] != entry.size or self._ahead[i] or self._hashers[i].hexdigest() != entry.hash:
                raise IntegrityError(
                    f"file {entry.path} does not match its whole-file hash after assembly (inconsistent manifest)", path=entry.path
                )


# ---------------------------------------------------------------- what is already local


def probe_local(final: Path, m: fmt.Manifest, umask: int) -> LocalView:
    """Which of the manifest's files are already at ``final`` with the right size and hash
    (exact: nothing else there, every mode :func:`restored_mode` under ``umask``)."""
    if not final.exists() or final.is_symlink():
        return LocalView()
    found: dict[str, Path] = {}
    for entry in m.files:
        path = final if m.kind == "file" else final.joinpath(*entry.path.split("/"))
        if m.kind == "dir" and any(p.is_symlink() for p in _parents(final, entry.path)[1:]):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size or st.st_nlink != 1:
            continue  # a hard-linked file may be someone else's: never reuse (or chmod) it
        try:
            same = file_hash(path, entry) == entry.hash
        except OSError:  # replaced meanwhile (a link, gone): not reusable
            continue
        if same:
            found[entry.path] = path
    return LocalView(found, exact=len(found) == len(m.files) and _exact(final, m, umask))


def _parents(root: Path, relpath: str) -> list[Path]:
    parts = relpath.split("/")
    return [root.joinpath(*parts[:i]) for i in range(len(parts))]


def _exact(final: Path, m: fmt.Manifest, umask: int) -> bool:
    """True if the local entry holds exactly the manifest's files and nothing else."""
    if m.kind == "file":
        return final.is_file() and not final.is_symlink()
    if not final.is_dir():
        return False
    present = set()
    for dirpath, _dirs, files in os.walk(final):
        for fn in files:
            present.add((Path(dirpath) / fn).relative_to(final).as_posix())
    return present == {e.path for e in m.files} and all(
        _mode(final.joinpath(*e.path.split("/"))) == restored_mode(e.mode, umask) for e in m.files
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def file_hash(path: Path, entry: fmt.FileEntry) -> str:
    """The file's hash under ``entry``'s rule (its content's, or the digest of the pieces its chunk
    entries cut); empty if it is no longer a regular file (never blocks on a FIFO swapped in)."""
    lengths = [c.used for c in entry.chunks] if entry.needs_pieces else [entry.size]
    piece_hashes = []
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        for length in lengths:
            h = new_hasher(entry.algorithm)
            while length > 0 and (block := f.read(min(_READ_BLOCK, length))):
                h.update(block)
                length -= len(block)
            piece_hashes.append(h.hexdigest())
        if f.read(1):
            return ""  # longer than the entry says: grown since it was measured
    return fmt.piece_digest(piece_hashes, entry.algorithm) if entry.needs_pieces else piece_hashes[0]


def _link_or_copy(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except OSError:
        pass
    try:
        shutil.copyfile(src, dst, follow_symlinks=False)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- what a restore replaces

#: How many names a warning about replaced files shows of each kind.
_NAMES_SHOWN = 3


def describe_replaced(final: Path, m: fmt.Manifest, local: LocalView) -> str | None:
    """What restoring ``m`` over ``final`` discards, as one line; None when nothing is lost.

    Lost are the local files the checkpoint does not have and those it has with
    other content (``local`` holds the ones reused); missing files and modes are not losses.
    """
    if not os.path.lexists(final):
        return None
    where = printable(str(final))
    if final.is_symlink():
        return f"replaced the symbolic link {where} (not followed) with the restored checkpoint"
    if not final.is_dir():
        if m.kind == "file":
            return None if m.name in local.reusable else f"replaced the existing {where}: its content differed from the checkpoint's"
        return f"replaced the existing file {where} with the restored folder"
    present = _entries(final)
    if m.kind == "file":
        return f"replaced the existing folder {where} with the restored file: removed {_some(sorted(present))}"
    wanted = {e.path for e in m.files}
    extra = sorted(present - wanted)
    rewritten = sorted(p for p in present & wanted if p not in local.reusable)
    lost = [f"removed {_some(extra)} not in the restored checkpoint"] if extra else []
    lost += [f"rewrote {_some(rewritten)} whose content differed"] if rewritten else []
    return f"replaced the existing {where}: {'; '.join(lost)}" if lost else None


def _entries(folder: Path) -> set[str]:
    """The relative paths of everything under ``folder`` but folders (symbolic links to folders included)."""
    out = set()
    for dirpath, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            out.add(Path(dirpath, name).relative_to(folder).as_posix())
    return out


def _some(paths: list[str]) -> str:
    """``3 files (a, b, c, …)``: the count and the first few names, escaped for a log line."""
    shown = ", ".join(printable(p) for p in paths[:_NAMES_SHOWN]) + (", …" if len(paths) > _NAMES_SHOWN else "")
    return f"{len(paths)} file{'s' if len(paths) != 1 else ''} ({shown})"


# ---------------------------------------------------------------- the target folder


def _check_space(target_dir: Path, m: fmt.Manifest, need: int) -> None:
    """Refuse up front what cannot fit: more than the file system holds (a hostile or corrupt
    manifest: skipped like damage), or more than it has free (a clear error, nothing written)."""
    try:
        st = os.statvfs(target_dir)
    except OSError:
        return
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    if need > total:
        raise IntegrityError(f"checkpoint {m.name} declares {need} bytes, more than the whole file system under {target_dir} holds")
    if need > free:
        raise LocalError(
            f"no space left on device for {m.name}: it needs {need} bytes, {free} are free under {target_dir}",
            "free space, or restore into a larger volume; nothing was changed",
        )


def _ensure_dir(path: Path) -> bool:
    """Create the target folder if missing; True if this call created it."""
    if path.is_dir():
        return False
    if path.exists():
        raise UsageError(f"{path} exists and is not a directory", "pass a folder with --dir")
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as exc:
        raise _local_error(exc, path) from None
    return True


def _local_error(exc: OSError, where: Path) -> LocalError:
    if exc.errno == errno.EFBIG:
        return LocalError(
            f"a file of {where.name} is too large for this file system (or the process's file size limit)",
            "restore onto a file system that holds files this large; nothing was changed",
        )
    if exc.errno == errno.ENOSPC:
        return LocalError(
            f"no space left on device while restoring into {where.parent}",
            "free space, or restore into a larger volume; nothing was changed",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LocalError(f"cannot write {where}: {exc.strerror}", "check the permissions of --dir")
    return LocalError(f"cannot restore into {where}: {exc.strerror or exc}")
