"""push and restore end to end through the Python API on a file:// remote."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import ckptsync
from ckptsync import format as fmt
from ckptsync.api import open_repository
from ckptsync.errors import IntegrityError, NothingToRestore, UsageError
from ckptsync.options import Options
from ckptsync.repository import Repository
from ckptsync.store import LocalStore
from tests.faults.scenarios import record
from tests.helpers import listing, make_hf_checkpoint, make_mixed_checkpoint, tree


@pytest.fixture
def remote(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    return f"file://{root}"


@pytest.fixture
def ckdir(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    return d


def chunk_objects(remote: str) -> dict[str, float]:
    root = Path(remote[len("file://") :]) / "chunks"
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def test_mixed_folder_round_trips_byte_identical_with_modes(remote, ckdir, tmp_path):
    src = make_mixed_checkpoint(ckdir)
    report = ckptsync.push(ckdir, remote)
    assert [r.status for r in report.results] == ["committed"]
    out = tmp_path / "out"
    result = ckptsync.restore(remote, out)
    assert result is not None and result.path == out / src.name
    assert tree(out / src.name) == tree(src)
    assert not [p for p in os.listdir(out) if p.startswith(".")], "staging folder left behind"


def test_single_file_checkpoint_round_trips(remote, ckdir, tmp_path):
    f = ckdir / "epoch=3-step=1200-val_loss=0.213.ckpt"
    f.write_bytes(os.urandom(5 << 20))
    ckptsync.push(ckdir, remote)
    [rec] = ckptsync.list_checkpoints(remote)
    assert rec.manifest.kind == "file" and rec.manifest.step == 1200
    assert rec.manifest.metrics["val_loss"] == pytest.approx(0.213)
    result = ckptsync.restore(remote, tmp_path / "out")
    assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()
    assert result.manifest.name == f.name


def test_second_push_uploads_no_chunk_and_commits_nothing(remote, ckdir):
    for step in (10, 20):
        make_hf_checkpoint(ckdir, step, 0.5)
    first = ckptsync.push(ckdir, remote)
    assert first.count("committed") == 2
    before = chunk_objects(remote)
    second = ckptsync.push(ckdir, remote)
    assert second.count("unchanged") == 2 and second.count("committed") == 0
    assert sum(r.stats.chunks_uploaded for r in second.results) == 0
    assert chunk_objects(remote) == before
    assert len(ckptsync.list_checkpoints(remote)) == 2


def test_identical_content_is_stored_once_across_checkpoints(remote, ckdir):
    a = make_hf_checkpoint(ckdir, 10, 0.5, seed=1)
    b = ckdir / "checkpoint-20"
    shutil.copytree(a, b)
    report = ckptsync.push(ckdir, remote)
    uploaded = {r.name: r.stats.chunks_uploaded for r in report.results}
    assert uploaded["checkpoint-20"] > 0 and uploaded["checkpoint-10"] == 0


def test_temporary_entries_are_skipped(remote, ckdir):
    for name in ("tmp-checkpoint-30", ".hidden", "x.tmp", "y.partial", "5.orbax-checkpoint-tmp-99"):
        (ckdir / name).mkdir()
        (ckdir / name / "f").write_bytes(b"data")
    make_hf_checkpoint(ckdir, 10, 0.5)
    ckptsync.push(ckdir, remote)
    assert [r.name for r in ckptsync.list_checkpoints(remote)] == ["checkpoint-10"]


def test_latest_and_best_selection(remote, ckdir, tmp_path):
    losses = {100: 0.9, 200: 0.3, 300: 0.5, 400: 0.7, 500: 0.6}
    for step, loss in losses.items():
        make_hf_checkpoint(ckdir, step, loss, params=1 << 14)
    ckptsync.push(ckdir, remote)
    best = ckptsync.restore(remote, tmp_path / "a", select="best", metric="eval_loss")
    assert best.name == "checkpoint-200"
    latest = ckptsync.restore(remote, tmp_path / "b")
    assert latest.name == "checkpoint-500"
    assert tree(tmp_path / "a" / "checkpoint-200") == tree(ckdir / "checkpoint-200")
    by_step = ckptsync.restore(remote, tmp_path / "c", step=300)
    assert by_step.name == "checkpoint-300"


def test_best_with_unknown_metric_is_a_usage_error_naming_the_present_ones(remote, ckdir, tmp_path):
    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    with pytest.raises(UsageError) as e:
        ckptsync.restore(remote, tmp_path / "o", select="best", metric="bleu", mode="max")
    assert "eval_loss" in e.value.hint


def test_nothing_committed_returns_none_and_unknown_name_raises(remote, tmp_path):
    assert ckptsync.restore(remote, tmp_path / "o") is None
    with pytest.raises(NothingToRestore):
        ckptsync.restore(remote, tmp_path / "o", name="checkpoint-1")


def _corrupt_one_chunk_of(remote: str, name: str) -> str:
    repo = Repository(LocalStore(Path(remote[7:])))
    [rec] = [r for r in repo.load_manifests() if r.name == name]
    others = {h for r in repo.load_manifests() if r.name != name for h in r.manifest.chunk_refs()}
    digest, ref = next((h, c) for h, c in rec.manifest.chunk_refs().items() if h not in others)
    path = Path(remote[7:]) / fmt.chunk_key("", digest, ref.codec)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    return digest


def test_corrupt_chunk_fails_named_restore_and_leaves_dir_untouched(remote, ckdir, tmp_path):
    for step in (1, 2):
        make_hf_checkpoint(ckdir, step, 0.5, params=1 << 18)  # weights over 1 MiB: chunks of their own
    ckptsync.push(ckdir, remote)
    digest = _corrupt_one_chunk_of(remote, "checkpoint-2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = listing(out)
    with pytest.raises(IntegrityError) as e:
        ckptsync.restore(remote, out, name="checkpoint-2")
    assert digest in e.value.message
    assert listing(out) == before
    # --latest falls back to the older intact checkpoint; --strict refuses.
    with pytest.raises(IntegrityError):
        ckptsync.restore(remote, out, strict=True)
    assert listing(out) == before
    result = ckptsync.restore(remote, out)
    assert result.name == "checkpoint-1" and result.skipped == ["checkpoint-2"]
    assert tree(out / "checkpoint-1") == tree(ckdir / "checkpoint-1")
    reports = ckptsync.verify(remote, deep=True)
    assert {r.record.name: r.ok for r in reports} == {"checkpoint-2": False, "checkpoint-1": True}
    assert {r.record.name: r.ok for r in ckptsync.verify(remote)} == {"checkpoint-2": True, "checkpoint-1": True}


def test_missing_chunk_is_found_by_shallow_verify(remote, ckdir, tmp_path):
    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 14)
    ckptsync.push(ckdir, remote)
    victim = sorted(chunk_objects(remote))[0]
    os.unlink(victim)
    [report] = ckptsync.verify(remote)
    assert not report.ok and "missing" in report.problems[0]


def test_restore_over_a_local_copy_downloads_only_what_differs(remote, ckdir, tmp_path):
    src = make_hf_checkpoint(ckdir, 5, 0.5)
    ckptsync.push(ckdir, remote)
    out = tmp_path / "out"
    shutil.copytree(ckdir, out)
    again = ckptsync.restore(remote, out)
    assert again.already_present and again.bytes_downloaded == 0
    (out / src.name / "scheduler.pt").write_bytes(b"damaged")
    (out / src.name / "stray").write_bytes(b"extra")
    fixed = ckptsync.restore(remote, out)
    assert not fixed.already_present
    assert fixed.files_reused == len(fixed.manifest.files) - 1
    assert tree(out / src.name) == tree(src)


def test_restore_replaces_a_symlink_at_the_target_without_following_it(remote, ckdir, tmp_path):
    make_hf_checkpoint(ckdir, 5, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "checkpoint-5")
    ckptsync.restore(remote, out)
    assert not (out / "checkpoint-5").is_symlink()
    assert list(outside.iterdir()) == []


def _write_manifest(remote: str, doc: dict) -> None:
    root = Path(remote[7:])
    key = fmt.manifest_key("", doc["name"], doc["commit"])
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_text(json.dumps(doc))


def test_hostile_manifest_is_skipped_and_never_writes_outside(remote, ckdir, tmp_path):
    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    [good] = ckptsync.list_checkpoints(remote)
    doc = json.loads(fmt.encode_manifest(good.manifest))
    doc["name"] = "checkpoint-999"
    doc["step"] = 999
    doc["commit"] = "20990101T000000000000Z-evil-0123456789abcdef"
    doc["files"][0]["path"] = "../../escaped"
    _write_manifest(remote, doc)
    out = tmp_path / "out"
    result = ckptsync.restore(remote, out)
    assert result.name == "checkpoint-1"
    assert not (tmp_path / "escaped").exists() and not (out.parent / "escaped").exists()


def test_push_of_missing_folder_is_a_usage_error(remote, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        ckptsync.push(tmp_path / "nope", remote)


class _Hook:
    """A store layer that runs ``action`` once, after the first chunk is stored."""

    def __init__(self, inner, action):
        self.inner, self.action, self.done = inner, action, False
        self.url, self.conditional_writes = inner.url, inner.conditional_writes

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data):
        self.inner.put(key, data)
        if not self.done:
            self.done = True
            self.action()


def test_file_modified_during_upload_is_not_committed(remote, ckdir):
    src = make_hf_checkpoint(ckdir, 3, 0.5)

    def touch():
        with open(src / "optimizer.pt", "r+b") as f:
            f.write(b"changed!")

    report = ckptsync.push(ckdir, remote, wrap=lambda s: _Hook(s, touch))
    assert [r.status for r in report.results] == ["changed"]
    assert not report.ok
    assert ckptsync.list_checkpoints(remote) == []


def test_checkpoint_deleted_during_upload_is_dropped_quietly(remote, ckdir):
    a = make_hf_checkpoint(ckdir, 3, 0.5)
    make_hf_checkpoint(ckdir, 1, 0.5)

    report = ckptsync.push(ckdir, remote, wrap=lambda s: _Hook(s, lambda: shutil.rmtree(a)))
    assert {r.name: r.status for r in report.results} == {"checkpoint-3": "vanished", "checkpoint-1": "committed"}
    assert report.ok
    assert [r.name for r in ckptsync.list_checkpoints(remote)] == ["checkpoint-1"]


def test_a_manifest_of_a_newer_format_version_stops_restore_instead_of_being_skipped(remote, ckdir, tmp_path):
    from ckptsync.errors import NewerFormatError

    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    [good] = ckptsync.list_checkpoints(remote)
    doc = json.loads(fmt.encode_manifest(good.manifest))
    doc.update(version=fmt.FORMAT_VERSION + 1, commit="20990101T000000000000Z-new-0123456789abcdef")
    _write_manifest(remote, doc)
    with pytest.raises(NewerFormatError) as e:
        ckptsync.restore(remote, tmp_path / "out")
    assert "upgrade" in e.value.hint
    assert not (tmp_path / "out").exists()


def test_staging_left_by_a_killed_restore_is_removed(remote, ckdir, tmp_path):
    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    out = tmp_path / "out"
    dead = out / ".ckptsync-staging-999999999-abcdef"
    dead.mkdir(parents=True)
    (dead / "junk").write_bytes(b"x" * 1000)
    ckptsync.restore(remote, out)
    assert sorted(os.listdir(out)) == ["checkpoint-1"]


def test_metric_too_large_for_a_float_reads_as_missing(remote, ckdir, tmp_path):
    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    [good] = ckptsync.list_checkpoints(remote)
    text = fmt.encode_manifest(good.manifest).decode().replace('"eval_loss": 0.5', '"eval_loss": 1' + "0" * 400)
    doc = json.loads(text)
    doc.update(name="checkpoint-2", step=2, commit="20990101T000000000000Z-big-0123456789abcdef")
    _write_manifest(remote, doc)
    records = {r.name: r for r in ckptsync.list_checkpoints(remote)}
    assert records["checkpoint-2"].manifest.metrics["eval_loss"] is None
    assert ckptsync.restore(remote, tmp_path / "o", select="best", metric="eval_loss").name == "checkpoint-1"


def test_a_junk_object_too_large_for_a_manifest_is_skipped_with_a_warning(tmp_path, caplog):
    """One object over 64 MiB under manifests/ must not stop list, restore, verify and prune for everyone."""
    src = tmp_path / "src"
    (src / "checkpoint-1").mkdir(parents=True)
    (src / "checkpoint-1" / "w.bin").write_bytes(os.urandom(1000))
    root = tmp_path / "remote"
    root.mkdir()
    remote = f"file://{root}"
    ckptsync.push(src, remote)
    junk = root / "manifests" / "checkpoint-9" / "20990101T000000000000Z-evil-0123456789abcdef.json"
    junk.parent.mkdir()
    with open(junk, "wb") as f:
        f.truncate((64 << 20) + 1)
    assert [c.name for c in ckptsync.list_checkpoints(remote)] == ["checkpoint-1"]
    assert ckptsync.restore(remote, tmp_path / "out").name == "checkpoint-1"
    assert [r.record.name for r in ckptsync.verify(remote)] == ["checkpoint-1"]
    assert ckptsync.prune(remote, ckptsync.Retention(keep_last=1)).kept == ["checkpoint-1"]
    assert "is larger than 67108864 bytes" in caplog.text
    record(
        23,
        "a junk object over 64 MiB under manifests/",
        4,
        "list, restore, verify and prune each skipped it with a warning and served the good checkpoint (4/4)",
        True,
    )


def test_verify_judges_each_manifests_own_references_not_the_hash_alone(tmp_path):
    """One manifest's reference to H.zstd (missing) is damaged while another's to H.raw (present) is not;
    a manifest that declares a wrong size for a chunk another manifest uses rightly is damaged (deep)."""
    import hashlib

    import zstandard

    from ckptsync import format as fmt

    root = tmp_path / "remote"
    root.mkdir()
    repo = open_repository(f"file://{root}")
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)

    def commit(name: str, ref: fmt.ChunkRef, size: int) -> None:
        entry = fmt.FileEntry("w.bin", size, 0o644, ref.hash, (ref,))
        repo.commit(fmt.Manifest(name, "dir", 1, {}, now, "h", fmt.new_commit_id(now, "h"), (entry,), "t"))

    one = os.urandom(5000)
    h1 = hashlib.sha256(one).hexdigest()
    repo.put_chunk(h1, "raw", one)
    commit("raw-ok", fmt.ChunkRef(h1, 5000, 5000, "raw"), 5000)
    commit("zstd-missing", fmt.ChunkRef(h1, 5000, 4000, "zstd"), 5000)
    two = bytes(5000)
    h2 = hashlib.sha256(two).hexdigest()
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(two)
    repo.put_chunk(h2, "zstd", frame)
    commit("zstd-ok", fmt.ChunkRef(h2, 5000, len(frame), "zstd"), 5000)
    commit("zstd-wrong-size", fmt.ChunkRef(h2, 4999, len(frame), "zstd"), 4999)  # the frame holds 5000 bytes

    reports = {r.record.name: r for r in ckptsync.verify(f"file://{root}")}
    assert reports["raw-ok"].ok and reports["zstd-ok"].ok and reports["zstd-wrong-size"].ok  # present, as stored
    assert reports["zstd-missing"].problems == [f"w.bin: chunk {h1}.zstd is missing"]
    deep = {r.record.name: r for r in ckptsync.verify(f"file://{root}", deep=True)}
    assert deep["raw-ok"].ok and deep["zstd-ok"].ok and not deep["zstd-missing"].ok
    assert not deep["zstd-wrong-size"].ok  # decoded at its own declared size, which the frame contradicts
    record(
        27,
        "verify by each manifest's own chunk references",
        4,
        "H.zstd missing: only the manifest using it damaged, the one using H.raw ok; "
        "wrong declared size of a shared chunk: damaged under --deep, its sibling ok (4/4 verdicts right)",
        True,
    )


def test_a_remote_whose_only_manifest_is_unusable_is_not_empty(remote, ckdir, tmp_path, caplog):
    make_hf_checkpoint(ckdir, 1, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    [good] = ckptsync.list_checkpoints(remote)
    doc = json.loads(fmt.encode_manifest(good.manifest))
    doc["files"][0]["path"] = "../../escaped"  # tampered: invalid
    doc["commit"] = "20990101T000000000000Z-evil-0123456789abcdef"
    root = Path(remote.removeprefix("file://"))
    for p in (root / "manifests").rglob("*.json"):
        p.unlink()
    shutil.rmtree(root / "catalog")
    _write_manifest(remote, doc)
    with pytest.raises(IntegrityError, match=r"no usable checkpoint in .*: 1 manifest\(s\) are invalid or unreadable"):
        ckptsync.restore(remote, tmp_path / "strict", strict=True)
    assert ckptsync.restore(remote, tmp_path / "default") is None
    assert "1 manifest(s) are invalid or unreadable; starting from scratch" in caplog.text
    record(
        24,
        "a remote whose only manifest is unusable",
        2,
        "--strict: failed naming 1 invalid manifest; default: warned with the count, then started from scratch",
        True,
    )


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o755), (0o077, 0o700)])
def test_restore_gives_only_the_permission_bits_the_umask_allows(tmp_path, umask, expected):
    """Modes 04777, 02777 and 01777 in a manifest (remote data) become 0777 less the umask: never set-user-ID,
    set-group-ID or sticky, never more than the umask allows; a second restore finds the files present."""
    import hashlib

    root = tmp_path / "remote"
    root.mkdir()
    repo = open_repository(f"file://{root}")
    data = os.urandom(100)
    digest = hashlib.sha256(data).hexdigest()
    repo.put_chunk(digest, "raw", data)
    ref = fmt.ChunkRef(digest, 100, 100, "raw")
    modes = {"setuid.bin": 0o4777, "setgid.bin": 0o2777, "sticky.bin": 0o1777, "open.bin": 0o777}
    entries = tuple(fmt.FileEntry(path, 100, mode, digest, (ref,)) for path, mode in sorted(modes.items()))
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    repo.commit(fmt.Manifest("checkpoint-1", "dir", 1, {}, now, "h", fmt.new_commit_id(now, "h"), entries, "t"))
    old = os.umask(umask)
    try:
        result = ckptsync.restore(f"file://{root}", tmp_path / "out")
        again = ckptsync.restore(f"file://{root}", tmp_path / "out")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o7777 for p in result.path.iterdir()} == dict.fromkeys(modes, expected)
    assert again.already_present


def test_restore_over_an_existing_folder_warns_which_local_files_it_discards(remote, ckdir, tmp_path, caplog):
    src = make_hf_checkpoint(ckdir, 5, 0.5, params=1 << 12)
    ckptsync.push(ckdir, remote)
    out = tmp_path / "out"
    shutil.copytree(ckdir, out)
    ckptsync.restore(remote, out)  # identical: nothing replaced, nothing to say
    assert "replaced" not in caplog.text
    mine = out / src.name
    for name in ("a.bin", "b.bin", "c.bin", "d\x1b[31m.bin"):
        (mine / name).write_bytes(b"local only")
    (mine / "scheduler.pt").write_bytes(b"changed here")
    caplog.clear()
    ckptsync.restore(remote, out)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [
        f"replaced the existing {mine}: removed 4 files (a.bin, b.bin, c.bin, …) not in the restored checkpoint; "
        "rewrote 1 file (scheduler.pt) whose content differed"
    ]
    assert tree(mine) == tree(src)
    (mine / "d\x1b[31m.bin").write_bytes(b"local only")
    caplog.clear()
    ckptsync.restore(remote, out)
    assert (
        caplog.records[-1].getMessage() == f"replaced the existing {mine}: removed 1 file (d\\x1b[31m.bin) not in the restored checkpoint"
    )


def test_restore_writes_bounded_pieces_one_writer_per_file(remote, ckdir, tmp_path, monkeypatch):
    """Restored bytes land in pieces of at most WRITE_PIECE, and never by two threads into one file
    at once (the kernel spins on the file's lock; large writes cost host faults on some VMs)."""
    from ckptsync import download, writeback

    ck = ckdir / "checkpoint-1"
    ck.mkdir()
    (ck / "a.bin").write_bytes(os.urandom(3 * (4 << 20) + 12345))
    (ck / "b.bin").write_bytes(os.urandom(2 * (4 << 20)))
    ckptsync.push(ckdir, remote)

    real = os.pwrite
    active: dict[int, int] = {}
    sizes: list[int] = []
    overlaps: list[int] = []
    guard = threading.Lock()

    def pwrite(fd, data, offset):
        with guard:
            active[fd] = active.get(fd, 0) + 1
            if active[fd] > 1:
                overlaps.append(fd)
            sizes.append(len(data))
        try:
            time.sleep(0.0005)  # widen the window in which a second writer would overlap
            return real(fd, data, offset)
        finally:
            with guard:
                active[fd] -= 1

    monkeypatch.setattr(download.os, "pwrite", pwrite)
    out = tmp_path / "out"
    ckptsync.restore(remote, out, options=Options(workers=4))
    assert tree(out) == tree(ckdir)
    assert sizes and max(sizes) <= writeback.WRITE_PIECE
    assert overlaps == []


def test_restore_flushes_each_file_in_steps_while_it_lands(remote, ckdir, tmp_path, monkeypatch):
    """A file is flushed every FLUSH_STEP bytes landed, on the way, not only by the final fsync."""
    from ckptsync import writeback

    ck = ckdir / "checkpoint-1"
    ck.mkdir()
    (ck / "a.bin").write_bytes(os.urandom(5 * (4 << 20)))
    (ck / "small.txt").write_text("not flushed on the way: below one step")
    ckptsync.push(ckdir, remote)
    monkeypatch.setattr(writeback, "FLUSH_STEP", 4 << 20)
    flushed: list[int] = []
    real = writeback._datasync

    def datasync(fd: int) -> None:
        flushed.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(writeback, "_datasync", datasync)
    out = tmp_path / "out"
    ckptsync.restore(remote, out, options=Options(workers=4))
    assert tree(out) == tree(ckdir)
    assert flushed and set(flushed) == {(out / "checkpoint-1" / "a.bin").stat().st_ino}
