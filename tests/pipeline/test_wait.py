"""``ckptsync.wait`` and ``Syncer.wait``: committed with the content on disk, or why not, within a deadline."""

from __future__ import annotations

import os

import ckptsync
from ckptsync import mark

FAST = {"settle": 0.5, "tick": 0.1, "workers": 2}


def _checkpoint(root, name, size=300_000, step=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(os.urandom(size))
    if step is not None:
        mark(d, step=step, metrics={"loss": 1.0 / step})
    return d


def _remote(tmp_path):
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


def test_syncer_wait_returns_once_the_checkpoint_is_committed(tmp_path):
    ckpt, remote = tmp_path / "ckpt", _remote(tmp_path)
    with ckptsync.Syncer(ckpt, remote, state_dir=tmp_path / "state", **FAST) as syncer:
        missing = syncer.wait("checkpoint-7", timeout=0.3)
        assert not missing.committed and "checkpoint-7 is not in" in missing.reason
        _checkpoint(ckpt, "checkpoint-7", step=7)
        done = syncer.wait("checkpoint-7", timeout=30)
        assert done.committed and done.step == 7, done.reason
        assert [c.name for c in ckptsync.list_checkpoints(remote)] == ["checkpoint-7"]
        assert done.commit == ckptsync.list_checkpoints(remote)[0].newest.manifest.commit


def test_wait_reports_a_checkpoint_the_daemon_refuses_as_pending_with_its_reason(tmp_path):
    ckpt, remote = tmp_path / "ckpt", _remote(tmp_path)
    with ckptsync.Syncer(ckpt, remote, state_dir=tmp_path / "state", **{**FAST, "settle": 600}) as syncer:
        _checkpoint(ckpt, "checkpoint-3")  # no marker, never settles within the test
        result = syncer.wait("checkpoint-3", timeout=1.5, poll=0.1)
        assert not result.committed
        assert "not complete yet" in result.reason or "has not seen it complete" in result.reason


def test_wait_api_without_a_daemon_sees_a_push_and_a_later_change(tmp_path):
    ckpt, remote = tmp_path / "ckpt", _remote(tmp_path)
    d = _checkpoint(ckpt, "checkpoint-1", size=9 << 20)
    ckptsync.push(ckpt, remote)
    result = ckptsync.wait(ckpt, remote, timeout=0)
    assert result.committed and result.name == "checkpoint-1"
    with open(d / "model.bin", "r+b") as f:  # same size, other bytes, in the second chunk
        f.seek(6 << 20)
        f.write(b"x" * 10)
    result = ckptsync.wait(ckpt, remote, name="checkpoint-1", timeout=0.2, poll=0.05)
    assert not result.committed and "differ from its last commit" in result.reason
    ckptsync.push(ckpt, remote)
    assert ckptsync.wait(ckpt, remote, name="checkpoint-1", timeout=0).committed


def test_a_multi_host_checkpoint_counts_once_sealed_not_when_this_hosts_part_is(tmp_path):
    remote = _remote(tmp_path)
    hosts = ("algo-1", "algo-2")
    opts = {h: ckptsync.Options(host=h, hosts=hosts, workers=2) for h in hosts}
    for h in hosts:
        _checkpoint(tmp_path / h, "checkpoint-5", step=5)
    ckptsync.push(tmp_path / "algo-1", remote, opts["algo-1"])
    mine = ckptsync.wait(tmp_path / "algo-1", remote, opts["algo-1"], timeout=0, state_dir=tmp_path / "none")
    assert not mine.committed and "waiting for the other hosts" in mine.reason
    ckptsync.push(tmp_path / "algo-2", remote, opts["algo-2"])
    for h in hosts:
        done = ckptsync.wait(tmp_path / h, remote, opts[h], timeout=0, state_dir=tmp_path / "none")
        assert done.committed and done.step == 5, (h, done.reason)
