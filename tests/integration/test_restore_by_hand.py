"""examples/restore_by_hand.py, the reader written from docs/FORMAT.md alone, against real remotes.

``ckptsync.push`` writes to a real local S3 server (SeaweedFS), and the program must restore what it
wrote byte for byte, in process and as a user runs it: byte-grouped chunks of every codec, packed
small files (parts), nested and empty files, and this host's part of a multi-host checkpoint. It
must refuse a remote that holds a newer format version, skip manifests whose codecs or parts are
newer than their version, and print nothing on an empty remote. Its byte-group decoder must decode
the documented bg4 example and reject what FORMAT.md 4.4 rejects.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import random
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import ckptsync
from ckptsync import codec, recovery
from ckptsync import format as fmt
from ckptsync.api import open_repository
from ckptsync.errors import FormatError, NewerFormatError
from ckptsync.fsutil import STAGING_PREFIX, staging_slug
from ckptsync.policy import Selector
from tests import docs
from tests.docs import DESIGN, RESTORE_BY_HAND
from tests.helpers import run_python, use_env
from tests.s3servers import S3Server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PREFIX = "runs/exp1"


def _load_program() -> ModuleType:
    spec = importlib.util.spec_from_file_location("restore_by_hand", RESTORE_BY_HAND)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


program = _load_program()


@dataclass(frozen=True)
class Remote:
    """A fresh bucket on the SeaweedFS server, with the process environment pointed at it."""

    server: S3Server
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def client(self):
        return self.server.client()

    def options(self, **changes: object) -> ckptsync.Options:
        """ckptsync's options for this server (the CKPTSYNC_* variables are the CLI's, not the API's)."""
        s3 = ckptsync.S3Options(endpoint_url=self.server.endpoint_url, region=self.server.region)
        return ckptsync.Options(s3=s3, **changes)  # type: ignore[arg-type]

    def run(self, target: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """The program as a user runs it: endpoint and credentials from the usual AWS environment."""
        return run_python(
            str(RESTORE_BY_HAND), self.url, str(target), *args, env={"AWS_ENDPOINT_URL": self.server.endpoint_url}, server=self.server
        )

    def put_manifest(self, doc: dict[str, object]) -> None:
        key = fmt.manifest_key(PREFIX, doc["name"], doc["commit"])  # type: ignore[arg-type]
        self.client().put_object(Bucket=self.bucket, Key=key, Body=json.dumps(doc).encode())


@pytest.fixture
def remote(seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch) -> Remote:
    use_env(monkeypatch, server=seaweedfs)  # nothing of the host's AWS, ckptsync or SageMaker settings may leak in
    return Remote(seaweedfs, seaweedfs.create_bucket("hand"))


# ---------------------------------------------------------------- checkpoints to push


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
    """Float tensors of every width, so that a push uses bgr2, bgr4 and bgr8 (over 1 MiB: not packed)."""
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


def _push(remote: Remote, tmp_path: Path, algorithm: str = "blake3") -> tuple[Path, fmt.Manifest]:
    """Push checkpoint-5 and checkpoint-10, hashed by ``algorithm``; return checkpoint-10's folder and manifest."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    source = _make_checkpoints(ckpts)
    report = ckptsync.push(str(ckpts), remote.url, remote.options(hash_algorithm=algorithm))
    assert [r.status for r in report.results] == ["committed", "committed"]
    newest = next(r.manifest for r in report.results if r.name == "checkpoint-10")
    assert newest is not None
    return source, newest


# ---------------------------------------------------------------- restoring what ckptsync pushed


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_restores_a_pushed_remote_byte_for_byte(remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str) -> None:
    source, newest = _push(remote, tmp_path, algorithm)
    codecs = {c.codec for f in newest.files for c in f.chunks}
    # every codec today's writer chooses (bg8 is only read: widths of 8 come with rotation)
    assert codecs == set(fmt.CODECS) - {"bg8"}, "the remote must exercise every codec a writer writes"
    # a file of several chunks: hashed by piece digest (6); BLAKE3 names (7)
    assert (newest.version, newest.hash_algorithm) == ({"blake3": 7, "sha256": 6}[algorithm], algorithm)
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
    path = program.restore_latest(remote.bucket, PREFIX, str(dest), s3=remote.client())
    monkeypatch.undo()

    assert path == str(dest / "checkpoint-10")
    assert _files(dest / "checkpoint-10") == _files(source)
    assert (dest / "checkpoint-10" / "empty.bin").stat().st_size == 0
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-10"], "staging folder left behind"
    # the program's staging folder is named as ckptsync names its own (FORMAT.md 2.4)
    pattern = rf"{re.escape(STAGING_PREFIX)}{os.getpid()}-{re.escape(staging_slug())}-[0-9a-f]{{12}}"
    assert any(re.fullmatch(pattern, name) for name in staged)

    # restoring again replaces the previous copy in place
    (dest / "checkpoint-10" / "stray").write_bytes(b"not in the manifest")
    assert program.restore_latest(remote.bucket, PREFIX, str(dest), s3=remote.client()) == str(dest / "checkpoint-10")
    assert _files(dest / "checkpoint-10") == _files(source)
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint-10"]

    # as a user runs it: the path of the restored checkpoint on stdout, and nothing else
    done = remote.run(tmp_path / "by-subprocess")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'by-subprocess' / 'checkpoint-10'}\n"
    assert _files(tmp_path / "by-subprocess" / "checkpoint-10") == _files(source)


def test_refuses_a_remote_with_a_newer_format_version(remote: Remote, tmp_path: Path) -> None:
    _push(remote, tmp_path)
    assert program.READS == fmt.FORMAT_VERSION
    newer_version = fmt.FORMAT_VERSION + 1
    newer = json.loads(docs.block(docs.FORMAT, "example-manifest", "json"))
    newer["version"] = newer_version
    remote.put_manifest(newer)
    message = f"format version {newer_version} is newer than this program reads ({fmt.FORMAT_VERSION}); restore this remote with ckptsync"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        program.restore_latest(remote.bucket, PREFIX, str(tmp_path / "restored"), s3=remote.client())
    assert not (tmp_path / "restored").exists()
    done = remote.run(tmp_path / "restored")
    assert done.returncode == 1 and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "restored").exists()


def test_returns_none_and_prints_nothing_on_an_empty_remote(remote: Remote, tmp_path: Path) -> None:
    assert program.restore_latest(remote.bucket, PREFIX, str(tmp_path / "restored"), s3=remote.client()) is None
    done = remote.run(tmp_path / "restored")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "restored").exists()


def test_restores_this_hosts_part_of_the_newest_complete_checkpoint(remote: Remote, tmp_path: Path) -> None:
    def push(host: str, step: int) -> Path:  # the hosts hash differently: the lead's files keep the lead's hash
        folder = tmp_path / "src" / host / str(step)
        ck = folder / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / f"rng_state_{host[-1]}.pth").write_bytes(os.urandom(3000))  # one rank's file: never another host's
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))  # the same on both hosts
        algorithm = "sha256" if host == "algo-1" else "blake3"
        options = remote.options(host=host, hosts=("algo-1", "algo-2"), workers=1, hash_algorithm=algorithm)
        ckptsync.push(folder, remote.url, options)
        return ck

    # only algo-1's part of the documented example is committed: incomplete, never restored
    remote.put_manifest(json.loads(docs.block(DESIGN, "example-manifest-v2", "json")))
    assert program.restore_latest(remote.bucket, PREFIX, str(tmp_path / "none"), s3=remote.client(), host="algo-1") is None

    parts = {host: push(host, 10) for host in ("algo-1", "algo-2")}
    push("algo-1", 20)  # algo-2 never commits checkpoint-20
    for host, part in parts.items():
        path = program.restore_latest(remote.bucket, PREFIX, str(tmp_path / host), s3=remote.client(), host=host)
        assert path == str(tmp_path / host / "checkpoint-10")
        assert _files(Path(path)) == _files(part)
    with pytest.raises(RuntimeError, match="host 'algo-9' has no part"):
        program.restore_latest(remote.bucket, PREFIX, str(tmp_path / "algo-9"), s3=remote.client(), host="algo-9")
    # as a user runs it, with the host as the third argument
    done = remote.run(tmp_path / "by-subprocess", "algo-2")
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path / "by-subprocess" / "checkpoint-10") == _files(parts["algo-2"])
    # ckptsync makes the same choice
    repo = open_repository(remote.url, remote.options())
    result = recovery.restore(repo, tmp_path / "ckptsync", Selector(), host="algo-2", hosts=("algo-1", "algo-2"))
    assert result is not None and result.name == "checkpoint-10"
    assert _files(result.path) == _files(parts["algo-2"])


def test_skips_manifests_whose_codecs_or_parts_are_newer_than_their_version(remote: Remote, tmp_path: Path) -> None:
    source, newest = _push(remote, tmp_path)
    assert newest.version == 7  # BLAKE3 names
    for version, step in ((2, 99), (3, 98), (6, 97)):  # 2: codecs, parts and hash too new; 3: parts and hash; 6: hash
        bad = json.loads(fmt.encode_manifest(newest))
        bad.update(version=version, name=f"checkpoint-{step}", step=step, commit=fmt.new_commit_id(newest.created, "algo-1"))
        with pytest.raises(FormatError, match="needs format version") as e:
            fmt.decode_manifest(json.dumps(bad).encode())
        assert not isinstance(e.value, NewerFormatError)
        remote.put_manifest(bad)
    # invalid, not newer: both readers skip them and restore the newest valid checkpoint
    path = program.restore_latest(remote.bucket, PREFIX, str(tmp_path / "by-hand"), s3=remote.client())
    assert path == str(tmp_path / "by-hand" / "checkpoint-10") and _files(Path(path)) == _files(source)
    result = recovery.restore(open_repository(remote.url, remote.options()), tmp_path / "ckptsync", Selector())
    assert result is not None and result.name == "checkpoint-10"


# ---------------------------------------------------------------- the documented byte-grouped example


def test_decodes_the_documented_bg4_example() -> None:
    obj, ref = docs.bg4_example(), docs.bg4_example_ref()
    assert program.ungroup(obj, 4, ref.size, "example") == codec.decode("bg4", obj, ref.size, ref.hash)


@pytest.mark.parametrize("how", docs.CORRUPTIONS)
def test_rejects_the_byte_grouped_objects_the_document_rejects(how: str) -> None:
    obj, ref = docs.bg4_example(), docs.bg4_example_ref()
    with pytest.raises(ValueError):
        program.ungroup(docs.corrupt(obj, how), 4, ref.size, "example")
