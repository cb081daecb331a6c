"""Reliability scenarios on the format and the restore path, no network:

* 15  hostile manifests end to end (extends tests/unit/test_format.py, which checks ``decode_manifest`` alone):
      written as manifest objects into a file:// remote next to a good checkpoint, with links, hard links and
      device files pre-placed in the target folder; ``restore --latest`` must restore the good one, warn once per
      hostile one and write nothing outside ``DIR/<good name>``; ``restore --name HOSTILE`` must fail in one line.
* 19  property-based: any tree of files round-trips byte-identical through ``ckptsync.push``/``ckptsync.restore``;
      ``decode_manifest`` raises nothing but ``FormatError`` on arbitrary bytes, JSON documents and mutations of a
      valid manifest.

``CKPTSYNC_RELIABILITY_FULL=1`` selects the full sizes; figures go to ``$CKPTSYNC_RELIABILITY_OUT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ckptsync
from ckptsync import format as fmt
from ckptsync.checkpoint import scan_entry
from ckptsync.cli import main as cli_main
from ckptsync.completion import SIDECAR_SUFFIX, is_checkpoint_name
from ckptsync.errors import FormatError
from ckptsync.fsutil import STAGING_PREFIX
from ckptsync.repository import Repository
from ckptsync.session import RemoteSession
from ckptsync.store import LocalStore, RetryingStore
from tests.faults.scenarios import full_size, record
from tests.helpers import listing, run_cli, safetensors_bytes, tree

MiB = 1 << 20
FULL = full_size()
H_MISSING = "f" * 64  # a chunk no remote holds
MODEL_SIZE = 1_200_000
pytestmark = pytest.mark.timeout(1800 if FULL else 300)


def cli_inprocess(*args: str) -> tuple[int, str, str]:
    """The same click command in this process (30 ms instead of 500): exit code, stdout, stderr."""
    result = CliRunner().invoke(cli_main, list(args), env={k: None for k in os.environ if k.startswith("CKPTSYNC_")})
    root = logging.getLogger()
    for h in list(root.handlers):  # the CLI's handler writes to CliRunner's stream, closed now
        if getattr(h, "_ckptsync", False):
            root.removeHandler(h)
    return result.exit_code, result.stdout, result.stderr


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# =========================================================================== 15: hostile manifests


GOOD = "checkpoint-10"


def snapshot(root: Path, exclude: tuple[Path, ...]) -> dict[str, tuple]:
    """Everything under ``root`` (links not followed) except ``exclude``: type, mode, size, mtime, content hash,
    link target, device numbers."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in exclude]
        for n in dirnames + filenames:
            p = d / n
            if p in exclude:
                continue
            st_ = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = ("file", stat.S_IMODE(st_.st_mode), st_.st_size, st_.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                out[rel] = ("special", st_.st_mode, st_.st_rdev)
    return out


def outside_changes(before: dict[str, tuple], after: dict[str, tuple], target_rel: str) -> list[str]:
    """What appeared or changed outside the excluded paths. Only ckptsync's own staging namespace in the target
    folder may lose entries (leftovers of dead restores are removed)."""
    out = [f"new: {k}" for k in sorted(after.keys() - before.keys())]
    out += [f"changed: {k}: {before[k][:3]} -> {after[k][:3]}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    out += [
        f"removed: {k}"
        for k in sorted(before.keys() - after.keys())
        if not k.startswith(f"{target_rel}/{STAGING_PREFIX}") or k.count("/") > target_rel.count("/") + 1
    ]
    return out


@dataclass
class World:
    root: Path
    remote_dir: Path
    remote: str
    target: Path
    outside: Path
    good_src: Path
    good_doc: dict

    @property
    def exclude(self) -> tuple[Path, ...]:
        # the good checkpoint's final path, and the lock objects every restore writes on the remote
        return (self.target / GOOD, self.remote_dir / "locks")


def make_world(base: Path) -> World:
    root = base / "world"
    remote_dir = root / "remote"
    remote_dir.mkdir(parents=True)
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("do not touch")
    (outside / "dir" / "inner.bin").write_bytes(os.urandom(1000))
    os.chmod(outside / "secret.txt", 0o600)
    (root / "target-sibling").mkdir()
    (root / "target-sibling" / "x").write_text("x")
    target = root / "target"
    target.mkdir()
    (target / "unrelated.txt").write_text("keep me")
    (target / ".hidden").mkdir()
    (target / ".hidden" / "h").write_text("h")

    rng = random.Random(15)
    src = base / "src"
    good = src / GOOD
    (good / "sub").mkdir(parents=True)
    (good / "model.bin").write_bytes(rng.randbytes(MODEL_SIZE))  # over 1 MiB: a raw chunk of its own
    (good / "sub" / "opt.bin").write_bytes(rng.randbytes(100_000))  # small: packed with ckptsync.json
    (good / "small.txt").write_bytes(b"step 10 loss 0.25\n" * 70_000)  # compressible: a zstd chunk
    os.chmod(good / "model.bin", 0o644)
    (good / "ckptsync.json").write_text(json.dumps({"step": 10, "metrics": {"loss": 0.25}}))
    remote = f"file://{remote_dir}"
    report = ckptsync.push(src, remote)
    assert [r.status for r in report.results] == ["committed"]
    [key] = [p for p in (remote_dir / "manifests").rglob("*.json")]
    doc = json.loads(key.read_bytes())
    assert {c["codec"] for f in doc["files"] for c in f["chunks"]} >= {"raw", "zstd"}
    assert "offset" in _chunk(doc, "sub/opt.bin") and (doc["version"], doc["hash_algorithm"]) == (7, "blake3")
    return World(root, remote_dir, remote, target, outside, good, doc)


def _chunk(doc: dict, path: str, i: int = 0) -> dict:
    return next(f for f in doc["files"] if f["path"] == path)["chunks"][i]


def _file(doc: dict, path: str) -> dict:
    return next(f for f in doc["files"] if f["path"] == path)


@dataclass
class Case:
    """One hostile manifest: ``expect`` is ``invalid`` (decode refuses it: warned and skipped), ``damaged`` (it
    decodes; restoring it fails on its data: warned, next candidate), or ``ignored`` (its key is not a manifest
    key: FORMAT.md 5.7 says ignore, silently)."""

    label: str
    data: bytes
    expect: str
    key_name: str  # the (unquoted) name in the object key; what ``--name`` asks for


def hostile_cases(w: World) -> list[Case]:
    good = w.good_doc
    cases: list[Case] = []
    created = fmt.parse_time(good["created"])

    def add(label: str, mutate, expect: str = "invalid", *, raw: bytes | None = None, name_in_doc: bool = True) -> None:
        key_name = f"hostile-{len(cases):02d}"
        doc = json.loads(json.dumps(good))
        doc["name"] = key_name
        doc["commit"] = fmt.new_commit_id(created + timedelta(seconds=len(cases) + 1), "evil")
        doc["step"] = 1000 + len(cases)  # above the good one: --latest tries every hostile one first
        if mutate is not None:
            mutate(doc)
        data = raw if raw is not None else json.dumps(doc, ensure_ascii=True).encode()
        cases.append(Case(label, data, expect, key_name))

    def set_path(p):
        return lambda d: _file(d, "model.bin").update(path=p)

    # -- paths
    for label, p in [
        ("path '..'", "../escape"),
        ("path a/../../", "a/../../escape"),
        ("absolute path", str(w.outside / "pwned")),
        ("absolute path /etc", "/etc/ckptsync-pwned"),
        ("NUL in path", "a\x00b"),
        ("newline in path", "model\n.bin"),
        ("ESC in path", "\x1b[31mred"),
        ("DEL in path", "a\x7fb"),
        ("RTL override in path", "\u202egnp.exe"),
        ("zero-width space in path", "mod\u200bel.bin"),
        ("BOM in path", "\ufeffmodel.bin"),
        ("over-long component", "x" * 256),
        ("over-long path", ("d" * 200 + "/") * 21 + "f"),
        ("backslash traversal", "..\\..\\escape"),
        ("'.' component", "./model.bin"),
        ("empty component", "sub//opt.bin"),
        ("trailing slash", "sub/"),
        ("lone surrogate", "\udc80"),
        ("private-use char", "a\ue000b"),
    ]:
        add(label, set_path(p))
    add("duplicate paths", lambda d: d["files"].append(json.loads(json.dumps(_file(d, "model.bin")))))
    add("file and folder at one path", lambda d: d["files"].append({**_file(d, "sub/opt.bin"), "path": "model.bin/inner"}))
    # -- names (the key says hostile-NN, the document something else)
    for label, n in [
        ("name '..'", ".."),
        ("name with slash", "../../outside"),
        ("name with NUL", "x\x00"),
        ("over-long name", "n" * 256),
        ("name with RTL override", "\u202eckpt"),
        ("replay of the good manifest under another key", GOOD),
    ]:
        add(label, lambda d, n=n: d.update(name=n))
    # -- sizes
    add("sizes that do not add up", lambda d: _file(d, "model.bin").update(size=_file(d, "model.bin")["size"] + 1))
    add("negative size", lambda d: _file(d, "model.bin").update(size=-1))
    add(
        "huge declared size, one chunk",
        lambda d: _file(d, "model.bin").update(size=1 << 62, chunks=[{**_chunk(d, "model.bin"), "size": 1 << 62}]),
    )
    add(
        "1 TiB declared (valid sizes, chunk missing)",
        lambda d: _file(d, "model.bin").update(
            size=1 << 40,
            chunks=[{"hash": H_MISSING, "size": 64 << 20, "stored": 64 << 20, "codec": "raw"}] * (1 << 14),
            hash=fmt.piece_digest([H_MISSING] * (1 << 14), d["hash_algorithm"]),  # consistent: only the chunk is wrong
        ),
        "damaged",
    )
    add(
        "stored size smaller than the object",
        lambda d: _chunk(d, "small.txt").update(stored=_chunk(d, "small.txt")["stored"] - 1),
        "damaged",
    )
    add("raw chunk with stored != size", lambda d: _chunk(d, "model.bin").update(stored=_chunk(d, "model.bin")["size"] + 1))
    add("whole-file hash that does not match", lambda d: _file(d, "sub/opt.bin").update(hash="0" * 64), "damaged")
    add(  # version 6 on: a file of whole chunks must hash to their piece digest (FORMAT.md 5.9, item 14)
        "chunk of another file (hash mismatch)",
        lambda d: _file(d, "sub/opt.bin").update(chunks=[_chunk(d, "model.bin")], size=MODEL_SIZE),
    )
    # -- chunk parts (packed small files)
    add("part starting past its chunk", lambda d: _chunk(d, "sub/opt.bin").update(offset=_chunk(d, "sub/opt.bin")["size"]))
    add("part running past its chunk", lambda d: _chunk(d, "sub/opt.bin").update(offset=_chunk(d, "sub/opt.bin")["size"] - 10))
    add("part of zero length", lambda d: _chunk(d, "sub/opt.bin").update(length=0))
    add("part with a negative offset", lambda d: _chunk(d, "sub/opt.bin").update(offset=-1))
    add("part in a version-3 manifest", lambda d: d.update(version=3))
    add(
        "part naming another range of the pack",
        lambda d: _chunk(d, "sub/opt.bin").update(offset=_chunk(d, "sub/opt.bin")["size"] - _chunk(d, "sub/opt.bin")["length"] - 1),
        "damaged",
    )
    # -- chunk objects planted on the remote: a zstd bomb (declares 64 MiB), one with no declared size
    for label, frame in [
        ("zstd bomb declaring 64 MiB", zstandard.ZstdCompressor(write_content_size=True).compress(bytes(64 << 20))),
        ("zstd bomb without declared size", zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8 << 20))),
    ]:
        digest = hashlib.sha256(frame).hexdigest()  # any name: the content can never match it
        obj = w.remote_dir / "chunks" / digest[:2] / f"{digest}.zstd"
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(frame)
        add(
            label,
            lambda d, h=digest, n=len(frame): _file(d, "small.txt").update(
                size=1000, hash=h, chunks=[{"hash": h, "size": 1000, "stored": n, "codec": "zstd"}]
            ),
            "damaged",
        )
    # -- codecs, versions, kinds, types
    add("unknown codec", lambda d: _chunk(d, "model.bin").update(codec="lz4"))
    add("byte-grouped codec in a version-2 manifest", lambda d: (_chunk(d, "small.txt").update(codec="bg4"), d.update(version=2)))
    for v in (0, -1, "1", 1.5, None, True):
        add(f"version {v!r}", lambda d, v=v: d.update(version=v))
    add("no version", lambda d: d.pop("version"))
    add("other format", lambda d: d.update(format="ckptsync.manifest.v2"))
    add("hash algorithm md5", lambda d: d.update(hash_algorithm="md5"))
    add("hash algorithm blake3 in a version-6 manifest", lambda d: d.update(version=6))
    add("BLAKE3 names claimed to be SHA-256", lambda d: d.update(hash_algorithm="sha256"), "damaged")
    add("kind symlink", lambda d: d.update(kind="symlink"))
    add("kind file with several files", lambda d: d.update(kind="file"))
    add("mode out of range", lambda d: _file(d, "model.bin").update(mode=0o10000))
    add("malformed commit id", lambda d: d.update(commit="../../x"))
    add("created without zone", lambda d: d.update(created="2026-01-01T00:00:00"))
    add("hosts without this host", lambda d: d.update(version=2, hosts=["a", "b"]))
    # -- not manifests at all
    add("binary garbage", None, raw=os.urandom(4096))
    add("truncated JSON", None, raw=json.dumps(good).encode()[:300])
    add("JSON array", None, raw=b"[1, 2, 3]")
    add("NaN metric", None, raw=json.dumps({**good, "metrics": {"loss": float("nan")}}).encode())
    add("duplicate keys", None, raw=b'{"format": "ckptsync.manifest", "format": "x", "version": 1}')
    add("empty object", None, raw=b"")
    add("deep nesting", None, raw=b"[" * 200_000 + b"]" * 200_000)
    # -- keys that are not manifest keys (hostile names in the key itself): ignored, per FORMAT.md 5.7
    for label, n in [("key name '..'", ".."), ("key name with slash", "a/b"), ("key name with NUL", "x\x00")]:
        doc = json.loads(json.dumps(good))
        doc.update(name=n, commit=fmt.new_commit_id(created, "evil"), step=2000)
        cases.append(Case(label, json.dumps(doc).encode(), "ignored", n))
    return cases


