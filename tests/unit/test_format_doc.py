"""Keep docs/FORMAT.md from drifting away from the code.

- The example manifests (versions 1, 2 and 3) must be accepted by
  ``decode_manifest`` and re-encode to the same fields and values.
- The byte-grouped example object must decode with ``ckptsync.codec.decode``
  to the chunk its entry names, laid out as the document says; the example
  safetensors header must cut into the example's chunks.
- The "restore by hand" listing must restore, byte for byte, remotes written by
  ``ckptsync.push`` (into moto's in-process S3), byte-grouped chunks and
  multi-host checkpoints included, and must refuse a newer format version.
- Constants the spec states must match the code: manifest and chunk limits,
  the versions and codecs, the encoder's and the chunker's sizes, lock keys
  and bodies, the lock timings, temporary and staging names.
- What the spec says about multi-host checkpoints (grouping, completeness,
  the ``hosts`` rules), about retention of incomplete ones, and about locks
  and collection (generation bodies, pauses, chunks of unknown age) must hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import os
import random
import re
import socket
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

import ckptsync
from ckptsync import catalog, chunking, codec, download, fsutil, locks, policy, recovery
from ckptsync import format as fmt
from ckptsync.api import open_repository
from ckptsync.chunking import CHUNK_SIZE
from ckptsync.errors import FormatError, IntegrityError, NewerFormatError, UsageError
from ckptsync.fsutil import STAGING_PREFIX
from ckptsync.repository import ManifestRecord, Repository
from ckptsync.session import STALE_WRITES
from ckptsync.store import ObjectInfo
from ckptsync.store.local import LocalStore

prune_mod = importlib.import_module("ckptsync.retention")

DOC = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"
BUCKET = "ckpt-bucket"
PREFIX = "runs/exp1"


def _flat() -> str:
    """The document with every run of whitespace made one space (phrases survive rewrapping)."""
    return " ".join(DOC.read_text(encoding="utf-8").split())


def _block(marker: str, lang: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- " + re.escape(marker) + r" -->\s*```" + lang + r"\n(.*?)\n```", text, re.DOTALL)
    assert m, f"no ```{lang} block after <!-- {marker} --> in {DOC}"
    return m.group(1)


# ---------------------------------------------------------------- the example manifest


def test_example_manifest_round_trips() -> None:
    text = _block("example-manifest", "json")
    manifest = fmt.decode_manifest(text.encode("utf-8"), key="docs/FORMAT.md example")
    reencoded = json.loads(fmt.encode_manifest(manifest))
    original = json.loads(text)
    # sort_keys + exact number types: 2.0 and 2 must not compare equal here
    assert json.dumps(reencoded, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert original["version"] == 1  # a single-host manifest is written as version 1
    assert manifest.extra == {}


def test_example_manifest_key_and_tree_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    doc = json.loads(_block("example-manifest", "json"))
    key = fmt.manifest_key("", doc["name"], doc["commit"])
    assert f"`{key}`" in text
    assert fmt.parse_manifest_key(key) == (doc["name"], doc["commit"])
    # every chunk of the example appears in the layout tree under its fan-out folder
    for f in doc["files"]:
        for c in f["chunks"]:
            assert fmt.parse_chunk_key(fmt.chunk_key("", c["hash"], c["codec"])) == (c["hash"], c["codec"])
            assert f"│   ├── {c['hash'][:2]}/" in text or f"│   └── {c['hash'][:2]}/" in text
            assert f"{c['hash']}.{c['codec']}" in text
    # the empty file's hash is the hash of nothing
    empty = [f for f in doc["files"] if f["size"] == 0]
    assert empty and all(f["hash"] == hashlib.sha256(b"").hexdigest() and f["chunks"] == [] for f in empty)


def test_stated_constants_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert f"^{fmt._COMMIT_ID.pattern.removesuffix(chr(92) + 'Z')}$" in text  # the commit id grammar
    assert fmt.FORMAT_NAME == "ckptsync.manifest" and f'"{fmt.FORMAT_NAME}"' in text
    assert fmt.HASH_ALGORITHM == "sha256"
    assert fmt.MAX_CHUNK_SIZE == 67108864 and "67108864" in text
    assert fmt.MAX_CHUNK_SIZE + 1024 == 67109888 and "67109888" in text
    assert fmt.MAX_MANIFEST_BYTES == 67108864
    assert (fmt.MAX_PATH_BYTES, fmt.MAX_COMPONENT_BYTES, fmt.MAX_NAME_BYTES) == (4096, 255, 255)
    assert CHUNK_SIZE == 4194304 and "4194304" in text
    assert STAGING_PREFIX == ".ckptsync-staging-" and f"`{STAGING_PREFIX}`" in text
    flat = _flat()
    # the chunker's sizes (section 5)
    assert chunking.PACK_TARGET == 4194304 and "larger than 4 MiB (4194304 bytes)" in flat
    assert chunking.MAX_PIECE == 8388608 and "pieces of 8 MiB (8388608 bytes)" in flat
    assert chunking.MAX_HEADER == 100 << 20 and "2 ≤ n ≤ min(100 MiB, file size − 8)" in flat
    # the encoder's choice (section 3.2)
    assert codec.ZSTD_LEVEL == 1 and "zstd runs at level 1" in flat
    assert codec.MIN_SAVING == 0.03 and "at most 97% of the size of what it replaces (at least 3% smaller)" in flat
    assert codec.SAMPLE == 65536 and "first 64 KiB (65536 bytes)" in flat
    assert "A chunk under 64 bytes is stored `raw`" in flat
    assert "if n < 64:" in inspect.getsource(codec.encode)
    assert "for w in (2, 4):" in inspect.getsource(codec._probe)  # the probe never chooses bg8


def _table(marker: str) -> list[list[str]]:
    """The body rows of the markdown table after ``<!-- marker -->``, as stripped cells."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- " + re.escape(marker) + r" -->\s*\n((?:\|.*\n)+)", text)
    assert m, f"no table after <!-- {marker} -->"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in m.group(1).splitlines()]
    return [r for r in rows[2:]]  # without the header and the --- line


