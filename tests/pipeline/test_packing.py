"""Small files packed into shared chunks (format version 4 chunk parts), pushed and restored on a file:// remote:
how many chunks a folder of small files costs, packs within the target, unchanged files referring to their old pack,
deterministic packing, the memory budget returned on success and failure, and a part range checked on restore.

The documented example and the rules of the format alone are in tests/unit/test_packing.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ckptsync
from ckptsync import format as fmt
from ckptsync.checkpoint import scan_folder
from ckptsync.errors import IntegrityError
from ckptsync.packing import PACK_TARGET, SMALL_FILE
from ckptsync.repository import Repository
from ckptsync.session import RemoteSession
from ckptsync.store import LocalStore
from ckptsync.upload import Uploader, UploadStats
from tests.helpers import tree


@pytest.fixture
def remote(tmp_path: Path) -> str:
    root = tmp_path / "remote"
    root.mkdir()
    return f"file://{root}"


def chunk_files(remote: str) -> list[Path]:
    root = Path(remote[len("file://") :]) / "chunks"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def many_small_files(parent: Path, name: str, count: int, *, seed: int = 0) -> Path:
    """A checkpoint laid out like an array store: thousands of small files in folders."""
    d = parent / name
    rnd = __import__("random").Random(seed)
    for i in range(count):
        sub = d / f"shard-{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:05d}.bin").write_bytes(rnd.randbytes(rnd.randrange(1, 3000)))
    (d / "ckptsync.json").write_text(json.dumps({"step": int(name.split("-")[-1])}))
    return d


def test_a_thousand_small_files_cost_a_handful_of_chunks_and_round_trip(remote: str, tmp_path: Path) -> None:
    src = many_small_files(tmp_path / "ckpts", "checkpoint-1", 1000)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    report = ckptsync.push(tmp_path / "ckpts", remote)
    [result] = report.results
    assert result.status == "committed" and result.manifest is not None
    # ~1.5 MB in 1001 files: one pack (a per-file layout would be 1001 objects)
    assert len(chunk_files(remote)) == -(-total // PACK_TARGET) == result.stats.chunks_uploaded
    assert result.manifest.version == 7  # parts need 4, BLAKE3 names (the default) 7
    assert all(len(f.chunks) == 1 and f.chunks[0].is_part for f in result.manifest.files)
    restored = ckptsync.restore(remote, tmp_path / "out")
    assert restored is not None and tree(restored.path) == tree(src)


def test_packs_stay_within_the_target_and_files_over_the_threshold_are_not_packed(remote: str, tmp_path: Path) -> None:
    d = tmp_path / "ckpts" / "checkpoint-2"
    d.mkdir(parents=True)
    for i in range(9):  # 9 files of 900 KiB: at most 4 per 4 MiB pack
        (d / f"small-{i}.bin").write_bytes(os.urandom(900 << 10))
    (d / "large.bin").write_bytes(os.urandom(SMALL_FILE + 1))
    (d / "empty").write_bytes(b"")
    [result] = ckptsync.push(tmp_path / "ckpts", remote).results
    m = result.manifest
    assert m is not None
    by_path = {f.path: f for f in m.files}
    assert not by_path["large.bin"].chunks[0].is_part and by_path["empty"].chunks == ()
    packs = {c.hash: c.size for f in m.files if f.path.startswith("small-") for c in f.chunks}
    assert len(packs) == 3 and all(size <= PACK_TARGET for size in packs.values())
    restored = ckptsync.restore(remote, tmp_path / "out")
    assert restored is not None and tree(restored.path) == tree(d)


def test_unchanged_small_files_refer_to_their_old_pack_and_only_changed_ones_are_uploaded(remote: str, tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    stable = {"config.json": b'{"hidden_size": 384}', "tokenizer.json": os.urandom(400_000), "vocab.txt": os.urandom(200_000)}
    for step in (1, 2):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        for name, data in stable.items():
            (d / name).write_bytes(data)
        (d / "rng_state.pth").write_bytes(os.urandom(15_000))
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        (d / "model.safetensors").write_bytes(os.urandom(2 << 20))  # no valid header: fixed chunks
        if step == 1:
            ckptsync.push(ckpts, remote)
    results = {r.name: r for r in ckptsync.push(ckpts, remote).results}
    assert results["checkpoint-1"].status == "unchanged"
    second = results["checkpoint-2"]
    assert second.status == "committed" and second.manifest is not None
    first = next(m.manifest for m in ckptsync.list_checkpoints(remote) if m.name == "checkpoint-1")
    old = {f.path: f.chunks for f in first.files}
    new = {f.path: f.chunks for f in second.manifest.files}
    for name in stable:
        assert new[name] == old[name], f"{name} is unchanged: it must refer to its range of the old pack"
    assert new["rng_state.pth"][0].hash != old["rng_state.pth"][0].hash
    # uploaded: the model's chunk and one pack of the two changed small files, nothing else
    assert second.stats.chunks_uploaded == 2
    assert second.stats.uploaded_bytes < (2 << 20) + 15_000 + 1000
    for step in (1, 2):
        restored = ckptsync.restore(remote, tmp_path / f"out-{step}", name=f"checkpoint-{step}")
        assert restored is not None and tree(restored.path) == tree(ckpts / f"checkpoint-{step}")


def test_a_new_process_packs_the_same_files_into_the_same_chunk(remote: str, tmp_path: Path) -> None:
    """Packing is deterministic: a push killed before its manifest re-sends nothing on restart."""
    src = many_small_files(tmp_path / "ckpts", "checkpoint-3", 50)
    repo = Repository(LocalStore(Path(remote[len("file://") :])))
    [ckpt] = scan_folder(tmp_path / "ckpts")
    with Uploader(repo) as up:
        first = up.store(ckpt, UploadStats())  # chunks only, no commit
    with RemoteSession(repo) as session:
        result = session.upload(ckpt)
    assert result.status == "committed" and result.stats.chunks_uploaded == 0
    assert result.manifest is not None and list(result.manifest.files) == first
    assert tree(ckptsync.restore(remote, tmp_path / "out").path) == tree(src)  # type: ignore[union-attr]


@pytest.mark.parametrize("max_memory", [1, 3 << 20])
def test_a_budget_smaller_than_a_pack_neither_deadlocks_nor_leaks(remote: str, tmp_path: Path, max_memory: int) -> None:
    d = tmp_path / "ckpts" / "checkpoint-4"
    d.mkdir(parents=True)
    for i in range(12):
        (d / f"f{i}").write_bytes(os.urandom(700 << 10))
    (d / "a-large.bin").write_bytes(os.urandom(9 << 20))  # before the small files in path order
    (d / "z-large.bin").write_bytes(os.urandom(5 << 20))
    repo = Repository(LocalStore(Path(remote[len("file://") :])))
    [ckpt] = scan_folder(tmp_path / "ckpts")
    with RemoteSession(repo, max_memory=max_memory, workers=2) as session:
        assert session.upload(ckpt).status == "committed"
        assert session.uploader.executor.budget.used == 0
    assert tree(ckptsync.restore(remote, tmp_path / "out").path) == tree(d)  # type: ignore[union-attr]


def test_a_failing_store_returns_every_packed_byte_to_the_budget(remote: str, tmp_path: Path) -> None:
    src = many_small_files(tmp_path / "ckpts", "checkpoint-5", 3000)
    repo = Repository(LocalStore(Path(remote[len("file://") :])))
    [ckpt] = scan_folder(tmp_path / "ckpts")
    calls = []

    def broken(digest: str, codec: str, data: object) -> None:
        calls.append(digest)
        raise OSError("disk on fire")

    with RemoteSession(repo, workers=2) as session:
        session.repo.put_chunk = broken  # type: ignore[method-assign]
        with pytest.raises(OSError, match="disk on fire"):
            session.upload(ckpt)
        assert calls and session.uploader.executor.budget.used == 0
    assert not list(Path(remote[len("file://") :]).rglob("*.json")), "nothing may be committed"
    assert src.exists()


def test_restore_refuses_a_part_beyond_the_chunk_it_fetched(remote: str, tmp_path: Path) -> None:
    """Two entries for one hash with different sizes: the range is checked against the bytes decoded."""
    src = many_small_files(tmp_path / "ckpts", "checkpoint-6", 3)
    [result] = ckptsync.push(tmp_path / "ckpts", remote).results
    assert result.manifest is not None and result.key is not None
    doc = json.loads(fmt.encode_manifest(result.manifest))
    first = doc["files"][0]["chunks"][0]
    assert first["codec"] == "raw" and len(doc["files"]) == 4  # random bytes: a raw pack of 4 files
    # The first entry claims the chunk is 10 bytes longer and puts its range at that end;
    # the last entry for the hash (which the restore decodes by) tells the truth.
    first.update(size=first["size"] + 10, stored=first["stored"] + 10)
    first["offset"] = first["size"] - first["length"]
    bad = fmt.decode_manifest(json.dumps(doc).encode())
    path = Path(remote[len("file://") :]) / result.key
    path.write_bytes(fmt.encode_manifest(bad))
    with pytest.raises(IntegrityError):
        ckptsync.restore(remote, tmp_path / "out", name="checkpoint-6", strict=True)
    assert not (tmp_path / "out" / "checkpoint-6").exists()
    assert src.exists()
