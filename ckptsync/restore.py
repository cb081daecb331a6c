"""The restore path: choose a committed checkpoint, fetch, verify, place atomically.

A checkpoint is assembled in a hidden staging folder inside the target folder
(same file system, so the final move is a rename), every chunk is verified
against its hash as it arrives and every file against its whole-file hash
once written, and only then is it renamed into place. On any failure the
staging folder is removed and the target folder is left exactly as it was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import catalog, crashpoints, locks, policy
from . import format as fmt
from .errors import IntegrityError, LocalError, NothingToRestore, StoreError, UsageError
from .fsutil import fsync_dir
from .options import this_host
from .repository import ManifestRecord, Repository

log = logging.getLogger(__name__)
C = TypeVar("C", bound=policy.HasManifest)

Progress = Callable[[int], None]
STAGING_PREFIX = ".ckptsync-staging-"
_READ_BLOCK = 8 << 20
# The whole-file hash (format: SHA-256). Chunks are decoded through the repository,
# which imports the codec (numpy, zstandard) on first use: fetching starts before that.
_new_file_hasher = hashlib.sha256


@dataclass(frozen=True)
class Selector:
    """Which checkpoint to restore: ``latest``, ``best`` (by ``metric``/``mode``), a ``name`` or a ``step``."""

    how: str = "latest"
    metric: str | None = None
    mode: str | None = None
    name: str | None = None
    step: int | None = None


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


def candidates(records: Sequence[C], sel: Selector) -> list[C]:
    """The checkpoints ``sel`` asks for, in the order to try them (pure)."""
    if sel.name is not None:
        chosen = [r for r in records if r.manifest.name == sel.name]
        return policy.by_latest(chosen)
    if sel.step is not None:
        return policy.by_latest([r for r in records if r.manifest.step == sel.step])
    if sel.how == "best":
        if not sel.metric:
            raise UsageError("--best needs a metric", "pass --metric NAME (for example --metric eval_loss)")
        mode = policy.infer_mode(sel.metric, sel.mode)
        ranked = policy.by_best(records, sel.metric, mode)
        if records and not ranked:
            present = ", ".join(policy.metric_names(records)) or "none"
            raise UsageError(
                f"no committed checkpoint has the metric {sel.metric!r}",
                f"metrics present: {present}",
            )
        return ranked
    if sel.how != "latest":
        raise UsageError(f"unknown selection {sel.how!r}", "use --latest, --best, --name or --step")
    return policy.by_latest(records)


def restore(
    repo: Repository,
    target_dir: Path,
    sel: Selector,
    *,
    strict: bool = False,
    workers: int = 8,
    progress_factory: Callable[[ManifestRecord], Progress | None] | None = None,
    host: str | None = None,
    all_hosts: bool = False,
) -> RestoreResult | None:
    """Restore the first intact checkpoint among the candidates ``sel`` names.

    Returns None when nothing is committed (or nothing matches ``--name``/``--step``:
    then NothingToRestore is raised). A damaged candidate is reported and the next
    one is tried, unless ``strict``. Multi-host checkpoints are candidates only once
    every host committed; this ``host``'s files are restored (``all_hosts``: everyone's).
    """
    lock = _shared_lock(repo, host or this_host())
    try:
        return _restore_locked(
            repo, target_dir, sel, strict=strict, workers=workers, progress_factory=progress_factory, host=host, all_hosts=all_hosts
        )
    finally:
        if lock is not None:
            lock.release()


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


def _restore_locked(
    repo: Repository,
    target_dir: Path,
    sel: Selector,
    *,
    strict: bool,
    workers: int,
    progress_factory: Callable[[ManifestRecord], Progress | None] | None,
    host: str | None,
    all_hosts: bool,
) -> RestoreResult | None:
    records = repo.load_manifests(names=[sel.name] if sel.name is not None else None)
    checkpoints = catalog.group(records)
    for ck in checkpoints:
        if not ck.complete:
            log.info("skipping %s: not committed yet by %s", ck.name, ", ".join(ck.missing))
    order = candidates([ck for ck in checkpoints if ck.complete], sel)
    if not order:
        if sel.name is not None or sel.step is not None:
            what = f"named {sel.name!r}" if sel.name is not None else f"at step {sel.step}"
            raise NothingToRestore(f"no complete committed checkpoint {what} in {repo.url}", "run 'ckptsync list' to see what is committed")
        return None
    skipped: list[str] = []
    last_error: IntegrityError | None = None
    me = host or this_host()
    for ck in order:
        rec = ck.merged() if all_hosts else ck.for_host(me)
        try:
            result = restore_checkpoint(
                repo, rec, target_dir, workers=workers, progress=progress_factory(rec) if progress_factory else None
            )
            result.skipped = skipped
            return result
        except IntegrityError as exc:
            last_error = exc
            log.warning("checkpoint %s (commit %s) is damaged: %s", rec.name, rec.manifest.commit, exc.message)
            skipped.append(rec.name)
            if strict:
                raise IntegrityError(
                    f"checkpoint {rec.name} is damaged: {exc.message}",
                    "run 'ckptsync verify --deep' to see every damaged chunk; without --strict restore falls back to the next checkpoint",
                    chunk=exc.chunk,
                    path=exc.path,
                ) from None
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
    local = _matching_local_files(final, m)
    if local is not None and len(local) == len(m.files) and _exact(final, m):
        result.already_present = True
        result.files_reused = len(m.files)
        result.seconds = time.monotonic() - started
        return result
    try:
        _check_space(target_dir, m, local or {})
    except BaseException:
        if created_dir:
            _remove_tree(target_dir)
        raise
    _remove_dead_staging(target_dir)
    staging = target_dir / f"{STAGING_PREFIX}{os.getpid()}-{_host_slug()}-{secrets.token_hex(6)}"
    _active_staging.add(staging.name)
    try:
        os.mkdir(staging, 0o700)
        built = staging / m.name
        _build(repo, m, built, local or {}, result, workers, progress)
        fsync_dir(staging)
        crashpoints.reached("before-rename")
        _place(built, final)
        fsync_dir(target_dir)
    except BaseException as exc:
        _remove_tree(staging)
        _active_staging.discard(staging.name)
        if created_dir:
            _remove_tree(target_dir)
        if isinstance(exc, OSError):
            raise _local_error(exc, final) from None
        raise
    _remove_tree(staging)
    _active_staging.discard(staging.name)
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------- building


class _Sink:
    """One file being written in the staging folder."""

    def __init__(self, path: Path, entry: fmt.FileEntry) -> None:
        self.path = path
        self.entry = entry
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if entry.size:
            os.ftruncate(self.fd, entry.size)


def _build(
    repo: Repository,
    m: fmt.Manifest,
    root: Path,
    local: dict[str, Path],
    result: RestoreResult,
    workers: int,
    progress: Progress | None,
) -> None:
    if m.kind == "dir":
        os.mkdir(root, 0o755)
    sinks: list[_Sink] = []
    # chunk hash -> where its bytes go: a chunk repeated anywhere, or packed with
    # several small files, is fetched once.
    wanted: dict[str, list[_Target]] = {}
    refs: dict[str, fmt.ChunkRef] = {}
    try:
        for entry in m.files:
            path = root if m.kind == "file" else _staging_path(root, entry.path)
            reuse = local.get(entry.path)
            if reuse is not None and _link_or_copy(reuse, path):
                result.files_reused += 1
                result.bytes_written += entry.size
                if progress:
                    progress(entry.size)
                continue
            sink = _Sink(path, entry)
            sinks.append(sink)
            offset = 0
            for ref in entry.chunks:
                wanted.setdefault(ref.hash, []).append(_Target(sink, offset, ref.offset, ref.used))
                refs[ref.hash] = ref.whole()
                offset += ref.used
        _fetch_all(repo, wanted, refs, result, workers, progress)
        _verify_files(sinks, workers)
        for sink in sinks:
            os.fsync(sink.fd)
            result.bytes_written += sink.entry.size
    finally:
        for sink in sinks:
            os.close(sink.fd)
    for entry in m.files:
        path = root if m.kind == "file" else root.joinpath(*entry.path.split("/"))
        os.chmod(path, entry.mode & 0o1777, follow_symlinks=False)
    if m.kind == "dir":
        for d in sorted({p for e in m.files for p in _parents(root, e.path)}, reverse=True):
            fsync_dir(d)


@dataclass(frozen=True)
class _Target:
    """Where a chunk's bytes ``[start, start + length)`` go: ``sink`` at ``offset``."""

    sink: _Sink
    offset: int
    start: int
    length: int


