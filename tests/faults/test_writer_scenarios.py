"""Scenarios 3, 4 and 10: slow writers, rotation racing uploads, and two writers on one prefix."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import ckptsync
from ckptsync.checkpoint import scan_entry
from ckptsync.daemon import Daemon
from ckptsync.options import Options, WatchOptions
from ckptsync.repository import Repository
from ckptsync.session import RemoteSession
from ckptsync.state import State
from ckptsync.store import LocalStore, RetryingStore, S3Options, S3Store
from tests.faults.scenarios import full_size, record
from tests.helpers import use_env, wait_until


def committed_files(remote: str) -> dict[str, set[tuple[str, int, str]]]:
    return {ck.name: {(f.path, f.size, f.hash) for f in ck.manifest.files} for ck in ckptsync.list_checkpoints(remote)}


def slow_writer(folder: Path, step: int, pause: float, rate: int = 1 << 20) -> set[tuple[str, int, str]]:
    """Write an HF-style checkpoint in place at ``rate`` bytes/s with ``pause`` between files; return each
    file's name, size and hash as a manifest of the default hash records it."""
    from ckptsync.hashes import DEFAULT_HASH, hash_hex

    d = folder / f"checkpoint-{step}"
    d.mkdir()
    final = set()
    for name, size in (("model.safetensors", 300_000), ("optimizer.pt", 400_000), ("scheduler.pt", 2_000)):
        data = os.urandom(size)
        with open(d / name, "wb") as f:
            for i in range(0, size, rate // 10):
                f.write(data[i : i + rate // 10])
                f.flush()
                time.sleep(0.1)
        final.add((name, size, hash_hex(DEFAULT_HASH, data)))
        time.sleep(pause)  # longer than a second: the trainer computes between files
    state = b'{"global_step": %d}' % step
    (d / "trainer_state.json").write_bytes(state)
    final.add(("trainer_state.json", len(state), hash_hex(DEFAULT_HASH, state)))
    return final


def test_slow_writer_with_long_pauses_never_gets_an_incomplete_checkpoint_committed(tmp_path):
    n = 100 if full_size() else 4
    folder, root = tmp_path / "ckpts", tmp_path / "remote"
    folder.mkdir()
    root.mkdir()
    remote = f"file://{root}"
    daemon = Daemon(
        folder, Repository(LocalStore(root)), Options(workers=2), WatchOptions(settle=3.0, tick=0.1), state=State(tmp_path / "s")
    )
    daemon.start()
    finals = {}
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = {step: pool.submit(slow_writer, folder, step, 1.2) for step in range(1, n + 1)}
            finals = {f"checkpoint-{s}": fut.result() for s, fut in futures.items()}
        wait_until(lambda: len(committed_files(remote)) == n, 60, f"all {n} checkpoints committed")
    finally:
        daemon.drain(deadline=time.monotonic() + 10)
        daemon.wait(30)
    got = committed_files(remote)
    incomplete = [name for name, files in got.items() if files != finals[name]]
    assert incomplete == []
    record(
        3,
        "slow writer (1 MiB/s, pauses > 1 s) beside the daemon",
        n,
        f"incomplete checkpoints committed: {len(incomplete)} of {n}",
        not incomplete,
    )


class SlowStore:
    """Each put takes ``delay`` seconds: uploads stay in flight while the trainer rotates."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay
        self.url, self.conditional_writes = inner.url, True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data):
        time.sleep(self.delay)
        self.inner.put(key, data)


def test_rotation_deleting_folders_mid_upload_never_commits_missing_data(tmp_path):
    cycles = 100 if full_size() else 20
    folder, root = tmp_path / "ckpts", tmp_path / "remote"
    folder.mkdir()
    root.mkdir()
    remote = f"file://{root}"
    repo = Repository(SlowStore(LocalStore(root), 0.02))
    daemon = Daemon(folder, repo, Options(workers=2), WatchOptions(settle=0.1, tick=0.02), state=State(tmp_path / "s"))
    daemon.start()
    try:
        for step in range(1, cycles + 1):
            tmp = folder / f"tmp-checkpoint-{step}"
            tmp.mkdir()
            (tmp / "weights.bin").write_bytes(os.urandom(600_000))
            (tmp / "ckptsync.json").write_text(f'{{"step": {step}}}')
            os.rename(tmp, folder / f"checkpoint-{step}")
            time.sleep(0.15)  # the trainer's pace between saves
            if step > 2:
                shutil.rmtree(folder / f"checkpoint-{step - 2}")  # save_total_limit=2
        wait_until(lambda: f"checkpoint-{cycles}" in committed_files(remote), 120, f"checkpoint-{cycles} committed")
        assert not daemon.stopped
    finally:
        daemon.drain(deadline=time.monotonic() + 10)
        report = daemon.wait(30)
    reports = ckptsync.verify(remote)
    broken = [r.record.name for r in reports if not r.ok]
    assert broken == [] and report.failures == 0
    assert f"checkpoint-{cycles}" in committed_files(remote)
    record(
        4,
        "rotation deleting folders mid-upload",
        cycles,
        f"manifests referencing missing data: {len(broken)}; daemon crashes: 0; failed uploads: {report.failures}",
        not broken,
    )


@pytest.mark.parametrize("backend", ["local", "rclone"])
def test_two_writers_on_one_prefix_never_overwrite_a_manifest(backend, tmp_path, request, monkeypatch):
    rounds = 100 if full_size() else 20
    src = tmp_path / "src"
    src.mkdir()
    d = src / "checkpoint-1"
    d.mkdir()
    (d / "w.bin").write_bytes(os.urandom(100_000))
    if backend == "local":
        (tmp_path / "remote").mkdir()
        stores = [LocalStore(tmp_path / "remote") for _ in range(2)]
        remote = f"file://{tmp_path / 'remote'}"
        opts = None
    else:  # rclone serve s3 ignores If-None-Match: only unique keys protect the manifests
        server = request.getfixturevalue("rclone_s3")
        use_env(monkeypatch, server=server)
        bucket = server.create_bucket()
        # rclone answers two concurrent PUTs of one key with a 500: the retrying layer, as in production
        stores = [RetryingStore(S3Store(bucket, S3Options(endpoint_url=server.endpoint_url))) for _ in range(2)]
        remote = f"s3://{bucket}"
        opts = Options(s3=S3Options(endpoint_url=server.endpoint_url))
    uploaders = [RemoteSession(Repository(s), workers=2, host="same-host") for s in stores]
    barrier = threading.Barrier(2)

    def writer(i: int) -> list[str]:
        keys = []
        for _ in range(rounds):
            (d / f"round-{i}").write_bytes(os.urandom(16))  # different content each round
            barrier.wait(timeout=60)
            result = uploaders[i].upload(scan_entry(d))
            if result.status == "committed":
                keys.append(result.key)
        return keys

    # The two writers share the folder: each writes its own file, so contents differ between commits.
    with ThreadPoolExecutor(2) as pool:
        keys = [k for ks in pool.map(writer, range(2)) for k in ks]
    for u in uploaders:
        u.close()
    manifests = [r for ck in ckptsync.list_checkpoints(remote, opts) for r in ck.records]
    assert len(set(keys)) == len(keys)  # every commit got its own key
    assert len(manifests) == len(keys)  # and every one of them is still there, intact
    overwritten = len(keys) - len({r.key for r in manifests} & set(keys))
    assert overwritten == 0
    record(
        10,
        f"two writers on one prefix ({backend})",
        rounds * 2,
        f"commits: {len(keys)}, manifests overwritten: {overwritten}",
        overwritten == 0,
    )
