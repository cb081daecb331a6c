"""When a checkpoint entry counts as complete (signals and settling)."""

import pytest

from ckptsync.completion import SIGNAL_SETTLE, assess, settled


def test_hf_folder_waits_for_trainer_state():
    files = ["config.json", "model.safetensors", "optimizer.pt"]
    r = assess("dir", files)
    assert not r.ready and "trainer_state.json" in r.reason
    r = assess("dir", files + ["trainer_state.json"])
    assert r.ready and r.signal == "trainer_state.json"


def test_hf_hidden_temp_file_inside_means_still_writing():
    r = assess("dir", ["model.safetensors", ".tmpab12cd", "trainer_state.json"])
    assert not r.ready and ".tmpab12cd" in r.reason


def test_dcp_folder_waits_for_metadata():
    assert not assess("dir", ["__0_0.distcp", "__1_0.distcp"]).ready
    assert not assess("dir", ["__0_0.distcp", ".metadata.tmp"]).ready
    r = assess("dir", ["__0_0.distcp", ".metadata"])
    assert r.ready and r.signal == ".metadata"


def test_orbax_commit_success_is_a_signal():
    assert assess("dir", ["state/array", "commit_success.txt"]).signal == "commit_success.txt"


def test_plain_folder_is_ready_without_signal_and_marker_can_be_required():
    assert assess("dir", ["weights.bin"]).ready
    assert assess("dir", ["weights.bin"]).signal is None
    assert not assess("dir", ["weights.bin"], require_marker=True).ready
    assert assess("dir", ["weights.bin", "ckptsync.json"], require_marker=True).ready


def test_empty_folder_is_not_a_checkpoint_yet():
    assert not assess("dir", []).ready


def test_single_file_with_and_without_sidecar_marker():
    assert assess("file", ["last.ckpt"]).ready
    assert not assess("file", ["last.ckpt"], require_marker=True).ready
    r = assess("file", ["last.ckpt"], require_marker=True, marker_present=True)
    assert r.ready and r.signal == "ckptsync.json"


@pytest.mark.parametrize("signal, wait", [(False, 10.0), (True, SIGNAL_SETTLE)])
def test_settle_time_is_shorter_with_a_completion_signal(signal, wait):
    assert not settled(100.0, 100.0 + wait - 0.01, 10.0, signal=signal)
    assert settled(100.0, 100.0 + wait, 10.0, signal=signal)
