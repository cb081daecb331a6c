"""The hash that names chunks (format version 7: BLAKE3, or SHA-256 as before), end to end on a file:// remote."""

from __future__ import annotations

import hashlib
import json
import os
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

import ckptsync
from ckptsync import codec
from ckptsync import format as fmt
from ckptsync.errors import FormatError, IntegrityError
from ckptsync.hashes import HASH_ALGORITHMS, empty_hash, hash_hex
from tests.helpers import run_cli


def _checkpoint(parent: Path, name: str, seed: int) -> Path:
    """A checkpoint with a file of several chunks, a small (packed) file and an empty one."""
    rnd = random.Random(seed)
    d = parent / name
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(rnd.randbytes(9 << 20))
    (d / "config.json").write_text(json.dumps({"seed": seed}))
    (d / "empty").write_bytes(b"")
    return d


def _chunks(root: Path) -> set[str]:
    return {p.name for p in (root / "chunks").rglob("*") if p.is_file()}


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("algorithm", HASH_ALGORITHMS)
def test_every_hash_of_a_manifest_is_its_algorithms_and_restores(tmp_path: Path, algorithm: str) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    src = _checkpoint(tmp_path / "src", "checkpoint-1", 1)
    [result] = ckptsync.push(tmp_path / "src", f"file://{root}", ckptsync.Options(hash_algorithm=algorithm)).results
    m = result.manifest
    assert m is not None and m.hash_algorithm == algorithm
    doc = json.loads(fmt.encode_manifest(m))
    assert (doc["hash_algorithm"], doc["version"]) == (algorithm, 7 if algorithm == "blake3" else 6)
    for f in m.files:
        data = (src / f.path).read_bytes()
        if f.chunks and not f.chunks[0].is_part:  # whole chunks: each named by its bytes' hash
            offsets = [sum(c.size for c in f.chunks[:i]) for i in range(len(f.chunks))]
            assert [c.hash for c in f.chunks] == [hash_hex(algorithm, data[o : o + c.size]) for o, c in zip(offsets, f.chunks, strict=True)]
        expected = fmt.piece_digest([c.hash for c in f.chunks], algorithm) if f.needs_pieces else hash_hex(algorithm, data)
        assert f.hash == expected
    assert next(f for f in m.files if f.path == "empty").hash == empty_hash(algorithm)
    assert len(next(f for f in m.files if f.path == "model.bin").chunks) > 1
    restored = ckptsync.restore(f"file://{root}", tmp_path / "out")
    assert restored is not None and _files(restored.path) == _files(src)


def test_a_checkpoint_committed_under_sha256_keeps_it_and_new_ones_take_blake3(tmp_path: Path) -> None:
    """After an upgrade, a restored (or unchanged) checkpoint is found committed, not stored again under new names."""
    root = tmp_path / "remote"
    root.mkdir()
    remote = f"file://{root}"
    src = tmp_path / "src"
    _checkpoint(src, "checkpoint-1", 1)
    [old] = ckptsync.push(src, remote, ckptsync.Options(hash_algorithm="sha256")).results
    assert old.status == "committed" and old.manifest is not None and old.manifest.hash_algorithm == "sha256"
    stored = _chunks(root)

    restored = ckptsync.restore(remote, tmp_path / "job")
    assert restored is not None
    _checkpoint(tmp_path / "job", "checkpoint-2", 2)
    results = {r.name: r for r in ckptsync.push(tmp_path / "job", remote).results}  # the default: blake3
    assert results["checkpoint-1"].status == "unchanged"
    assert results["checkpoint-2"].status == "committed"
    new = results["checkpoint-2"].manifest
    assert new is not None and new.hash_algorithm == "blake3"
    assert _chunks(root) - stored == {f"{c.hash}.{c.codec}" for f in new.files for c in f.chunks}


def test_the_cli_flag_chooses_the_hash_and_rejects_others(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    _checkpoint(tmp_path / "src", "checkpoint-1", 1)
    bad = run_cli("push", "--dir", str(tmp_path / "src"), "--remote", f"file://{root}", "--hash", "md5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "blake3" in bad.stderr
    assert not (root / "manifests").exists()
    ok = run_cli("push", "--dir", str(tmp_path / "src"), "--remote", f"file://{root}", "--hash", "sha256")
    assert ok.returncode == 0, ok.stderr
    [key] = (root / "manifests").rglob("*.json")
    assert json.loads(key.read_bytes())["hash_algorithm"] == "sha256"


def test_the_python_api_refuses_an_unknown_hash_before_any_work() -> None:
    with pytest.raises(ckptsync.UsageError, match="unknown hash 'md5'") as e:
        ckptsync.Options(hash_algorithm="md5")
    assert e.value.hint == "use one of blake3, sha256"


def test_a_chunk_is_checked_under_its_manifests_hash_only() -> None:
    data = os.urandom(100_000)
    named_sha, named_b3 = hashlib.sha256(data).hexdigest(), hash_hex("blake3", data)
    assert codec.decode("raw", data, len(data), named_b3, "blake3") == data
    with pytest.raises(IntegrityError, match="does not match its hash"):
        codec.decode("raw", data, len(data), named_sha, "blake3")
    with pytest.raises(IntegrityError, match="does not match its hash"):
        codec.decode("raw", data, len(data), named_b3, "sha256")


def test_blake3_needs_version_7_and_unknown_hashes_are_refused() -> None:
    doc = json.loads(fmt.encode_manifest(_manifest("blake3")))
    assert doc["version"] == 7 and fmt.decode_manifest(json.dumps(doc).encode()).hash_algorithm == "blake3"
    with pytest.raises(FormatError, match="blake3 needs format version 7"):
        fmt.decode_manifest(json.dumps({**doc, "version": 6}).encode())
    with pytest.raises(FormatError, match="unknown hash algorithm"):
        fmt.decode_manifest(json.dumps({**doc, "hash_algorithm": "blake2b"}).encode())
    sha = json.loads(fmt.encode_manifest(_manifest("sha256")))
    assert sha["version"] == 1 and "hash_algorithm" in sha


def test_a_manifest_mixing_hashes_is_never_written() -> None:
    m = _manifest("blake3")
    mixed = fmt.Manifest(**{**m.__dict__, "hash_algorithm": "sha256"})
    with pytest.raises(ValueError, match="must be named by sha256"):
        fmt.encode_manifest(mixed)


def _manifest(algorithm: str) -> fmt.Manifest:
    data = b"x" * 1000
    digest = hash_hex(algorithm, data)
    ref = fmt.ChunkRef(digest, len(data), len(data), "raw", algorithm=algorithm)
    created = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    return fmt.Manifest(
        name="checkpoint-1",
        kind="dir",
        step=1,
        metrics={},
        created=created,
        host="algo-1",
        commit=fmt.new_commit_id(created, "algo-1"),
        files=(fmt.FileEntry("w.bin", len(data), 0o644, digest, (ref,), True, algorithm),),
        hash_algorithm=algorithm,
    )
