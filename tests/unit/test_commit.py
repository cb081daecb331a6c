"""The commit decision (pure): when an upload needs a new manifest, and what it holds."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ckptsync import format as fmt
from ckptsync.checkpoint import LocalCheckpoint, LocalFile
from ckptsync.commit import build_manifest, find_equivalent
from ckptsync.metrics import Score

T = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
CHUNK = fmt.ChunkRef("c" * 64, 10, 10, "raw")


def local(score: Score) -> LocalCheckpoint:
    f = LocalFile("w.bin", Path("/c/ck/w.bin"), 10, 0o644, (10, 1, 1))
    return LocalCheckpoint("ck", Path("/c/ck"), "dir", (f,), score)


FILES = [fmt.FileEntry("w.bin", 10, 0o644, "a" * 64, (CHUNK,))]


def manifest(
    host: str = "h1", hosts: tuple[str, ...] = (), step: int | None = 5, files: list[fmt.FileEntry] = FILES, **metrics: float
) -> fmt.Manifest:
    group = fmt.Group(fmt.group_id(hosts), len(hosts), hosts[0]) if hosts else None
    return build_manifest(local(Score(step, metrics)), files, host=host, group=group, created=T, tool="ckptsync/test")


def test_the_manifest_carries_the_scan_and_a_fresh_commit_id() -> None:
    m = manifest(step=7, eval_loss=0.5)
    assert (m.name, m.kind, m.step, dict(m.metrics), m.host, m.created, m.tool) == (
        "ck",
        "dir",
        7,
        {"eval_loss": 0.5},
        "h1",
        T,
        "ckptsync/test",
    )
    assert m.commit.startswith("20261201T080000000000Z-h1-") and m.commit != manifest(step=7, eval_loss=0.5).commit
    fmt.decode_manifest(fmt.encode_manifest(m))  # valid by the spec


def test_the_same_content_and_score_is_not_committed_again() -> None:
    same = find_equivalent(manifest(), [manifest()], score_source="name")
    assert same is not None and same.reason == "already committed"


@pytest.mark.parametrize("source", ["ckptsync.json", "name"])
def test_a_marker_saying_something_new_about_the_same_bytes_is_a_new_commit(source: str) -> None:
    old = manifest(step=5)
    new = manifest(step=6)
    found = find_equivalent(new, [old], score_source=source)
    # a restored copy without its marker says less, not something new; a marker that says more is news
    assert (found is None) == (source == "ckptsync.json")


def test_other_content_other_names_and_other_hosts_commits_do_not_count() -> None:
    other_bytes = [dataclasses.replace(FILES[0], hash="b" * 64)]
    assert find_equivalent(manifest(), [manifest(files=other_bytes)], score_source="name") is None
    assert find_equivalent(manifest(), [dataclasses.replace(manifest(), name="ck2")], score_source="name") is None
    hosts = ("h1", "h2")
    assert find_equivalent(manifest("h1", hosts), [manifest("h2", hosts)], score_source="name") is None
    assert find_equivalent(manifest("h1", hosts), [manifest("h1")], score_source="name") is None  # another host set
    assert find_equivalent(manifest("h1", hosts), [manifest("h1", hosts)], score_source="name") is not None


def test_a_strict_subset_of_a_committed_checkpoint_is_not_a_new_version() -> None:
    more = FILES + [fmt.FileEntry("optimizer.pt", 10, 0o644, "d" * 64, (CHUNK,))]
    found = find_equivalent(manifest(), [manifest(files=more)], score_source="name")
    assert found is not None and found.reason == "a partial copy of a committed checkpoint"
    assert find_equivalent(manifest(files=more), [manifest()], score_source="name") is None  # a superset is new
