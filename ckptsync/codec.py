"""Chunk encoding (the only zstandard import).

A chunk is named by the hash of its raw bytes (:mod:`ckptsync.hashes`) and stored with one of:

- ``raw``: the bytes as they are;
- ``zstd``: one zstd frame (level 1) carrying its content size;
- ``bg2``, ``bg4``, ``bg8`` (byte grouping, format version 3): the chunk is
  read as elements of 2, 4 or 8 bytes (bf16/fp16, fp32, fp64) and split into
  planes, plane *i* holding byte *i* of every element. The planes holding
  sign and exponent bits compress well; the low mantissa planes do not, and are
  stored as they are, which is both smaller and much faster than compressing
  them (see docs/FORMAT.md for the object layout).
- ``bgr2``, ``bgr4``, ``bgr8`` (byte grouping with a rotated top, format
  version 4): the same object layout, but the top 16 bits of each element are
  first rotated left by one bit. In IEEE floats that moves the sign bit down
  to the mantissa and the lowest exponent bit up, so one plane holds the whole
  exponent of bf16 and fp32 (the 8 high exponent bits of fp64) and the sign
  joins the incompressible mantissa. This is what :func:`encode` writes.

Compressed planes use one of two zstd settings, chosen per plane on a sample:
level 1, or a fast setting that finds few matches (minimum match 7, a
64-entry hash table), so that zstd codes a plane of exponents almost entirely
as Huffman-coded literals. On real weights that is both smaller (close to the
plane's order-0 entropy, where level 1 spends about 10% more on short matches
that do not pay) and faster; level 1 still wins where whole runs repeat, as in
optimizer state.

The choice of codec is made per chunk: a caller that knows the element width
(from a safetensors header) passes it; otherwise a cheap probe of a sample
decides. Data that does not compress is detected on the sample and stored raw
without compressing the whole chunk. hashlib, blake3, zstandard and numpy release the
GIL on large buffers, so these functions run well on worker threads.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np
import zstandard

from .errors import IntegrityError
from .hashes import HASH_ALGORITHM, hash_hex

ZSTD_LEVEL = 1
# Store compressed only when it saves at least this fraction: below it the
# bytes saved do not pay for the CPU spent decompressing on every restore.
MIN_SAVING = 0.03
SAMPLE = 64 << 10
#: Every byte-grouped codec and its element width.
GROUPED = {"bg2": 2, "bg4": 4, "bg8": 8, "bgr2": 2, "bgr4": 4, "bgr8": 8}
#: The byte-grouped codecs whose elements have their top 16 bits rotated left by one bit.
ROTATED = frozenset({"bgr2", "bgr4", "bgr8"})
_PLANE_RAW, _PLANE_ZSTD = 0, 1
_U16 = np.dtype("<u2")
_UINT: dict[int, np.dtype[Any]] = {2: _U16, 4: np.dtype("<u4")}
_STRIPS = 8

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
    return c


def _literal_compressor() -> zstandard.ZstdCompressor:
    """zstd tuned to code a plane of exponents as literals: few, long matches only.

    The 1 MiB window keeps every frame within the window bound of the format.
    """
    c = getattr(_local, "lctx", None)
    if c is None:
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST,
            window_log=20,
            hash_log=6,
            chain_log=6,
            search_log=1,
            min_match=7,
            target_length=0,
            write_content_size=True,
            write_checksum=False,
        )
        c = _local.lctx = zstandard.ZstdCompressor(compression_params=params)
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
    # Rotating the top bits pays on IEEE floats (tensors of a known float type);
    # on probed data it does not (Adam moments: their sign and lowest exponent bit
    # compress better as byte-grouping leaves them).
    rotate = width is not None
    if width is None:
        width = _probe(raw)
        if width == 0:
            return "raw", raw  # the sample does not compress in any arrangement
    if width in (2, 4, 8) and n >= 4 * width:
        stored = _group_encode(raw, width, rotate)
        if _pays(len(stored), n):
            return f"bgr{width}" if rotate else f"bg{width}", stored
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
            sizes[w] = len(_group_encode(sample, w, rotate=False))
    best = min(sizes, key=lambda k: sizes[k])
    return best if _pays(sizes[best], len(sample)) else 0


def _split(raw: bytes | memoryview, width: int, rotate: bool, out: np.ndarray | None = None) -> np.ndarray:
    """The planes as the rows of a ``(width, count)`` array (``out``, if given)."""
    count = len(raw) // width
    planes = np.empty((width, count), dtype=np.uint8) if out is None else out
    if width == 8:
        return _split_transposed(raw, count, rotate, planes)
    # Elements as integers: each plane is one shift narrowed into its row, a contiguous pass that
    # numpy vectorizes (about twice as fast for bf16 and fp32 as one transposing copy), with no
    # temporary arrays.
    v = np.frombuffer(raw, dtype=_UINT[width], count=count)
    bits = 8 * width
    for i in range(width - 2 if rotate else width):
        np.right_shift(v, 8 * i, out=planes[i], casting="unsafe")  # byte i
    if rotate:
        # the top 16 bits rotated left by one bit, for B-bit elements: the low byte is bits
        # B-16..B-10 above the top bit B-1; the high byte is bits B-9..B-2
        low, high = planes[width - 2], planes[width - 1]
        if width == 2:
            np.left_shift(v, 1, out=low, casting="unsafe")
        else:
            np.right_shift(v, bits - 17, out=low, casting="unsafe")
            low &= 0xFE
        np.right_shift(v, bits - 1, out=high, casting="unsafe")  # the top bit, for a moment
        low |= high
        np.right_shift(v, bits - 9, out=high, casting="unsafe")  # the exponent of bf16 and fp32
    return planes


def _split_transposed(raw: bytes | memoryview, count: int, rotate: bool, planes: np.ndarray) -> np.ndarray:
    """:func:`_split` as one transposing copy: faster than shifts for 8-byte elements."""
    width = len(planes)
    grid = np.frombuffer(raw, dtype=np.uint8, count=count * width).reshape(count, width)
    if not rotate:
        planes[...] = grid.T
        return planes
    planes[: width - 2] = grid[:, : width - 2].T
    # the top 16 bits of each element, as little-endian numbers, rotated left by one bit
    top = np.frombuffer(raw, dtype=_U16, count=count * width // 2)[width // 2 - 1 :: width // 2]
    rotated = top << 1
    rotated |= top >> 15
    np.copyto(planes[width - 2], rotated, casting="unsafe")  # the low byte
    rotated >>= 8
    np.copyto(planes[width - 1], rotated, casting="unsafe")  # the high byte
    return planes


def _plane_sample(plane: np.ndarray) -> np.ndarray:
    """SAMPLE bytes of a plane, taken as strips spread over it.

    A chunk packs several tensors, and a plane that compresses in one of them
    (an optimizer's second moments have a constant sign) must not be judged by
    its first tensor alone.
    """
    n = len(plane)
    if n <= SAMPLE:
        return plane
    strip = SAMPLE // _STRIPS
    return np.concatenate([plane[k * (n - strip) // (_STRIPS - 1) :][:strip] for k in range(_STRIPS)])


def _pack_plane(row: np.ndarray) -> tuple[int, bytes | memoryview]:
    """``(kind, body)`` of one plane: compressed with the better setting on a sample, if that pays."""
    plane, sample = row.data, _plane_sample(row).data
    literal = _literal_compressor()
    packed = literal.compress(sample)
    if not _pays(len(packed), len(sample)):
        return _PLANE_RAW, plane
    level = _compressor().compress(sample)
    cctx = literal
    if len(level) < len(packed):
        cctx, packed = _compressor(), level
    if len(plane) > len(sample):
        packed = cctx.compress(plane)
    if _pays(len(packed), len(plane)):
        return _PLANE_ZSTD, packed
    return _PLANE_RAW, plane


def _group_encode(raw: bytes | memoryview, width: int, rotate: bool = True) -> memoryview:
    """Layout: u8 width, then per plane u8 codec + u32le stored length, then the planes, then the tail.

    ``rotate`` selects the ``bgr<W>`` arrangement (top 16 bits rotated left by
    one bit); without it the object is a ``bg<W>`` one.

    The planes are split straight into the object's buffer: a plane stored raw
    is never copied again, unless a compressed plane before it moves it down.
    """
    count, head = len(raw) // width, 1 + 5 * width
    tail = len(raw) - count * width
    obj = np.empty(head + count * width + tail, dtype=np.uint8)
    planes = _split(raw, width, rotate, out=obj[head : head + count * width].reshape(width, count))
    header = [struct.pack("<B", width)]
    pos = head
    for i, plane in enumerate(planes):
        kind, body = _pack_plane(plane)
        if kind == _PLANE_ZSTD:
            obj[pos : pos + len(body)] = np.frombuffer(body, dtype=np.uint8)  # shorter: never past this row
        elif pos != head + i * count:
            obj[pos : pos + count] = plane  # numpy copies overlapping ranges correctly
        header.append(struct.pack("<BI", kind, len(body)))
        pos += len(body)
    if tail:
        obj[pos : pos + tail] = np.frombuffer(raw, dtype=np.uint8, count=tail, offset=count * width)
    obj[:head] = np.frombuffer(b"".join(header), dtype=np.uint8)
    return obj[: pos + tail].data


# ---------------------------------------------------------------- decoding


def decode(codec: str, stored: bytes, size: int, digest: str, algorithm: str = HASH_ALGORITHM) -> bytes | memoryview:
    """Turn a stored chunk back into its raw bytes and check them against ``digest``, their hash under ``algorithm``.

    ``size`` (from the manifest) bounds decompression: a frame or plane that
    declares or produces more bytes is rejected before it can exhaust memory.
    """
    raw: bytes | memoryview
    if codec == "raw":
        raw = stored
    elif codec == "zstd":
        raw = _decompress(stored, size, digest)
    elif codec in GROUPED:
        raw = _group_decode(stored, codec, size, digest)
    else:
        raise IntegrityError(f"chunk {digest} has unknown codec {codec!r}", chunk=digest)
    if len(raw) != size:
        raise IntegrityError(f"chunk {digest} is {len(raw)} bytes, the manifest says {size}", chunk=digest)
    if hash_hex(algorithm, raw) != digest:
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


def _group_decode(stored: bytes, codec: str, size: int, digest: str) -> memoryview:
    bad = IntegrityError(f"chunk {digest} is not a valid byte-grouped object (corrupt object)", chunk=digest)
    width = GROUPED[codec]
    count, tail_len = divmod(size, width)
    head = 1 + 5 * width
    if len(stored) < head or stored[0] != width:
        raise bad
    planes: list[np.ndarray] = []
    pos = head
    view = memoryview(stored)
    for i in range(width):
        kind, length = struct.unpack_from("<BI", stored, 1 + 5 * i)
        body = view[pos : pos + length]
        pos += length
        if len(body) != length:
            raise bad
        if kind == _PLANE_RAW:
            plane: bytes | memoryview = body
        elif kind == _PLANE_ZSTD:
            plane = _decompress(body, count, digest)
        else:
            raise bad
        if len(plane) != count:
            raise bad
        planes.append(np.frombuffer(plane, dtype=np.uint8))
    if len(stored) - pos != tail_len:
        raise bad
    out = np.empty(size, dtype=np.uint8)
    _merge(planes, out[: count * width].reshape(count, width), codec in ROTATED)
    out[count * width :] = np.frombuffer(view[pos:], dtype=np.uint8)
    return out.data  # not tobytes(): no copy of the chunk


def _merge(planes: list[np.ndarray], grid: np.ndarray, rotate: bool) -> None:
    """Interleave the planes into ``grid`` (count × width), undoing the rotation of ``bgr<W>``."""
    width = len(planes)
    if width == 2 and not rotate:  # one contiguous pass, three times faster than two strided copies
        halves = grid.reshape(-1).view(_U16)
        np.left_shift(planes[1], 8, out=halves, dtype=_U16)
        halves |= planes[0]
        return
    if not rotate:
        for i, plane in enumerate(planes):
            grid[:, i] = plane
        return
    for i in range(width - 2):
        grid[:, i] = planes[i]
    low, high = planes[width - 2], planes[width - 1]
    halves = grid.reshape(-1).view(_U16)
    # the top 16 bits rotated right by one bit: high << 7 | low >> 1 | (low & 1) << 15
    top = halves if width == 2 else np.empty(len(low), dtype=_U16)
    np.left_shift(high, 7, out=top, dtype=_U16)
    top |= low >> 1
    top |= np.left_shift(low, 15, dtype=_U16)
    if width > 2:
        halves[width // 2 - 1 :: width // 2] = top