def test_codec_table_matches_the_code() -> None:
    rows = _table("codecs")
    assert [r[0] for r in rows] == [f"`{c}`" for c in fmt.CODECS]
    assert {r[0].strip("`"): int(r[1]) for r in rows} == fmt.CODECS_SINCE
    assert codec.GROUPED == {r[0].strip("`"): int(re.search(r"(\d)-byte", r[2]).group(1)) for r in rows[2:]}
    assert all(since <= fmt.FORMAT_VERSION for since in fmt.CODECS_SINCE.values())


def _widths(sentence: str) -> dict[str, int]:
    """``{dtype: width}`` from phrases such as "8 for `F64`, 4 for `F32`, 2 for `F16` and `BF16`"."""
    stated = {}
    for width, dtypes in re.findall(r"(\d) for ((?:`\w+`(?: and |, )?)+)", sentence):
        for dtype in re.findall(r"`(\w+)`", dtypes):
            stated[dtype] = int(width)
    return stated


def test_safetensors_widths_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- safetensors-widths -->\s*\n(.*?)\n\n", text, re.DOTALL)
    assert m
    assert _widths(" ".join(m.group(1).split())) == chunking.FLOAT_WIDTHS
    # the encoder's description (section 3.2, step 2) says the same
    m = re.search(r"2\. When the chunk comes with an element width \((.*?)\)", _flat())
    assert m and _widths(m.group(1)) == chunking.FLOAT_WIDTHS


# ---------------------------------------------------------------- restore by hand


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def _safetensors(tensors: list[tuple[str, str, np.ndarray]]) -> bytes:
    """A safetensors file: (name, dtype, little-endian array) in file order."""
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, array in tensors:
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(a.tobytes() for _, _, a in tensors)


def _weights(seed: int) -> bytes:
    """Float tensors of every width, so that a push uses bg2, bg4 and bg8 (over 1 MiB: not packed)."""
    rng = np.random.default_rng(seed)
    bf16 = (rng.normal(0, 0.02, 200_000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return _safetensors(
        [
            ("a.weight", "BF16", bf16),
            ("b.weight", "F32", rng.normal(0, 0.02, 100_000).astype(np.float32)),
            ("c.weight", "F64", rng.normal(0, 0.02, 50_000)),
        ]
    )


def _make_checkpoints(root: Path) -> Path:
    """A folder holding checkpoint-10 (the newest) and checkpoint-5."""
    rnd = random.Random(10)
    ck = root / "checkpoint-10"
    (ck / "sub" / "deeper").mkdir(parents=True)
    # > 4 MiB, not safetensors: one compressible 4 MiB chunk (zstd) and a random tail (raw)
    compressible = b"".join(rnd.choice([b"\x00\x00\x80\x3f", b"\x00\x00\x00\x00", b"\xcd\xcc\x4c\x3e"]) for _ in range(1 << 20))
    (ck / "model.safetensors").write_bytes(compressible + rnd.randbytes(1_500_000))
    (ck / "weights.safetensors").write_bytes(_weights(10))  # tensor-aligned: bgr2, bgr4, bgr8
    floats = np.random.default_rng(11).normal(0, 0.02, 300_000).astype(np.float32)
    (ck / "optimizer.pt").write_bytes(floats.tobytes())  # probed: bg4
    (ck / "bf16.bin").write_bytes((floats.view(np.uint32) >> 16).astype(np.uint16).tobytes())  # probed: bg2
    (ck / "empty.bin").write_bytes(b"")
    (ck / "sub" / "deeper" / "notes.txt").write_text("nested file\n" * 50)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": [{"eval_loss": 0.5, "step": 10}]}))
    (ck / "tiny").write_bytes(b"x")
    os.chmod(ck / "model.safetensors", 0o640)
    old = root / "checkpoint-5"
    old.mkdir()
    (old / "model.safetensors").write_bytes(rnd.randbytes(1000))
    return ck


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o7777) for p in sorted(root.rglob("*")) if p.is_file()}


def _listing() -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "restore_by_hand"}
    exec(compile(_block("restore-by-hand", "python"), f"{DOC}:restore-by-hand", "exec"), namespace)
    return namespace


def _restore_by_hand() -> object:
    return _listing()["restore_latest"]


