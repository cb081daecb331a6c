"""Which folder entries are checkpoints."""

import pytest

from ckptsync.completion import is_checkpoint_name, is_temporary_name


@pytest.mark.parametrize(
    "name",
    [".hidden", ".ckptsync-staging-abc", "tmp-checkpoint-500", "x.tmp", "model.partial", "5.orbax-checkpoint-tmp-123", "lost+found"],
)
def test_temporary_names(name):
    assert is_temporary_name(name)
    assert not is_checkpoint_name(name)


@pytest.mark.parametrize("name", ["checkpoint-500", "last.ckpt", "epoch=3-step=1200.ckpt", "500", "tmpfoo"])
def test_checkpoint_names(name):
    assert is_checkpoint_name(name)


def test_sidecar_marker_is_not_a_checkpoint():
    assert not is_checkpoint_name("last.ckpt.ckptsync.json")


@pytest.mark.parametrize("name", ["latest", "latest_universal"])
def test_deepspeed_tag_pointers_are_not_checkpoints(name):
    assert not is_checkpoint_name(name) and is_checkpoint_name(f"{name}.pt")
