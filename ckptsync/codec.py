"""Chunk hashing and encoding (the only zstandard import).

A chunk is named by the SHA-256 of its raw bytes and stored with one of:

- ``raw``: the bytes as they are;
- ``zstd``: one zstd frame (level 1) carrying its content size;
- ``bg2``, ``bg4``, ``bg8`` (byte grouping, format version 3): the chunk is
  read as elements of 2, 4 or 8 bytes (bf16/fp16, fp32, fp64) and split into
  planes, plane *i* holding byte *i* of every element. The planes holding
  sign and exponent bits compress well; the low mantissa planes do not, and are
  stored as they are, which is both smaller and much faster than compressing
  them (see docs/FORMAT.md for the object layout).

The choice is made per chunk: a caller that knows the element width (from a
safetensors header) passes it; otherwise a cheap probe of a sample decides.
Data that does not compress is detected on the sample and stored raw without
compressing the whole chunk. hashlib, zstandard and numpy release the GIL on
large buffers, so these functions run well on worker threads.
"""

from __future__ import annotations

import hashlib
import struct
import threading

import numpy as np
import zstandard

from .errors import IntegrityError

ZSTD_LEVEL = 1
# Store compressed only when it saves at least this fraction: below it the
# bytes saved do not pay for the CPU spent decompressing on every restore.
MIN_SAVING = 0.03
SAMPLE = 64 << 10
GROUPED = {"bg2": 2, "bg4": 4, "bg8": 8}
_PLANE_RAW, _PLANE_ZSTD = 0, 1

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


def _pays(stored: int, raw: int) -> bool:
    return stored <= raw * (1 - MIN_SAVING)


# ---------------------------------------------------------------- encoding


def encode(raw: bytes | memoryview, width: int | None = None) -> tuple[str, bytes | memoryview]:
    """Choose a codec for one chunk and return ``(codec, stored_bytes)``.

    ``width`` is the element size when the caller knows the chunk holds floats
    of that size (2, 4 or 8); otherwise a sample of the chunk is probed.
    """
    n = len(raw)
    if n < 64:
        return "raw", raw
    if width is None:
        width = _probe(raw)
        if width == 0:
            return "raw", raw  # the sample does not compress in any arrangement
    if width in (2, 4, 8) and n >= 4 * width:
        stored = _group_encode(raw, width)
        if _pays(len(stored), n):
            return f"bg{width}", stored
        return "raw", raw
    packed = _compressor().compress(raw)
    if _pays(len(packed), n):
        return "zstd", packed
    return "raw", raw


def _probe(raw: bytes | memoryview) -> int | None:
    """Best arrangement on a sample: None (plain zstd), 2 or 4 (byte grouping), 0 (store raw)."""
    sample = bytes(raw[:SAMPLE]) if len(raw) > SAMPLE else bytes(raw)
    cctx = _compressor()
    sizes: dict[int | None, int] = {None: len(cctx.compress(sample))}
    for w in (2, 4):
        if len(sample) >= 4 * w:
            sizes[w] = len(_group_encode(sample, w))
    best = min(sizes, key=lambda k: sizes[k])
    return best if _pays(sizes[best], len(sample)) else 0


def _planes(raw: bytes | memoryview, width: int) -> tuple[list[np.ndarray], bytes]:
    count = len(raw) // width
    grid = np.frombuffer(raw, dtype=np.uint8, count=count * width).reshape(count, width)
    return [grid[:, i] for i in range(width)], bytes(raw[count * width :])


def _group_encode(raw: bytes | memoryview, width: int) -> bytes:
    """Layout: u8 width, then per plane u8 codec + u32le stored length, then the planes, then the tail."""
    planes, tail = _planes(raw, width)
    header = [struct.pack("<B", width)]
    bodies = []
    cctx = _compressor()
    for plane in planes:
        data = np.ascontiguousarray(plane).tobytes()
        kind, body = _PLANE_RAW, data
        probe = data[:SAMPLE]
        if _pays(len(cctx.compress(probe)), len(probe)):
            packed = cctx.compress(data)
            if _pays(len(packed), len(data)):
                kind, body = _PLANE_ZSTD, packed
        header.append(struct.pack("<BI", kind, len(body)))
        bodies.append(body)
    return b"".join(header) + b"".join(bodies) + tail


# ---------------------------------------------------------------- decoding


def decode(codec: str, stored: bytes, size: int, digest: str) -> bytes:
    """Turn a stored chunk back into its raw bytes and check them against ``digest``.

    ``size`` (from the manifest) bounds decompression: a frame or plane that
    declares or produces more bytes is rejected before it can exhaust memory.
    """
    if codec == "raw":
        raw = stored
    elif codec == "zstd":
        raw = _decompress(stored, size, digest)
    elif codec in GROUPED:
        raw = _group_decode(stored, GROUPED[codec], size, digest)
    else:
        raise IntegrityError(f"chunk {digest} has unknown codec {codec!r}", chunk=digest)
    if len(raw) != size:
        raise IntegrityError(f"chunk {digest} is {len(raw)} bytes, the manifest says {size}", chunk=digest)
    if sha256_hex(raw) != digest:
        raise IntegrityError(f"chunk {digest} content does not match its hash (corrupt object)", chunk=digest)
    return raw


def _decompress(stored: bytes | memoryview, size: int, digest: str) -> bytes:
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


def _group_decode(stored: bytes, width: int, size: int, digest: str) -> bytes:
    bad = IntegrityError(f"chunk {digest} is not a valid byte-grouped object (corrupt object)", chunk=digest)
    count, tail_len = divmod(size, width)
    head = 1 + 5 * width
    if len(stored) < head or stored[0] != width:
        raise bad
    out = np.empty((count, width), dtype=np.uint8)
    pos = head
    view = memoryview(stored)
    for i in range(width):
        kind, length = struct.unpack_from("<BI", stored, 1 + 5 * i)
        body = view[pos : pos + length]
        pos += length
        if len(body) != length:
            raise bad
        if kind == _PLANE_RAW:
            plane = bytes(body)
        elif kind == _PLANE_ZSTD:
            plane = _decompress(body, count, digest)
        else:
            raise bad
        if len(plane) != count:
            raise bad
        out[:, i] = np.frombuffer(plane, dtype=np.uint8)
    tail = bytes(view[pos:])
    if len(tail) != tail_len:
        raise bad
    return out.tobytes() + tail