def write_case(w: World, c: Case) -> Path:
    try:
        doc = json.loads(c.data)
        commit = doc.get("commit") if isinstance(doc, dict) else None
    except (ValueError, RecursionError):
        commit = None
    if not (isinstance(commit, str) and fmt.COMMIT_ID.match(commit)):
        commit = fmt.new_commit_id(datetime.now(timezone.utc), "evil")
    quoted = quote(c.key_name, safe="")
    if c.expect == "ignored":
        quoted = quoted.replace(".", "%2E")  # a percent-encoded '..' still decodes to '..'
    key = w.remote_dir / "manifests" / quoted / f"{commit}.json"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(c.data)
    return key


LOG_LINE = r"^(\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) |ckptsync: (error|hint): )"


def one_line_messages(stderr: str) -> bool:
    """Every stderr line is a log line or the CLI's error/hint line: no hostile byte broke a message in two."""
    import re

    return all(re.match(LOG_LINE, ln) for ln in stderr.splitlines())


def preplace(w: World, variant: str, damaged: list[str]) -> None:
    """Links, hard links and special files in the target folder, at the good checkpoint's path or inside it."""
    t = w.target
    good = t / GOOD
    if variant == "symlink at the checkpoint's path":
        good.symlink_to(w.outside, target_is_directory=True)
        for name in damaged:  # and at the paths of the hostile checkpoints restore will try first
            (t / name).symlink_to(w.outside, target_is_directory=True)
    elif variant == "symlinks inside the checkpoint":
        good.mkdir()
        (good / "model.bin").symlink_to(w.outside / "secret.txt")
        (good / "sub").symlink_to(w.outside / "dir", target_is_directory=True)
    elif variant == "hard link inside the checkpoint":
        copy = w.outside / "model-copy.bin"
        shutil.copyfile(w.good_src / "model.bin", copy)
        os.chmod(copy, 0o600)  # the manifest says 0o644
        good.mkdir()
        os.link(copy, good / "model.bin")
    elif variant == "device file and fifo inside the checkpoint":
        (good / "sub").mkdir(parents=True)
        os.mknod(good / "small.txt", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        os.mkfifo(good / "sub" / "opt.bin")
    elif variant == "fifo at the checkpoint's path":
        os.mkfifo(good)
    elif variant == "fake staging folders":
        (t / f"{STAGING_PREFIX}999999-0123456789ab").symlink_to(w.outside, target_is_directory=True)
        (t / f"{STAGING_PREFIX}1-0123456789ab").mkdir()
        (t / f"{STAGING_PREFIX}1-0123456789ab" / "keep").write_text("a live restore's")
    else:
        raise AssertionError(variant)


PREPLACED = [
    "symlink at the checkpoint's path",
    "symlinks inside the checkpoint",
    "hard link inside the checkpoint",
    "device file and fifo inside the checkpoint",
    "fifo at the checkpoint's path",
    "fake staging folders",
]


def _reset_target(w: World, variant: str | None, damaged: list[str] = ()) -> None:
    shutil.rmtree(w.target)
    (w.target / ".hidden").mkdir(parents=True)
    (w.target / ".hidden" / "h").write_text("h")
    (w.target / "unrelated.txt").write_text("keep me")
    copy = w.outside / "model-copy.bin"
    if copy.exists():
        copy.unlink()
    if variant:
        preplace(w, variant, list(damaged))


def test_s15_hostile_manifests_end_to_end(tmp_path):
    w = make_world(tmp_path)
    cases = hostile_cases(w)
    assert len(cases) >= 30
    for c in cases:
        write_case(w, c)
    target_rel = w.target.relative_to(w.root).as_posix()
    problems: list[str] = []
    writes_outside: list[str] = []

    # restore --latest: once with a clean target, once per pre-placed link/device variant
    latest_ok = 0
    for variant in [None, *PREPLACED]:
        _reset_target(w, variant, [c.key_name for c in cases if c.expect == "damaged"])
        before = snapshot(w.root, w.exclude)
        p = run_cli("restore", "--remote", w.remote, "--dir", str(w.target), "--latest")
        after = snapshot(w.root, w.exclude)
        changes = outside_changes(before, after, target_rel)
        writes_outside += [f"[{variant}] {c}" for c in changes]
        verdict = {
            "exit 0": p.returncode == 0,
            "restored the good checkpoint": last_line(p.stdout) == str(w.target / GOOD),
            "byte-identical": (w.target / GOOD).is_dir()
            and not (w.target / GOOD).is_symlink()
            and tree(w.target / GOOD) == tree(w.good_src),
            "every message one line": one_line_messages(p.stderr),
            "no traceback": "Traceback" not in p.stderr and "internal error" not in p.stderr,
        }
        if variant is None:
            for c in cases:
                key_part = quote(c.key_name, safe="")
                lines = [ln for ln in p.stderr.splitlines() if "WARNING" in ln and (key_part in ln or f" {c.key_name} " in ln)]
                if c.expect == "invalid" and not any("skipping invalid manifest" in ln for ln in lines):
                    problems.append(f"--latest: no 'skipping invalid manifest' warning for {c.label} ({c.key_name})")
                if c.expect == "damaged" and not any("is damaged" in ln for ln in lines):
                    problems.append(f"--latest: no 'is damaged' warning for {c.label} ({c.key_name})")
        if all(verdict.values()):
            latest_ok += 1
        else:
            problems.append(f"--latest [{variant}]: {[k for k, v in verdict.items() if not v]}; exit {p.returncode}; {p.stderr[-1500:]}")
    _reset_target(w, None)

    # restore --name HOSTILE: one line, non-zero exit, nothing written (CI: in-process, 3 as subprocesses)
    rejected = 0
    argv_ok = [i for i, c in enumerate(cases) if "\x00" not in c.key_name]  # a NUL cannot be passed in argv
    sampled = set(argv_ok) if FULL else {argv_ok[0], argv_ok[len(argv_ok) // 2], argv_ok[-1]}
    for i, c in enumerate(cases):
        before = snapshot(w.root, (w.remote_dir / "locks",))
        if i in sampled:
            p = run_cli("restore", "--remote", w.remote, "--dir", str(w.target), "--name", c.key_name)
            code, out, err = p.returncode, p.stdout, p.stderr
        else:
            code, out, err = cli_inprocess("restore", "--remote", w.remote, "--dir", str(w.target), "--name", c.key_name)
        after = snapshot(w.root, (w.remote_dir / "locks",))
        changes = outside_changes(before, after, target_rel)
        writes_outside += [f"[--name {c.label}] {ch}" for ch in changes]
        errors = [ln for ln in err.splitlines() if ln.startswith("ckptsync: error: ")]
        verdict = {
            "non-zero exit": code in (1, 3),
            "one error line": len(errors) == 1,
            "every message one line": one_line_messages(err),
            "nothing on stdout": out.strip() == "",
            "target unchanged": not changes,
            "no traceback": "Traceback" not in err and "internal error" not in err,
        }
        if all(verdict.values()):
            rejected += 1
        else:
            problems.append(f"--name {c.key_name} ({c.label}): {[k for k, v in verdict.items() if not v]}; exit {code}; {err[-800:]}")

    figure = (
        f"{rejected}/{len(cases)} hostile manifests rejected by --name (one error line each); --latest restored the good "
        f"checkpoint in {latest_ok}/{1 + len(PREPLACED)} runs (clean target + {len(PREPLACED)} pre-placed link/device variants); "
        f"writes outside DIR/{GOOD}: {len(writes_outside)}"
    )
    ok = not problems and not writes_outside
    record(15, "hostile manifests end to end", len(cases) + len(PREPLACED), figure, ok)
    assert not writes_outside, f"{figure}\n" + "\n".join(writes_outside)
    assert not problems, f"{figure}\n" + "\n".join(problems)


def _world_with_one(tmp_path: Path, label: str, doc_mutation) -> tuple[World, Case]:
    w = make_world(tmp_path)
    doc = json.loads(json.dumps(w.good_doc))
    created = fmt.parse_time(doc["created"])
    doc.update(name="hostile-x", commit=fmt.new_commit_id(created + timedelta(seconds=5), "evil"), step=1000)
    doc_mutation(doc)
    case = Case(label, json.dumps(doc).encode(), "invalid", "hostile-x")
    write_case(w, case)
    return w, case


@pytest.mark.parametrize(
    "label,mutation",
    [
        # RFC 3339 times whose UTC value falls outside datetime's range (year 1 east of UTC, year 9999 west of it)
        ("created 0001-01-01T00:00:00+00:01", lambda d: d.update(created="0001-01-01T00:00:00+00:01")),
        ("created 9999-12-31T23:59:59-00:01", lambda d: d.update(created="9999-12-31T23:59:59-00:01")),
        # valid sizes (262144 chunks of 64 MiB), but more than ext4 holds in one file (16 TiB): ftruncate fails
        (
            "16 TiB declared",
            lambda d: _file(d, "model.bin").update(
                size=1 << 44, chunks=[{"hash": H_MISSING, "size": 64 << 20, "stored": 64 << 20, "codec": "raw"}] * (1 << 18)
            ),
        ),
    ],
    ids=["year-1-east", "year-9999-west", "16-TiB"],
)
def test_s15_one_hostile_manifest_never_blocks_restore_latest_of_the_good_one(tmp_path, label, mutation):
    """A single hostile manifest next to a good checkpoint: list works, restore --latest restores the good one."""
    w, case = _world_with_one(tmp_path, label, mutation)
    before = snapshot(w.root, w.exclude)
    p = run_cli("restore", "--remote", w.remote, "--dir", str(w.target), "--latest")
    lst = run_cli("list", "--remote", w.remote, "--json")
    changes = outside_changes(before, snapshot(w.root, w.exclude), w.target.relative_to(w.root).as_posix())
    verdict = {
        "restore exit 0": p.returncode == 0,
        "good checkpoint restored": last_line(p.stdout) == str(w.target / GOOD) and (w.target / GOOD).is_dir(),
        "a warning names the hostile one": "hostile-x" in p.stderr,
        "list exit 0": lst.returncode == 0,
        "no internal error": "internal error" not in p.stderr + lst.stderr,
        "no writes outside": not changes,
    }
    ok = all(verdict.values())
    error = next((ln for ln in p.stderr.splitlines() if ln.startswith("ckptsync: error: ")), "")
    figure = f"{label}: " + (
        "good checkpoint restored, hostile one skipped" if ok else f"failed {[k for k, v in verdict.items() if not v]}: {error}"
    )
    record(15, f"hostile manifest: {label}", 1, figure, ok)
    assert ok, f"{figure}\nrestore stderr: {p.stderr[-1500:]}\nlist stderr: {lst.stderr[-800:]}"


def test_s15_a_newer_format_version_stops_restore_latest_as_format_md_requires(tmp_path):
    """FORMAT.md 5.8: a manifest with a version above the reader's aborts restore (no silent fallback)."""
    w, _ = _world_with_one(tmp_path, "version 99", lambda d: d.update(version=99))
    before = listing(w.target)
    p = run_cli("restore", "--remote", w.remote, "--dir", str(w.target), "--latest")
    ok = p.returncode == 1 and "version 99" in p.stderr and "upgrade" in p.stderr and listing(w.target) == before
    record(15, "hostile manifest: newer format version", 1, "restore --latest stopped naming version 99" if ok else last_line(p.stderr), ok)
    assert ok, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("ckptsync: error: ")]
    assert len(errors) == 1 and "Traceback" not in p.stderr


# =========================================================================== 19: property-based


ROUND_TRIP_EXAMPLES = 300 if FULL else 12
SMALL_CHUNK_EXAMPLES = 300 if FULL else 12
DECODE_EXAMPLES = 5000 if FULL else 500

EDGE_SIZES = [0, 1, 63, 64, 65, 4095, 4096, 4097, 65535, 65536, 65537]
KINDS = ["random", "zeros", "text", "floats"]
MODES = [0o644, 0o600, 0o755, 0o444, 0o400, 0o700, 0o640]


def content(size: int, kind: str, seed: int) -> bytes:
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "text":
        line = f"step {seed} loss {seed % 997 / 1000:.3f} lr 1e-4\n".encode()
        return (line * (size // len(line) + 1))[:size]
    floats = np.random.default_rng(seed).normal(0, 0.02, size // 4 + 1).astype(np.float32).tobytes()
    return floats[:size]


_alphabet = st.characters(codec="utf-8", categories=("L", "N", "Mn", "Pd", "Zs"), include_characters="_.=+,@~", exclude_characters="/\\")
component = st.text(_alphabet, min_size=1, max_size=24).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 255)
top_name = component.filter(lambda s: is_checkpoint_name(s) and not s.endswith(SIDECAR_SUFFIX))
file_spec = st.tuples(
    st.one_of(st.integers(0, 300_000), st.sampled_from(EDGE_SIZES)), st.sampled_from(KINDS), st.integers(0, 2**32), st.sampled_from(MODES)
)


def _no_conflicts(files: dict[tuple[str, ...], tuple]) -> dict[str, tuple]:
    """Drop paths that are a folder of another path (a file and a folder cannot share a path)."""
    kept: dict[tuple[str, ...], tuple] = {}
    for path in sorted(files, key=len):
        if not any(path[: len(k)] == k for k in kept):
            kept[path] = files[path]
    return {"/".join(p): spec for p, spec in kept.items()}


dir_ckpt = st.dictionaries(st.lists(component, min_size=1, max_size=4).map(tuple), file_spec, max_size=6).map(_no_conflicts)
checkpoint = st.one_of(st.tuples(st.just("dir"), dir_ckpt), st.tuples(st.just("file"), file_spec))
folder = st.dictionaries(top_name, checkpoint, min_size=1, max_size=3)


def build(root: Path, spec: dict) -> None:
    for name, (kind, body) in spec.items():
        if kind == "file":
            size, k, seed, mode = body
            (root / name).write_bytes(content(size, k, seed))
            os.chmod(root / name, mode)
            continue
        (root / name).mkdir()
        for rel, (size, k, seed, mode) in body.items():
            p = root / name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content(size, k, seed) if not isinstance(k, bytes) else k)
            os.chmod(p, mode)


BIG = {
    "checkpoint-4M": (
        "dir",
        {
            "exactly-4MiB.bin": (4 * MiB, "random", 1, 0o644),
            "4MiB-plus-1.bin": (4 * MiB + 1, "zeros", 2, 0o600),
            "9MiB-floats.bin": (9 * MiB, "floats", 3, 0o644),
            "nested/8MiB-minus-1.txt": (8 * MiB - 1, "text", 4, 0o755),
        },
    ),
    "last.ckpt": ("file", (5 * MiB + 3, "random", 5, 0o644)),
}


def _round_trip(spec: dict, push) -> None:
    base = Path(tempfile.mkdtemp(prefix="ckptsync-prop-"))
    try:
        src, remote_dir = base / "src", base / "remote"
        src.mkdir()
        remote_dir.mkdir()
        build(src, spec)
        # a safetensors file when the spec asks for floats at the top of a folder: tensor-aligned chunking too
        push(src, f"file://{remote_dir}")
        for name in spec:
            out = base / "out"
            result = ckptsync.restore(f"file://{remote_dir}", out, name=name)
            assert result is not None and result.path == out / name
            assert tree(out / name) == tree(src / name), name
            assert not [e for e in os.listdir(out) if e.startswith(".")], "staging left behind"
            shutil.rmtree(out)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _push_api(src: Path, remote: str) -> None:
    report = ckptsync.push(src, remote)
    assert {r.status for r in report.results} == {"committed"}, [(r.name, r.status, r.reason) for r in report.results]


def _run_property(test, n: int, scenario: int, name: str, what: str) -> None:
    """Run a hypothesis property inside this test, count its examples, record the figure, re-raise a failure."""
    count = [0]
    failure: BaseException | None = None
    try:
        test(count)
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        failure = exc
    figure = (
        f"{count[0]} examples, {what}" if failure is None else f"falsified after {count[0]} examples: {str(failure).splitlines()[0][:300]}"
    )
    record(scenario, name, count[0], figure, failure is None)
    if failure is not None:
        raise failure


def test_s19_any_tree_round_trips_byte_identical_through_push_and_restore():
    safetensors = {
        "model.safetensors": (
            0,
            safetensors_bytes(
                {"w": np.random.default_rng(7).normal(0, 0.02, (1300, 1024)).astype(np.float32), "b": np.zeros(7, np.float16)}
            ),
            0,
            0o644,
        )
    }

    @settings(max_examples=ROUND_TRIP_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=not FULL)
    @given(spec=folder)
    @example(spec=BIG)
    @example(spec={"hf-like": ("dir", safetensors), "empty": ("dir", {}), "0": ("file", (0, "zeros", 0, 0o644))})
    def prop(count, spec):
        count[0] += 1
        _round_trip(spec, _push_api)

    _run_property(
        prop,
        ROUND_TRIP_EXAMPLES,
        19,
        "push/restore round trip of any tree",
        "every one byte-identical (incl. files of 4 MiB, 4 MiB+1, 8 MiB-1, 9 MiB, safetensors)",
    )


def test_s19_chunk_boundaries_round_trip_with_a_small_chunk_size():
    """The same property with chunks of a few bytes to a few KiB, so every size lands on, just before and just after
    a chunk boundary without writing megabytes (the session's chunk_size; restore knows no chunk size)."""

    @settings(
        max_examples=SMALL_CHUNK_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=not FULL
    )
    @given(
        chunk=st.sampled_from([64, 100, 1000, 4096]),
        files=st.lists(
            st.tuples(st.integers(0, 20), st.sampled_from([-1, 0, 1]), st.sampled_from(KINDS), st.integers(0, 2**32)),
            min_size=1,
            max_size=8,
        ),
    )
    def prop(count, chunk, files):
        count[0] += 1
        spec = {f"f{i}.bin": (max(0, k * chunk + d), kind, seed, 0o644) for i, (k, d, kind, seed) in enumerate(files)}

        def push(src: Path, remote: str) -> None:
            repo = Repository(RetryingStore(LocalStore(Path(remote[len("file://") :]))))
            with RemoteSession(repo, workers=2, chunk_size=chunk) as up:
                for ck in ("c",):
                    res = up.upload(scan_entry(src / ck))
                    assert res.status == "committed", res
                    sizes = {c.size for f in res.manifest.files for c in f.chunks}
                    assert sizes <= set(range(1, chunk + 1))

        _round_trip({"c": ("dir", spec)}, push)

    _run_property(prop, SMALL_CHUNK_EXAMPLES, 19, "round trip at chunk boundaries (small chunk size)", "every one byte-identical")


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20
)
_offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)).map(
    lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))
)
_edge_days = st.one_of(
    st.datetimes(max_value=datetime(1, 1, 1, 0, 30)), st.datetimes(min_value=datetime(9999, 12, 31, 23, 30)), st.datetimes()
)  # the ends of datetime's range, where a zone offset can push the UTC value out of it
iso_times = st.builds(lambda dt, tz: dt.replace(tzinfo=tz).isoformat(), _edge_days, _offsets)
plausible = st.one_of(
    json_value,
    iso_times,
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from(
        ["", ".", "..", "/", "a/../b", "\x00", "\u202e", "x" * 300, "raw", "zstd", "bg4", "lz4", "dir", "file", fmt.FORMAT_NAME, "a" * 64]
    ),
    st.sampled_from([0, 1, 2, 3, 4, 2**62, -1, 0o7777, 0o10000, 64 << 20, (64 << 20) + 1]),
)
_paths = st.one_of(
    st.text(max_size=20), st.lists(st.sampled_from(["a", ".", "..", "", "\x00", "\u202e", "b" * 256]), min_size=1, max_size=4).map("/".join)
)
_sizes = st.one_of(st.integers(-2, 2**66), st.sampled_from([0, 100, 200, 64 << 20, (64 << 20) + 1, (64 << 20) + 1025]))
#: values that look like what each field holds (and its edge cases), so mutations get past the earlier checks
FIELD_VALUES = {
    "version": st.one_of(st.integers(-1, 5), st.sampled_from([1.0, "1", True, None])),
    "created": st.integers(0, 3).flatmap(lambda i: st.text(max_size=40) if i == 0 else iso_times),
    "step": st.one_of(st.integers(-(2**64), 2**64), st.none(), st.floats()),
    "metrics": st.dictionaries(
        st.text(max_size=300), st.one_of(st.floats(), st.integers(-(2**1100), 2**1100), st.none(), json_value), max_size=3
    ),
    "commit": st.one_of(st.text(max_size=80), st.just("20261126T130000123456Z-h-0123456789abcdef")),
    "name": _paths,
    "path": _paths,
    "size": _sizes,
    "stored": _sizes,
    "mode": st.integers(-1, 0o20000),
    "codec": st.sampled_from(["raw", "zstd", "bg2", "bg4", "bg8", "lz4", "", "RAW"]),
    "offset": _sizes,
    "length": _sizes,
    "kind": st.sampled_from(["dir", "file", "symlink", ""]),
    "hosts": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_value),
}


