"""What docs/FORMAT.md and docs/DESIGN.md say about writers and collectors, checked through push and prune.

``ckptsync.push`` and the prune run thread pools, so these checks are not unit tests; they use
local-folder remotes. The pure checks of the documents are in tests/unit/test_format_doc.py.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from datetime import timedelta
from pathlib import Path

import ckptsync
from ckptsync import format as fmt
from ckptsync import policy
from ckptsync.api import open_repository
from ckptsync.repository import Repository
from ckptsync.store import ObjectInfo
from ckptsync.store.local import LocalStore
from tests import docs
from tests.docs import DESIGN, FORMAT

prune_mod = importlib.import_module("ckptsync.retention")


def test_push_writes_a_version_5_part_with_a_group_and_single_hosts_without(tmp_path: Path) -> None:
    example = json.loads(docs.block(DESIGN, "example-manifest-v2", "json"))
    cases = ((("algo-1", "algo-2"), "sha256", 5), (("algo-1",), "sha256", 1), ((), "sha256", 1), (("algo-1", "algo-2"), "blake3", 7))
    for hosts, algorithm, version in cases:
        folder = tmp_path / f"src-{len(hosts)}-{algorithm}"
        (folder / "checkpoint-1200").mkdir(parents=True)
        (folder / "checkpoint-1200" / "rng_state_0.pth").write_bytes(os.urandom(1000))
        remote = tmp_path / f"remote-{len(hosts)}-{algorithm}"
        remote.mkdir()
        report = ckptsync.push(
            folder, f"file://{remote}", ckptsync.Options(host="algo-1", hosts=hosts, workers=1, hash_algorithm=algorithm)
        )
        assert [r.status for r in report.results] == ["committed"]
        [path] = (remote / ("parts" if hosts[1:] else "manifests")).rglob("*.json")
        written = json.loads(path.read_bytes())
        assert (written["version"], written["hash_algorithm"]) == (version, algorithm)
        if hosts[1:]:  # a part: the host set by digest, algo-1 (the first given) leads
            assert set(written) == set(example) - {"hosts"} | {"group"}
            assert written["group"] == {"id": fmt.group_id(hosts), "hosts": 2, "lead": "algo-1", "role": "part"}
        else:  # the lowest version that can express the manifest; no hosts member
            assert set(written) == set(example) - {"hosts"}


def test_prune_deletes_only_superseded_incomplete_multi_host_checkpoints(tmp_path: Path) -> None:
    assert "One that ranks at or above the newest complete checkpoint is kept" in docs.flat(DESIGN)
    remote = tmp_path / "remote"
    remote.mkdir()
    hosts = ("algo-1", "algo-2")

    def push(host: str, step: int) -> None:
        folder = tmp_path / host / str(step)
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / f"rank-{host}.bin").write_bytes(os.urandom(100))
        (folder / f"checkpoint-{step}" / "ckptsync.json").write_text(f'{{"step": {step}}}')
        ckptsync.push(folder, f"file://{remote}", ckptsync.Options(host=host, hosts=hosts, workers=1))

    push("algo-1", 20)  # algo-2 never commits checkpoint-20: superseded by checkpoint-30
    push("algo-1", 30)
    push("algo-2", 30)
    push("algo-1", 40)  # still being committed: newer than the newest complete checkpoint
    report = prune_mod.prune(open_repository(f"file://{remote}"), policy.Retention(keep_last=5), grace=timedelta(0), dry_run=True)
    assert report.deleted == ["checkpoint-20"]  # checkpoint-40's part stays: its other part may still come
    assert report.kept == ["checkpoint-30"]


def test_chunks_of_unknown_age_are_never_collected(tmp_path: Path) -> None:
    assert "A chunk whose age it cannot determine" in docs.flat(FORMAT) and "lock) MUST NOT be deleted." in docs.flat(FORMAT)
    assert "on a store that reports no modification times ckptsync deletes no chunk" in docs.flat(DESIGN)

    class NoChunkTimes(LocalStore):
        def list(self, prefix: str) -> list[ObjectInfo]:
            return [ObjectInfo(o.key, o.size, None) if o.key.startswith("chunks/") else o for o in super().list(prefix)]

    digest = hashlib.sha256(b"referenced by nothing").hexdigest()
    for store_type, kept in ((LocalStore, False), (NoChunkTimes, True)):
        root = tmp_path / store_type.__name__
        root.mkdir()
        store = store_type(root)
        store.put(fmt.chunk_key("", digest, "raw"), b"referenced by nothing")
        report = prune_mod.prune(Repository(store), policy.Retention(keep_last=1), grace=timedelta(0))
        assert report.collection_deferred is None
        assert (root / fmt.chunk_key("", digest, "raw")).exists() == kept
