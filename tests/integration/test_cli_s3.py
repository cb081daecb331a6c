"""The CLI end to end, as a subprocess, against real S3-compatible servers on loopback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import listing, make_hf_checkpoint, make_mixed_checkpoint, run_cli, tree, use_env
from tests.s3servers import free_ports

pytestmark = pytest.mark.integration


def chunk_keys(server, bucket: str, prefix: str) -> dict[str, str]:
    client = server.client()
    keys = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/chunks/"):
        for o in page.get("Contents", ()):
            keys[o["Key"]] = o["ETag"]
    return keys


def test_push_list_restore_round_trip(s3_server, tmp_path):
    bucket = s3_server.create_bucket()
    remote = f"s3://{bucket}/job"
    src = tmp_path / "ckpts"
    src.mkdir()
    make_mixed_checkpoint(src, "checkpoint-7")
    make_hf_checkpoint(src, 20, 0.4)
    (src / "last.ckpt").write_bytes(os.urandom(300_000))

    p = run_cli("push", "--dir", str(src), "--remote", remote, server=s3_server)
    assert p.returncode == 0, p.stderr
    assert "committed checkpoint-20" in p.stderr

    p = run_cli("list", "--remote", remote, "--json", server=s3_server)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["name"] for r in rows] == ["checkpoint-20", "checkpoint-7", "last.ckpt"]
    assert rows[0]["step"] == 20 and rows[0]["metrics"]["eval_loss"] == pytest.approx(0.4)

    out = tmp_path / "restored"
    for name in ("checkpoint-7", "checkpoint-20", "last.ckpt"):
        p = run_cli("restore", "--remote", remote, "--dir", str(out), "--name", name, server=s3_server)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip().splitlines()[-1] == str(out / name)
        assert tree(out / name) == tree(src / name)


def test_rclone_best_latest_and_no_new_chunk_on_second_push(rclone_s3, tmp_path):
    """Acceptance 3 of the core issue, against `rclone serve s3`."""
    bucket = rclone_s3.create_bucket()
    remote = f"s3://{bucket}/run"
    src = tmp_path / "ckpts"
    src.mkdir()
    losses = {100: 0.81, 200: 0.52, 300: 0.33, 400: 0.47, 500: 0.61}
    for step, loss in losses.items():
        make_hf_checkpoint(src, step, loss, params=1 << 16)
    assert run_cli("push", "--dir", str(src), "--remote", remote, server=rclone_s3).returncode == 0
    before = chunk_keys(rclone_s3, bucket, "run")
    assert before

    p = run_cli("restore", "--remote", remote, "--dir", str(tmp_path / "best"), "--best", "--metric", "eval_loss", server=rclone_s3)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).name == "checkpoint-300"
    assert tree(tmp_path / "best" / "checkpoint-300") == tree(src / "checkpoint-300")

    p = run_cli("restore", "--remote", remote, "--dir", str(tmp_path / "latest"), "--latest", "--json", server=rclone_s3)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["name"] == "checkpoint-500"

    p = run_cli("push", "--dir", str(src), "--remote", remote, server=rclone_s3)
    assert p.returncode == 0, p.stderr
    assert chunk_keys(rclone_s3, bucket, "run") == before
    assert "0 committed, 5 already committed" in p.stderr


def test_seaweedfs_garbage_chunk_fails_named_restore_and_latest_falls_back(seaweedfs, tmp_path):
    """Acceptance 4 of the core issue, against SeaweedFS."""
    bucket = seaweedfs.create_bucket()
    remote = f"s3://{bucket}/run"
    src = tmp_path / "ckpts"
    src.mkdir()
    make_hf_checkpoint(src, 1, 0.5, params=1 << 18)  # weights over 1 MiB: chunks of their own
    make_hf_checkpoint(src, 2, 0.4, params=1 << 18)
    assert run_cli("push", "--dir", str(src), "--remote", remote, server=seaweedfs).returncode == 0

    client = seaweedfs.client()
    rows = json.loads(run_cli("list", "--remote", remote, "--json", server=seaweedfs).stdout)
    assert [r["name"] for r in rows] == ["checkpoint-2", "checkpoint-1"]
    manifests = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="run/manifests/"):
        for o in page["Contents"]:
            doc = json.loads(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
            manifests[doc["name"]] = doc
    shared = {c["hash"] for f in manifests["checkpoint-1"]["files"] for c in f["chunks"]}
    victim = next(c for f in manifests["checkpoint-2"]["files"] for c in f["chunks"] if c["hash"] not in shared)
    key = f"run/chunks/{victim['hash'][:2]}/{victim['hash']}.{victim['codec']}"
    client.put_object(Bucket=bucket, Key=key, Body=b"garbage")

    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.txt").write_text("keep me")
    before = listing(out)
    p = run_cli("restore", "--remote", remote, "--dir", str(out), "--name", "checkpoint-2", server=seaweedfs)
    assert p.returncode == 1
    assert victim["hash"] in p.stderr
    assert "Traceback" not in p.stderr
    assert listing(out) == before

    p = run_cli("restore", "--remote", remote, "--dir", str(out), "--latest", server=seaweedfs)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(out / "checkpoint-1")
    assert tree(out / "checkpoint-1") == tree(src / "checkpoint-1")

    p = run_cli("verify", "--remote", remote, "--deep", server=seaweedfs)
    assert p.returncode == 1
    assert "DAMAGED  checkpoint-2" in p.stdout and "ok       checkpoint-1" in p.stdout


def test_empty_remote_restore_exits_0_with_empty_line_and_3_with_require(s3_server, tmp_path):
    bucket = s3_server.create_bucket()
    p = run_cli("restore", "--remote", f"s3://{bucket}/none", "--dir", str(tmp_path / "o"), server=s3_server)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "\n"
    p = run_cli("restore", "--remote", f"s3://{bucket}/none", "--dir", str(tmp_path / "o"), "--require", server=s3_server)
    assert p.returncode == 3
    assert not (tmp_path / "o").exists()


def test_missing_bucket_fails_fast_without_retries_or_traceback(moto_s3, tmp_path):
    src = tmp_path / "c"
    src.mkdir()
    make_hf_checkpoint(src, 1, 0.5, params=1 << 10)
    started = time.monotonic()
    p = run_cli("push", "--dir", str(src), "--remote", "s3://no-such-bucket-here/x", server=moto_s3)
    assert p.returncode == 1
    assert time.monotonic() - started < 30
    assert "bucket 'no-such-bucket-here' does not exist" in p.stderr
    assert "retrying" not in p.stderr and "Traceback" not in p.stderr


def test_wrong_credentials_are_a_clear_error(seaweedfs, tmp_path):
    bucket = seaweedfs.create_bucket()
    p = run_cli("list", "--remote", f"s3://{bucket}/x", env={"AWS_SECRET_ACCESS_KEY": "wrong-secret-key-123456"}, server=seaweedfs)
    assert p.returncode == 1
    assert p.stderr.count("\n") <= 3, p.stderr
    assert "credentials were rejected" in p.stderr or "access denied" in p.stderr
    assert "Traceback" not in p.stderr


def test_unreachable_endpoint_gives_up_after_the_retry_budget(moto_s3, tmp_path):
    (port,) = free_ports(1)  # nothing listens there
    p = run_cli(
        "list",
        "--remote",
        "s3://bucket-x/p",
        "--retries",
        "2",
        env={"CKPTSYNC_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
        server=moto_s3,
    )
    assert p.returncode == 1
    assert "cannot connect to the S3 endpoint" in p.stderr
    assert p.stderr.count("retrying") == 1


def test_debug_logs_never_contain_credentials(seaweedfs, tmp_path):
    bucket = seaweedfs.create_bucket()
    src = tmp_path / "c"
    src.mkdir()
    make_hf_checkpoint(src, 1, 0.5, params=1 << 12)
    env = {"CKPTSYNC_DEBUG_BOTO": "1", "CKPTSYNC_LOG_LEVEL": "debug"}
    p = run_cli("push", "--dir", str(src), "--remote", f"s3://{bucket}/x", env=env, server=seaweedfs)
    q = run_cli("restore", "--dir", str(tmp_path / "o"), "--remote", f"s3://{bucket}/x", env=env, server=seaweedfs)
    assert p.returncode == 0 and q.returncode == 0
    text = p.stderr + p.stdout + q.stderr + q.stdout
    assert "botocore" in text  # debug logging really was on
    assert seaweedfs.access_key not in text
    assert seaweedfs.secret_key not in text


def test_usage_errors_are_one_line_with_exit_2(moto_s3, tmp_path):
    p = run_cli("push", "--dir", str(tmp_path / "missing"), "--remote", "s3://bucket-x/p", server=moto_s3)
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("list", "--remote", "bucket/prefix", server=moto_s3)
    assert p.returncode == 2 and "not a supported URI" in p.stderr


def test_no_credentials_is_a_clear_error(moto_s3, tmp_path):
    env = {k: v for k, v in moto_s3.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    p = run_cli("list", "--remote", "s3://bucket-x/p", env=env, timeout=60)
    assert p.returncode == 1
    assert "no AWS credentials found" in p.stderr and "Traceback" not in p.stderr


def test_stale_multipart_uploads_under_the_prefix_are_aborted_and_others_kept(seaweedfs, monkeypatch):
    """SeaweedFS, not moto: moto reports every upload as initiated in 2010."""
    from datetime import timedelta

    from ckptsync.store import S3Options, S3Store

    bucket = seaweedfs.create_bucket()
    client = seaweedfs.client()
    mine = client.create_multipart_upload(Bucket=bucket, Key="run/chunks/ab/abc")["UploadId"]
    other = client.create_multipart_upload(Bucket=bucket, Key="elsewhere/big")["UploadId"]
    use_env(monkeypatch, server=seaweedfs)
    store = S3Store(bucket, S3Options(endpoint_url=seaweedfs.endpoint_url))
    assert store.cleanup("run/", timedelta(hours=1)) == 0  # too recent: may still be in progress
    assert store.cleanup("run/", timedelta(0)) == 1
    left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert mine not in left and other in left
