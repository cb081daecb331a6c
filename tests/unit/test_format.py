"""Manifests: encode/decode round trip and rejection of hostile documents."""

import dataclasses
import hashlib
import json
from datetime import datetime, timezone

import pytest

from ckptsync import format as fmt
from ckptsync.errors import FormatError

H = "ab" * 32


def manifest(**over):
    files = over.pop(
        "files",
        (fmt.FileEntry("model.safetensors", 10, 0o644, H, (fmt.ChunkRef(H, 10, 8, "zstd"),)), fmt.FileEntry("empty", 0, 0o600, H, ())),
    )
    created = datetime(2026, 11, 26, 13, 0, 0, 123456, tzinfo=timezone.utc)
    base = dict(
        name="checkpoint-500",
        kind="dir",
        step=500,
        metrics={"eval_loss": 0.25, "bad": None},
        created=created,
        host="algo-1",
        commit=fmt.new_commit_id(created, "algo-1"),
        files=files,
        tool="ckptsync/test",
    )
    base.update(over)
    return fmt.Manifest(**base)


def doc_of(m):
    return json.loads(fmt.encode_manifest(m))


def decode_doc(doc):
    return fmt.decode_manifest(json.dumps(doc).encode())


def test_round_trip():
    m = manifest()
    back = fmt.decode_manifest(fmt.encode_manifest(m))
    assert back == m
    assert back.raw_bytes == 10 and back.stored_bytes == 8


def test_unknown_fields_are_kept_and_ignored():
    doc = doc_of(manifest())
    doc["future_field"] = {"x": 1}
    assert decode_doc(doc).extra == {"future_field": {"x": 1}}


def test_newer_version_is_refused_with_upgrade_hint():
    doc = doc_of(manifest())
    doc["version"] = fmt.FORMAT_VERSION + 1
    with pytest.raises(FormatError) as e:
        decode_doc(doc)
    assert "upgrade" in (e.value.hint or "")


def test_commit_ids_do_not_collide():
    t = datetime.now(timezone.utc)
    ids = {fmt.new_commit_id(t, "host") for _ in range(1000)}
    assert len(ids) == 1000


def test_manifest_key_round_trip_with_awkward_names():
    for name in ["checkpoint-500", "epoch=3-step=1200-val_loss=0.213.ckpt", "a b%c", "ünï"]:
        key = fmt.manifest_key("p/q", name, "20261126T130000123456Z-h-0123456789abcdef")
        assert key.startswith("p/q/manifests/")
        assert fmt.parse_manifest_key(key) == (name, "20261126T130000123456Z-h-0123456789abcdef")


def _file(path, **kw):
    d = {"path": path, "size": 0, "mode": 0o644, "hash": H, "chunks": []}
    d.update(kw)
    return d


HOSTILE_PATHS = [
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "a//b",
    "./a",
    "a/.",
    "",
    "a\x00b",
    "a\nb",
    "a\\..\\b",
    "x" * 300,
    "a/" * 2100 + "b",
    "\u202eexe.txt",  # right-to-left override
    "zero\u200bwidth",
    "\ud800",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=range(len(HOSTILE_PATHS)))
def test_hostile_paths_are_rejected(path):
    doc = doc_of(manifest())
    doc["files"] = [_file(path)]
    with pytest.raises(FormatError):
        fmt.decode_manifest(json.dumps(doc).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(files=[_file("a"), _file("a")]),  # duplicate
        lambda d: d.update(files=[_file("a"), _file("a/b")]),  # file and folder at once
        lambda d: d.update(files=[_file("a", size=5, chunks=[{"hash": H, "size": 4, "stored": 4, "codec": "raw"}])]),
        lambda d: d.update(files=[_file("a", size=4, chunks=[{"hash": H, "size": 4, "stored": 5, "codec": "raw"}])]),
        lambda d: d.update(files=[_file("a", size=4, chunks=[{"hash": H, "size": 4, "stored": 4, "codec": "lz4"}])]),
        lambda d: d.update(files=[_file("a", size=1 << 40, chunks=[{"hash": H, "size": 1 << 40, "stored": 9, "codec": "zstd"}])]),
        lambda d: d.update(files=[_file("a", hash="XYZ")]),
        lambda d: d.update(files=[_file("a", mode=-1)]),
        lambda d: d.update(files=[_file("a", size=-1)]),
        lambda d: d.update(files=[_file("a", size=True)]),
        lambda d: d.update(files="nope"),
        lambda d: d.update(name="../x"),
        lambda d: d.update(name="a/b"),
        lambda d: d.update(kind="symlink"),
        lambda d: d.update(kind="file"),  # file kind with two files
        lambda d: d.update(step=-3),
        lambda d: d.update(step="7"),
        lambda d: d.update(metrics={"x": "high"}),
        lambda d: d.update(created="yesterday"),
        lambda d: d.update(created="2026-01-01T00:00:00"),
        lambda d: d.update(commit="../../x"),
        lambda d: d.update(hash_algorithm="md5"),
        lambda d: d.pop("name"),
        lambda d: d.update(format="something-else"),
        lambda d: d.update(version="1"),
    ],
)
def test_invalid_documents_are_rejected(mutate):
    doc = doc_of(manifest())
    mutate(doc)
    with pytest.raises(FormatError):
        decode_doc(doc)


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b"[]", b"{", b"\xff\xfe", b'{"format": "ckptsync.manifest", "version": 1, "x": NaN}', b"[" * 100000],
)
def test_garbage_bytes_raise_format_error(data):
    with pytest.raises(FormatError):
        fmt.decode_manifest(data)