def field_value(key: str):
    if key not in FIELD_VALUES:
        return plausible
    return st.integers(0, 4).flatmap(lambda i: plausible if i == 0 else FIELD_VALUES[key])


TOP_KEYS = ["format", "version", "name", "kind", "step", "metrics", "created", "host", "commit", "tool", "hash_algorithm", "files", "hosts"]
FILE_KEYS = ["path", "size", "mode", "hash", "chunks"]
CHUNK_KEYS = ["hash", "size", "stored", "codec", "offset", "length"]


def _valid_doc() -> dict:
    h = hashlib.sha256(b"x" * 100).hexdigest()
    created = datetime(2026, 11, 26, 13, 0, 0, 123456, tzinfo=timezone.utc)
    m = fmt.Manifest(
        name="checkpoint-500",
        kind="dir",
        step=500,
        metrics={"eval_loss": 0.25},
        created=created,
        host="algo-1",
        commit=fmt.new_commit_id(created, "algo-1"),
        files=(
            fmt.FileEntry("model.bin", 200, 0o644, h, (fmt.ChunkRef(h, 100, 100, "raw"), fmt.ChunkRef(h, 100, 20, "zstd"))),
            fmt.FileEntry("sub/empty", 0, 0o600, h, ()),
            fmt.FileEntry("sub/part", 50, 0o600, h, (fmt.ChunkRef(h, 100, 100, "raw", 25, 50),)),
        ),
        tool="ckptsync/test",
    )
    return json.loads(fmt.encode_manifest(m))


