"""Keep docs/FORMAT.md from drifting away from the code.

- The example manifest must be accepted by ``decode_manifest`` and re-encode to
  the same fields and values.
- The "restore by hand" listing must restore, byte for byte, a remote written by
  ``ckptsync.push`` (into moto's in-process S3), and must refuse a newer format
  version.
- Constants the spec states must match the code.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

import ckptsync
from ckptsync import format as fmt
from ckptsync.chunking import CHUNK_SIZE
from ckptsync.restore import STAGING_PREFIX

DOC = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"
BUCKET = "ckpt-bucket"
PREFIX = "runs/exp1"


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
    assert fmt.CODECS == ("raw", "zstd")
    assert fmt.HASH_ALGORITHM == "sha256"
    assert fmt.MAX_CHUNK_SIZE == 67108864 and "67108864" in text
    assert fmt.MAX_CHUNK_SIZE + 1024 == 67109888 and "67109888" in text
    assert fmt.MAX_MANIFEST_BYTES == 67108864
    assert (fmt.MAX_PATH_BYTES, fmt.MAX_COMPONENT_BYTES, fmt.MAX_NAME_BYTES) == (4096, 255, 255)
    assert CHUNK_SIZE == 4194304 and "4194304" in text
    assert STAGING_PREFIX == ".ckptsync-staging-" and f"`{STAGING_PREFIX}`" in text


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


def _make_checkpoints(root: Path) -> Path:
    """A folder holding checkpoint-10 (the newest) and checkpoint-5."""
    rnd = random.Random(10)
    ck = root / "checkpoint-10"
    (ck / "sub" / "deeper").mkdir(parents=True)
    # > 4 MiB: one compressible 4 MiB chunk (zstd) and a random tail (raw)
    compressible = b"".join(rnd.choice([b"\x00\x00\x80\x3f", b"\x00\x00\x00\x00", b"\xcd\xcc\x4c\x3e"]) for _ in range(1 << 20))
    (ck / "model.safetensors").write_bytes(compressible + rnd.randbytes(1_500_000))
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


def _restore_by_hand() -> object:
    namespace: dict[str, object] = {"__name__": "restore_by_hand"}
    exec(compile(_block("restore-by-hand", "python"), f"{DOC}:restore-by-hand", "exec"), namespace)
    return namespace["restore_latest"]


def test_restore_by_hand_listing_restores_a_pushed_remote(aws_env: None, tmp_path: Path) -> None:
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
        assert codecs == {"raw", "zstd"}, "the remote must exercise both codecs"
        assert any(len(f.chunks) > 1 for f in newest.files)

        dest = tmp_path / "restored"
        path = restore_latest(BUCKET, PREFIX, str(dest), s3=s3)  # type: ignore[operator]

        assert path == str(dest / "checkpoint-10")
        assert _files(dest / "checkpoint-10") == _files(source)
        assert (dest / "checkpoint-10" / "empty.bin").stat().st_size == 0
        assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-10"], "staging folder left behind"

        # restoring again replaces the previous copy in place
        (dest / "checkpoint-10" / "stray").write_bytes(b"not in the manifest")
        assert restore_latest(BUCKET, PREFIX, str(dest), s3=s3) == str(dest / "checkpoint-10")  # type: ignore[operator]
        assert _files(dest / "checkpoint-10") == _files(source)
        assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-10"]


def test_restore_by_hand_listing_refuses_a_newer_version(aws_env: None, tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    _make_checkpoints(ckpts)
    restore_latest = _restore_by_hand()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        ckptsync.push(str(ckpts), f"s3://{BUCKET}/{PREFIX}")
        newer = json.loads(_block("example-manifest", "json"))
        newer["version"] = 2  # multi-host: the by-hand listing reads version 1 only
        key = fmt.manifest_key(PREFIX, newer["name"], newer["commit"])
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(newer).encode())
        with pytest.raises(RuntimeError, match="format version 2 is newer"):
            restore_latest(BUCKET, PREFIX, str(tmp_path / "restored"), s3=s3)  # type: ignore[operator]
        assert not (tmp_path / "restored").exists()


def test_restore_by_hand_listing_returns_none_on_an_empty_remote(aws_env: None, tmp_path: Path) -> None:
    restore_latest = _restore_by_hand()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        assert restore_latest(BUCKET, PREFIX, str(tmp_path / "restored"), s3=s3) is None  # type: ignore[operator]
