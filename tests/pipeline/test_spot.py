"""EC2 spot notices against a fake IMDSv2 on 127.0.0.1: none before a notice, the notice with a token after, and the
poller thread calling back within one interval."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ckptsync.spot import SpotNoticePoller


class FakeImds:
    """IMDSv2: a token from PUT /latest/api/token, required for the spot notice."""

    def __init__(self) -> None:
        self.notice: str | None = None
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_PUT(self):
                outer.requests.append(("PUT", self.path))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(200, b"tok-123")
                else:
                    self._send(400, b"")

            def do_GET(self):
                outer.requests.append(("GET", self.path))
                if self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                    self._send(401, b"")
                elif self.path == "/latest/meta-data/spot/instance-action" and outer.notice:
                    self._send(200, outer.notice.encode())
                else:
                    self._send(404, b"")

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds():
    f = FakeImds()
    yield f
    f.close()


def test_no_notice_is_none_and_a_notice_is_returned_with_a_token(imds):
    poller = SpotNoticePoller(lambda body: None, endpoint=imds.endpoint)
    assert poller.check() is None
    imds.notice = '{"action": "terminate", "time": "2026-11-26T13:00:00Z"}'
    assert "terminate" in poller.check()
    assert ("PUT", "/latest/api/token") in imds.requests


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
