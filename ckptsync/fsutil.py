"""Local file-system primitives: atomic writes, atomic placement of folders, staging folders, fsyncs.

Every file ckptsync writes at a final path goes through :func:`write_atomic`
(temp file, fsync, rename or link, fsync of the folder, as Litestream's file
replica does), and every restored checkpoint is assembled in a staging folder
and moved into place by :func:`place`, so a ``kill -9`` never leaves a torn
file or a half-restored checkpoint where a reader looks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from .format import host_slug


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes | memoryview,
    *,
    prefix: str | None = None,
    exclusive: bool = False,
    durable: bool = True,
    mode: int = 0o600,
) -> None:
    """Write ``data`` at ``path``: readers see the old file (or none) or the whole new one, never a part.

    The bytes go to a temp file in the same folder, named ``prefix`` (default
    ``.<name>.``) followed by 12 hexadecimal digits, which is fsynced and then
    renamed over ``path``; with ``exclusive`` it is hard-linked to ``path``
    instead, so an existing file is never replaced (``FileExistsError``).
    Then the folder is fsynced. The temp file is gone afterwards, whatever
    happened. ``durable=False`` skips the fsyncs, for files rewritten every
    few seconds. Missing parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{prefix if prefix is not None else f'.{path.name}.'}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        _unlink_quietly(tmp)  # after a replace the name is free already; after a link or an error it is ours
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, doc: Any, *, prefix: str | None = None, durable: bool = True) -> None:
    """Write ``doc`` as indented JSON at ``path`` with :func:`write_atomic`."""
    text = json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n"
    write_atomic(path, text.encode(), prefix=prefix, durable=durable)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- placing a folder atomically

_RENAME_EXCHANGE = 2
_libc: ctypes.CDLL | None = None


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def place(built: Path, final: Path) -> None:
    """Move ``built`` to ``final``. An existing ``final`` is swapped out atomically where the kernel
    can (the old entry then sits at ``built``), else replaced in two renames (it then sits at
    ``built`` + ``.old``); either way the caller removes what is left beside ``built``."""
    if not os.path.lexists(final):
        os.rename(built, final)
        return
    if built.is_file() and (final.is_file() or final.is_symlink()):
        os.replace(built, final)
        return
    if exchange(built, final):
        return
    os.rename(final, built.with_name(built.name + ".old"))
    os.rename(built, final)


def remove_tree(path: Path) -> None:
    """Remove a folder and everything in it, ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- staging folders

#: Hidden folders where restores assemble checkpoints: ``<prefix><pid>-<host slug>-<12 hex digits>``.
STAGING_PREFIX = ".ckptsync-staging-"
_active_staging: set[str] = set()


def staging_slug() -> str:
    """This machine's host name as it appears in staging folder names (no ``-``)."""
    return host_slug(socket.gethostname(), keep="._")


def new_staging(folder: Path) -> Path:
    """Create a private staging folder in ``folder`` (same file system: its contents move by rename)."""
    staging = folder / f"{STAGING_PREFIX}{os.getpid()}-{staging_slug()}-{secrets.token_hex(6)}"
    os.mkdir(staging, 0o700)
    _active_staging.add(staging.name)
    return staging


def drop_staging(staging: Path) -> None:
    """Remove a staging folder made by :func:`new_staging`, with whatever it holds."""
    remove_tree(staging)
    _active_staging.discard(staging.name)


def remove_dead_staging(
    folder: Path, log: logging.Logger, *, prefix: str = STAGING_PREFIX, left_by: str = "an interrupted restore"
) -> None:
    """Remove staging folders of restores that were killed: made on this host, by a process now gone.

    Another machine's staging folder (a shared file system) is never judged: its
    process cannot be seen from here. ``prefix`` names other private folders made
    the same way (``<prefix><pid>-<host slug>-<hex>``), such as upload snapshots.
    """
    me = staging_slug()
    for entry in os.listdir(folder):
        if not entry.startswith(prefix) or entry in _active_staging:
            continue
        fields = entry[len(prefix) :].split("-")
        if len(fields) >= 3 and fields[1] != me:
            continue
        try:
            pid = int(fields[0])
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # a live restore (or a reused pid): leave it
        except (ValueError, OverflowError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        log.info("removing %s, left by %s", entry, left_by)
        remove_tree(folder / entry)
