"""How restored bytes reach the disk: bounded writes, one writer per file, flushed as they land.

A restore writes each chunk into its file with :func:`write_at`, in pieces of
:data:`WRITE_PIECE`, under the file's lock (the caller's). Every file is
flushed (``fsync``) before the checkpoint is renamed into place; done only
then, that flush writes the whole checkpoint to disk while nothing else
happens. :class:`Flusher` flushes each file in steps while the downloads go
on, so that the final flush finds little left to write.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Restored bytes are written in pieces of this size. On virtual machines that hand free memory
# back to the host (virtio free-page reporting), the page cache a restore fills is memory the host
# must fault in again, and 4 MiB writes paid that about three times over: writing 1 GiB into
# memory freed a few seconds earlier cost 3.1-3.5 system CPU-s in 4 MiB writes and 1.0-1.3 s in
# 64 KiB writes; a whole 1 GiB restore in that state went from 5.6 to 4.1 CPU-s. With memory
# ready, the piece size makes no measurable difference (16 000 more system calls per GiB).
WRITE_PIECE = 64 << 10

#: Bytes of one file landed between two flushes of it in the background. Flushing 1 GiB only
#: at the end took 0.3-0.5 s of a 1 GiB restore's wall time on a 2-core VM; flushing every
#: 64 MiB on the way made the whole restore 0.90x as long (16 MiB: the same).
FLUSH_STEP = 64 << 20

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``, in pieces of at most :data:`WRITE_PIECE`."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view[:WRITE_PIECE], offset)
        view = view[n:]
        offset += n


class Flusher:
    """Flushes a file on one background thread each time :data:`FLUSH_STEP` more of its bytes landed.

    A flush here only starts the disk's work early: its errors are left to the final
    ``fsync`` of every file, which reports them. :meth:`close` before closing the files.
    """

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self._landed = [0] * len(fds)
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ckptsync-flush")

    def landed(self, file: int, n: int) -> None:
        """``n`` more bytes of file number ``file`` were written."""
        with self._lock:
            self._landed[file] += n
            if self._landed[file] < FLUSH_STEP or file in self._queued:
                return
            self._landed[file] = 0
            self._queued.add(file)
        self._pool.submit(self._flush, file)

    def _flush(self, file: int) -> None:
        with self._lock:
            self._queued.discard(file)
        try:
            _datasync(self.fds[file])
        except OSError:
            pass  # reported by the final fsync of the file

    def close(self) -> None:
        """Drop the flushes not started and wait for the one under way."""
        self._pool.shutdown(wait=True, cancel_futures=True)
