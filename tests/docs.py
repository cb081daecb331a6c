"""The examples and statements of docs/FORMAT.md and docs/DESIGN.md, read for the tests that keep them true.

Examples are found by the HTML comment before them: ``<!-- marker -->`` followed by a fenced
block or a table. Phrases are looked up in :func:`flat` text, so that rewrapping a paragraph does
not break a test.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import zstandard

from ckptsync import format as fmt

ROOT = Path(__file__).resolve().parents[1]
FORMAT = ROOT / "docs" / "FORMAT.md"
DESIGN = ROOT / "docs" / "DESIGN.md"
RESTORE_BY_HAND = ROOT / "examples" / "restore_by_hand.py"


def text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def flat(doc: Path) -> str:
    """The document with every run of whitespace made one space."""
    return " ".join(text(doc).split())


def block(doc: Path, marker: str, lang: str) -> str:
    """The fenced block (of language ``lang``) right after ``<!-- marker -->``."""
    m = re.search(r"<!-- " + re.escape(marker) + r" -->\s*```" + lang + r"\n(.*?)\n```", text(doc), re.DOTALL)
    assert m, f"no ```{lang} block after <!-- {marker} --> in {doc.name}"
    return m.group(1)


def table(doc: Path, marker: str) -> list[list[str]]:
    """The body rows of the markdown table after ``<!-- marker -->``, as stripped cells."""
    m = re.search(r"<!-- " + re.escape(marker) + r" -->\s*\n((?:\|.*\n)+)", text(doc))
    assert m, f"no table after <!-- {marker} --> in {doc.name}"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in m.group(1).splitlines()]
    return rows[2:]  # without the header and the --- line


# ---------------------------------------------------------------- the byte-grouped example (FORMAT 4.4)


def bg4_example() -> bytes:
    """The bytes of the documented bg4 object, from its hex dump."""
    out = bytearray()
    for line in block(FORMAT, "example-bg4", "").splitlines():
        offset, *cells = line.split()
        assert int(offset, 16) == len(out)
        out += bytes.fromhex("".join(cells))
    return bytes(out)


def bg4_example_ref() -> fmt.ChunkRef:
    """The chunk entry the text gives for the bg4 example; it is a chunk of the DESIGN.md example manifest."""
    m = re.search(r'Its chunk entry is `\{"hash": "([0-9a-f]{64})", "size": (\d+), "stored": (\d+), "codec": "bg4"\}`', flat(FORMAT))
    assert m, "the example's chunk entry is not stated"
    ref = fmt.ChunkRef(m.group(1), int(m.group(2)), int(m.group(3)), "bg4")
    assert ref in fmt.decode_manifest(block(DESIGN, "example-manifest-v3", "json").encode()).chunk_refs().values()
    assert f"`{fmt.chunk_key('', ref.hash, ref.codec)}`" in flat(FORMAT)
    return ref


#: Ways to damage the bg4 example that FORMAT 4.4 says a reader must reject.
CORRUPTIONS = [
    "width",
    "kind",
    "raw plane too long",
    "body past the end",
    "bytes after the tail",
    "frame declares another size",
    "frame inflates past N",
    "frame too short",
]


def _regroup(obj: bytes, planes: list[tuple[int, bytes]], tail: bytes = b"") -> bytes:
    return bytes([obj[0]]) + b"".join(struct.pack("<BI", k, len(b)) for k, b in planes) + b"".join(b for _, b in planes) + tail


def _bg4_planes(obj: bytes) -> list[tuple[int, bytes]]:
    pos, planes = 21, []
    for i in range(4):
        kind, length = struct.unpack_from("<BI", obj, 1 + 5 * i)
        planes.append((kind, obj[pos : pos + length]))
        pos += length
    return planes


def corrupt(obj: bytes, how: str) -> bytes:
    """The bg4 example ``obj`` damaged in one of the :data:`CORRUPTIONS` ways."""
    planes = _bg4_planes(obj)
    plane3 = zstandard.ZstdDecompressor().decompress(planes[3][1])
    if how == "width":
        return bytes([2]) + obj[1:]
    if how == "kind":
        return _regroup(obj, [(2, planes[0][1]), *planes[1:]])
    if how == "raw plane too long":
        return _regroup(obj, [(0, planes[0][1] + b"\0"), *planes[1:]])
    if how == "body past the end":
        return obj[:2] + struct.pack("<I", 10**9) + obj[6:]
    if how == "bytes after the tail":
        return obj + b"\0"
    if how == "frame declares another size":
        frame = zstandard.ZstdCompressor(write_content_size=True).compress(plane3 + b"\x3f")
        return _regroup(obj, [*planes[:3], (1, frame)])
    if how == "frame inflates past N":
        frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
        return _regroup(obj, [*planes[:3], (1, frame)])
    if how == "frame too short":  # declares no size (ckptsync accepts that) and holds N - 1 bytes
        frame = zstandard.ZstdCompressor(write_content_size=False).compress(plane3[:-1])
        return _regroup(obj, [*planes[:3], (1, frame)])
    raise AssertionError(how)
