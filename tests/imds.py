"""A fake EC2 instance metadata service (IMDSv2) on 127.0.0.1, for the spot notice tests.

``PUT /latest/api/token`` (with a TTL header) returns a token; ``GET /latest/meta-data/spot/instance-action``
with that token returns ``notice`` once a test sets it, 404 before; a GET without the token is refused with
401. Use it as a context manager (the server thread ends on exit).
"""

from __future__ import annotations

import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_PATH = "/latest/api/token"
SPOT_PATH = "/latest/meta-data/spot/instance-action"


class FakeImds:
    """IMDSv2 in miniature; ``endpoint`` is its URL, ``requests`` every ``(method, path)`` it was sent, and
    ``authorized_gets``/``unauthorized_gets`` count the GETs of the spot notice with and without the token."""

    def __init__(self) -> None:
        self.token = f"tok-{random.getrandbits(64):016x}"
        #: The body of the spot notice (JSON text), or None while there is none.
        self.notice: str | None = None
        self.requests: list[tuple[str, str]] = []
        self.authorized_gets = 0
        self.unauthorized_gets = 0
        self._lock = threading.Lock()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:  # keep the test output clean
                pass

            def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # noqa: N802
                imds._record("PUT", self.path)
                if self.path == TOKEN_PATH and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(200, imds.token.encode())
                else:
                    self._send(400)

            def do_GET(self) -> None:  # noqa: N802
                authorized = self.headers.get("X-aws-ec2-metadata-token") == imds.token
                imds._record("GET", self.path, authorized if self.path == SPOT_PATH else None)
                notice = imds.notice
                if not authorized:
                    self._send(401)
                elif self.path == SPOT_PATH and notice is not None:
                    self._send(200, notice.encode(), "application/json")
                else:
                    self._send(404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="fake-imds", daemon=True)
        self._thread.start()

    def _record(self, method: str, path: str, authorized: bool | None = None) -> None:
        with self._lock:
            self.requests.append((method, path))
            if authorized is True:
                self.authorized_gets += 1
            elif authorized is False:
                self.unauthorized_gets += 1

    def close(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeImds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
