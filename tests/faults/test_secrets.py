"""Scenario 17: every command at debug level, botocore included, never prints a credential."""

from __future__ import annotations

import signal
import subprocess

from tests.faults.scenarios import record
from tests.helpers import make_hf_checkpoint, run_cli, start_cli

SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontokenvalue1234567890"


def test_no_command_logs_the_access_key_secret_or_session_token(seaweedfs, tmp_path):
    bucket = seaweedfs.create_bucket()
    remote = f"s3://{bucket}/x"
    src = tmp_path / "src"
    src.mkdir()
    make_hf_checkpoint(src, 1, 0.5, params=1 << 12)
    env = {"CKPTSYNC_LOG_LEVEL": "debug", "CKPTSYNC_DEBUG_BOTO": "1"}
    secrets = [seaweedfs.access_key, seaweedfs.secret_key]
    commands = [
        ["push", "--dir", str(src), "--remote", remote],
        ["list", "--remote", remote],
        ["restore", "--dir", str(tmp_path / "o"), "--remote", remote],
        ["verify", "--deep", "--remote", remote],
        ["prune", "--keep-last", "1", "--remote", remote],
        ["export", "--to", str(tmp_path / "m"), "--remote", remote],
        ["config"],
    ]
    text = ""
    for args in commands:
        p = run_cli(*args, env=env, server=seaweedfs)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        text += p.stdout + p.stderr
    watch = start_cli(
        *("watch", "--dir", str(src), "--remote", remote, "--state-dir", str(tmp_path / "s"), "--settle", "0.2"),
        env=env,
        server=seaweedfs,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    for line in watch.stdout:
        text += line
        if "watching" in line:
            watch.send_signal(signal.SIGTERM)
    watch.wait(60)
    # with a session token too (temporary credentials): the token must not appear either
    p = run_cli("list", "--remote", remote, env={**env, "AWS_SESSION_TOKEN": SESSION_TOKEN}, server=seaweedfs, timeout=60)
    text += p.stdout + p.stderr
    secrets.append(SESSION_TOKEN)
    assert "botocore" in text and "DEBUG" in text  # debug logging really was on
    matches = sum(text.count(s) for s in secrets)
    assert matches == 0
    record(
        17,
        "credentials in logs: every command at debug level, botocore included",
        len(commands) + 2,
        f"matches of access key, secret, session token: {matches}",
        matches == 0,
    )
