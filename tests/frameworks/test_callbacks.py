"""The framework callbacks with the real frameworks (tiny models on the CPU), under ``ckptsync run``.

A Hugging Face Trainer run (tests/frameworks/hf_job.py) and a Lightning run (tests/frameworks/lightning_job.py),
each with ``CkptsyncCallback`` and nothing else from ckptsync, are started by ``ckptsync run`` against a fresh
bucket of the session's rclone S3 server. Each job knocks its weights off partway, so the framework's best
checkpoint is not its last. After the run:

- at least 2 checkpoints are committed, each with the metrics the framework logged at its step;
- ``restore --best --metric eval_loss`` (HF) / ``val_loss`` (Lightning) restores the checkpoint the framework
  itself reports as best;
- the callback's final wait found the last checkpoint committed before the job exited (and the remote lists
  that very commit).

The Hugging Face case runs once more with an in-process ``ckptsync.Syncer`` instead of ``ckptsync run``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli, run_python

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HERE = Path(__file__).resolve().parent


def _listed(server: Any, remote: str) -> list[dict[str, Any]]:
    p = run_cli("list", "--remote", remote, "--json", server=server)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _run(server: Any, tmp_path: Path, job: str) -> tuple[str, dict[str, Any]]:
    remote = f"s3://{server.create_bucket()}/job"
    out = tmp_path / "out.json"
    args = ["run", "--dir", str(tmp_path / "ckpt"), "--remote", remote, "--state-dir", str(tmp_path / "state"), "--settle", "0.5"]
    p = run_cli(*args, "--", sys.executable, str(HERE / job), str(out), server=server, timeout=200)
    assert p.returncode == 0, p.stderr[-3000:]
    return remote, json.loads(out.read_text())


def _check(server: Any, tmp_path: Path, remote: str, result: dict[str, Any], metric: str) -> None:
    assert result["committed"], result["reason"]
    assert result["best"] != result["last"], "the job knocks its weights off: its last checkpoint must not be the best"
    listed = _listed(server, remote)
    by_name: dict[str, dict[str, Any]] = {}
    for c in listed:  # newest first: each name's newest commit (last.ckpt is committed again at every save)
        by_name.setdefault(c["name"], c)
    assert len(by_name) >= 2, listed
    assert result["last"] in by_name and by_name[result["last"]]["commit"] == result["commit"]
    assert all(metric in c["metrics"] for c in listed), listed
    p = run_cli("restore", "--remote", remote, "--dir", str(tmp_path / "fresh"), "--best", "--metric", metric, server=server)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip().splitlines()[-1]).name == result["best"]


def test_hugging_face_trainer_with_the_callback_under_ckptsync_run(rclone_s3, tmp_path):
    remote, result = _run(rclone_s3, tmp_path, "hf_job.py")
    _check(rclone_s3, tmp_path, remote, result, "eval_loss")
    # the marker carries what the Trainer logged at the step: eval_loss of the best checkpoint is the Trainer's
    best = next(c for c in _listed(rclone_s3, remote) if c["name"] == result["best"])
    assert best["metrics"]["eval_loss"] == pytest.approx(result["eval_losses"][str(best["step"])])


def test_lightning_with_the_callback_under_ckptsync_run(rclone_s3, tmp_path):
    remote, result = _run(rclone_s3, tmp_path, "lightning_job.py")
    _check(rclone_s3, tmp_path, remote, result, "val_loss")


def test_hugging_face_trainer_with_the_callback_and_an_in_process_syncer(rclone_s3, tmp_path):
    remote = f"s3://{rclone_s3.create_bucket()}/job"
    out = tmp_path / "out.json"
    p = run_python(str(HERE / "hf_job.py"), str(out), "--syncer", remote, str(tmp_path / "ckpt"), server=rclone_s3, timeout=200)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    _check(rclone_s3, tmp_path, remote, result, "eval_loss")
