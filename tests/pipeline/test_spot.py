"""EC2 spot notices against a fake IMDSv2 on 127.0.0.1: none before a notice, the notice with a token after, and the
poller thread calling back within one interval."""

from __future__ import annotations

import threading

import pytest

from ckptsync.spot import SpotNoticePoller
from tests.imds import FakeImds


@pytest.fixture
def imds():
    with FakeImds() as f:
        yield f


def test_no_notice_is_none_and_a_notice_is_returned_with_a_token(imds):
    poller = SpotNoticePoller(lambda body: None, endpoint=imds.endpoint)
    assert poller.check() is None
    imds.notice = '{"action": "terminate", "time": "2026-11-26T13:00:00Z"}'
    assert "terminate" in poller.check()
    assert ("PUT", "/latest/api/token") in imds.requests and imds.unauthorized_gets == 0


def test_poller_calls_back_within_one_interval(imds):
    got = threading.Event()
    poller = SpotNoticePoller(lambda body: got.set(), endpoint=imds.endpoint, interval=0.1)
    poller.start()
    try:
        assert not got.wait(0.3)
        imds.notice = '{"action": "stop"}'
        assert got.wait(2.0)
    finally:
        poller.stop()
        poller.join(2)