def test_restore_by_hand_listing_restores_a_pushed_remote(aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    source = _make_checkpoints(ckpts)
    restore_latest = _restore_by_hand()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        report = ckptsync.push(str(ckpts), f"s3://{BUCKET}/{PREFIX}")
        assert [r.status for r in report.results] == ["committed", "committed"]
        newest = next(r.manifest for r in report.results if r.name == "checkpoint-10")
        codecs = {c.codec for f in newest.files for c in f.chunks}
        # every codec today's writer chooses (bg8 is only read: widths of 8 come with rotation)
        assert codecs == set(fmt.CODECS) - {"bg8"}, "the remote must exercise every codec a writer writes"
        assert newest.version == 4
        assert any(len(f.chunks) > 1 for f in newest.files)
        packed = {f.path for f in newest.files if f.chunks and f.chunks[0].is_part}
        assert {"tiny", "trainer_state.json", "sub/deeper/notes.txt"} <= packed, "small files must be packed into parts"

        staged: list[str] = []
        real_mkdir = os.mkdir

        def spy(path: str, *args: object) -> None:
            staged.append(os.path.basename(path))
            real_mkdir(path, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "mkdir", spy)
        dest = tmp_path / "restored"
        path = restore_latest(BUCKET, PREFIX, str(dest), s3=s3)  # type: ignore[operator]
        monkeypatch.undo()

        assert path == str(dest / "checkpoint-10")
        assert _files(dest / "checkpoint-10") == _files(source)
        assert (dest / "checkpoint-10" / "empty.bin").stat().st_size == 0
        assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-10"], "staging folder left behind"
        # the listing's staging folder is named as ckptsync names its own (section 2.4)
        pattern = rf"{re.escape(STAGING_PREFIX)}{os.getpid()}-{re.escape(fsutil.staging_slug())}-[0-9a-f]{{12}}"
        assert any(re.fullmatch(pattern, name) for name in staged)

        # restoring again replaces the previous copy in place
        (dest / "checkpoint-10" / "stray").write_bytes(b"not in the manifest")
        assert restore_latest(BUCKET, PREFIX, str(dest), s3=s3) == str(dest / "checkpoint-10")  # type: ignore[operator]
        assert _files(dest / "checkpoint-10") == _files(source)
        assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-10"]


def test_restore_by_hand_listing_refuses_a_newer_version(aws_env: None, tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _make_checkpoints(ckpts)
    listing = _listing()
    assert listing["READS"] == fmt.FORMAT_VERSION
    newer_version = fmt.FORMAT_VERSION + 1
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        ckptsync.push(str(ckpts), f"s3://{BUCKET}/{PREFIX}")
        newer = json.loads(_block("example-manifest", "json"))
        newer["version"] = newer_version
        key = fmt.manifest_key(PREFIX, newer["name"], newer["commit"])
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(newer).encode())
        with pytest.raises(
            RuntimeError,
            match=rf"format version {newer_version} is newer than this listing reads \({fmt.FORMAT_VERSION}\); restore this remote with ckptsync",
        ):
            listing["restore_latest"](BUCKET, PREFIX, str(tmp_path / "restored"), s3=s3)  # type: ignore[operator]
        assert not (tmp_path / "restored").exists()


def test_restore_by_hand_listing_returns_none_on_an_empty_remote(aws_env: None, tmp_path: Path) -> None:
    restore_latest = _restore_by_hand()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        assert restore_latest(BUCKET, PREFIX, str(tmp_path / "restored"), s3=s3) is None  # type: ignore[operator]


def test_restore_by_hand_listing_restores_this_hosts_part_of_the_newest_complete_checkpoint(aws_env: None, tmp_path: Path) -> None:
    restore_latest = _restore_by_hand()
    url = f"s3://{BUCKET}/{PREFIX}"

    def push(host: str, step: int) -> Path:
        folder = tmp_path / "src" / host / str(step)
        ck = folder / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / f"rank-{host}.bin").write_bytes(os.urandom(3000))
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))  # the same on both hosts
        ckptsync.push(folder, url, ckptsync.Options(host=host, hosts=("algo-1", "algo-2"), workers=1))
        return ck

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        # only algo-1's part of the example is committed: incomplete, never restored
        v2 = json.loads(_v2_text())
        s3.put_object(Bucket=BUCKET, Key=fmt.manifest_key(PREFIX, v2["name"], v2["commit"]), Body=_v2_text().encode())
        assert restore_latest(BUCKET, PREFIX, str(tmp_path / "none"), s3=s3, host="algo-1") is None  # type: ignore[operator]

        parts = {host: push(host, 10) for host in ("algo-1", "algo-2")}
        push("algo-1", 20)  # algo-2 never commits checkpoint-20
        for host, part in parts.items():
            path = restore_latest(BUCKET, PREFIX, str(tmp_path / host), s3=s3, host=host)  # type: ignore[operator]
            assert path == str(tmp_path / host / "checkpoint-10")
            assert _files(Path(path)) == _files(part)
        with pytest.raises(RuntimeError, match="host 'algo-9' has no part"):
            restore_latest(BUCKET, PREFIX, str(tmp_path / "algo-9"), s3=s3, host="algo-9")  # type: ignore[operator]
        # ckptsync makes the same choice
        repo = open_repository(url)
        result = recovery.restore(repo, tmp_path / "ckptsync", policy.Selector(), host="algo-2")
        assert result is not None and result.name == "checkpoint-10"
        assert _files(result.path) == _files(parts["algo-2"])


def test_a_codec_newer_than_the_manifest_version_makes_it_invalid_not_newer(aws_env: None, tmp_path: Path) -> None:
    for version in range(1, 3):
        doc = json.loads(_v3_text())
        doc["version"] = version
        with pytest.raises(FormatError, match="needs format version 3") as e:
            fmt.decode_manifest(json.dumps(doc).encode())
        assert not isinstance(e.value, NewerFormatError)
    # on a remote, such a manifest is skipped (by ckptsync and by the listing): the newest valid one is restored
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    source = _make_checkpoints(ckpts)
    url = f"s3://{BUCKET}/{PREFIX}"
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        report = ckptsync.push(str(ckpts), url)
        newest = next(r.manifest for r in report.results if r.name == "checkpoint-10")
        assert newest is not None and newest.version == 4
        for version, step in ((2, 99), (3, 98)):  # 2: codecs and parts too new; 3: parts too new
            bad = json.loads(fmt.encode_manifest(newest))
            bad.update(version=version, name=f"checkpoint-{step}", step=step, commit=fmt.new_commit_id(newest.created, "algo-1"))
            with pytest.raises(FormatError, match="needs format version") as e:
                fmt.decode_manifest(json.dumps(bad).encode())
            assert not isinstance(e.value, NewerFormatError)
            s3.put_object(Bucket=BUCKET, Key=fmt.manifest_key(PREFIX, bad["name"], bad["commit"]), Body=json.dumps(bad).encode())
        path = _restore_by_hand()(BUCKET, PREFIX, str(tmp_path / "by-hand"), s3=s3)  # type: ignore[operator]
        assert path == str(tmp_path / "by-hand" / "checkpoint-10") and _files(Path(path)) == _files(source)
        result = recovery.restore(open_repository(url), tmp_path / "ckptsync", policy.Selector())
        assert result is not None and result.name == "checkpoint-10"


# ---------------------------------------------------------------- versions and the version-2 example


def _v2_text() -> str:
    return _block("example-manifest-v2", "json")


def _v2() -> fmt.Manifest:
    return fmt.decode_manifest(_v2_text().encode("utf-8"), key="docs/FORMAT.md v2 example")


def _record(m: fmt.Manifest) -> ManifestRecord:
    return ManifestRecord(fmt.manifest_key("", m.name, m.commit), m)


def _part(m: fmt.Manifest, host: str, *, seconds: float = 1.0, **changes: object) -> fmt.Manifest:
    """Another manifest like ``m``: ``host``'s, committed ``seconds`` after it."""
    created = m.created + timedelta(seconds=seconds)
    return dataclasses.replace(m, host=host, created=created, commit=fmt.new_commit_id(created, host), **changes)  # type: ignore[arg-type]