def _decode_escape(data: bytes) -> BaseException | None:
    """What decode_manifest raised other than FormatError (None: a Manifest or a FormatError)."""
    try:
        m = fmt.decode_manifest(data)
    except FormatError:
        return None
    except Exception as exc:  # noqa: BLE001 - that is what this looks for
        return exc
    assert isinstance(m, fmt.Manifest)
    return None


def test_s19_decode_manifest_raises_only_format_error():
    valid = _valid_doc()
    assert _decode_escape(json.dumps(valid).encode()) is None

    @st.composite
    def mutated(draw) -> bytes:
        doc = json.loads(json.dumps(valid))
        for _ in range(draw(st.integers(1, 3))):
            where = draw(st.sampled_from(["top"] * 5 + ["file"] * 3 + ["chunk"] * 2 + ["metrics"]))
            if where == "top":
                target, keys = doc, TOP_KEYS
            elif where == "metrics" and isinstance(doc.get("metrics"), dict):
                target, keys = doc["metrics"], ["eval_loss", "x"]
            elif isinstance(doc.get("files"), list) and doc["files"] and isinstance(doc["files"][0], dict):
                f = doc["files"][draw(st.integers(0, len(doc["files"]) - 1))]
                if not isinstance(f, dict):
                    continue
                if where == "chunk" and isinstance(f.get("chunks"), list) and f["chunks"] and isinstance(f["chunks"][0], dict):
                    target, keys = f["chunks"][0], CHUNK_KEYS
                else:
                    target, keys = f, FILE_KEYS
            else:
                continue
            key = draw(st.text(max_size=8)) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(keys))
            op = draw(st.sampled_from(["set"] * 8 + ["delete", "duplicate"]))
            if op == "delete":
                target.pop(key, None)
            elif op == "duplicate" and isinstance(doc.get("files"), list) and doc["files"]:
                doc["files"].append(json.loads(json.dumps(doc["files"][0])))
            else:
                target[key] = draw(field_value(key))
        return json.dumps(doc).encode()

    ckptsyncish = st.fixed_dictionaries(
        {"format": st.just(fmt.FORMAT_NAME), "version": st.one_of(st.integers(0, 4), json_value)},
        optional={
            k: st.one_of(plausible, st.lists(st.dictionaries(st.sampled_from(FILE_KEYS + CHUNK_KEYS), plausible), max_size=3))
            for k in TOP_KEYS[2:]
        },
    ).map(lambda d: json.dumps(d).encode())
    documents = st.one_of(
        st.binary(max_size=2000),
        json_value.map(lambda v: json.dumps(v).encode()),
        ckptsyncish,
        mutated(),
    )

    # Every example runs (no stop at the first escape), so the figure counts them all; escapes are listed by kind.
    escapes: dict[str, tuple[int, bytes]] = {}
    count = [0]

    @settings(max_examples=DECODE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=not FULL)
    @given(data=documents)
    @example(data=b"[" * 100_000)
    # found by this property at full size (CKPTSYNC_RELIABILITY_FULL=1); kept so that the CI size shows it too
    @example(data=json.dumps({**valid, "created": "0001-01-01T00:00:00+00:01"}).encode())
    def prop(data):
        count[0] += 1
        exc = _decode_escape(data)
        if exc is not None:
            kind = f"{type(exc).__name__}: {exc}"
            n, first = escapes.get(kind, (0, data))
            escapes[kind] = (n + 1, first)

    prop()
    bad = sum(n for n, _ in escapes.values())
    figure = f"{count[0] - bad}/{count[0]} inputs gave a Manifest or FormatError" + "".join(
        f"; {n} raised {kind} (e.g. {first[:160]!r})" for kind, (n, first) in escapes.items()
    )
    record(19, "decode_manifest raises only FormatError", count[0], figure, not escapes)
    assert not escapes, figure