def _fetch_all(
    repo: Repository,
    wanted: dict[str, list[_Target]],
    refs: dict[str, fmt.ChunkRef],
    result: RestoreResult,
    workers: int,
    progress: Progress | None,
) -> None:
    lock = threading.Lock()
    # Bound memory: at most 2 chunks per worker between fetch and write.
    slots = threading.Semaphore(max(1, workers) * 2)

    failed = threading.Event()

    def fetch(digest: str) -> None:
        try:
            if failed.is_set():
                return
            ref = refs[digest]
            try:
                raw = repo.get_chunk(ref)
            except IntegrityError:
                raw = repo.get_chunk(ref)  # once more: the first read may have been damaged in transit
            view = memoryview(raw)
            for t in wanted[digest]:
                if t.start + t.length > len(view):
                    raise IntegrityError(f"chunk {digest} is {len(view)} bytes, shorter than the part the manifest names")
                _pwrite_all(t.sink.fd, view[t.start : t.start + t.length], t.offset)
            crashpoints.reached("restore-chunk")
            with lock:
                result.bytes_downloaded += ref.stored
                result.chunks_fetched += 1
            if progress:
                progress(sum(t.length for t in wanted[digest]))
        except IntegrityError as exc:
            failed.set()
            paths = sorted({t.sink.entry.path for t in wanted[digest]})
            raise IntegrityError(f"{exc.message}; needed by {', '.join(paths)}", chunk=digest, path=paths[0]) from None
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ckptsync-restore") as pool:
        futures: list[Future[None]] = []
        for digest in wanted:
            slots.acquire()
            if failed.is_set():
                slots.release()
                break
            futures.append(pool.submit(fetch, digest))
    for fut in futures:
        exc = fut.exception()
        if exc is not None:
            raise exc


