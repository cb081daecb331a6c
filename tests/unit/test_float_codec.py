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
    assert name == f"bg{WIDTH[kind]}"
    assert codec.decode(name, bytes(stored), len(data), codec.sha256_hex(data)) == data
    plain = codec._compressor().compress(data)
    assert len(stored) < len(plain)


@pytest.mark.parametrize("kind", list(REAL))
def test_probe_finds_float_layout_without_a_hint(kind):
    data = REAL[kind]()
    name, stored = codec.encode(data)
    assert name.startswith("bg") or name == "zstd"
    assert codec.decode(name, bytes(stored), len(data), codec.sha256_hex(data)) == data


def test_grouped_round_trip_with_a_tail_that_is_not_a_whole_element():
    data = REAL["fp32"]()[:40_003]
    name, stored = codec.encode(data, 4)
    assert codec.decode(name, bytes(stored), len(data), codec.sha256_hex(data)) == data


def test_low_mantissa_planes_are_stored_raw_and_exponent_plane_compressed():
    data = REAL["fp32"]()
    _, stored = codec.encode(data, 4)
    kinds = [stored[1 + 5 * i] for i in range(4)]
    assert 0 in kinds[:3]  # a low mantissa plane that does not compress is stored as it is
    assert kinds[3] == 1  # sign and exponent: compressed


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
        codec.decode("bg4", bytes(bad), len(data), codec.sha256_hex(data))


def test_a_grouped_plane_cannot_inflate_past_its_size():
    import zstandard

    data = REAL["bf16"]()[:1000]
    bomb_plane = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    obj = struct.pack("<B", 2) + struct.pack("<BI", 1, len(bomb_plane)) + struct.pack("<BI", 0, 500) + bomb_plane + bytes(500)
    with pytest.raises(IntegrityError):
        codec.decode("bg2", obj, len(data), codec.sha256_hex(data))


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
        chunks.append([codec.sha256_hex(blob[s.offset : s.offset + s.length]) for s in plan])
    assert chunks[0][0] != chunks[1][0]
    assert chunks[0][1:] == chunks[1][1:]


@pytest.mark.parametrize(
    "header",
    [b"not json", b"[]", b'{"t": {"dtype": "F32", "data_offsets": [0, 999999999]}}', b'{"t": {"dtype": "F32", "data_offsets": [8, 4]}}', b'{"t": 5}'],
)
def test_invalid_safetensors_headers_fall_back(header):
    assert safetensors_plan(header, 1000) is None


def test_not_safetensors_is_detected_from_the_length_prefix():
    assert safetensors_header_length(struct.pack("<Q", 10**12), 1000) is None
    assert safetensors_header_length(b"\x01", 1000) is None
