"""Whole-file hashes taken as a restore's chunks land, in any order, by several threads."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from ckptsync import format as fmt
from ckptsync.download import FileHashes
from ckptsync.errors import IntegrityError


def _land(tmp_path: Path, data: bytes, pieces: list[tuple[int, int]], digest: str, threads: int = 1) -> FileHashes:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    hashes = FileHashes((fmt.FileEntry("f", len(data), 0o644, digest, ()),), [fd])
    work = list(pieces)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                offset, length = work.pop()
            os.pwrite(fd, data[offset : offset + length], offset)
            hashes.landed(0, offset, memoryview(data)[offset : offset + length])

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    os.close(fd)
    return hashes


@pytest.mark.parametrize("seed", range(5))
def test_pieces_landing_in_any_order_from_several_threads_give_the_files_sha256(tmp_path, seed):
    rng = random.Random(seed)
    data = rng.randbytes(3 << 20)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    pieces = list(zip([0, *cuts], [b - a for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)], strict=True))
    rng.shuffle(pieces)
    hashes = _land(tmp_path, data, pieces, hashlib.sha256(data).hexdigest(), threads=4)
    hashes.check()  # raises if the hash, taken piece by piece, differs from the file's


def test_a_file_whose_bytes_do_not_hash_to_the_manifests_hash_is_refused(tmp_path):
    data = os.urandom(100_000)
    hashes = _land(tmp_path, data, [(50_000, 50_000), (0, 50_000)], hashlib.sha256(b"other").hexdigest())
    with pytest.raises(IntegrityError, match="does not match its whole-file hash"):
        hashes.check()


def test_a_gap_left_by_the_plan_is_refused(tmp_path):
    data = os.urandom(100_000)
    hashes = _land(tmp_path, data, [(0, 40_000), (60_000, 40_000)], hashlib.sha256(data).hexdigest())
    with pytest.raises(IntegrityError):
        hashes.check()


# ---------------------------------------------------------------- piece digests (format version 6)


def _piece_entry(data: bytes, cuts: list[int], parts: set[int]) -> fmt.FileEntry:
    """A version-6 entry for ``data`` cut at ``cuts``: the pieces in ``parts`` are parts of a larger chunk."""
    bounds = list(zip([0, *cuts], [*cuts, len(data)], strict=True))
    refs = []
    for k, (a, b) in enumerate(bounds):
        digest = hashlib.sha256(data[a:b]).hexdigest()
        if k in parts:  # a part of a chunk that holds 7 bytes before and after it; the chunk's name is not the piece's hash
            refs.append(fmt.ChunkRef("ab" * 32, b - a + 14, b - a + 14, "raw", 7, b - a))
        else:
            refs.append(fmt.ChunkRef(digest, b - a, b - a, "raw"))
    digest = fmt.piece_digest([hashlib.sha256(data[a:b]).hexdigest() for a, b in bounds])
    return fmt.FileEntry("f", len(data), 0o644, digest, tuple(refs), pieces=True)


def _land_pieces(tmp_path: Path, entry: fmt.FileEntry, data: bytes, skip: int | None = None) -> FileHashes:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    hashes = FileHashes((entry,), [fd])
    offset = 0
    for k, ref in enumerate(entry.chunks):
        if k != skip:
            os.pwrite(fd, data[offset : offset + ref.used], offset)
            hashes.landed(0, offset, memoryview(data)[offset : offset + ref.used])
        offset += ref.used
    os.close(fd)
    return hashes


def test_a_file_of_several_pieces_is_checked_by_its_piece_digest_without_hashing_whole_chunks_again(tmp_path):
    data = os.urandom(300_000)
    entry = _piece_entry(data, [100_000, 200_000], parts={1})
    assert entry.needs_pieces and entry.hash != hashlib.sha256(data).hexdigest()
    _land_pieces(tmp_path, entry, data).check()


def test_a_part_whose_bytes_differ_from_the_digest_is_refused(tmp_path):
    data = os.urandom(300_000)
    entry = _piece_entry(data, [100_000, 200_000], parts={1})
    other = data[:150_000] + bytes([data[150_000] ^ 1]) + data[150_001:]  # the part's bytes (the chunk's name is not checked here)
    with pytest.raises(IntegrityError, match="does not match its hash"):
        _land_pieces(tmp_path, entry, other).check()


def test_a_piece_that_never_landed_is_refused(tmp_path):
    data = os.urandom(300_000)
    entry = _piece_entry(data, [100_000, 200_000], parts=set())
    with pytest.raises(IntegrityError, match="does not match its hash"):
        _land_pieces(tmp_path, entry, data, skip=2).check()
