"""Session fixtures for real S3-compatible servers (see tests/s3servers.py).

* ``seaweedfs``, ``rclone_s3``, ``moto_s3``: one server each, started on first use, stopped at session end.
* ``s3_server``: parametrized over the three (ids ``seaweedfs``, ``rclone``, ``moto``).
* ``s3_remote``: a fresh bucket on ``s3_server`` as ``s3://<bucket>/ckpts``, with the process environment
  pointed at that server for the duration of the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.s3servers import S3Server, start_moto, start_rclone, start_seaweedfs

_FIXTURE_FOR = {"seaweedfs": "seaweedfs", "rclone": "rclone_s3", "moto": "moto_s3"}


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server, stop = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server, stop = start_rclone(tmp_path_factory.mktemp("rclone"))
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    server, stop = start_moto()
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session", params=list(_FIXTURE_FOR), ids=list(_FIXTURE_FOR))
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue(_FIXTURE_FOR[request.param])


@pytest.fixture
def s3_remote(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    env = s3_server.env()
    # nothing of the host's AWS or ckptsync settings (profile, session token, endpoint overrides) may leak in
    for k in list(os.environ):
        if k.startswith(("AWS_", "CKPTSYNC_")) and k not in env:
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield f"s3://{s3_server.create_bucket()}/ckpts"
