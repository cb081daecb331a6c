"""Chunk hashing and encoding (the only zstandard import).

A chunk is named by the SHA-256 of its raw bytes. It is stored either as is
(``raw``) or as one zstd frame carrying its content size (``zstd``), whichever
is smaller by a margin worth the decompression cost. Both hashlib and zstandard
release the GIL on large buffers, so these functions run well on worker threads.
"""

from __future__ import annotations

import hashlib
import threading

import zstandard

from .errors import IntegrityError

ZSTD_LEVEL = 1
# Store compressed only when it saves at least this fraction: below it the
# bytes saved do not pay for the CPU spent decompressing on every restore.
MIN_SAVING = 0.03

_local = threading.local()


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def new_file_hasher() -> hashlib._Hash:
    return hashlib.sha256()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
    return c


def encode(raw: bytes | memoryview) -> tuple[str, bytes | memoryview]:
    """Choose a codec for one chunk and return ``(codec, stored_bytes)``."""
    if len(raw) < 64:
        return "raw", raw
    packed = _compressor().compress(raw)
    if len(packed) <= len(raw) * (1 - MIN_SAVING):
        return "zstd", packed
    return "raw", raw


def decode(codec: str, stored: bytes, size: int, digest: str) -> bytes:
    """Turn a stored chunk back into its raw bytes and check them against ``digest``.

    ``size`` (from the manifest) bounds decompression: a frame that declares or
    produces more bytes is rejected before it can exhaust memory.
    """
    if codec == "raw":
        raw = stored
    elif codec == "zstd":
        raw = _decompress(stored, size, digest)
    else:
        raise IntegrityError(f"chunk {digest} has unknown codec {codec!r}", chunk=digest)
    if len(raw) != size:
        raise IntegrityError(f"chunk {digest} is {len(raw)} bytes, the manifest says {size}", chunk=digest)
    if sha256_hex(raw) != digest:
        raise IntegrityError(f"chunk {digest} content does not match its hash (corrupt object)", chunk=digest)
    return raw


def _decompress(stored: bytes, size: int, digest: str) -> bytes:
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError:
        raise IntegrityError(f"chunk {digest} is not a zstd frame (corrupt object)", chunk=digest) from None
    if declared not in (-1, size):
        raise IntegrityError(f"chunk {digest} declares {declared} bytes, the manifest says {size}", chunk=digest)
    window = 1 << max(10, (size - 1).bit_length())
    dctx = zstandard.ZstdDecompressor(max_window_size=max(window, 1 << 20))
    try:
        return dctx.decompress(stored, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"chunk {digest} does not decompress: {exc}", chunk=digest) from None
