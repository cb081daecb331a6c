"""The C heap during a restore: chunk buffers reused, not handed back and faulted in again (glibc).

A restore allocates a few buffers of a few MiB for every chunk, on its worker
threads: the response body, the decompressed planes, the rebuilt chunk. glibc
serves buffers that large with their own mappings until it has seen one freed,
and trims each thread's heap once a few MiB at its top are free, so most chunks
got new pages: zeroed by the kernel and, on a virtual machine that hands free
memory back to its host (virtio free-page reporting, ballooning), faulted in
once more by the host. A 1 GiB restore took 64 000 page faults for 1 GiB of
data; right after another program had written 1 GiB, they cost over a quarter of
its CPU time.

:func:`keep_buffers` sets the heap to what glibc's own adaptive thresholds reach
once a process has freed a 32 MiB buffer: buffers up to 32 MiB come from the
heap, and a heap is trimmed when 64 MiB at its top are free. A training process
reaches that state by itself with its first freed tensor of that size, so
setting it in a process that calls :func:`ckptsync.restore` changes nothing it
would not reach anyway. :func:`give_back` returns what a finished restore left
free. Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest adaptive mmap threshold (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit), and the trim
#: threshold it pairs with it (twice the mmap threshold).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def keep_buffers() -> bool:
    """Serve buffers up to :data:`MMAP_THRESHOLD` from the heap and keep freed ones for reuse;
    False where the C library is not glibc (nothing changed)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def give_back() -> None:
    """Return the heap's free memory to the kernel (``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
