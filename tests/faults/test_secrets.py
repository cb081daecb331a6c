"""Scenario 17: every command at debug level, botocore included, never prints a credential."""

from __future__ import annotations

import os
import signal
import socket
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


ENDPOINT_PASSWORD = "endpoint-pass-4f9c2e"


def test_an_endpoint_urls_password_is_masked_in_config_errors_and_logs(tmp_path):
    """--endpoint-url http://user:PASSWORD@host:port is shown as http://user:***@host:port by config, in the error
    of a refused connection and in debug logs (botocore's and tracebacks included), text and JSON."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123456",
        "AWS_SECRET_ACCESS_KEY": "example-secret-key-123456",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with socket.socket() as closed:  # bound on loopback but not listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        endpoint = f"http://ckuser:{ENDPOINT_PASSWORD}@127.0.0.1:{port}"
        masked = f"http://ckuser:***@127.0.0.1:{port}"
        config = run_cli("config", "--endpoint-url", endpoint, env=env)
        failed = [
            run_cli(
                *("list", "--remote", "s3://bucket/x", "--endpoint-url", endpoint, "--retries", "1"),
                *("--log-level", "debug", "--log-format", fmt),
                env={**env, "CKPTSYNC_DEBUG_BOTO": "1"},
            )
            for fmt in ("text", "json")
        ]
    assert config.returncode == 0, config.stderr
    assert masked in config.stdout
    for p in failed:
        assert p.returncode == 1
        assert f"ckptsync: error: cannot connect to the S3 endpoint {masked}" in p.stderr.splitlines()
        assert "EndpointConnectionError" in p.stderr  # botocore's debug log and the traceback were printed
    text = "".join(p.stdout + p.stderr for p in (config, *failed))
    assert ENDPOINT_PASSWORD not in text
