"""EC2 spot interruption notices from instance metadata (IMDSv2).

The notice appears at ``/latest/meta-data/spot/instance-action`` about two
minutes before the instance is reclaimed (404 until then). The endpoint
(``--imds-endpoint``, normally ``http://169.254.169.254``) is a parameter, so
tests can serve it from a local HTTP server.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

TOKEN_TTL = 21600


class SpotNoticePoller(threading.Thread):
    """Polls IMDS every ``interval`` seconds and calls ``on_notice(body)`` once."""

    def __init__(
        self,
        on_notice: Callable[[str], None],
        *,
        endpoint: str,
        interval: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="ckptsync-spot", daemon=True)
        self.on_notice = on_notice
        self.endpoint = endpoint.rstrip("/")
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.stopped = threading.Event()
        self._token: str | None = None
        self._token_expires = 0.0
        self.notice: str | None = None

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                body = self.check()
            except Exception as exc:  # metadata service hiccups must never stop the daemon
                log.debug("spot notice check failed: %s", exc)
                body = None
            if body is not None:
                self.notice = body
                self.on_notice(body)
                return
            self.stopped.wait(self.interval)

    def check(self) -> str | None:
        """One poll: the notice's body, or None if there is no notice."""
        req = urllib.request.Request(f"{self.endpoint}/latest/meta-data/spot/instance-action", headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(4096).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self._token = None
            if exc.code in (401, 404):
                return None
            raise

    def _headers(self) -> dict[str, str]:
        now = self.clock()
        if self._token is None or now >= self._token_expires:
            req = urllib.request.Request(
                f"{self.endpoint}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    self._token = resp.read(4096).decode().strip()
                    self._token_expires = now + TOKEN_TTL - 60
            except urllib.error.HTTPError:
                self._token = None  # IMDSv1-only endpoint: ask without a token
        return {"X-aws-ec2-metadata-token": self._token} if self._token else {}
