"""What the framework callbacks share, without any framework: finding the uploader, reporting commits once."""

from __future__ import annotations

import json
import logging
import math

from ckptsync.integrations import _common
from ckptsync.integrations._common import Companion, describe_wait, numeric
from ckptsync.waiting import WaitResult


def _status(folder, commit, step):
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"pid": 1, "state": "watching", "folder": "/x", "remote": "s3://b/p", "watcher": "native", "updated": "2026-12-03T00:00:00Z"}
    doc["last_commit"] = {"name": f"checkpoint-{step}", "commit": commit, "time": "2026-12-03T00:00:00Z", "step": step}
    (folder / "status.json").write_text(json.dumps(doc))


def test_a_sidecars_commit_is_reported_once_from_its_status_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "ASK_EVERY", 0.0)
    monkeypatch.setenv("CKPTSYNC_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("CKPTSYNC_REMOTE", "s3://b/p")
    monkeypatch.setenv("CKPTSYNC_STATE_DIR", str(tmp_path / "state"))
    c = Companion()
    assert (c.dir, c.remote, c.state_dir) == (tmp_path / "ckpt", "s3://b/p", tmp_path / "state")
    assert c.new_commit() is None  # no status yet
    _status(tmp_path / "state", "20261203T000000000000Z-h-0123456789abcdef", 40)
    first = c.new_commit()
    assert first is not None and first.step == 40
    assert c.new_commit() is None  # reported already
    _status(tmp_path / "state", "20261203T000001000000Z-h-0123456789abcdef", 60)
    assert c.new_commit().step == 60


def test_the_uploader_is_asked_at_most_every_few_seconds(tmp_path, monkeypatch):
    c = Companion(tmp_path, "s3://b/p", state_dir=tmp_path / "state")
    _status(tmp_path / "state", "20261203T000000000000Z-h-0123456789abcdef", 40)
    calls = []
    monkeypatch.setattr(c, "last_commit", lambda: calls.append(1))
    for _ in range(100):
        c.new_commit()
    assert len(calls) == 1


def test_only_finite_numbers_are_metrics():
    class OneElement:
        def __init__(self, v):
            self.v = v

        def numel(self):
            return 1

        def item(self):
            return self.v

    got = numeric({"loss": 0.5, "step": 3, "flag": True, "name": "x", "nan": math.nan, "t": OneElement(0.25)})
    assert got == {"loss": 0.5, "step": 3.0, "t": 0.25}


def test_the_final_wait_is_described_in_one_line():
    level, text = describe_wait(WaitResult("checkpoint-8", "c1", 8, 1.25), "checkpoint-8")
    assert level == logging.INFO and "checkpoint-8 (step 8) is committed (c1)" in text
    level, text = describe_wait(WaitResult("checkpoint-8", seconds=60, reason="uploading (1 MiB of 2 MiB)"), "checkpoint-8")
    assert level == logging.WARNING and "NOT committed" in text and "uploading" in text
