"""Multi-node training with torch.distributed.checkpoint (DCP) and one ``ckptsync watch`` sidecar per node, end to end.

Two "nodes", node0 and node1, each with a checkpoint folder of its own (a node-local disk), run one rank each of a
2-process gloo job on the CPU (tests/frameworks/dcp_job.py). The job's state is sharded on dim 0 over both ranks
(DTensors); at steps 100, 200 and 300 it saves with ``dcp.save`` to ``<node folder>/step_<N>``, each rank to its own
node's folder, so node0's folder gets ``.metadata`` and ``__0_0.distcp`` and node1's only ``__1_0.distcp``. Each node
runs ``ckptsync watch --host nodeR --hosts node0,node1``.

Once ``ckptsync list`` shows step_300 complete, every process is SIGKILLed (a spot reclaim: no drain) and both
folders are wiped. Then each node restores the latest checkpoint with the defaults (its own files plus the
coordinator's ``.metadata``), a new 2-process job loads it with ``dcp.load`` and must get bitwise what was saved at
step 300; and a 1-process job loads the union of both nodes' parts (``restore --all-hosts``) as full, unsharded
tensors (DCP re-shards). A restore on another host set without ``--all-hosts`` must fail with a one-line error that names it.

Every wait polls an observable condition with a deadline. On a failure, the messages carry the sidecars' and the
jobs' stderr.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch  # noqa: E402  (in the test extra: ckptsync[frameworks])

from tests.helpers import run_cli, tree, wait_until
from tests.integration.sidecar_helpers import Child, Children, descendants, no_traceback
from tests.s3servers import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JOB = Path(__file__).resolve().with_name("dcp_job.py")
DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATIONS.md"
NODES = ("node0", "node1")
HOSTS = ",".join(NODES)
SAVE_AT = (100, 200, 300)
STEP = SAVE_AT[-1]
LAST = f"step_{STEP}"
#: For the jobs (one BLAS/OpenMP thread each already): gloo on the loopback interface, not on the address the
#: machine's host name resolves to.
JOB_ENV = {"GLOO_SOCKET_IFNAME": "lo"}
#: Seconds a sidecar gets to commit the last checkpoint of both nodes (settle 2 s, a few kB to upload).
COMMIT_DEADLINE = 30


@pytest.fixture
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """``(URI, server)``: with the parameter ``s3``, a fresh bucket on the session's rclone S3 server (the main
    case); with ``file``, a local folder (``server`` None)."""
    if request.param == "s3":
        server = request.getfixturevalue("rclone_s3")
        return f"s3://{server.create_bucket()}/job", server
    folder = tmp_path / "remote"
    folder.mkdir()
    return f"file://{folder}", None


@pytest.fixture
def kids(remote: tuple[str, Any], tmp_path: Path):
    """Children of one test, with the remote's server environment; every one still running is SIGKILLed at the end."""
    children = Children(remote[1], tmp_path / "logs")
    try:
        yield children
    finally:
        children.close()


def doc_block(name: str, lang: str) -> str:
    """A recipe of docs/INTEGRATIONS.md marked ``<!-- tested: NAME -->``, as written."""
    m = re.search(r"<!-- tested: " + re.escape(name) + r" -->\s*```" + lang + r"\n(.*?)\n```", DOC.read_text(), re.DOTALL)
    assert m, f"no ```{lang} block after <!-- tested: {name} --> in {DOC}"
    return m.group(1)


def doc_command(name: str, **values: str) -> list[str]:
    """The ckptsync arguments of a shell recipe (the words after ``ckptsync``, up to ``--``), with the values of
    ``--dir`` and ``--remote`` and each ``$VARIABLE`` replaced by ``values``."""
    words = shlex.split(doc_block(name, "sh"))
    assert words[0] == "ckptsync", words
    words = words[1 : words.index("--")] if "--" in words else words[1:]
    out = []
    for i, w in enumerate(words):
        flag = words[i - 1].lstrip("-") if i else ""
        out.append(values.get(flag, values.get(w.lstrip("$"), w)) if flag in values or w.startswith("$") else w)
    return out


def _logs(kids: Children) -> str:
    """Each child's exit status and the end of its stderr: for failure messages."""
    parts = []
    for c in kids.started:
        rc = c.proc.poll()
        parts.append(f"--- {c.stderr_path.stem} ({'running' if rc is None else f'exit {rc}'}), stderr:\n{c.stderr()[-4000:]}")
    return "\n".join(parts)


def _wait(
    kids: Children, predicate: Callable[[], Any], timeout: float, what: str, state: Callable[[], str] = str, interval: float = 0.05
) -> None:
    """:func:`wait_until`, failing with ``state()`` and every child's stderr as they are at the timeout."""
    try:
        wait_until(predicate, timeout, what, interval)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{state()}\n{_logs(kids)}") from None


def _job(kids: Children, name: str, mode: str, rank: int, world_size: int, port: int, *args: str) -> Child:
    """One rank of dcp_job.py as a child process (its stderr in the test's log folder)."""
    argv = [str(JOB), mode, "--rank", str(rank), "--world-size", str(world_size), "--port", str(port), *args]
    child = Child.start(argv, None, kids.logdir, name, JOB_ENV)
    kids.started.append(child)
    return child


