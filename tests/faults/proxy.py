"""A small fault-injecting HTTP/1.1 reverse proxy to put in front of a local S3 server (stdlib only).

    with S3Proxy(server, rng=random.Random(7)) as proxy:
        client = proxy.wrap(server).client()          # same credentials, endpoint = the proxy
        proxy.add_rule(status(503, "SlowDown"), method="PUT", path=r"/chunks/", times=2)
        ...
        assert proxy.count("PUT", "/chunks/") == 3

How a request is handled, one at a time per client connection (keep-alive is supported):

1. The request line and headers are read. ``Expect: 100-continue`` is answered by the proxy itself (``100 Continue``)
   and the header is not forwarded. The rules are evaluated now: the first rule whose filters match, that is not
   used up (``times``) and whose ``probability`` draw succeeds is applied to this request (and counted in ``hits``).
2. The body is read whole (Content-Length or chunked; chunked bodies are forwarded with their framing untouched).
3. Unless the action says otherwise, the request is sent on a new connection to the backend with every header
   as received -- the Host header too, since SigV4 signs it and the client signed for the proxy's host:port --
   except the hop-by-hop ones (Connection, Keep-Alive, Expect), which botocore does not sign.
4. The whole response is read, the action applied, the request logged, and the response written to the client
   with a Content-Length (a chunked backend response is de-chunked).

The log entry of a request is written *before* the client sees the (possibly faulty) response, so a test may
look at ``count()``/``requests()`` right after its call returned or raised, without waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

MAX_STALL_S = 30.0  # upper bound of stall(): a typo must not hang a test run
_MAX_HEAD = 64 * 1024
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "expect"}  # request headers (botocore signs none)
_NOT_RELAYED = {"connection", "keep-alive", "proxy-connection", "transfer-encoding"}  # response headers
_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "RequestTimeout": "Your socket connection to the server was not read from or written to within the timeout period.",
}


class _Abort(Exception):
    """The connection must be dropped now (the proxy is stopping, or a fault already ended it)."""


# --------------------------------------------------------------------------- actions and rules


@dataclass(frozen=True)
class Action:
    """What to do to a request; build one with the functions below."""

    kind: str
    code: int = 0
    s3_code: str = ""
    message: str = ""
    after_bytes: int | None = None
    seconds: float = 0.0
    rate: float = 0.0
    offset: int | None = None


def status(code: int = 503, s3_code: str = "SlowDown", message: str | None = None) -> Action:
    """Answer with an S3-style XML error ``<Error><Code>s3_code</Code>...`` and HTTP ``code``; the request is
    read whole but NOT forwarded, so the backend never sees it. The client connection stays usable."""
    return Action("status", code=code, s3_code=s3_code, message=message or _MESSAGES.get(s3_code, s3_code))


def status_after_forward(code: int = 500, s3_code: str = "InternalError", message: str | None = None) -> Action:
    """Forward the request (the backend applies it: the object is written, the upload completed, ...), then
    throw the real response away and answer with the XML error instead -- "the server did it but said 500"."""
    return Action("status_after_forward", code=code, s3_code=s3_code, message=message or _MESSAGES.get(s3_code, s3_code))


def reset_request(after_bytes: int | None = None) -> Action:
    """Abort the client connection with a TCP RST (SO_LINGER 0) before anything is forwarded: after reading the
    whole request (``None``), or after the headers and the first ``after_bytes`` body bytes as sent on the wire.
    The backend never sees the request; the client gets a connection error (reset / broken pipe)."""
    return Action("reset_request", after_bytes=after_bytes)


def reset_response(after_bytes: int | None = None) -> Action:
    """Forward (the backend applies the request), then RST the client connection: before sending any byte of
    the response (``None``), or after the complete status line and headers plus the first ``after_bytes`` bytes
    of the body. Without a body to cut (a PUT's empty 200), use ``None`` for the client to notice anything."""
    return Action("reset_response", after_bytes=after_bytes)


def stall(seconds: float) -> Action:
    """Read the request, wait ``seconds`` (at most MAX_STALL_S; cut short by ``stop()``), then forward as
    usual -- even if the client gave up meanwhile, so a timed-out request may still be applied."""
    return Action("stall", seconds=min(float(seconds), MAX_STALL_S))


def trickle(bytes_per_second: float) -> Action:
    """Forward; send the status line and headers at once and the response body at ``bytes_per_second``."""
    if bytes_per_second <= 0:
        raise ValueError("bytes_per_second must be > 0")
    return Action("trickle", rate=float(bytes_per_second))


def truncate_body(n: int = 0) -> Action:
    """Forward; send the headers with the ORIGINAL Content-Length but only the first ``n`` body bytes, then close
    the connection normally (FIN): the client sees a short read (botocore: ResponseStreamingError /
    IncompleteReadError). A response with at most ``n`` body bytes is sent intact."""
    return Action("truncate_body", after_bytes=n)


def flip_bits(offset: int | None = None) -> Action:
    """Forward; flip one bit of the response body -- the lowest bit of byte ``offset`` (taken modulo the body
    length), or a bit chosen with the proxy's rng -- and send it with the correct length: corruption in transit
    that only checksums can catch. An empty body is sent unchanged."""
    return Action("flip_bits", offset=offset)


@dataclass(eq=False)
class Rule:
    """A fault and the requests it applies to. All filters given must match: ``method`` (case-insensitive; a
    string or a tuple of them), ``path`` (regex searched in the path without the query), ``query`` (substring of
    the raw query, e.g. ``"uploads"`` or ``"partNumber="``). ``times``: how many requests it applies to (None:
    no limit); ``probability``: chance of applying to a matching request (drawn from the proxy's rng; a request
    that loses the draw goes on to the next rule and does not count). ``hits``: how often it was applied."""

    action: Action
    method: str | tuple[str, ...] | None = None
    path: str | None = None
    query: str | None = None
    times: int | None = None
    probability: float = 1.0
    hits: int = 0
    applied: threading.Event = field(default_factory=threading.Event, repr=False)  # set at the first hit

    def wait(self, timeout: float = 5.0) -> bool:
        """Block until the rule has been applied once (it is, as soon as a request's headers are read)."""
        return self.applied.wait(timeout)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.method is not None:
            wanted = (self.method,) if isinstance(self.method, str) else self.method
            if method.upper() not in {m.upper() for m in wanted}:
                return False
        if self.path is not None and not re.search(self.path, path):
            return False
        return self.query is None or self.query in query

    @property
    def used_up(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass(frozen=True)
class RequestRecord:
    """One request as the proxy saw it. ``status``: the HTTP status the client was sent (None if it got no
    status line: reset); ``backend_status``: the backend's (None if not forwarded); ``fault``: action kind."""

    method: str
    path: str
    query: str
    status: int | None
    body_bytes: int
    fault: str | None = None
    backend_status: int | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # as received from the client

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


# --------------------------------------------------------------------------- plumbing


class _Throttle:
    """A byte-rate limit shared by everyone who uses it: a virtual clock of when the link is free again."""

    def __init__(self, rate: float) -> None:
        self.rate, self._free_at, self._lock = rate, 0.0, threading.Lock()
        self.chunk = max(1, min(64 * 1024, int(rate / 20)))  # ~20 sleeps a second at most

    def delay(self, n: int) -> float:
        with self._lock:
            now = time.monotonic()
            self._free_at = max(now, self._free_at) + n / self.rate
            return self._free_at - now


class _Reader:
    """Buffered reads from a socket (no makefile(): it would keep the fd open past an RST close)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise EOFError
        self.buf += data

    def readline(self) -> bytes:
        while (i := self.buf.find(b"\n")) < 0:
            if len(self.buf) > _MAX_HEAD:
                raise ValueError("header line too long")
            self._fill()
        line = bytes(self.buf[: i + 1])
        del self.buf[: i + 1]
        return line

    def read(self, n: int) -> bytes:
        """1..n bytes."""
        if not self.buf:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _error_xml(s3_code: str, message: str, resource: str, request_id: str) -> bytes:
    esc = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
    m, r = ("".join(esc.get(c, c) for c in s) for s in (message, resource))
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{s3_code}</Code><Message>{m}</Message>'
        f"<Resource>{r}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


# --------------------------------------------------------------------------- the proxy


class S3Proxy:
    """The proxy. ``backend``: a base URL (``http://127.0.0.1:PORT``) or anything with an ``endpoint_url``.
    ``rng``: drives ``probability`` and ``flip_bits()`` (default ``random.Random(0)``). ``bwlimit``: bytes/s of the
    whole link, shared by all connections, applied separately to request bodies read and response bodies sent.
    ``backend_timeout``: socket timeout towards the backend."""

    def __init__(self, backend, *, rng: random.Random | None = None, bwlimit: float | None = None, backend_timeout: float = 60.0) -> None:
        self.backend: str = getattr(backend, "endpoint_url", backend).rstrip("/")
        u = urllib.parse.urlsplit(self.backend)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"backend must be an http:// URL: {self.backend!r}")
        self._backend_addr = (u.hostname, u.port or 80)
        self._rng = rng or random.Random(0)
        self._up = _Throttle(bwlimit) if bwlimit else None
        self._down = _Throttle(bwlimit) if bwlimit else None
        self.backend_timeout = backend_timeout
        self.endpoint_url = ""
        self.port = 0
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log: list[RequestRecord] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: set[threading.Thread] = set()
        self._clients: set[socket.socket] = set()
        self._backends: set[http.client.HTTPConnection] = set()
        self._ids = 0
        self.connections = 0  # client connections accepted so far

    # ----- lifecycle

    def start(self) -> S3Proxy:
        if self._listener is not None:
            raise RuntimeError("already started")
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        ls.settimeout(0.2)  # the accept loop looks at the stop flag this often
        self._listener, self.port = ls, ls.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._spawn(self._accept_loop, "s3proxy-accept")
        return self

    def stop(self) -> None:
        """Stop within ~3 s whatever the connections are doing (stalled, trickling, waiting for the backend)."""
        if self._listener is None or self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        # Shut every socket down until every thread has ended: a connection made while stopping
        # (a backend connect in flight) is caught on a later round.
        deadline = time.monotonic() + 3.0
        while True:
            self._shutdown_sockets()
            alive = [t for t in list(self._threads) if t.is_alive()]
            if not alive or time.monotonic() >= deadline:
                break
            alive[0].join(0.05)
        with self._lock:
            leftovers = list(self._clients)
        for s in leftovers:
            with contextlib.suppress(OSError):
                s.close()

    def _shutdown_sockets(self) -> None:
        """Wake every thread blocked in recv or send: they close their own sockets."""
        with self._lock:
            clients, backends = list(self._clients), list(self._backends)
        for s in clients:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for b in backends:
            with contextlib.suppress(OSError, AttributeError):
                b.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wrap(self, server):
        """A copy of an ``S3Server`` (any dataclass with ``endpoint_url``) that points at this proxy."""
        return dataclasses.replace(server, endpoint_url=self.endpoint_url)

    # ----- rules and log

    def add_rule(
        self,
        action: Action,
        *,
        method: str | tuple[str, ...] | None = None,
        path: str | None = None,
        query: str | None = None,
        times: int | None = None,
        probability: float = 1.0,
    ) -> Rule:
        """Append a rule (rules are tried in the order added; the first that applies wins) and return it."""
        rule = Rule(action, method, path, query, times, probability)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear_rules(self) -> None:
        with self._lock:
            self._rules = []

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def requests(self) -> list[RequestRecord]:
        """A copy of the log, oldest first."""
        with self._lock:
            return list(self._log)

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """How many logged requests have this method (case-insensitive) and a path containing ``path_contains``."""
        return sum(
            1
            for r in self.requests()
            if (method is None or r.method.upper() == method.upper()) and (path_contains is None or path_contains in r.path)
        )

    def idle(self) -> bool:
        """No client connection is open: every request read whole has been forwarded and logged."""
        with self._lock:
            return not self._clients

    def reset(self) -> None:
        """Empty the log (rules stay)."""
        with self._lock:
            self._log = []

    def _pick(self, req: _Request) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.used_up or not rule.matches(req.method, req.path, req.query):
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.hits += 1
                rule.applied.set()
                return rule
        return None

    def _record(self, req: _Request, status: int | None, body_bytes: int, fault: str | None, backend_status: int | None) -> None:
        with self._lock:
            self._log.append(RequestRecord(req.method, req.path, req.query, status, body_bytes, fault, backend_status, tuple(req.headers)))

    # ----- connections

    def _spawn(self, target, name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = {x for x in self._threads if x.is_alive()}
            self._threads.add(t)
        t.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(300)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._clients.add(sock)
                self.connections += 1
            self._spawn(self._serve, "s3proxy-conn", sock)

    def _serve(self, sock: socket.socket) -> None:
        reader = _Reader(sock)
        try:
            while not self._stopping.is_set():
                req = self._read_head(reader)
                if req is None or not self._handle(sock, reader, req):
                    break
        except (OSError, EOFError, ValueError, _Abort, http.client.HTTPException):
            pass
        finally:
            with self._lock:
                self._clients.discard(sock)
            sock.close()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stopping.wait(seconds):
            raise _Abort

    def _read_head(self, reader: _Reader) -> _Request | None:
        try:
            line = reader.readline()
        except EOFError:
            return None  # the client closed an idle connection
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
            line = reader.readline()
        method, target, version = line.decode("latin-1").split()
        headers = []
        while (h := reader.readline()) not in (b"\r\n", b"\n"):
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return _Request(method.upper(), target, version, headers)

    def _read_body(self, reader: _Reader, req: _Request, limit: int | None) -> tuple[bytes, int]:
        """The body as sent (chunk framing kept) and its decoded length; stops once ``limit`` raw bytes are read."""
        raw = bytearray()
        step = self._up.chunk if self._up else 256 * 1024

        def take(n: int) -> bytes:
            got = bytearray()
            while len(got) < n:
                if limit is not None and len(raw) >= limit:
                    raise _Abort
                want = min(n - len(got), step, limit - len(raw) if limit is not None else n)
                data = reader.read(want)
                if self._up:
                    self._sleep(self._up.delay(len(data)))
                got += data
                raw.extend(data)
            return bytes(got)

        with contextlib.suppress(_Abort):
            if "chunked" in (req.header("transfer-encoding") or "").lower():
                size = -1
                decoded = 0
                while size != 0:
                    line = reader.readline()
                    raw.extend(line)
                    size = int(line.split(b";")[0].strip(), 16)
                    decoded += size
                    take(size + 2 if size else 0)
                while (trailer := reader.readline()) not in (b"\r\n", b"\n"):
                    raw.extend(trailer)
                raw.extend(trailer)
                return bytes(raw), decoded
            take(int(req.header("content-length") or 0))
        return bytes(raw), len(raw)

    def _handle(self, sock: socket.socket, reader: _Reader, req: _Request) -> bool:
        """Serve one request; False when the connection must not be reused."""
        rule = self._pick(req)
        action = rule.action if rule else Action("none")
        kind = action.kind if rule else None
        if "100-continue" in (req.header("expect") or "").lower():
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if kind == "reset_request":
            _, n = self._read_body(reader, req, action.after_bytes)
            self._record(req, None, n, kind, None)
            _rst(sock)
            return False
        body, n = self._read_body(reader, req, None)
        keep = req.version == "HTTP/1.1" and "close" not in (req.header("connection") or "").lower()
        if kind == "status":
            self._record(req, action.code, n, kind, None)
            self._send(sock, req, *self._error(req, action), keep=keep)
            return keep
        if kind == "stall":
            self._sleep(action.seconds)
        try:
            code, reason, headers, data = self._forward(req, body)
        except (OSError, http.client.HTTPException) as e:
            if self._stopping.is_set():
                raise _Abort from e
            self._record(req, 502, n, "backend-error", None)
            self._send(sock, req, *self._error(req, Action("status", 502, "BadGateway", f"backend: {e!r}")), keep=keep)
            return keep
        if kind == "status_after_forward":
            self._record(req, action.code, n, kind, code)
            self._send(sock, req, *self._error(req, action), keep=keep)
            return keep
        if kind == "reset_response":
            self._record(req, None if action.after_bytes is None else code, n, kind, code)
            if action.after_bytes is not None:
                self._send(sock, req, code, reason, headers, data, keep=keep, cut=action.after_bytes)
            _rst(sock)
            return False
        if kind == "flip_bits" and data:
            flipped = bytearray(data)
            if action.offset is None:
                with self._lock:
                    bit = self._rng.randrange(len(data) * 8)
                flipped[bit // 8] ^= 1 << (bit % 8)
            else:
                flipped[action.offset % len(data)] ^= 1
            data = bytes(flipped)
        self._record(req, code, n, kind, code)
        if kind == "truncate_body":
            cut = action.after_bytes if action.after_bytes is not None and action.after_bytes < len(data) else None
            self._send(sock, req, code, reason, headers, data, keep=keep, cut=cut)
            if cut is None:
                return keep
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # FIN: a clean close, only shorter than promised
            return False
        self._send(sock, req, code, reason, headers, data, keep=keep, rate=action.rate if kind == "trickle" else None)
        return keep

    def _forward(self, req: _Request, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._backend_addr, timeout=self.backend_timeout)
        with self._lock:
            self._backends.add(conn)
        try:
            conn.putrequest(req.method, req.target, skip_host=True, skip_accept_encoding=True)
            for k, v in req.headers:  # Host included, unchanged: it is part of the SigV4 signature
                if k.lower() not in _NOT_FORWARDED:
                    conn.putheader(k, v)
            conn.endheaders()
            if body:
                conn.send(body)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            with self._lock:
                self._backends.discard(conn)
            conn.close()

    def _error(self, req: _Request, action: Action) -> tuple[int, str, list[tuple[str, str]], bytes]:
        with self._lock:
            self._ids += 1
            rid = f"S3PROXY{self._ids:09d}"
        body = _error_xml(action.s3_code, action.message, req.path, rid)
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", rid), ("Server", "s3proxy")]
        if req.method == "HEAD":
            headers.append(("Content-Length", "0"))
        return action.code, http.client.responses.get(action.code, "Error"), headers, body

    def _send(
        self,
        sock: socket.socket,
        req: _Request,
        code: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        keep: bool,
        cut: int | None = None,
        rate: float | None = None,
    ) -> None:
        """Write a response: head at once, then the body (only ``cut`` bytes of it) at the allowed rates."""
        bodiless = req.method == "HEAD" or code in (204, 304) or code < 200
        lines = [f"HTTP/1.1 {code} {reason}"]
        for k, v in headers:
            if k.lower() in _NOT_RELAYED or (k.lower() == "content-length" and not bodiless):
                continue
            lines.append(f"{k}: {v}")
        if not bodiless:
            lines.append(f"Content-Length: {len(body)}")
        if not keep:
            lines.append("Connection: close")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if bodiless:
            return
        body = body[:cut] if cut is not None else body
        own = _Throttle(rate) if rate else None
        step = min(t.chunk for t in (own, self._down) if t) if (own or self._down) else len(body) or 1
        for i in range(0, len(body), step):
            piece = body[i : i + step]
            self._sleep(max(t.delay(len(piece)) for t in (own, self._down) if t) if (own or self._down) else 0.0)
            sock.sendall(piece)