def _verify_files(sinks: list[_Sink], workers: int) -> None:
    def check(sink: _Sink) -> None:
        h = _new_file_hasher()
        offset = 0
        while offset < sink.entry.size:
            block = os.pread(sink.fd, min(_READ_BLOCK, sink.entry.size - offset), offset)
            if not block:
                break
            h.update(block)
            offset += len(block)
        if offset != sink.entry.size or h.hexdigest() != sink.entry.hash:
            raise IntegrityError(
                f"file {sink.entry.path} does not match its whole-file hash after assembly (inconsistent manifest)",
                path=sink.entry.path,
            )

    if not sinks:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(sinks))), thread_name_prefix="ckptsync-verify") as pool:
        for fut in [pool.submit(check, s) for s in sinks]:
            fut.result()


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _staging_path(root: Path, relpath: str) -> Path:
    """Create the parent folders of ``relpath`` under ``root`` (never through a symlink)."""
    fmt.check_relpath(relpath)
    parts = relpath.split("/")
    d = root
    for part in parts[:-1]:
        d = d / part
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            if d.is_symlink() or not d.is_dir():
                raise IntegrityError(f"manifest path {relpath!r} would be written through a non-folder") from None
    return d / parts[-1]


def _parents(root: Path, relpath: str) -> list[Path]:
    parts = relpath.split("/")
    return [root.joinpath(*parts[:i]) for i in range(len(parts))]


# ---------------------------------------------------------------- local reuse


def _matching_local_files(final: Path, m: fmt.Manifest) -> dict[str, Path] | None:
    """Files already present at the final path with the right size and hash."""
    if not final.exists() or final.is_symlink():
        return None
    out: dict[str, Path] = {}
    for entry in m.files:
        if m.kind == "file":
            path = final
        else:
            path = final.joinpath(*entry.path.split("/"))
            if any(p.is_symlink() for p in _parents(final, entry.path)[1:]):
                continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not _is_regular(st) or st.st_size != entry.size or st.st_nlink != 1:
            continue  # a hard-linked file may be someone else's: never reuse (or chmod) it
        if _hash_file(path) == entry.hash:
            out[entry.path] = path
    return out


def _exact(final: Path, m: fmt.Manifest) -> bool:
    """True if the local entry holds exactly the manifest's files and nothing else."""
    if m.kind == "file":
        return final.is_file() and not final.is_symlink()
    if not final.is_dir():
        return False
    present = set()
    for dirpath, _dirs, files in os.walk(final):
        for fn in files:
            present.add((Path(dirpath) / fn).relative_to(final).as_posix())
    return present == {e.path for e in m.files} and all(stat_mode(final.joinpath(*e.path.split("/"))) == e.mode & 0o1777 for e in m.files)


def stat_mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o1777


def _is_regular(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)


def _hash_file(path: Path) -> str:
    h = _new_file_hasher()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


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


# ---------------------------------------------------------------- placing


def _place(built: Path, final: Path) -> None:
    """Move ``built`` to ``final``. An existing ``final`` is swapped out atomically
    where the kernel can (renameat2 RENAME_EXCHANGE), else replaced in two renames."""
    if not os.path.lexists(final):
        os.rename(built, final)
        return
    if built.is_file() and (final.is_file() or final.is_symlink()):
        os.replace(built, final)
        return
    if _exchange(built, final):
        return  # the old entry now sits at ``built`` inside staging and is removed with it
    aside = built.with_name(built.name + ".old")
    os.rename(final, aside)
    os.rename(built, final)


_RENAME_EXCHANGE = 2
_libc: ctypes.CDLL | None = None


def _exchange(a: Path, b: Path) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _check_space(target_dir: Path, m: fmt.Manifest, reused: dict[str, Path]) -> None:
    """Refuse up front what cannot fit: more than the file system holds (a hostile or corrupt
    manifest: skipped like damage), or more than it has free (a clear error, nothing written)."""
    need = sum(f.size for f in m.files if f.path not in reused)
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


_active_staging: set[str] = set()


def _host_slug() -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())[:63] or "host"


def _remove_dead_staging(target_dir: Path) -> None:
    """Remove staging folders of restores that were killed: made on this host, by a process now gone."""
    for entry in os.listdir(target_dir):
        if not entry.startswith(STAGING_PREFIX) or entry in _active_staging:
            continue
        fields = entry[len(STAGING_PREFIX) :].split("-")
        if len(fields) >= 3 and fields[1] != _host_slug():
            continue  # another machine's restore into a shared folder: not ours to judge
        try:
            pid = int(fields[0])
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # a live restore (or a reused pid): leave it
        except (ValueError, OverflowError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        log.info("removing %s, left by an interrupted restore", entry)
        _remove_tree(target_dir / entry)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


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