def _finish(kids: Children, jobs: list[Child], timeout: float = 60) -> None:
    """Wait until every job of ``jobs`` has ended (or one has failed: its peers would wait for it), then check that
    each exited 0 after printing ``loaded``."""
    _wait(kids, lambda: all(j.proc.poll() is not None for j in jobs) or any(j.proc.poll() for j in jobs), timeout, "the jobs to end")
    for job in jobs:
        assert job.wait(10) == 0, f"{job.stderr_path.stem} failed\n{_logs(kids)}"
        job.wait_line(lambda s: s == "loaded", 10, "loaded")


def _restore(remote: tuple[str, Any], folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    uri, server = remote
    return run_cli("restore", "--dir", str(folder), "--remote", uri, *args, server=server, timeout=60)


def _rows(remote: tuple[str, Any]) -> list[dict[str, Any]]:
    uri, server = remote
    p = run_cli("list", "--remote", uri, "--json", server=server, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _summary(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r.get("name"), r.get("complete"), r.get("committed_hosts"), r.get("hosts")) for r in rows]


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def _assert_equal(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
    for key, w in want.items():
        g = got[key]
        if not isinstance(w, torch.Tensor):
            assert g == w, f"{what}: {key} is {g!r}, saved {w!r}"
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}: {key} is {g.dtype}{tuple(g.shape)}, saved {w.dtype}{tuple(w.shape)}"
        assert torch.equal(g, w), f"{what}: {key} differs from what was saved at {LAST}:\n{g}\nsaved:\n{w}"


@pytest.mark.parametrize(
    ("remote", "state"),
    [("s3", "sharded"), ("file", "sharded"), ("s3", "replicated"), ("s3", "replicated-rank0")],
    ids=["s3-rclone", "file", "s3-rclone-replicated", "s3-rclone-replicated-rank0"],
    indirect=["remote"],
)
def test_dcp_checkpoints_of_two_nodes_survive_a_spot_reclaim_and_reshard(remote, state, kids, tmp_path):
    """``state``: ``sharded``, every tensor sharded (each node restores its own file and the coordinator's
    ``.metadata``); ``replicated``, also a replicated tensor and a step counter, which DCP saves once into one rank's
    file and every rank loads (each node must then get whatever its rank reads, not only its own file);
    ``replicated-rank0``, the same saved with the planner docs/INTEGRATIONS.md recommends (those entries in rank 0's
    file). Each node runs as the doc's ``multinode-run`` recipe says, and the re-shard is its ``multinode-reshard``."""
    uri, _ = remote
    extra = ["--replicated"] if state.startswith("replicated") else []
    folders = {node: tmp_path / node for node in NODES}
    record = tmp_path / "record"  # what each save saved, outside the checkpoint folders
    for folder in folders.values():
        folder.mkdir()

    # --- each node as docs/INTEGRATIONS.md runs it: `ckptsync run --hosts node0,node1 --host $NODE -- <its rank>`
    (port,) = free_ports(1)
    save_at = ",".join(map(str, SAVE_AT))
    if state == "replicated-rank0":
        (tmp_path / "save.py").write_text(doc_block("multinode-planner", "python"))
        extra += ["--save-code", str(tmp_path / "save.py")]
    trainers = []
    for rank, node in enumerate(NODES):
        args = doc_command("multinode-run", dir=str(folders[node]), remote=uri, NODE=node)
        assert args[0] == "run" and "--hosts" in args and args[args.index("--hosts") + 1] == HOSTS, args
        job = [sys.executable, str(JOB), "train", "--rank", str(rank), "--world-size", "2", "--port", str(port)]
        job += ["--dir", str(folders[node]), "--record", str(record), "--save-at", save_at, *extra]
        state_dir = tmp_path / "state" / node
        trainers.append(kids.ckptsync(*args, "--state-dir", str(state_dir), "--settle", "2", "--", *job, env=JOB_ENV, name=f"run-{node}"))
    sidecars = trainers  # `ckptsync run` is both: the sidecar, and the parent of the rank

    def trained() -> bool:
        for trainer in trainers:
            assert trainer.alive(), f"{trainer.stderr_path.stem} exited"
        return all("trained" in trainer.stdout_lines() for trainer in trainers)

    _wait(kids, trained, 60, "both ranks trained")
    saved = {node: tree(folders[node] / LAST) for node in NODES}
    assert sorted(saved["node0"]) == [".metadata", "__0_0.distcp"] and sorted(saved["node1"]) == ["__1_0.distcp"], saved

    # --- the last step committed by both nodes, as `ckptsync list` shows it
    def last_complete() -> bool:
        for watch in sidecars:
            assert watch.alive(), f"{watch.stderr_path.stem} exited"
        return any(r.get("name") == LAST and r.get("complete") is True for r in _rows(remote))

    def remote_state() -> str:
        local = {node: sorted(p.relative_to(f).as_posix() for p in f.rglob("*") if p.is_file()) for node, f in folders.items()}
        return f"`ckptsync list --json` shows (name, complete, committed_hosts, hosts): {_summary(_rows(remote))}\nnode folders: {local}"

    _wait(kids, last_complete, COMMIT_DEADLINE, f"{LAST} complete in `ckptsync list --json`", remote_state, interval=0.5)

    # --- a spot reclaim: every process SIGKILLed, no drain; the node-local disks are gone
    ranks = [pid for run in trainers for pid in descendants(run.pid)]
    assert len(ranks) >= 2, f"no rank processes under `ckptsync run`\n{_logs(kids)}"
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    for child in trainers:
        assert child.alive(), f"{child.stderr_path.stem} ended before the reclaim\n{_logs(kids)}"
        child.signal(signal.SIGKILL)
    for child in trainers:
        assert child.wait(10) == -signal.SIGKILL
    for folder in folders.values():
        shutil.rmtree(folder)
        folder.mkdir()

    # --- each node restores the latest checkpoint with the defaults: its own files plus the coordinator's .metadata
    # (and, with replicated entries, whatever other files its rank reads)
    for node, folder in folders.items():
        p = _restore(remote, folder, "--host", node, "--hosts", HOSTS)
        assert p.returncode == 0, f"restore on {node}: exit {p.returncode}\n{p.stderr}"
        assert p.stdout.splitlines()[-1:] == [str(folder / LAST)], p.stdout + p.stderr
        assert no_traceback(p.stderr), p.stderr
    union = {**saved["node0"], **saved["node1"]}
    for node, folder in folders.items():
        restored = tree(folder / LAST)
        own = {**saved[node], ".metadata": saved["node0"][".metadata"]}
        if state == "sharded":
            assert restored == own, f"{node} restored {sorted(restored)}, not its own files and .metadata"
        elif state == "replicated-rank0":  # the doc's planner: replicated entries in rank 0's file, which node1 gets too
            want = own if node == "node0" else {**own, "__0_0.distcp": saved["node0"]["__0_0.distcp"]}
            assert restored == want, f"{node} restored {sorted(restored)}, not {sorted(want)}"
        else:  # at least that; which other files depends on where DCP put the entries every rank reads
            assert restored.items() >= own.items() and restored.items() <= union.items(), f"{node} restored {sorted(restored)}"

    # --- a new 2-rank job loads each rank's shards from its own node's folder: bitwise what was saved at the last step
    out = tmp_path / "loaded"
    out.mkdir()
    (port,) = free_ports(1)
    loaders = [
        _job(kids, f"load-{node}", "load", rank, 2, port, "--dir", str(folders[node] / LAST), "--out", str(out / f"rank{rank}.pt"), *extra)
        for rank, node in enumerate(NODES)
    ]
    _finish(kids, loaders)
    for rank in range(2):
        want = _load(record / f"rank{rank}_step{STEP}.pt")
        _assert_equal(_load(out / f"rank{rank}.pt"), want, f"rank {rank}'s shards")
    earlier = _load(record / f"full_step{SAVE_AT[-2]}.pt")
    assert not torch.equal(_load(record / f"full_step{STEP}.pt")["weight"], earlier["weight"]), "the steps saved the same state"

    # --- re-shard: both nodes' parts in one folder, loaded by a 1-process job as full, unsharded tensors
    one = tmp_path / "one"
    uri, server = remote
    p = run_cli(*doc_command("multinode-reshard", dir=str(one), remote=uri), server=server, timeout=60)  # as documented
    assert p.returncode == 0, f"restore --all-hosts: exit {p.returncode}\n{p.stderr}"
    assert p.stdout.splitlines()[-1:] == [str(one / LAST)], p.stdout + p.stderr
    assert tree(one / LAST) == union
    (port,) = free_ports(1)
    _finish(kids, [_job(kids, "load-full", "load", 0, 1, port, "--dir", str(one / LAST), "--out", str(out / "full.pt"), *extra)])
    _assert_equal(_load(out / "full.pt"), _load(record / f"full_step{STEP}.pt"), "the full state")

    # --- a host set other than the saved one, without --all-hosts: refused with a one-line error (and the CLI's usual
    # hint line) that names --all-hosts, and nothing restored
    for args in (["--host", "node0", "--hosts", "node0"], ["--host", "node2", "--hosts", "node0,node1,node2"]):
        elsewhere = tmp_path / "elsewhere"
        p = _restore(remote, elsewhere, *args)
        what = f"restore {' '.join(args)}: exit {p.returncode}, stderr:\n{p.stderr}"
        assert p.returncode == 2, what  # a usage error, as docs/INTEGRATIONS.md says
        lines = p.stderr.strip().splitlines()
        assert lines and lines[0].startswith("ckptsync: error: ") and all(s.startswith("ckptsync: hint: ") for s in lines[1:2]), what
        assert len(lines) <= 2 and "--all-hosts" in p.stderr, what
        assert not (elsewhere / LAST).exists(), f"{what}\nbut it left {elsewhere / LAST}"
