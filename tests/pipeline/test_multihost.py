"""Multi-host checkpoints: complete only when every host committed; each host restores its own files."""

from __future__ import annotations

import json
import os

import pytest

import ckptsync
from ckptsync.errors import UsageError
from ckptsync.options import Options
from tests.helpers import tree

HOSTS = ("algo-1", "algo-2", "algo-3")


def host_folder(tmp_path, host, step):
    d = tmp_path / host / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / f"rank-{host}.distcp").write_bytes(os.urandom(10_000))
    (d / "shared.json").write_text('{"same": "on every host"}')
    (d / "ckptsync.json").write_text(f'{{"step": {step}, "metrics": {{"eval_loss": {1 / step}}}}}')
    return d


def opts(host):
    return Options(host=host, hosts=HOSTS, workers=2)


@pytest.fixture
def remote(tmp_path):
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


def test_host_that_died_before_committing_makes_every_host_restore_the_previous_step(tmp_path, remote):
    for host in HOSTS:
        host_folder(tmp_path, host, 30)
        ckptsync.push(tmp_path / host, remote, opts(host))
    for host in HOSTS[:2]:  # algo-3 dies before committing checkpoint-40
        host_folder(tmp_path, host, 40)
        ckptsync.push(tmp_path / host, remote, opts(host))

    listed = {ck.name: ck for ck in ckptsync.list_checkpoints(remote)}
    assert "checkpoint-40" not in listed  # never sealed: two of its three parts only
    assert listed["checkpoint-30"].complete and listed["checkpoint-30"].host_count == 3

    for host in HOSTS:
        out = tmp_path / "restored" / host
        result = ckptsync.restore(remote, out, options=opts(host))
        assert result.name == "checkpoint-30"
        assert tree(out / "checkpoint-30") == tree(tmp_path / host / "checkpoint-30")
        assert (out / "checkpoint-30" / f"rank-{host}.distcp").exists()


def test_all_hosts_restores_every_hosts_files(tmp_path, remote):
    for host in HOSTS:
        host_folder(tmp_path, host, 10)
        ckptsync.push(tmp_path / host, remote, opts(host))
    out = tmp_path / "all"
    ckptsync.restore(remote, out, all_hosts=True, options=opts("algo-1"))
    names = sorted(p.name for p in (out / "checkpoint-10").iterdir())
    assert names == ["ckptsync.json", "rank-algo-1.distcp", "rank-algo-2.distcp", "rank-algo-3.distcp", "shared.json"]


def test_identical_files_on_two_hosts_still_need_each_hosts_commit(tmp_path, remote):
    """Another host's identical manifest must not count as this host's commit."""
    for host in HOSTS:
        d = tmp_path / host / "checkpoint-5"
        d.mkdir(parents=True)
        (d / "same.bin").write_bytes(b"identical everywhere")
        (d / "ckptsync.json").write_text('{"step": 5}')
        report = ckptsync.push(tmp_path / host, remote, opts(host))
        assert [r.status for r in report.results] == ["committed"]
    [ck] = ckptsync.list_checkpoints(remote)
    assert ck.complete and ck.sealed and ck.host_count == len(HOSTS)


def test_a_host_outside_the_set_is_refused(tmp_path, remote):
    host_folder(tmp_path, "algo-1", 1)
    with pytest.raises(UsageError, match="not among the job's hosts"):
        ckptsync.push(tmp_path / "algo-1", remote, Options(host="intruder", hosts=HOSTS))


def test_single_host_manifests_are_written_without_hosts(tmp_path, remote):
    host_folder(tmp_path, "solo", 1)
    ckptsync.push(tmp_path / "solo", remote, Options(host="solo", hosts=("solo",)))
    [ck] = ckptsync.list_checkpoints(remote)
    assert ck.hosts == () and not ck.manifest.hosts and ck.manifest.version == 7  # no hosts; BLAKE3 names (the default)


def test_the_first_host_given_leads_whatever_its_name(tmp_path, remote):
    """The lead holds the coordinator's files (rank 0's node): the order of --hosts says which it is, not sorting."""
    host_folder(tmp_path, "zeta", 1)
    ckptsync.push(tmp_path / "zeta", remote, Options(host="zeta", hosts=("zeta", "alpha"), workers=1))
    [part] = (tmp_path / "remote" / "parts").rglob("*.json")
    assert json.loads(part.read_bytes())["group"]["lead"] == "zeta"
