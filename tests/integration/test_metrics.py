"""``--metrics-addr``: Prometheus text exposition of a running ``ckptsync watch``."""

from __future__ import annotations

import os
import re
import signal
import urllib.request

import pytest

from ckptsync.errors import UsageError
from ckptsync.exporter import parse_address
from tests.helpers import wait_until
from tests.integration.sidecar_helpers import ckptsync, watch_args, write_checkpoint
from tests.s3servers import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value, from /metrics; empty while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(ckptsync_[a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_metrics_show_the_last_committed_step_after_a_commit(rclone_s3, kids, tmp_path):
    bucket = rclone_s3.create_bucket()
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ckpt.mkdir()
    (port,) = free_ports(1)
    watch = kids.ckptsync(*watch_args(ckpt, f"s3://{bucket}/job", state, "--metrics-addr", f"127.0.0.1:{port}"))
    before = wait_until(lambda: _scrape(port), 20, "the metrics endpoint")
    assert before["ckptsync_checkpoints_committed_total"] == 0
    assert before['ckptsync_failures_total{kind="remote"}'] == 0
    assert before["ckptsync_last_committed_step"] != before["ckptsync_last_committed_step"]  # NaN: nothing yet

    write_checkpoint(ckpt, "checkpoint-40", {"model.bin": os.urandom(2 << 20)}, step=40)
    after = wait_until(lambda: (m := _scrape(port)) and m.get("ckptsync_last_committed_step") == 40 and m, 30, "step 40")
    assert after["ckptsync_checkpoints_committed_total"] == 1
    assert after['ckptsync_uploads_total{outcome="committed"}'] == 1
    assert after["ckptsync_upload_duration_seconds_count"] == 1
    assert after["ckptsync_read_bytes_total"] >= 2 << 20 and after["ckptsync_uploaded_bytes_total"] > 0
    assert after["ckptsync_last_commit_timestamp_seconds"] > 0 and after["ckptsync_newest_committed_age_seconds"] >= 0
    idle = wait_until(lambda: (m := _scrape(port)) and not m['ckptsync_checkpoints_pending{state="uploading"}'] and m, 20, "idle")
    assert sum(v for k, v in idle.items() if k.startswith("ckptsync_checkpoints_pending")) == 0
    watch.signal(signal.SIGTERM)
    assert watch.wait(30) == 0, watch.stderr()


def test_a_metrics_port_in_use_is_a_usage_error_before_watching(rclone_s3, tmp_path):
    bucket = rclone_s3.create_bucket()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = ckptsync(rclone_s3, *watch_args(tmp_path, f"s3://{bucket}/job", tmp_path / "state", "--metrics-addr", str(port)))
    assert p.returncode == 2
    assert f"cannot serve metrics on {port}" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("[::1]:80", ("::1", 80)), ("localhost:1", ("localhost", 1))],
)
def test_metrics_addresses(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "host.example:80", "127.0.0.1:99999", ":80"])
def test_bad_metrics_addresses_are_usage_errors(value):
    with pytest.raises(UsageError):
        parse_address(value)
