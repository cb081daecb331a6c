"""A store in a local (or mounted) folder: ``file:///abs/path``.

Writes go through :func:`ckptsync.fsutil.write_atomic`: a hidden temp file in
the target folder, fsynced, then renamed (``put``) or hard-linked
(``put_if_absent``, which makes the create atomic and exclusive), and the folder
fsynced.
"""

from __future__ import annotations

import errno
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..errors import AlreadyExists, NotFound, ObjectTooLarge, StoreError
from ..fsutil import write_atomic
from .base import ObjectInfo

_TMP_MARK = ".ckptsync-tmp-"


class LocalStore:
    """Objects as files under a root folder."""

    conditional_writes: bool | None = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = "file://" + str(root)

    # -- paths

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(_TMP_MARK) for p in parts):
            raise StoreError(f"invalid object key {key!r}", key=key)
        return self.root.joinpath(*parts)

    # -- writes

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._write(key, data, exclusive=False)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        self._write(key, data, exclusive=True)

    def _write(self, key: str, data: bytes | memoryview, *, exclusive: bool) -> None:
        path = self._path(key)
        if not self.root.is_dir():
            raise StoreError(f"local store folder {self.root} does not exist", "create it first, or check the file:// URI", key=key)
        try:
            write_atomic(path, data, prefix=f"{_TMP_MARK}{path.name}.", exclusive=exclusive, mode=0o644)
        except FileExistsError as exc:
            if exclusive:
                raise AlreadyExists(f"object {key} already exists", key=key) from None
            raise _os_error("write", key, exc) from None
        except OSError as exc:
            raise _os_error("write", key, exc) from None

    # -- reads

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if max_size is not None and os.fstat(f.fileno()).st_size > max_size:
                    raise ObjectTooLarge(f"object {key} is larger than {max_size} bytes", key=key)
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"object {key} not found", key=key) from None
        except IsADirectoryError:
            raise NotFound(f"object {key} not found", key=key) from None
        except OSError as exc:
            raise _os_error("read", key, exc) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self._path(base) if base else self.root
        out = []
        try:
            for dirpath, _dirnames, filenames in os.walk(top):
                for fn in filenames:
                    if fn.startswith(_TMP_MARK):
                        continue
                    full = os.path.join(dirpath, fn)
                    key = Path(full).relative_to(self.root).as_posix()
                    if not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        except OSError as exc:
            raise _os_error("list", prefix, exc) from None
        if not self.root.is_dir():
            raise StoreError(
                f"local store folder {self.root} does not exist",
                "create it first, or check the file:// URI",
            )
        return out

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error("delete", key, exc) from None

    def cleanup(self, prefix: str, older_than: timedelta) -> int:
        """Remove temp files left by writers killed midway."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self._path(base) if base else self.root
        limit = time.time() - older_than.total_seconds()
        removed = 0
        for dirpath, _dirs, filenames in os.walk(top):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                try:
                    if fn.startswith(_TMP_MARK) and os.stat(full).st_mtime < limit:
                        os.unlink(full)
                        removed += 1
                except OSError:
                    pass
        return removed

    def close(self) -> None:
        pass


def _os_error(op: str, key: str, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"cannot {op} {key}: no space left on the store's device", "free space on the store's file system", key=key)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"cannot {op} {key}: {exc.strerror}", "check the permissions of the file:// remote folder", key=key)
    return StoreError(f"cannot {op} {key}: {exc.strerror or exc}", key=key, transient=exc.errno in (errno.EIO, errno.EAGAIN, errno.EINTR))
