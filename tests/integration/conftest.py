"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.sidecar_helpers import Children


@pytest.fixture
def kids(rclone_s3, tmp_path):
    """Children of one test (default server: rclone); every one still running is SIGKILLed at the end."""
    children = Children(rclone_s3, tmp_path / "logs")
    try:
        yield children
    finally:
        children.close()