def test_oversized_manifest_is_refused_without_parsing():
    with pytest.raises(FormatError, match="larger"):
        fmt.decode_manifest(b" " * (fmt.MAX_MANIFEST_BYTES + 1))


def test_chunk_key_layout():
    key = fmt.chunk_key("pre", H, "zstd")
    assert key == f"pre/chunks/ab/{H}.zstd"
    assert fmt.parse_chunk_key(key) == (H, "zstd")
    assert fmt.parse_chunk_key("pre/chunks/ab/nothex.zstd") is None


# ---------------------------------------------------------------- piece digests (format version 6)


def test_the_piece_digest_is_the_content_hash_for_at_most_one_piece_and_a_prefixed_hash_over_several() -> None:
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    assert fmt.piece_digest([]) == hashlib.sha256(b"").hexdigest()
    assert fmt.piece_digest([a]) == a
    assert fmt.piece_digest([a, b]) == hashlib.sha256(b"ckptsync.pieces\n" + bytes.fromhex(a) + bytes.fromhex(b)).hexdigest()
    assert fmt.piece_digest([a, b]) != fmt.piece_digest([b, a])


def test_the_piece_digest_of_a_blake3_manifest_is_blake3_throughout() -> None:
    from blake3 import blake3

    a, b = blake3(b"a").hexdigest(), blake3(b"b").hexdigest()
    assert fmt.piece_digest([], "blake3") == blake3(b"").hexdigest() != fmt.piece_digest([])
    assert fmt.piece_digest([a], "blake3") == a
    assert fmt.piece_digest([a, b], "blake3") == blake3(b"ckptsync.pieces\n" + bytes.fromhex(a) + bytes.fromhex(b)).hexdigest()


def _two_chunk_manifest(pieces: bool) -> fmt.Manifest:
    data = [b"x" * 10, b"y" * 5]
    refs = tuple(fmt.ChunkRef(hashlib.sha256(d).hexdigest(), len(d), len(d), "raw") for d in data)
    digest = fmt.piece_digest([r.hash for r in refs]) if pieces else hashlib.sha256(b"".join(data)).hexdigest()
    created = datetime(2026, 12, 3, tzinfo=timezone.utc)
    entry = fmt.FileEntry("w.bin", 15, 0o644, digest, refs, pieces)
    return fmt.Manifest("ck-1", "dir", 1, {}, created, "h", fmt.new_commit_id(created, "h"), (entry,))


def test_piece_digests_need_version_6_only_for_a_file_of_several_chunks() -> None:
    m = _two_chunk_manifest(pieces=True)
    assert m.version == 6
    assert fmt.decode_manifest(fmt.encode_manifest(m)).files == m.files
    one = dataclasses.replace(m.files[0], size=10, chunks=m.files[0].chunks[:1], hash=m.files[0].chunks[0].hash)
    assert dataclasses.replace(m, files=(one,)).version == 1  # one piece: the content hash, as in version 1
    assert _two_chunk_manifest(pieces=False).version == 1


def test_a_version_6_file_of_whole_chunks_whose_hash_is_not_their_digest_is_invalid() -> None:
    doc = json.loads(fmt.encode_manifest(_two_chunk_manifest(pieces=True)))
    doc["files"][0]["hash"] = hashlib.sha256(b"x" * 10 + b"y" * 5).hexdigest()  # the content hash: version 5's rule
    with pytest.raises(FormatError, match="digest of its chunks"):
        fmt.decode_manifest(json.dumps(doc).encode())
    doc["version"] = 5  # the same hash is right under version 5
    assert fmt.decode_manifest(json.dumps(doc).encode()).files[0].pieces is False
