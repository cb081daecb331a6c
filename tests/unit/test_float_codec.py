"""Byte-grouped codecs and tensor-aligned chunking, on real pretrained weights (tests/data)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from ckptsync import codec
from ckptsync.chunking import PACK_TARGET, safetensors_header_length, safetensors_plan
from ckptsync.errors import IntegrityError
from ckptsync.hashes import hash_hex

DATA = Path(__file__).parent.parent / "data" / "minilm-slice.safetensors"


def load() -> tuple[dict, bytes, int]:
    raw = DATA.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw, 8 + n


def tensor(name: str) -> np.ndarray:
    header, raw, base = load()
    s, e = header[name]["data_offsets"]
    return np.frombuffer(raw[base + s : base + e], dtype=np.float32)


def bf16(x: np.ndarray) -> bytes:
    """fp32 -> bf16 with round-to-nearest-even, as torch converts."""
    u = x.astype(np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


REAL = {
    "fp32": lambda: tensor("embeddings.word_embeddings.weight").tobytes(),
    "bf16": lambda: bf16(tensor("embeddings.word_embeddings.weight")),
    "fp16": lambda: tensor("encoder.layer.0.attention.self.query.weight").astype(np.float16).tobytes(),
    "fp64": lambda: tensor("encoder.layer.0.attention.self.query.weight").astype(np.float64).tobytes(),
}
WIDTH = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


@pytest.mark.parametrize("kind", list(REAL))
def test_byte_grouping_round_trips_real_weights_and_beats_plain_zstd(kind):
    data = REAL[kind]()
    name, stored = codec.encode(data, WIDTH[kind])
    assert name == f"bgr{WIDTH[kind]}"  # a known float width: the rotated layout
    assert codec.decode(name, bytes(stored), len(data), hash_hex("sha256", data)) == data
    plain = codec._compressor().compress(data)
    assert len(stored) < len(plain)


@pytest.mark.parametrize("kind", list(REAL))
def test_probe_finds_float_layout_without_a_hint(kind):
    data = REAL[kind]()
    name, stored = codec.encode(data)
    assert name.startswith("bg") or name == "zstd"
    assert codec.decode(name, bytes(stored), len(data), hash_hex("sha256", data)) == data


def test_grouped_round_trip_with_a_tail_that_is_not_a_whole_element():
    data = REAL["fp32"]()[:40_003]
    name, stored = codec.encode(data, 4)
    assert codec.decode(name, bytes(stored), len(data), hash_hex("sha256", data)) == data


def test_low_mantissa_planes_are_stored_raw_and_exponent_plane_compressed():
    data = REAL["fp32"]()
    for stored in (codec.encode(data, 4)[1], codec._group_encode(data, 4, rotate=False)):
        kinds = [stored[1 + 5 * i] for i in range(4)]
        assert 0 in kinds[:3]  # a low mantissa plane that does not compress is stored as it is
        assert kinds[3] == 1  # the exponent plane: compressed


def test_random_bytes_are_stored_raw_without_compressing_the_chunk():
    data = os.urandom(1 << 20)
    assert codec.encode(data)[0] == "raw"
    assert codec.encode(data, 4)[0] == "raw"


@pytest.mark.parametrize("mutate", ["width", "plane-length", "plane-kind", "tail", "truncated"])
def test_corrupt_grouped_objects_are_rejected(mutate):
    data = REAL["fp32"]()
    _, stored = codec.encode(data, 4)
    bad = bytearray(stored)
    if mutate == "width":
        bad[0] = 2
    elif mutate == "plane-length":
        struct.pack_into("<I", bad, 2, 10**9)
    elif mutate == "plane-kind":
        bad[1] = 7
    elif mutate == "tail":
        bad += b"x"
    else:
        del bad[len(bad) // 2 :]
    with pytest.raises(IntegrityError):
        codec.decode("bgr4", bytes(bad), len(data), hash_hex("sha256", data))


def test_a_grouped_plane_cannot_inflate_past_its_size():
    import zstandard

    data = REAL["bf16"]()[:1000]
    bomb_plane = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    obj = struct.pack("<B", 2) + struct.pack("<BI", 1, len(bomb_plane)) + struct.pack("<BI", 0, 500) + bomb_plane + bytes(500)
    with pytest.raises(IntegrityError):
        codec.decode("bg2", obj, len(data), hash_hex("sha256", data))


def test_safetensors_plan_cuts_at_tensor_boundaries_with_the_header_alone():
    header, raw, base = load()
    n = safetensors_header_length(raw[:8], len(raw))
    plan = safetensors_plan(raw[8 : 8 + n], len(raw))
    assert plan is not None
    assert plan[0].offset == 0 and plan[0].length == base and plan[0].width is None
    assert sum(s.length for s in plan) == len(raw)
    assert all(a.offset + a.length == b.offset for a, b in zip(plan, plan[1:], strict=False))
    starts = {base + info["data_offsets"][0] for k, info in header.items() if k != "__metadata__"}
    assert all(s.offset in starts for s in plan[1:])  # every chunk begins where a tensor begins
    assert all(s.length <= PACK_TARGET or s.width is not None for s in plan[1:])
    assert {s.width for s in plan[1:]} == {None, 4}  # the I64 tensor has no float width


def test_header_changes_do_not_change_tensor_chunks():
    """safetensors headers are not byte-stable between saves: only the header chunk may differ."""
    header, raw, base = load()
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())), extra="x")
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    other = struct.pack("<Q", len(h)) + h + raw[base:]
    chunks = []
    for blob in (raw, other):
        n = safetensors_header_length(blob[:8], len(blob))
        plan = safetensors_plan(blob[8 : 8 + n], len(blob))
        chunks.append([hash_hex("sha256", blob[s.offset : s.offset + s.length]) for s in plan])
    assert chunks[0][0] != chunks[1][0]
    assert chunks[0][1:] == chunks[1][1:]


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"[]",
        b'{"t": {"dtype": "F32", "data_offsets": [0, 999999999]}}',
        b'{"t": {"dtype": "F32", "data_offsets": [8, 4]}}',
        b'{"t": 5}',
    ],
)
def test_invalid_safetensors_headers_fall_back(header):
    assert safetensors_plan(header, 1000) is None


def test_not_safetensors_is_detected_from_the_length_prefix():
    assert safetensors_header_length(struct.pack("<Q", 10**12), 1000) is None
    assert safetensors_header_length(b"\x01", 1000) is None


# ---------------------------------------------------------------- bgr<W>: the top 16 bits rotated left by one bit


def reference_planes(data: bytes, width: int, rotate: bool) -> tuple[list[bytes], bytes]:
    """The planes and tail as docs/FORMAT.md defines them, computed element by element."""
    count = len(data) // width
    rows = [bytearray(count) for _ in range(width)]
    for k in range(count):
        element = bytearray(data[k * width : (k + 1) * width])
        if rotate:
            top = element[width - 2] | element[width - 1] << 8
            top = ((top << 1) | (top >> 15)) & 0xFFFF
            element[width - 2], element[width - 1] = top & 0xFF, top >> 8
        for i in range(width):
            rows[i][k] = element[i]
    return [bytes(r) for r in rows], data[count * width :]


def planes_of(stored: bytes, width: int, count: int) -> tuple[list[bytes], bytes]:
    """The planes of a byte-grouped object, read with the layout of docs/FORMAT.md."""
    import zstandard

    pos, planes = 1 + 5 * width, []
    for i in range(width):
        kind, length = struct.unpack_from("<BI", stored, 1 + 5 * i)
        body = stored[pos : pos + length]
        planes.append(body if kind == 0 else zstandard.ZstdDecompressor().decompress(body))
        assert zstandard.frame_content_size(body) == count if kind == 1 else length == count
        pos += length
    return planes, stored[pos:]


@pytest.mark.parametrize("name", sorted(codec.GROUPED))
@pytest.mark.parametrize("kind", list(REAL))
def test_every_grouped_codec_round_trips_real_weights_with_the_documented_planes(name, kind):
    width, rotate = codec.GROUPED[name], name in codec.ROTATED
    data = REAL[kind]()[: 3 * 4099 * width + 3]  # several thousand elements and an odd tail
    stored = codec._group_encode(data, width, rotate)
    assert stored[0] == width
    assert codec.decode(name, stored, len(data), hash_hex("sha256", data)) == data
    expected = reference_planes(data[: 257 * width + 1], width, rotate)
    small = codec._group_encode(data[: 257 * width + 1], width, rotate)
    assert planes_of(small, width, 257) == expected
    assert planes_of(stored, width, len(data) // width)[1] == data[len(data) // width * width :]


def test_rotated_layout_puts_the_whole_exponent_in_one_plane():
    x = tensor("encoder.layer.0.attention.self.query.weight")
    u = x.view(np.uint32)
    planes, _ = planes_of(codec._group_encode(x.tobytes(), 4), 4, len(x))
    assert planes[3] == ((u >> 23) & 0xFF).astype(np.uint8).tobytes()  # the 8 exponent bits
    assert planes[2] == (((u >> 15) & 0xFE) | (u >> 31)).astype(np.uint8).tobytes()  # 7 mantissa bits, then the sign
    b = np.frombuffer(bf16(x), dtype=np.uint16)
    planes, _ = planes_of(codec._group_encode(b.tobytes(), 2), 2, len(b))
    assert planes[1] == ((b >> 7) & 0xFF).astype(np.uint8).tobytes()
    assert planes[0] == (((b << 1) & 0xFE) | (b >> 15)).astype(np.uint8).tobytes()


@pytest.mark.parametrize("kind", ["fp32", "bf16"])
def test_rotated_layout_stores_real_weights_smaller_than_the_version_3_layout(kind):
    data = REAL[kind]()
    old = codec._group_encode(data, WIDTH[kind], rotate=False)
    new = codec.encode(data, WIDTH[kind])[1]
    assert len(new) < len(old)


def test_probed_chunks_keep_the_version_3_layout():
    """Rotation is for tensors of a known float type; data without a width is probed and written bg<W>."""
    data = REAL["fp32"]()
    name, stored = codec.encode(data)
    assert name in ("bg2", "bg4", "zstd")
    assert codec.decode(name, bytes(stored), len(data), hash_hex("sha256", data)) == data


def test_objects_of_the_version_3_encoder_still_decode():
    """bg<W> objects written before bgr<W> existed: level-1 planes, the unrotated layout."""
    import zstandard

    data = REAL["bf16"]()[:20_001]
    count = len(data) // 2
    planes, tail = reference_planes(data, 2, rotate=False)
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(planes[1])
    obj = struct.pack("<BBIBI", 2, 0, count, 1, len(frame)) + planes[0] + frame + tail
    assert codec.decode("bg2", obj, len(data), hash_hex("sha256", data)) == data


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("size", [1, 7, 8, 9, 15, 31, 32, 33, 63, 64, 65, 100, 1001])
def test_tiny_and_odd_sizes_round_trip_in_every_layout(width, size):
    data = (REAL["fp64"]() * 3)[:size]
    name, stored = codec.encode(data, width)
    assert codec.decode(name, bytes(stored), size, hash_hex("sha256", data)) == data
    for rotate in (False, True):  # the layouts themselves, even where encode() would store raw
        obj = codec._group_encode(data, width, rotate)
        assert len(obj) == 1 + 5 * width + sum(struct.unpack_from("<I", obj, 2 + 5 * i)[0] for i in range(width)) + size % width
        name = f"bgr{width}" if rotate else f"bg{width}"
        assert codec.decode(name, obj, size, hash_hex("sha256", data)) == data


def test_a_plane_that_compresses_only_past_its_first_tensor_is_compressed():
    """The plane sample is spread over the chunk: a packed chunk's later tensors count too."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 0.02, 1 << 18).astype(np.float32)
    flat = np.ones(3 << 18, dtype=np.float32)  # a LayerNorm-like tensor: its low planes are constant
    stored = codec.encode(np.concatenate([noise, flat]).tobytes(), 4)[1]
    assert [stored[1 + 5 * i] for i in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("name", ["bgr2", "bgr4", "bgr8"])
@pytest.mark.parametrize("mutate", ["width", "plane-length", "plane-kind", "tail", "truncated", "empty", "header-only", "swap-frame-size"])
def test_corrupt_rotated_objects_are_rejected(name, mutate):
    import zstandard

    width = codec.GROUPED[name]
    data = REAL["fp64"]()[: 5000 * width + 1]
    stored = bytearray(codec._group_encode(data, width))
    count = len(data) // width
    if mutate == "width":
        stored[0] = 4 if width != 4 else 2
    elif mutate == "plane-length":
        struct.pack_into("<I", stored, 2 + 5 * (width - 1), 2**32 - 1)
    elif mutate == "plane-kind":
        stored[1] = 2
    elif mutate == "tail":
        stored += b"x"
    elif mutate == "truncated":
        del stored[-2:]
    elif mutate == "empty":
        stored = bytearray()
    elif mutate == "header-only":
        del stored[1 + 5 * width :]
    else:  # the exponent plane replaced by a frame of another size
        planes, tail = planes_of(bytes(stored), width, count)
        frame = zstandard.ZstdCompressor(write_content_size=True).compress(planes[-1] + b"\0")
        head = struct.pack("<B", width) + b"".join(struct.pack("<BI", 0, count) for _ in range(width - 1))
        stored = bytearray(head + struct.pack("<BI", 1, len(frame)) + b"".join(planes[:-1]) + frame + tail)
    with pytest.raises(IntegrityError):
        codec.decode(name, bytes(stored), len(data), hash_hex("sha256", data))


def test_a_rotated_plane_cannot_inflate_past_its_size():
    import zstandard

    data = REAL["bf16"]()[:1000]
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    obj = struct.pack("<BBIBI", 2, 0, 500, 1, len(bomb)) + bytes(500) + bomb
    with pytest.raises(IntegrityError):
        codec.decode("bgr2", obj, len(data), hash_hex("sha256", data))


def test_random_mutations_of_a_rotated_object_never_escape_as_another_error():
    data = REAL["fp32"]()[:40_003]
    stored = codec._group_encode(data, 4)
    rng = np.random.default_rng(11)
    digest = hash_hex("sha256", data)
    for _ in range(300):
        bad = bytearray(stored)
        for pos in rng.integers(0, len(bad), size=int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            del bad[int(rng.integers(0, len(bad))) :]
        if bytes(bad) == stored:
            continue
        with pytest.raises(IntegrityError):
            codec.decode("bgr4", bytes(bad), len(data), digest)
