"""Sharded checkpoints on node-local disks: one daemon per node, the framework's real file names and write order.

Each "node" is a folder with its own in-process daemon on one file:// remote. The
frameworks themselves run in tests/frameworks; here their layouts are written by
hand, file by file in the order their save functions write them
(docs/INTEGRATIONS.md, "Many nodes").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import ckptsync
from ckptsync import format as fmt
from ckptsync.daemon import Daemon
from ckptsync.errors import IntegrityError, UsageError
from ckptsync.options import Options, WatchOptions
from ckptsync.repository import Repository
from ckptsync.session import RemoteSession
from ckptsync.store import LocalStore
from tests.helpers import dcp_metadata, tree, wait_until

FAST = WatchOptions(settle=0.5, drain_timeout=10, tick=0.05, status_interval=0.1, retry_initial=0.1, retry_max=0.5)
HOSTS = ("node0", "node1")


class Fleet:
    """One folder and one daemon per node, all on one remote."""

    def __init__(self, tmp_path: Path, hosts: tuple[str, ...] = HOSTS) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "remote"
        self.root.mkdir()
        self.remote = f"file://{self.root}"
        self.hosts = hosts
        self.folders = {h: tmp_path / h for h in hosts}
        self.daemons: dict[str, Daemon] = {}
        for h, folder in self.folders.items():
            folder.mkdir()
            self.daemons[h] = Daemon(folder, Repository(LocalStore(self.root)), self.options(h), FAST)

    def options(self, host: str, hosts: tuple[str, ...] | None = None) -> Options:
        return Options(host=host, hosts=self.hosts if hosts is None else hosts, workers=2)

    def start(self) -> None:
        for d in self.daemons.values():
            d.start()

    def stop(self) -> None:
        for d in self.daemons.values():
            if not d.stopped:
                d.drain(deadline=time.monotonic() + 5)
        for d in self.daemons.values():
            d.wait(20)

    def sealed(self) -> list[str]:
        return [c.name for c in ckptsync.list_checkpoints(self.remote, read=False)]

    def parts(self, name: str) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "parts" / name).rglob("*.json") if p.name != "coordinator.json")

    def restore(self, host: str, **kwargs: object) -> Path:
        out = self.tmp / "restored" / host
        result = ckptsync.restore(self.remote, out, options=self.options(host, kwargs.pop("hosts", None)), **kwargs)  # type: ignore[arg-type]
        assert result is not None
        return out / result.name


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.stop()


def write(path: Path, size: int = 4096) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def dcp_save(
    folders: dict[str, Path], name: str, *, whole_on: int | None = None, before_metadata: Callable[[], None] = lambda: None
) -> None:
    """torch.distributed.checkpoint with FileSystemWriter: every rank writes ``__{rank}_0.distcp`` in its own
    node's folder; after gathering every rank's write results the coordinator writes ``.metadata``
    (as ``.metadata.tmp``, renamed). The state is a tensor sharded across the ranks and, with
    ``whole_on``, a step counter that the planner gave to that rank to save."""
    files = [f"__{rank}_0.distcp" for rank in range(len(folders))]
    for file, folder in zip(files, folders.values(), strict=True):
        write(folder / name / file)
    before_metadata()
    coordinator = next(iter(folders.values())) / name
    whole = {} if whole_on is None else {"step": files[whole_on]}
    (coordinator / ".metadata.tmp").write_bytes(dcp_metadata({"model.w": files}, whole))
    os.rename(coordinator / ".metadata.tmp", coordinator / ".metadata")


def test_dcp_part_without_metadata_waits_for_the_coordinator_then_every_node_restores_a_loadable_folder(fleet):
    fleet.start()

    def node1_waits() -> None:
        wait_until(
            lambda: fleet.daemons["node1"].status().pending.get("step_200") == "waiting for .metadata",
            message=lambda: f"node1 waiting for the coordinator: {fleet.daemons['node1'].status().pending}",
        )
        assert fleet.parts("step_200") == []

    dcp_save(fleet.folders, "step_200", before_metadata=node1_waits)
    wait_until(lambda: fleet.sealed() == ["step_200"], message=lambda: f"sealed; parts {fleet.parts('step_200')}")
    assert fleet.parts("step_200") == ["node0", "node1"]
    fleet.stop()

    node0, node1 = fleet.restore("node0"), fleet.restore("node1")
    assert sorted(tree(node0)) == [".metadata", "__0_0.distcp"]
    assert sorted(tree(node1)) == [".metadata", "__1_0.distcp"]  # its own shard and the coordinator's .metadata
    assert tree(node1)[".metadata"] == tree(fleet.folders["node0"] / "step_200")[".metadata"]
    assert tree(node1)["__1_0.distcp"] == tree(fleet.folders["node1"] / "step_200")["__1_0.distcp"]

    union = fleet.restore("node0", all_hosts=True, hosts=("node0",))  # a restart on one node: DCP re-shards
    assert sorted(tree(union)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.parametrize("whole_on", [0, 1])
def test_a_value_every_rank_reads_reaches_every_node_from_the_rank_that_saved_it(fleet, whole_on):
    """The save planner gives a replicated value (the step counter) to one rank to save: every rank loads it."""
    fleet.start()
    dcp_save(fleet.folders, "step_300", whole_on=whole_on)
    wait_until(lambda: fleet.sealed() == ["step_300"], message="sealed")
    fleet.stop()
    everything = [".metadata", "__0_0.distcp", "__1_0.distcp"]
    if whole_on == 0:  # in the lead's part: the other node gets that file beside its own
        assert sorted(tree(fleet.restore("node0"))) == [".metadata", "__0_0.distcp"]
        assert sorted(tree(fleet.restore("node1"))) == everything
    else:  # on another node: every part is restored
        assert sorted(tree(fleet.restore("node0"))) == everything


def test_a_different_host_set_is_explained_in_one_line_never_restored_silently(fleet):
    fleet.start()
    dcp_save(fleet.folders, "step_100")
    wait_until(lambda: fleet.sealed() == ["step_100"], message="sealed")
    fleet.stop()
    for hosts in (("node0",), ("node0", "node1", "node2")):
        with pytest.raises(UsageError) as err:
            fleet.restore("node0", hosts=hosts)
        assert "was saved by 2 hosts" in err.value.message and "--all-hosts" in (err.value.hint or "")
        assert "\n" not in err.value.message


def test_hf_fsdp_sharded_save_commits_on_every_node_and_the_main_nodes_files_reach_the_others(fleet):
    """Trainer._save_checkpoint with FSDP SHARDED_STATE_DICT: model and optimizer as DCP folders on every
    rank, the main process's trainer_state.json, scheduler and config only on node 0, rng_state per rank."""
    fleet.start()
    name = "checkpoint-40"
    for sub in ("pytorch_model_fsdp_0", "optimizer_0"):
        for rank, folder in enumerate(fleet.folders.values()):
            write(folder / name / sub / f"__{rank}_0.distcp")
        metadata = dcp_metadata({"w": ["__0_0.distcp", "__1_0.distcp"]}, {})
        (fleet.folders["node0"] / name / sub / ".metadata").write_bytes(metadata)
    main = fleet.folders["node0"] / name
    for f in ("scheduler.pt", "config.json", "training_args.bin"):
        write(main / f, 100)
    for rank, folder in enumerate(fleet.folders.values()):
        write(folder / name / f"rng_state_{rank}.pth", 100)
    (main / "trainer_state.json").write_text('{"global_step": 40, "log_history": [{"step": 40, "eval_loss": 0.25}]}')
    wait_until(lambda: fleet.sealed() == [name], message=lambda: f"sealed; parts {fleet.parts(name)}")
    fleet.stop()
    node1 = sorted(tree(fleet.restore("node1")))
    assert node1 == [
        "config.json",
        "optimizer_0/.metadata",
        "optimizer_0/__1_0.distcp",
        "pytorch_model_fsdp_0/.metadata",
        "pytorch_model_fsdp_0/__1_0.distcp",
        "rng_state_1.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    ]
    [ck] = ckptsync.list_checkpoints(fleet.remote)
    assert ck.manifest.step == 40 and ck.manifest.metrics["eval_loss"] == 0.25


def test_deepspeed_zero_save_inside_a_trainer_checkpoint_commits_on_every_node(fleet):
    """engine.save_checkpoint(checkpoint-N): zero_pp_rank_* per rank, mp_rank_00_model_states.pt and
    latest from rank 0 (then the Trainer's trainer_state.json on the main node)."""
    fleet.start()
    name = "checkpoint-60"
    for rank, folder in enumerate(fleet.folders.values()):
        write(folder / name / "global_step60" / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    main = fleet.folders["node0"] / name
    write(main / "global_step60" / "mp_rank_00_model_states.pt")
    (main / "latest").write_text("global_step60")
    (main / "trainer_state.json").write_text('{"global_step": 60}')
    write(main / "config.json", 100)
    wait_until(lambda: fleet.sealed() == [name], message=lambda: f"sealed; parts {fleet.parts(name)}")
    fleet.stop()
    assert sorted(tree(fleet.restore("node1"))) == [
        "config.json",
        "global_step60/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "global_step60/mp_rank_00_model_states.pt",  # every data-parallel rank loads the model states
        "latest",
        "trainer_state.json",
    ]


def test_a_checkpoint_sealed_by_the_last_host_to_push(tmp_path):
    """One-shot pushes in any order: whichever host commits the last part seals the checkpoint."""
    fleet = Fleet(tmp_path)
    dcp_save(fleet.folders, "step_7")
    for host in HOSTS:  # the lead first: it finds node1's part missing, and node1 seals
        ckptsync.push(fleet.folders[host], fleet.remote, fleet.options(host))
        assert fleet.sealed() == ([] if host == "node0" else ["step_7"])


def test_verify_checks_every_part_of_a_sealed_checkpoint_and_restore_falls_back_past_a_damaged_one(tmp_path):
    fleet = Fleet(tmp_path)
    for name in ("step_1", "step_2"):
        dcp_save(fleet.folders, name)
        for host in HOSTS:
            ckptsync.push(fleet.folders[host], fleet.remote, fleet.options(host))
    assert all(r.ok for r in ckptsync.verify(fleet.remote))
    [node1_part] = (fleet.root / "parts" / "step_2").rglob("node1/*.json")
    shard = next(f for f in json.loads(node1_part.read_bytes())["files"] if f["path"] == "__1_0.distcp")
    for chunk in shard["chunks"]:
        for obj in (fleet.root / "chunks").rglob(f"{chunk['hash']}.*"):
            obj.unlink()
    reports = {r.record.name: r for r in ckptsync.verify(fleet.remote)}
    assert reports["step_1"].ok and not reports["step_2"].ok
    assert reports["step_2"].problems[0].startswith("node1: __1_0.distcp: chunk ")
    # node1 alone sees its files damaged: falling back alone would resume the nodes from two steps
    with pytest.raises(IntegrityError, match="damaged in this host's files .*not falling back alone"):
        fleet.restore("node1")
    node1_part.unlink()
    assert ckptsync.verify(fleet.remote, "step_2")[0].problems == ["only 1 of its 2 hosts' parts are readable"]
    with pytest.raises(IntegrityError, match="not falling back alone"):
        fleet.restore("node1")
    # The lead's part missing is seen by every node alike: all fall back to the same intact checkpoint.
    [lead_part] = (fleet.root / "parts" / "step_2").rglob("node0/*.json")
    lead_part.unlink()
    assert fleet.restore("node0").name == fleet.restore("node1").name == "step_1"


class CountingStore:
    """Counts the objects read outside chunks/ (GETs) through the API's ``wrap`` hook."""

    def __init__(self, inner: Any, reads: list[str]) -> None:
        self.inner, self.reads = inner, reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        if not key.startswith("chunks/"):
            self.reads.append(key)
        return self.inner.get(key, max_size=max_size)


def job_of(root: Path, hosts: list[str], steps: int) -> None:
    """The remote a job of ``hosts`` leaves after ``steps`` checkpoints: every host's part, each sealed."""
    repo = Repository(LocalStore(root))
    data = b"shard"
    digest = hashlib.sha256(data).hexdigest()
    repo.put_chunk(digest, "raw", data)
    group = fmt.Group(fmt.group_id(hosts), len(hosts), hosts[0])
    session = RemoteSession(repo, host=hosts[0], hosts=hosts)
    for step in range(1, steps + 1):
        created = datetime(2026, 12, 1, tzinfo=timezone.utc) + timedelta(minutes=step)
        for i, h in enumerate(hosts):
            f = fmt.FileEntry(f"__{i}_0.distcp", len(data), 0o644, digest, (fmt.ChunkRef(digest, len(data), len(data), "raw"),))
            part = fmt.Manifest(
                f"step_{step}", "dir", step, {"loss": 1 / step}, created, h, fmt.new_commit_id(created, h), (f,), "t", group=group
            )
            repo.commit(part)
        session.unsealed[f"step_{step}"] = part
    assert len(session.seal_ready()) == steps


@pytest.mark.parametrize("fleet_size", [8, 1000])
def test_a_hosts_job_start_reads_the_same_few_objects_with_8_hosts_and_with_1000(tmp_path, fleet_size):
    hosts = [f"algo-{i + 1}" for i in range(fleet_size)]
    (tmp_path / "remote").mkdir()
    job_of(tmp_path / "remote", hosts, steps=3)
    reads: list[str] = []
    options = Options(host=hosts[-1], hosts=tuple(hosts), workers=2)
    result = ckptsync.restore(f"file://{tmp_path / 'remote'}", tmp_path / "out", options=options, wrap=lambda s: CountingStore(s, reads))
    assert result is not None and result.name == "step_3"
    assert sorted(tree(result.path)) == [f"__{fleet_size - 1}_0.distcp"]
    # the seal, this host's part and the lead's (plus the generation object a lock reads, if any)
    assert len([k for k in reads if not k.startswith("locks/")]) == 3, reads
    assert len(reads) <= 10, reads
