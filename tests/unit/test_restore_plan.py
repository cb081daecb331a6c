"""What a restore fetches, reuses and writes, decided from the manifest and what is already local (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from ckptsync import format as fmt
from ckptsync.errors import FormatError
from ckptsync.restore_plan import LocalView, plan_restore

MiB = 1 << 20


def ref(n: int, size: int = 4 * MiB, offset: int = 0, length: int | None = None) -> fmt.ChunkRef:
    return fmt.ChunkRef(f"{n:064x}", size, size // 2, "zstd", offset, length)


def entry(path: str, *chunks: fmt.ChunkRef) -> fmt.FileEntry:
    return fmt.FileEntry(path, sum(c.used for c in chunks), 0o644, f"{hash(path) & 0xFFFF:064x}", chunks)


def manifest(*files: fmt.FileEntry, kind: fmt.Kind = "dir") -> fmt.Manifest:
    created = datetime(2026, 12, 1, tzinfo=timezone.utc)
    return fmt.Manifest("checkpoint-1", kind, 1, {}, created, "h", "20261201T000000000000Z-h-0000000000000001", files)


PACK = ref(9, size=3000)
M = manifest(
    entry("model.safetensors", ref(1), ref(2), ref(1)),  # a chunk repeated in one file
    entry("optim/state.pt", ref(2), ref(3, size=MiB)),  # and across files
    entry("config.json", ref(9, 3000, 0, 1000)),  # three small files packed in one chunk
    entry("sub/deeper/rng.pth", ref(9, 3000, 1000, 1500)),
    entry("tok.json", ref(9, 3000, 2500, 500)),
    entry("empty.bin"),
)


def test_every_chunk_is_fetched_once_with_every_place_its_bytes_go() -> None:
    plan = plan_restore(M)
    assert not plan.already_present and plan.reuse == ()
    assert [f.path for f in plan.write] == [f.path for f in M.files]
    fetches = {f.ref.hash[-1]: f for f in plan.fetches}
    assert sorted(fetches) == ["1", "2", "3", "9"]
    assert all(not f.ref.is_part for f in plan.fetches), "a fetch is of the whole chunk"
    one = [(t.file, t.offset, t.start, t.length) for t in fetches["1"].targets]
    assert one == [(0, 0, 0, 4 * MiB), (0, 8 * MiB, 0, 4 * MiB)]
    two = [(t.file, t.offset) for t in fetches["2"].targets]
    assert two == [(0, 4 * MiB), (1, 0)]
    pack = [(plan.write[t.file].path, t.offset, t.start, t.length) for t in fetches["9"].targets]
    assert pack == [("config.json", 0, 0, 1000), ("sub/deeper/rng.pth", 0, 1000, 1500), ("tok.json", 0, 2500, 500)]
    assert fetches["9"].length == 3000
    assert plan.bytes_to_write == sum(f.size for f in M.files)


def test_folders_are_created_parents_first() -> None:
    assert plan_restore(M).folders == ("optim", "sub", "sub/deeper")
    assert plan_restore(manifest(entry("checkpoint-1", ref(1)), kind="file")).folders == ()


def test_local_files_with_the_right_hash_are_reused_not_fetched() -> None:
    local = LocalView({"model.safetensors": Path("/t/checkpoint-1/model.safetensors"), "tok.json": Path("/t/checkpoint-1/tok.json")})
    plan = plan_restore(M, local)
    assert [(e.path, str(p)) for e, p in plan.reuse] == [
        ("model.safetensors", "/t/checkpoint-1/model.safetensors"),
        ("tok.json", "/t/checkpoint-1/tok.json"),
    ]
    assert "tok.json" not in [f.path for f in plan.write]
    fetched = {f.ref.hash[-1]: [plan.write[t.file].path for t in f.targets] for f in plan.fetches}
    assert "1" not in fetched, "a chunk only reused files need is not fetched"
    assert fetched["2"] == ["optim/state.pt"] and fetched["9"] == ["config.json", "sub/deeper/rng.pth"]
    assert plan.bytes_to_write == sum(f.size for f in M.files) - 12 * MiB - 500


def test_an_exact_local_copy_needs_nothing() -> None:
    everything = {f.path: Path("/t/checkpoint-1", f.path) for f in M.files}
    assert plan_restore(M, LocalView(everything, exact=True)).already_present
    assert not plan_restore(M, LocalView(everything, exact=False)).already_present  # extra files or other modes


def test_a_hostile_path_is_refused_before_anything_is_written() -> None:
    bad = fmt.Manifest(M.name, "dir", 1, {}, M.created, "h", M.commit, (fmt.FileEntry("../escape", 0, 0o644, "0" * 64, ()),))
    with pytest.raises(FormatError):
        plan_restore(bad)