def test_documented_versions_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- format-versions -->\s*\n((?:\|.*\n)+)", text)
    assert m, "no version table after <!-- format-versions -->"
    versions = [int(row.split("|")[1]) for row in m.group(1).splitlines() if re.match(r"\|\s*\d+\s*\|", row)]
    assert versions == list(range(1, len(versions) + 1))
    assert fmt.FORMAT_VERSION == max(versions), "the code reads a format version the document does not specify"
    assert text.startswith(f"# ckptsync on-storage format, versions {', '.join(map(str, versions[:-1]))} and {versions[-1]}\n")


def test_example_v2_manifest_round_trips_as_a_multi_host_part() -> None:
    text = _v2_text()
    original = json.loads(text)
    manifest = _v2()
    reencoded = json.loads(fmt.encode_manifest(manifest))
    assert json.dumps(reencoded, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert original["version"] == 2 and manifest.version == 2
    assert original["hosts"] == ["algo-1", "algo-2"] and manifest.hosts == ("algo-1", "algo-2")
    assert manifest.host == "algo-1" and manifest.host in manifest.hosts
    assert manifest.extra == {}
    # the key given in the text, and the other host's manifest beside it
    doc = DOC.read_text(encoding="utf-8")
    key = fmt.manifest_key("", manifest.name, manifest.commit)
    assert f"`{key}`" in doc
    siblings = re.findall(r"[0-9]{8}T[0-9]{12}Z-algo-2-[0-9a-f]{16}\.json", doc)
    assert siblings and all(fmt.parse_manifest_key(f"manifests/{manifest.name}/{s}") for s in siblings)
    # the shared trainer_state.json chunk named in the text is one of the example's chunks
    shared = next(f for f in manifest.files if f.path == "trainer_state.json").chunks[0]
    assert f"`{fmt.chunk_key('', shared.hash, shared.codec)}`" in doc


def test_push_writes_version_2_only_with_hosts_and_the_fields_of_the_example(tmp_path: Path) -> None:
    example = json.loads(_v2_text())
    for hosts, version in ((("algo-1", "algo-2"), 2), (("algo-1",), 1), ((), 1)):
        folder = tmp_path / f"src-{len(hosts)}"
        (folder / "checkpoint-1200").mkdir(parents=True)
        (folder / "checkpoint-1200" / "rng_state_0.pth").write_bytes(os.urandom(1000))
        remote = tmp_path / f"remote-{len(hosts)}"
        remote.mkdir()
        report = ckptsync.push(folder, f"file://{remote}", ckptsync.Options(host="algo-1", hosts=hosts, workers=1))
        assert [r.status for r in report.results] == ["committed"]
        [path] = (remote / "manifests").rglob("*.json")
        written = json.loads(path.read_bytes())
        assert written["version"] == version
        if version == 2:
            assert set(written) == set(example) and written["hosts"] == ["algo-1", "algo-2"]
        else:  # the lowest version that can express the manifest; no hosts member
            assert set(written) == set(example) - {"hosts"}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"hosts": []}, FormatError),
        ({"hosts": ["algo-1", "algo-1"]}, FormatError),
        ({"hosts": ["algo-2", "algo-3"]}, FormatError),  # host not among them
        ({"hosts": ["algo-1", ""]}, FormatError),
        ({"hosts": ["algo-1", "h" * 256]}, FormatError),
        ({"hosts": ["algo-1"] + [f"h{i}" for i in range(4096)]}, FormatError),
        ({"hosts": "algo-1,algo-2"}, FormatError),
        ({"hosts": ["algo-1", 2]}, FormatError),
        ({"version": fmt.FORMAT_VERSION + 1}, NewerFormatError),
    ],
)
def test_hosts_rules_reject_what_the_document_rejects(change: dict[str, object], error: type[Exception]) -> None:
    doc = json.loads(_v2_text())
    doc.update(change)
    with pytest.raises(error):
        fmt.decode_manifest(json.dumps(doc).encode())


def test_hosts_rules_accept_what_the_document_accepts() -> None:
    doc = json.loads(_v2_text())
    # order carries no meaning; 255 characters is the longest host name
    long_host = "é" * 255
    doc["hosts"] = [long_host, "algo-1"]
    assert fmt.decode_manifest(json.dumps(doc).encode()).hosts == tuple(sorted([long_host, "algo-1"]))
    # a version-1 manifest's hosts member is not read: single-host
    doc = json.loads(_v2_text())
    doc["version"] = 1
    assert fmt.decode_manifest(json.dumps(doc).encode()).hosts == ()
    # a version-2 manifest without hosts is single-host (and would be written as version 1)
    doc = json.loads(_v2_text())
    del doc["hosts"]
    m = fmt.decode_manifest(json.dumps(doc).encode())
    assert m.hosts == () and m.version == 1


def test_multi_host_grouping_and_completeness_follow_the_document() -> None:
    a1 = _v2()
    [alone] = catalog.group([_record(a1)])
    assert not alone.complete and alone.missing == ["algo-2"]

    a2 = _part(a1, "algo-2", seconds=2)
    older_a1 = _part(a1, "algo-1", seconds=-3600, files=a1.files[:1])  # superseded by a1
    single = dataclasses.replace(_part(a1, "algo-1", seconds=5), hosts=())  # same name, single-host
    trio = _part(a1, "algo-1", seconds=7, hosts=("algo-1", "algo-2", "algo-3"))  # same name, other host set
    groups = catalog.group([_record(m) for m in (older_a1, a1, a2, single, trio)])
    assert len(groups) == 3
    ck = next(g for g in groups if g.hosts == ("algo-1", "algo-2"))
    assert ck.complete and ck.members["algo-1"].manifest.commit == a1.commit  # each host's newest
    assert ck.manifest.commit == a2.commit  # step, metrics, created, commit: the newest member's
    assert not next(g for g in groups if len(g.hosts) == 3).complete

    # this host's part, or every host's files; another host's part is never substituted
    assert ck.for_host("algo-2").manifest.commit == a2.commit
    with pytest.raises(UsageError):
        ck.for_host("algo-9")
    # algo-2 holds the same trainer_state.json: restored once; a different one is a conflict
    assert sorted(f.path for f in ck.merged().manifest.files) == sorted({f.path for f in a1.files} | {f.path for f in a2.files})
    clash = dataclasses.replace(a1.files[0], hash="0" * 64)
    bad = catalog.group([_record(a1), _record(dataclasses.replace(a2, files=(clash,)))])
    with pytest.raises(UsageError, match="different contents"):
        bad[0].merged()

    # incomplete checkpoints are never candidates (restore filters them out before ranking)
    single_ck = next(g for g in groups if not g.hosts)
    assert policy.candidates([g for g in groups if g.complete], policy.Selector()) == [single_ck, ck]


