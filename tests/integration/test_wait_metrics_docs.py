"""The README's "Knowing what is safe" snippets and docs/INTEGRATIONS.md's SageMaker Estimator, executed as written.

Placeholders are the only thing replaced: ``/opt/ml/checkpoints`` by a test folder, ``s3://my-bucket/run-42``
by a bucket of the session's rclone S3 server, port 9464 by a free port. The metrics table must list exactly
the metrics ``/metrics`` serves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import types
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import docs
from tests.helpers import ROOT, clean_env, run_cli, wait_until
from tests.integration.sidecar_helpers import write_checkpoint
from tests.s3servers import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

README = ROOT / "README.md"
INTEGRATIONS = ROOT / "docs" / "INTEGRATIONS.md"
DIR, REMOTE = "/opt/ml/checkpoints", "s3://my-bucket/run-42"


def _placed(text: str, folder: Path, remote: str, port: int | None = None) -> str:
    out = text.replace(DIR, str(folder)).replace(REMOTE, remote)
    return out.replace("9464", str(port)) if port is not None else out


def _sh(script: str, server: Any, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """A shell snippet with ckptsync (and a stand-in ``python train.py``) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ckptsync").write_text(f'#!/bin/sh\nexec {sys.executable} -m ckptsync "$@"\n')
    (bin_dir / "ckptsync").chmod(0o755)
    env = clean_env(None, server)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(["sh", "-ec", script], env=env, cwd=tmp_path, text=True, capture_output=True, timeout=80)


def test_readme_wait_snippet_waits_for_the_commit_and_fails_while_there_is_none(rclone_s3, tmp_path):
    remote = f"s3://{rclone_s3.create_bucket()}/run"
    folder = tmp_path / "ckpt"
    # `python train.py` of the snippet: a trainer that saves checkpoint-40 (with its marker) and exits
    (tmp_path / "train.py").write_text(
        "import os, ckptsync\n"
        f"d = {str(folder / 'checkpoint-40')!r}\nos.makedirs(d)\n"
        "open(os.path.join(d, 'model.bin'), 'wb').write(os.urandom(100000))\nckptsync.mark(d, step=40)\n"
    )
    script = _placed(docs.block(README, "tested: readme-wait", "sh"), folder, remote).replace(
        "python train.py", f"{sys.executable} train.py"
    )
    nothing = _sh(script.replace("--timeout 60", "--timeout 1"), rclone_s3, tmp_path)  # no daemon: nothing commits it
    assert nothing.returncode == 1
    assert "checkpoint-40 is not committed" in nothing.stderr and "no ckptsync daemon is running" in nothing.stderr
    p = run_cli("push", "--dir", str(folder), "--remote", remote, server=rclone_s3)
    assert p.returncode == 0, p.stderr
    wait_line = script.splitlines()[-1]
    done = _sh(wait_line, rclone_s3, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "checkpoint-40 (step 40) is committed" in done.stdout


def test_readme_wait_python_snippet_reports_committed(rclone_s3, tmp_path, monkeypatch):
    remote = f"s3://{rclone_s3.create_bucket()}/run"
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "checkpoint-40", {"model.bin": os.urandom(50_000)}, step=40)
    code = _placed(docs.block(README, "tested: readme-wait-python", "python"), folder, remote)
    runner = (
        f"import subprocess, sys\n{code}\n"
        "assert not result.committed and 'no ckptsync daemon' in result.reason, result\n"
        f"subprocess.run([sys.executable, '-m', 'ckptsync', 'push', '--dir', {str(folder)!r}, '--remote', {remote!r}], check=True)\n"
        f"{code}\nassert result.committed and result.step == 40, result\n"
    )
    runner = runner.replace("timeout=60", "timeout=1", 1)
    p = subprocess.run([sys.executable, "-c", runner], env=clean_env(None, rclone_s3), cwd=ROOT, text=True, capture_output=True)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.splitlines()
    assert first.startswith("not yet: no ckptsync daemon is running") and second == "safe"


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_readme_metrics_snippet_serves_every_metric_of_the_table(rclone_s3, kids, tmp_path):
    remote = f"s3://{rclone_s3.create_bucket()}/run"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (port,) = free_ports(1)
    argv = _placed(docs.block(README, "tested: readme-metrics", "sh"), folder, remote, port).split()
    assert argv[0] == "ckptsync"
    watch = kids.ckptsync(*argv[1:], "--settle", "0.5", "--state-dir", str(tmp_path / "state"))
    write_checkpoint(folder, "checkpoint-7", {"model.bin": os.urandom(100_000)}, step=7)
    text = wait_until(lambda: (t := _scrape(port)) and "ckptsync_last_committed_step 7.0" in t and t, 30, "step 7 in /metrics")
    served = dict(re.findall(r"^# TYPE (ckptsync\w*) (\w+)$", text, re.MULTILINE))
    listed = {re.match(r"`(\w+)", r[0]).group(1): r[1] for r in docs.table(README, "metrics-table")}
    assert served.keys() == listed.keys()
    assert {k: v for k, v in served.items() if listed[k] != "info"} == {k: v for k, v in listed.items() if v != "info"}
    watch.signal(signal.SIGTERM)
    assert watch.wait(30) == 0, watch.stderr()


def test_sagemaker_estimator_metric_definitions_match_ckptsyncs_log_lines(rclone_s3, tmp_path):
    captured: dict[str, Any] = {}

    class Estimator:
        def __init__(self, **kwargs: Any) -> None:
            captured.update(kwargs)

    estimator = types.ModuleType("sagemaker.estimator")
    estimator.Estimator = Estimator  # type: ignore[attr-defined]
    sagemaker = types.ModuleType("sagemaker")
    sagemaker.estimator = estimator  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("sagemaker", "sagemaker.estimator")}
    sys.modules.update({"sagemaker": sagemaker, "sagemaker.estimator": estimator})
    try:
        exec(
            compile(docs.block(INTEGRATIONS, "tested: sagemaker-estimator", "python"), "estimator", "exec"),
            {"role": "arn:aws:iam::1:role/x"},
        )
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    definitions = {d["Name"]: re.compile(d["Regex"]) for d in captured["metric_definitions"]}
    assert captured["environment"]["CKPTSYNC_REMOTE"].startswith("s3://") and "checkpoint_s3_uri" not in captured

    remote = f"s3://{rclone_s3.create_bucket()}/run"
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "checkpoint-1200", {"model.bin": os.urandom(200_000)}, step=1200)
    p = run_cli("push", "--dir", str(folder), "--remote", remote, server=rclone_s3)
    assert p.returncode == 0, p.stderr
    found = {name: [m.group(1) for m in rx.finditer(p.stdout + p.stderr)] for name, rx in definitions.items()}
    assert found["ckptsync:committed_step"] == ["1200"]
    (seconds,) = found["ckptsync:upload_seconds"]
    assert 0 <= float(seconds) < 60
    assert json.dumps(found)  # plain numbers, as CloudWatch takes them
