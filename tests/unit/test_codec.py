"""Chunk codecs: round trips, the choice of codec, and bounded decompression."""

import os

import numpy as np
import pytest
import zstandard

from ckptsync import codec
from ckptsync.errors import IntegrityError
from ckptsync.hashes import hash_hex


def _floats(n: int) -> bytes:
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.02, n).astype(np.float32).tobytes()


@pytest.mark.parametrize(
    "data",
    [b"", b"x", bytes(1 << 20), os.urandom(1 << 20), b"abc" * 100_000],
    ids=["empty", "one", "zeros", "random", "text"],
)
def test_round_trip(data):
    name, stored = codec.encode(data)
    digest = hash_hex("sha256", data)
    assert codec.decode(name, bytes(stored), len(data), digest) == data


def test_round_trip_on_float_weights():
    data = _floats(1 << 18)
    name, stored = codec.encode(data)
    assert codec.decode(name, bytes(stored), len(data), hash_hex("sha256", data)) == data


def test_incompressible_data_is_stored_raw_and_compressible_as_zstd():
    assert codec.encode(os.urandom(1 << 16))[0] == "raw"
    assert codec.encode(bytes(1 << 16))[0] == "zstd"


def test_corrupt_raw_chunk_is_detected():
    data = os.urandom(1000)
    bad = bytearray(data)
    bad[10] ^= 1
    with pytest.raises(IntegrityError, match="does not match"):
        codec.decode("raw", bytes(bad), len(data), hash_hex("sha256", data))


def test_frame_declaring_more_than_the_manifest_is_rejected_before_decompressing():
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    with pytest.raises(IntegrityError, match="declares"):
        codec.decode("zstd", bomb, 1024, "0" * 64)


def test_frame_without_content_size_cannot_inflate_past_declared_size():
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    with pytest.raises(IntegrityError):
        codec.decode("zstd", bomb, 1024, "0" * 64)


def test_garbage_is_not_a_zstd_frame():
    with pytest.raises(IntegrityError):
        codec.decode("zstd", b"garbage!" * 10, 80, "0" * 64)