def test_prune_deletes_only_superseded_incomplete_multi_host_checkpoints(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    hosts = ("algo-1", "algo-2")

    def push(host: str, step: int) -> None:
        folder = tmp_path / host / str(step)
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / f"rank-{host}.bin").write_bytes(os.urandom(100))
        (folder / f"checkpoint-{step}" / "ckptsync.json").write_text(f'{{"step": {step}}}')
        ckptsync.push(folder, f"file://{remote}", ckptsync.Options(host=host, hosts=hosts, workers=1))

    push("algo-1", 20)  # algo-2 never commits checkpoint-20: superseded by checkpoint-30
    push("algo-1", 30)
    push("algo-2", 30)
    push("algo-1", 40)  # still being committed: newer than the newest complete checkpoint
    report = prune_mod.prune(open_repository(f"file://{remote}"), policy.Retention(keep_last=5), grace=timedelta(0), dry_run=True)
    assert report.deleted == ["checkpoint-20"]
    assert report.kept == ["checkpoint-40", "checkpoint-30"]


# ---------------------------------------------------------------- version 3: byte grouping and tensor-aligned chunks


def _v3_text() -> str:
    return _block("example-manifest-v3", "json")


def test_writers_use_the_lowest_version_that_can_express_the_manifest() -> None:
    v1, v2, v3 = (
        fmt.decode_manifest(_block(marker, "json").encode())
        for marker in ("example-manifest", "example-manifest-v2", "example-manifest-v3")
    )
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    # byte grouping makes 3, with or without hosts; hosts alone make 2; else 1
    assert dataclasses.replace(v3, hosts=("algo-1", "algo-2")).version == 3
    f = v1.files[2]
    grouped = dataclasses.replace(f, chunks=(dataclasses.replace(f.chunks[0], codec="bg4"), *f.chunks[1:]))
    assert dataclasses.replace(v1, files=(*v1.files[:2], grouped, *v1.files[3:])).version == 3
    assert dataclasses.replace(v2, hosts=()).version == 1
    for name, since in fmt.CODECS_SINCE.items():
        chunk = dataclasses.replace(f.chunks[0], codec=name)
        only = dataclasses.replace(v1, files=(dataclasses.replace(f, chunks=(chunk, *f.chunks[1:])),) + v1.files[3:])
        assert only.version == since
        assert json.loads(fmt.encode_manifest(only))["version"] == since


