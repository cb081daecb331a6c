"""kill -9 at chosen and random points of push and restore (CKPTSYNC_CRASH_AT crash points).

Scenario 1: a killed upload never yields a partial restore. Scenario 2: a kill between the
last chunk and the manifest leaves the previous checkpoint as latest, and a restart finishes
without re-sending stored chunks. Also: a killed restore never leaves a partial checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from tests.faults.scenarios import full_size, record
from tests.helpers import listing, run_cli, tree

RUNS = 100 if full_size() else 6


def cli(*args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    """``ckptsync ARGS --workers 2``, killed with SIGKILL at the crash point ``crash`` if given."""
    return run_cli(*args, "--workers", "2", env={"CKPTSYNC_CRASH_AT": crash} if crash else None)


def write_checkpoint(folder: Path, step: int, rng: random.Random) -> Path:
    d = folder / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(rng.randbytes(9 << 20))  # 3 chunks
    (d / "optimizer.bin").write_bytes(rng.randbytes(5 << 20) + bytes(3 << 20))  # 2 chunks
    (d / "ckptsync.json").write_text(f'{{"step": {step}}}')
    return d


def chunk_files(root: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / "chunks").rglob("*") if p.is_file()}


@pytest.fixture
def setup(tmp_path):
    rng = random.Random(1)
    remote = tmp_path / "remote"
    remote.mkdir()
    first, second = tmp_path / "first", tmp_path / "second"
    write_checkpoint(first, 1, rng)
    write_checkpoint(second, 2, rng)
    assert cli("push", "--dir", str(first), "--remote", f"file://{remote}").returncode == 0
    return remote, first, second


def test_kill_9_during_upload_at_random_points_never_gives_a_partial_restore(setup, tmp_path):
    remote, first, second = setup
    rng = random.Random(7)
    complete = 0
    for run in range(RUNS):
        phase = rng.choice(["chunk-stored"] * 3 + ["before-manifest", "after-manifest"])
        crash = f"{phase}:{rng.randint(1, 5)}" if phase == "chunk-stored" else phase
        p = cli("push", "--dir", str(second), "--remote", f"file://{remote}", crash=crash)
        assert p.returncode in (0, -signal.SIGKILL), p.stderr
        out = tmp_path / f"out-{run}"
        r = cli("restore", "--remote", f"file://{remote}", "--dir", str(out))
        assert r.returncode == 0, r.stderr
        name = Path(r.stdout.strip().splitlines()[-1]).name
        source = first if name == "checkpoint-1" else second
        assert tree(out / name) == tree(source / name)
        assert [n for n in os.listdir(out)] == [name]
        complete += 1
        # reset to "only checkpoint-1 committed" for the next run
        for m in (remote / "manifests" / "checkpoint-2").glob("*.json") if (remote / "manifests" / "checkpoint-2").exists() else []:
            m.unlink()
    record(
        1,
        "kill -9 during upload at random points, then restore",
        RUNS,
        f"{complete}/{RUNS} complete hash-verified restores, 0 partial",
        complete == RUNS,
    )


def test_kill_between_last_chunk_and_manifest_then_restart_resends_nothing(setup, tmp_path):
    remote, first, second = setup
    p = cli("push", "--dir", str(second), "--remote", f"file://{remote}", crash="before-manifest")
    assert p.returncode == -signal.SIGKILL
    r = cli("restore", "--remote", f"file://{remote}", "--dir", str(tmp_path / "a"))
    assert Path(r.stdout.strip()).name == "checkpoint-1"
    stored = chunk_files(remote)
    p = cli("push", "--dir", str(second), "--remote", f"file://{remote}")
    assert p.returncode == 0, p.stderr
    assert "0 B uploaded" in p.stderr
    after = chunk_files(remote)
    assert {k: after[k] for k in stored} == stored  # not one stored chunk written again
    r = cli("restore", "--remote", f"file://{remote}", "--dir", str(tmp_path / "b"))
    assert Path(r.stdout.strip()).name == "checkpoint-2"
    assert tree(tmp_path / "b" / "checkpoint-2") == tree(second / "checkpoint-2")
    record(2, "kill -9 between the last chunk and the manifest", 1, "previous checkpoint restored; restart re-sent 0 chunks", True)


@pytest.mark.parametrize("crash", ["restore-chunk:1", "restore-chunk:4", "before-rename"])
def test_kill_9_during_restore_leaves_no_partial_checkpoint_and_a_rerun_completes(setup, tmp_path, crash):
    remote, first, second = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    before = [p for p in listing(out)]
    r = cli("restore", "--remote", f"file://{remote}", "--dir", str(out), crash=crash)
    assert r.returncode == -signal.SIGKILL
    visible = [p for p in listing(out) if not p.startswith(".ckptsync-staging-")]
    assert visible == before  # the final path never holds a partial checkpoint
    r = cli("restore", "--remote", f"file://{remote}", "--dir", str(out))
    assert r.returncode == 0, r.stderr
    assert tree(out / "checkpoint-1") == tree(first / "checkpoint-1")
    assert not [p for p in os.listdir(out) if p.startswith(".ckptsync-staging-")]  # the dead staging was removed
