"""Sharded checkpoints on node-local disks: the pure rules (completion, shared files, DCP's .metadata)."""

from __future__ import annotations

import os
import pickle

import pytest

from ckptsync import dcp, shards
from ckptsync import format as fmt
from ckptsync.completion import assess
from tests.helpers import dcp_metadata


def entry(path: str) -> fmt.FileEntry:
    return fmt.FileEntry(path, 0, 0o644, "0" * 64, ())


@pytest.mark.parametrize(
    ("paths", "name", "reason"),
    [
        (["__1_0.distcp"], "step_200", "waiting for .metadata"),
        (
            ["pytorch_model_fsdp_0/__1_0.distcp", "optimizer_0/__1_0.distcp", "rng_state_1.pth"],
            "checkpoint-40",
            "waiting for trainer_state.json",
        ),
        (["rng_state_3.pth"], "checkpoint-40", "waiting for trainer_state.json"),  # DDP: a non-main node's whole folder
        (["checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt"], "epoch=0-step=9.ckpt", "waiting for DeepSpeed's latest"),
    ],
)
def test_a_folder_waiting_only_for_the_coordinators_files_says_so(paths, name, reason):
    verdict = assess("dir", paths, name=name)
    assert (verdict.ready, verdict.reason, verdict.coordinator) == (False, reason, True)


def test_a_dcp_folder_needs_metadata_beside_every_shard_folder_and_a_marker_always_wins():
    fsdp = ["pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/__0_0.distcp", "optimizer_0/__0_0.distcp"]
    assert not assess("dir", fsdp, name="x").ready
    assert assess("dir", [*fsdp, "optimizer_0/.metadata"], name="x").ready
    assert assess("dir", ["__1_0.distcp", "ckptsync.json"], name="step_1").ready  # the user's marker says it is complete
    assert assess("dir", ["zero_pp_rank_0_mp_rank_00_optim_states.pt"], name="global_step5").ready  # raw DeepSpeed: settles


def test_a_node_gets_the_leads_files_that_are_not_one_ranks_and_not_in_its_way():
    own = [entry("__1_0.distcp"), entry("rng_state_1.pth"), entry("sub/x")]
    lead = [entry(p) for p in ("__0_0.distcp", ".metadata", "rng_state_0.pth", "zero_pp_rank_0_optim.pt", "sub", "config.json")]
    assert [f.path for f in shards.shared_files(own, lead)] == [".metadata", "config.json"]
    assert shards.holds_coordinator_files(["a/.metadata", "a/__0_0.distcp", "b/__0_0.distcp"]) is False
    assert shards.holds_coordinator_files(["trainer_state.json", "rng_state_0.pth"]) is True


def test_dcp_metadata_names_the_files_of_entries_every_rank_reads():
    data = dcp_metadata({"w": ["__0_0.distcp", "__1_0.distcp"]}, {"step": "__1_0.distcp", "lr": "__0_0.distcp"})
    assert dcp.shared_files(data) == {"__0_0.distcp", "__1_0.distcp"}
    assert dcp.shared_files(dcp_metadata({"w": ["__0_0.distcp", "__1_0.distcp"]}, {})) == set()


@pytest.mark.parametrize("payload", [pickle.dumps(os.system), pickle.dumps(print), b"not a pickle", b"\x80\x04N."])
def test_a_hostile_or_foreign_metadata_is_refused_without_running_anything(payload):
    with pytest.raises(dcp.MetadataError):
        dcp.shared_files(payload)