def test_example_v3_manifest_round_trips() -> None:
    text = _v3_text()
    original = json.loads(text)
    manifest = fmt.decode_manifest(text.encode("utf-8"), key="docs/FORMAT.md v3 example")
    reencoded = json.loads(fmt.encode_manifest(manifest))
    assert json.dumps(reencoded, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert original["version"] == 3 == manifest.version and "hosts" not in original
    assert {c.codec for f in manifest.files for c in f.chunks} & {"bg2", "bg4", "bg8"}
    assert f"`{fmt.manifest_key('', manifest.name, manifest.commit)}`" in DOC.read_text(encoding="utf-8")
    assert manifest.extra == {}


def test_example_safetensors_header_cuts_into_the_example_chunks() -> None:
    flat = _flat()
    header_doc = json.loads(_block("example-safetensors-header", "json"))
    n = int(re.search(r"padded with spaces to n = (\d+) bytes", flat).group(1))  # type: ignore[union-attr]
    header = json.dumps(header_doc, separators=(",", ":")).encode().ljust(n)
    assert len(header) == n and n % 8 == 0
    [entry] = json.loads(_v3_text())["files"]
    chunks, size = entry["chunks"], entry["size"]
    assert entry["path"] == "model.safetensors" and f"`checkpoint-1300/model.safetensors`, {size} bytes" in flat
    assert chunking.safetensors_header_length(struct.pack("<Q", n), size) == n
    plan = chunking.safetensors_plan(header, size)
    assert plan is not None
    assert [s.length for s in plan] == [c["size"] for c in chunks]
    # the first chunk is the length and the header, byte for byte
    assert hashlib.sha256(struct.pack("<Q", n) + header).hexdigest() == chunks[0]["hash"]
    # the table says the same as the chunker and the manifest
    rows = _table("example-plan")
    assert [int(r[0]) for r in rows] == list(range(1, len(plan) + 1))
    assert [int(r[1]) for r in rows] == [s.length for s in plan]
    assert [None if r[3] == "none" else int(r[3]) for r in rows] == [s.width for s in plan]
    assert [r[4].strip("`") for r in rows] == [c["codec"] for c in chunks]
    # a chunk that comes with a width is byte-grouped with it, or raw (section 3.2, step 2)
    assert all(c["codec"] in (f"bg{s.width}", "raw") for s, c in zip(plan, chunks, strict=True) if s.width)
    # the tensors as the text describes them
    for name, info in header_doc.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            assert f"`{name}` ({info['dtype']}" in flat and f"{end - start} bytes)" in flat


def _bg4_example() -> bytes:
    out = bytearray()
    for line in _block("example-bg4", "").splitlines():
        offset, *cells = line.split()
        assert int(offset, 16) == len(out)
        out += bytes.fromhex("".join(cells))
    return bytes(out)


def _bg4_example_ref() -> fmt.ChunkRef:
    flat = _flat()
    m = re.search(r'Its chunk entry is `\{"hash": "([0-9a-f]{64})", "size": (\d+), "stored": (\d+), "codec": "bg4"\}`', flat)
    assert m, "the example's chunk entry is not stated"
    ref = fmt.ChunkRef(m.group(1), int(m.group(2)), int(m.group(3)), "bg4")
    assert ref in fmt.decode_manifest(_v3_text().encode()).chunk_refs().values()
    assert f"`{fmt.chunk_key('', ref.hash, ref.codec)}`" in flat
    return ref


def test_example_bg4_object_decodes_to_its_chunk_with_the_documented_layout() -> None:
    import zstandard

    obj, ref = _bg4_example(), _bg4_example_ref()
    assert len(obj) == ref.stored
    raw = codec.decode("bg4", obj, ref.size, ref.hash)
    width = codec.GROUPED["bg4"]
    count, tail = divmod(ref.size, width)
    assert f"Its {ref.size} raw bytes give W = {width}, N = {count} and T = {tail}" in _flat()
    assert obj[0] == width
    pos = 1 + 5 * width
    rows = _table("example-bg4-planes")
    assert len(rows) == width
    for i, row in enumerate(rows):
        kind, length = struct.unpack_from("<BI", obj, 1 + 5 * i)
        assert int(row[0]) == i and row[2].startswith(f"{kind},") and int(row[3]) == length
        first, last = (int(x, 16) for x in row[4].split("–"))
        assert (first, last) == (pos, pos + length - 1)
        body = obj[pos : pos + length]
        plane = body if kind == 0 else zstandard.ZstdDecompressor().decompress(body)
        if kind == 1:
            assert zstandard.frame_content_size(body) == count  # writers write the content size
        assert plane == raw[i : count * width : width]  # plane_i[k] = raw[k·W + i]
        pos += length
    assert obj[pos:] == raw[count * width :] and len(obj) - pos == tail
    # what the text says about the contents
    assert raw[3::4] == b"\x3f" * 64 + b"\x40"
    assert f"`{raw[:4].hex(' ')}` ({np.frombuffer(raw[:4], '<f4')[0]:.8g} as a little-endian fp32)" in _flat()
    assert f"({np.frombuffer(raw[-4:], '<f4')[0]:.5g})" in _flat()
    # the real encoder makes the same choices for these bytes
    again = bytes(codec._group_encode(raw, width, rotate=False))
    assert again == obj


def _regroup(obj: bytes, planes: list[tuple[int, bytes]], tail: bytes = b"") -> bytes:
    return bytes([obj[0]]) + b"".join(struct.pack("<BI", k, len(b)) for k, b in planes) + b"".join(b for _, b in planes) + tail


def _bg4_planes(obj: bytes) -> list[tuple[int, bytes]]:
    pos, planes = 21, []
    for i in range(4):
        kind, length = struct.unpack_from("<BI", obj, 1 + 5 * i)
        planes.append((kind, obj[pos : pos + length]))
        pos += length
    return planes


def _corrupt(obj: bytes, how: str) -> bytes:
    import zstandard

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


@pytest.mark.parametrize(
    "how",
    [
        "width",
        "kind",
        "raw plane too long",
        "body past the end",
        "bytes after the tail",
        "frame declares another size",
        "frame inflates past N",
        "frame too short",
    ],
)
def test_byte_grouped_decoding_rejects_what_the_document_rejects(how: str) -> None:
    obj, ref = _bg4_example(), _bg4_example_ref()
    bad = _corrupt(obj, how)
    with pytest.raises(IntegrityError):
        codec.decode("bg4", bad, ref.size, ref.hash)
    with pytest.raises(ValueError):
        _listing()["ungroup"](bad, 4, ref.size, "example")  # type: ignore[operator]


def test_restore_by_hand_listing_decodes_the_bg4_example() -> None:
    obj, ref = _bg4_example(), _bg4_example_ref()
    assert _listing()["ungroup"](obj, 4, ref.size, "example") == codec.decode("bg4", obj, ref.size, ref.hash)  # type: ignore[operator]


def test_encoder_choices_follow_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    # 1. under 64 bytes: raw
    assert codec.encode(b"\x3f" * 63)[0] == "raw"
    assert codec.encode(b"\x3f" * 63, 4)[0] == "raw"
    # 2. with a width: byte grouping with it, or raw; plain zstd is not tried
    text = b"the same words again and again " * 2000
    assert codec.encode(text)[0] == "zstd"
    assert codec.encode(text, 4)[0] in ("bgr4", "raw")
    assert codec.encode(rng.normal(0, 0.02, 50_000).tobytes(), 8)[0] == "bgr8"
    # 3. the probe never chooses bg8, even for fp64 data
    assert codec.encode(rng.normal(0, 0.02, 50_000).tobytes())[0] != "bg8"
    # 3. incompressible data: stored raw after a probe of the sample, without compressing the chunk
    seen: list[int] = []
    real = codec._compressor()

    class Spy:
        def compress(self, data: bytes) -> bytes:
            seen.append(len(data))
            return real.compress(data)

    monkeypatch.setattr(codec, "_compressor", lambda: Spy())
    assert codec.encode(os.urandom(4 << 20))[0] == "raw"
    assert seen and max(seen) <= codec.SAMPLE


# ---------------------------------------------------------------- locks/ and garbage collection


def _timing_table() -> dict[str, float]:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- lock-timing -->\s*\n((?:\|.*\n)+)", text)
    assert m, "no timing table after <!-- lock-timing -->"
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, value = re.fullmatch(r"`(\w+)`", cells[0]), re.fullmatch(r"(\d+) s", cells[1])
        if name and value:
            rows[name.group(1)] = float(value.group(1))
    return rows


def test_lock_timings_match_the_code() -> None:
    from ckptsync import cli

    stale = locks.STALE.total_seconds()
    assert _timing_table() == {
        "REFRESH": locks.REFRESH,
        "STALE": stale,
        "COLLECT_LIMIT": stale / 2,
        "RECHECK": stale * inspect.signature(locks.Lock.fresh).parameters["margin"].default,
        "WAIT": inspect.signature(locks.acquire_shared).parameters["wait"].default,
        # (and the same default where the re-check before commit waits)
        "GRACE": prune_mod.DEFAULT_GRACE.total_seconds(),
        "LEFTOVERS": STALE_WRITES.total_seconds(),
    }
    assert (locks.REFRESH, locks.STALE) == (60.0, timedelta(minutes=10))
    # the collector's deadline and the waiting poll are written inline
    assert "locks.STALE.total_seconds() / 2" in inspect.getsource(prune_mod._collect)
    assert "sleep(1.0)" in inspect.getsource(locks.wait_for_collection)
    assert (
        inspect.signature(locks.wait_for_collection).parameters["wait"].default
        == inspect.signature(locks.acquire_shared).parameters["wait"].default
    )
    assert "wait_for_collection(lock" in inspect.getsource(locks.acquire_shared)
    # the CLI's --grace default and the daemon's leftover age are the documented ones
    [grace] = [p for p in cli.prune.params if p.name == "grace"]
    assert cli._duration(grace.default) == prune_mod.DEFAULT_GRACE
    # push and the daemon both clean leftovers through the session, with the one constant
    from ckptsync.session import RemoteSession

    assert "STALE_WRITES" in inspect.getsource(RemoteSession.clean_stale_writes) and STALE_WRITES == timedelta(hours=24)


def test_lock_keys_bodies_and_generation_are_as_documented(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert locks.LOCKS_DIR == "locks" and "`locks/`" in text
    assert locks.GENERATION == "generation" and f"`{locks.LOCKS_DIR}/{locks.GENERATION}`" in text
    grammar = re.compile(_block("lock-key-grammar", ""))
    example = json.loads(_block("example-lock", "json"))
    # the lock shown in the layout tree follows the grammar
    tree_locks = re.findall(r"[├└]── (\S+\.(?:shared|exclusive)\.json)\n", text)
    assert tree_locks and all(grammar.match(k) for k in tree_locks)

    store = LocalStore(tmp_path)
    for kind in ("shared", "exclusive"):
        assert f"`.{kind}.json`" in text
        lock = locks.Lock(store, "", kind, host="algo-1")
        view = lock.write_and_look()
        assert view.mine.key == lock.key and lock.key.startswith(f"{locks.LOCKS_DIR}/")
        name = lock.key.split("/", 1)[1]
        assert grammar.match(name) and name.endswith(f".{kind}.json")
        body = json.loads((tmp_path / lock.key).read_bytes())
        assert set(body) == set(example)
        assert (body["kind"], body["host"], body["pid"]) == (kind, "algo-1", os.getpid())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["time"])
        lock.release()
        assert not (tmp_path / lock.key).exists()
    assert example["kind"] in ("shared", "exclusive") and isinstance(example["pid"], int)

    # the generation body: 16 lowercase hex digits, drawn anew by every collection
    bodies = set()
    for _ in range(3):
        locks.write_generation(store, "")
        body = (tmp_path / locks.LOCKS_DIR / locks.GENERATION).read_bytes()
        assert re.fullmatch(rb"[0-9a-f]{16}", body)
        bodies.add(body)
    assert len(bodies) == 3
    assert "secrets.token_hex(8)" in inspect.getsource(locks.write_generation)


def test_a_released_lock_is_never_written_again(tmp_path: Path) -> None:
    assert "MUST NOT write its lock object after it has started to delete it" in _flat()
    store = LocalStore(tmp_path)
    lock = locks.Lock(store, "", "shared")
    lock.write_and_look()
    lock.release()
    lock._write()  # a refresh that comes too late
    assert not (tmp_path / lock.key).exists()


def test_recheck_counts_every_gap_between_lock_writes_on_a_clock_that_counts_suspend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "CLOCK_BOOTTIME" in inspect.getsource(locks.elapsed_clock) and "`CLOCK_BOOTTIME` on Linux" in _flat()
    recheck = _timing_table()["RECHECK"]
    clock = [1000.0]
    monkeypatch.setattr(locks, "elapsed_clock", lambda: clock[0])
    store = LocalStore(tmp_path)

    lock = locks.Lock(store, "", "shared")
    lock.write_and_look()
    for _ in range(5):  # refreshed every REFRESH: fresh
        clock[0] += locks.REFRESH
        lock._write()
    assert lock.fresh()
    clock[0] += recheck  # no write for RECHECK: not fresh
    assert not lock.fresh()

    lock = locks.Lock(store, "", "shared")
    lock.write_and_look()
    clock[0] += recheck + 1  # a pause in the middle of the upload ...
    lock._write()  # ... after which the lock was rewritten
    clock[0] += 1
    assert not lock.fresh(), "a gap in the middle must trigger the check before commit"
    # the re-check before commit waits for a running collection, then measures afresh
    from ckptsync.session import RemoteSession

    source = inspect.getsource(RemoteSession._still_stored)
    assert "locks.wait_for_collection(lock)" in source and "lock.max_gap = 0.0" in source


def test_lock_liveness_is_judged_against_the_observers_own_lock() -> None:
    now = datetime(2026, 11, 26, 13, 0, tzinfo=timezone.utc)
    stale = locks.STALE

    def obj(name: str, modified: datetime | None) -> ObjectInfo:
        return ObjectInfo(f"{locks.LOCKS_DIR}/{name}", 100, modified)

    mine = obj("20261126T130000000000Z-0000000000000000.shared.json", now)
    listing = [
        mine,
        obj("20261126T125001000000Z-1111111111111111.shared.json", now - stale + timedelta(seconds=1)),  # live
        obj("20261126T124959000000Z-2222222222222222.shared.json", now - stale - timedelta(seconds=1)),  # stale
        obj("20261126T120000000000Z-3333333333333333.exclusive.json", now - stale),  # exactly STALE: live
        obj("20260101T000000000000Z-4444444444444444.exclusive.json", None),  # age unknown: live
        obj(locks.GENERATION, now - timedelta(days=3)),
        obj("README.txt", now),  # neither: ignored
    ]

    class Listing:
        body = b"0123456789abcdef"

        def list(self, prefix: str) -> list[ObjectInfo]:
            assert prefix == f"{locks.LOCKS_DIR}/"
            return listing

        def get(self, key: str, *, max_size: int | None = None) -> bytes:
            assert key == f"{locks.LOCKS_DIR}/{locks.GENERATION}"
            return self.body

    store = Listing()
    view = locks.look(store, "", mine.key)  # type: ignore[arg-type]
    assert [o.key for o in view.shared] == [listing[1].key]
    assert [o.key for o in view.exclusive] == [listing[3].key, listing[4].key]
    # generations are told apart by their bodies, not by the listed time and size
    assert view.generation == "0123456789abcdef"
    store.body = b"fedcba9876543210"  # another collection, within the same second: same time, same size
    assert locks.look(store, "", mine.key).generation == "fedcba9876543210"  # type: ignore[arg-type]


def test_temporary_and_staging_names_are_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "`.ckptsync-tmp-<last key component>.<12 hexadecimal digits>`" in text
    assert f"`{STAGING_PREFIX}<pid>-<host>-<12 hexadecimal digits>`" in text

    renamed: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renamed.append(Path(src).name)
        real_replace(src, dst)

    (tmp_path / "remote").mkdir()
    monkeypatch.setattr(os, "replace", spy)
    LocalStore(tmp_path / "remote").put("chunks/ab/abc.raw", b"x")
    monkeypatch.undo()
    assert len(renamed) == 1 and re.fullmatch(r"\.ckptsync-tmp-abc\.raw\.[0-9a-f]{12}", renamed[0])

    staged: list[str] = []

    def stop(repo: object, m: object, built: Path, *args: object) -> None:
        staged.append(built.parent.name)
        raise RuntimeError("stop before fetching")

    monkeypatch.setattr(download, "_build", stop)
    manifest = fmt.decode_manifest(_block("example-manifest", "json").encode("utf-8"))
    with pytest.raises(RuntimeError, match="stop before fetching"):
        download.restore_checkpoint(Repository(LocalStore(tmp_path / "remote")), _record(manifest), tmp_path / "target")
    slug = fsutil.staging_slug()
    assert len(staged) == 1 and re.fullmatch(rf"{re.escape(STAGING_PREFIX)}{os.getpid()}-{re.escape(slug)}-[0-9a-f]{{12}}", staged[0])


@pytest.mark.parametrize(
    ("hostname", "slug"),
    [
        ("algo-1", "algo_1"),
        ("ip-10-0-0-1.ec2.internal", "ip_10_0_0_1.ec2.internal"),
        ("modèle 1", "mod_le_1"),
        ("", "host"),
        ("h" * 80, "h" * 63),
    ],
)
def test_the_host_slug_of_staging_folders_is_as_documented(monkeypatch: pytest.MonkeyPatch, hostname: str, slug: str) -> None:
    flat = _flat()
    assert (
        "with every character that is neither a letter, a digit, `.` nor `_` replaced by `_` (so it contains no `-`), cut to 63 characters, or `host` if empty"
        in flat
    )
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert fsutil.staging_slug() == slug


def test_dead_staging_folders_are_removed_only_when_made_on_this_host(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead, alive, me = int(done.stdout), os.getppid(), fsutil.staging_slug()
    other = "not_" + me[:50]
    names = {
        f"{STAGING_PREFIX}{dead}-{me}-aaaaaaaaaaaa": False,  # this host, process gone: removed
        f"{STAGING_PREFIX}{alive}-{me}-bbbbbbbbbbbb": True,  # this host, process running: kept
        f"{STAGING_PREFIX}{dead}-{other}-cccccccccccc": True,  # another machine's: never judged
        f"{STAGING_PREFIX}{dead}-dddddddddddd": False,  # older form without a host: judged by its pid
        f"{STAGING_PREFIX}{alive}-eeeeeeeeeeee": True,
        f"{STAGING_PREFIX}nopid": False,  # no process id: removed
    }
    for name in names:
        (tmp_path / name).mkdir()
    fsutil.remove_dead_staging(tmp_path, logging.getLogger("test"))
    assert {n: (tmp_path / n).exists() for n in names} == names


def test_chunks_of_unknown_age_are_never_collected(tmp_path: Path) -> None:
    assert "MUST NOT be deleted; ckptsync deletes none" in _flat()

    class NoChunkTimes(LocalStore):
        def list(self, prefix: str) -> list[ObjectInfo]:
            return [ObjectInfo(o.key, o.size, None) if o.key.startswith("chunks/") else o for o in super().list(prefix)]

    digest = hashlib.sha256(b"referenced by nothing").hexdigest()
    for store_type, kept in ((LocalStore, False), (NoChunkTimes, True)):
        root = tmp_path / store_type.__name__
        root.mkdir()
        store = store_type(root)
        store.put(fmt.chunk_key("", digest, "raw"), b"referenced by nothing")
        report = prune_mod.prune(Repository(store), policy.Retention(keep_last=1), grace=timedelta(0))
        assert report.collection_deferred is None
        assert (root / fmt.chunk_key("", digest, "raw")).exists() == kept


def test_multipart_cleanup_touches_only_ckptsync_key_families(aws_env: None) -> None:
    from ckptsync.store.s3 import S3Store

    assert "(`<prefix>/chunks/`, `<prefix>/manifests/`, `<prefix>/locks/`)" in _flat()
    ours = [f"{PREFIX}/chunks/ab/x.raw", f"{PREFIX}/manifests/n/y.json", f"{PREFIX}/locks/z.shared.json"]
    others = [f"{PREFIX}/other/w.bin", f"{PREFIX}/chunksmith.bin", "chunks/at-the-root.raw"]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for key in ours + others:
            s3.create_multipart_upload(Bucket=BUCKET, Key=key)
        store = S3Store(BUCKET)
        assert store.cleanup(PREFIX + "/", timedelta(0)) == len(ours)
        left = {u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])}
        assert left == set(others)


def test_all_hosts_keeps_single_file_checkpoints_whole_and_refuses_conflicts() -> None:
    base = _v2()
    entry = dataclasses.replace(base.files[1], path="model.pt")
    a1 = dataclasses.replace(base, name="model.pt", kind="file", files=(entry,))
    a2 = _part(a1, "algo-2")
    [ck] = catalog.group([_record(a1), _record(a2)])
    merged = ck.merged().manifest
    assert merged.kind == "file" and merged.files == (entry,)
    different = dataclasses.replace(a2, files=(dataclasses.replace(entry, hash="0" * 64),))
    [bad] = catalog.group([_record(a1), _record(different)])
    with pytest.raises(UsageError, match="different contents"):
        bad.merged()
    # a path that is a file in one member and a folder in another
    as_file = dataclasses.replace(base, files=(dataclasses.replace(base.files[1], path="state"),))
    as_folder = dataclasses.replace(_part(base, "algo-2"), files=(dataclasses.replace(base.files[1], path="state/rank1.pt"),))
    [clash] = catalog.group([_record(as_file), _record(as_folder)])
    with pytest.raises(UsageError, match="file or a folder"):
        clash.merged()
