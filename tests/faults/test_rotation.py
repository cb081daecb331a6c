"""Scenario 31: a trainer that deletes its previous checkpoint at every save (``save_total_limit=1``)
while each checkpoint uploads about as slowly as the next one is written.

Before hard-link snapshots every upload was dropped as "deleted during upload" and nothing was
committed; now each upload that starts ends in a commit, and the newest complete checkpoint is
uploaded next (the ones in between are skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckptsync.snapshot import SNAPSHOT_PREFIX
from tests.faults.proxy import S3Proxy
from tests.faults.scenarios import full_size, record
from tests.helpers import run_cli, start_cli, tree, wait_until

MB = 1_000_000
MiB = 1 << 20


def _save(folder: Path, step: int, size: int) -> dict[str, tuple[str, int]]:
    """One save as a trainer with an atomic rename does it: write tmp-checkpoint-N, rename it into place."""
    tmp = folder / f"tmp-checkpoint-{step}"
    tmp.mkdir()
    (tmp / "model.bin").write_bytes(os.urandom(size - 4096))
    (tmp / "extra_state.bin").write_bytes(os.urandom(4096))
    os.rename(tmp, folder / f"checkpoint-{step}")
    return tree(folder / f"checkpoint-{step}")


def _watch(folder: Path, remote: str, state: Path, server: Any, stderr: Path) -> subprocess.Popen[str]:
    """``ckptsync watch`` with the default settle time (no --settle), started and watching; the caller reaps it."""
    with open(stderr, "w") as err:
        daemon = start_cli("watch", "--dir", str(folder), "--remote", remote, "--state-dir", str(state), server=server, stderr=err)
    try:
        wait_until(lambda: "watching" in stderr.read_text(), 30, "the daemon watching")
    except BaseException:
        daemon.kill()
        daemon.wait()
        raise
    return daemon


def _train(
    folder: Path, save: Callable[[int], dict[str, tuple[str, int]]], *, keep: int, period: float, seconds: float
) -> dict[str, dict[str, tuple[str, int]]]:
    """Save ``checkpoint-N`` every ``period`` s for ``seconds`` s, keeping the newest ``keep`` (``save_total_limit``).

    Returns what each save wrote, by name.
    """
    contents: dict[str, dict[str, tuple[str, int]]] = {}
    started, step = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        step += 1
        contents[f"checkpoint-{step}"] = save(step)
        if step > keep:
            shutil.rmtree(folder / f"checkpoint-{step - keep}")
        time.sleep(max(0.0, started + period * step - time.monotonic()))  # the training steps between saves
    return contents


def test_s31_rotation_with_save_total_limit_1_on_a_slow_link_still_commits_the_newest_checkpoints(rclone_s3, tmp_path):
    seconds = 60 if full_size() else 24
    period, size, link = 4.0, 20 * MB, 5 * MiB
    folder, state = tmp_path / "ckpts", tmp_path / "state"
    folder.mkdir()
    remote = f"s3://{rclone_s3.create_bucket()}/rotation"
    with S3Proxy(rclone_s3, bwlimit=link) as proxy:
        server = proxy.wrap(rclone_s3)
        errpath = tmp_path / "watch.stderr"
        daemon = _watch(folder, remote, state, server, errpath)
        try:
            contents = _train(folder, lambda step: _save(folder, step, size), keep=1, period=period, seconds=seconds)
            step = len(contents)
            listed = run_cli("list", "--remote", remote, "--json", server=rclone_s3)
            committed = [r["name"] for r in json.loads(listed.stdout)] if listed.returncode == 0 else []
            daemon.send_signal(signal.SIGKILL)  # a spot reclaim: no drain
            daemon.wait(30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    log = errpath.read_text()
    newest = committed[0] if committed else None
    out = tmp_path / "restored"
    restored = run_cli("restore", "--remote", remote, "--dir", str(out), "--latest", server=rclone_s3)
    identical = newest is not None and restored.returncode == 0 and tree(out / newest) == contents[newest]
    dropped = log.count("rotated away")
    # A daemon started after the kill removes the snapshot the killed one left.
    left = [p.name for p in folder.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)]
    again = _watch(folder, remote, state, rclone_s3, tmp_path / "again.stderr")
    try:
        remaining = [p.name for p in folder.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)]
    finally:
        again.send_signal(signal.SIGTERM)
        try:
            again.wait(60)
        except subprocess.TimeoutExpired:
            again.kill()
            again.wait()
    ok = len(committed) >= 3 and identical and not remaining
    record(
        31,
        "rotation with save_total_limit=1 on a slow link",
        1,
        f"{len(committed)} of {step} checkpoints committed during {seconds} s of {size // MB} MB saves every {period:.0f} s "
        f"over a {link // MiB} MiB/s link, default settle time ({dropped} dropped as rotated away); "
        f"after kill -9 the newest committed one ({newest}) restored byte-identical: {identical}; "
        f"snapshots left by the killed daemon: {len(left)}, after the next start: {len(remaining)}",
        ok,
    )
    assert len(committed) >= 3, f"only {committed} committed of {step} saves\n{log[-3000:]}"
    assert identical, f"{newest} not restored byte-identical: {restored.stderr}"
    assert not remaining, remaining


def _save_in_place(folder: Path, step: int, size: int) -> dict[str, tuple[str, int]]:
    """One save as Hugging Face's Trainer does it: files written in place, ``trainer_state.json`` last."""
    d = folder / f"checkpoint-{step}"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "toy"}')
    (d / "model.safetensors").write_bytes(os.urandom(size))
    (d / "optimizer.pt").write_bytes(os.urandom(2 * size))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return tree(d)


def test_checkpoints_saved_and_rotated_faster_than_the_settle_time_are_still_committed(rclone_s3, tmp_path):
    """A trainer saving every 0.3 s and keeping two folders (a tiny model, ``save_total_limit=2``): each
    checkpoint is on disk for about 0.6 s, less than the 2 s a signalled folder settles. The next save
    says the previous one is finished, so checkpoints are committed all the same."""
    period, size, seconds = 0.3, 256 << 10, 8.0
    folder, state = tmp_path / "ckpts", tmp_path / "state"
    folder.mkdir()
    remote = f"s3://{rclone_s3.create_bucket()}/fast"
    errpath = tmp_path / "watch.stderr"
    daemon = _watch(folder, remote, state, rclone_s3, errpath)
    try:
        contents = _train(folder, lambda step: _save_in_place(folder, step, size), keep=2, period=period, seconds=seconds)
        listed = run_cli("list", "--remote", remote, "--json", server=rclone_s3)
        assert listed.returncode == 0, listed.stderr
        committed = [r["name"] for r in json.loads(listed.stdout)]
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
    assert len(committed) >= 3, f"only {committed} committed of {len(contents)} saves\n{errpath.read_text()[-3000:]}"
    out = tmp_path / "restored"
    restored = run_cli("restore", "--remote", remote, "--dir", str(out), "--latest", server=rclone_s3)
    assert restored.returncode == 0, restored.stderr
    assert tree(out / committed[0]) == contents[committed[0]]
