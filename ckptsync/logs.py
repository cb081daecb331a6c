"""Logging setup: readable lines or JSON, and credentials never printed.

botocore logs the access key id and session token at DEBUG level, so its
loggers stay at WARNING unless ``--log-level debug`` is combined with
``CKPTSYNC_DEBUG_BOTO=1``; even then every record passes a filter that masks
every secret the S3 store has registered, and the password of every URL
(``http://user:***@host``), tracebacks included.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from datetime import datetime, timezone

from .progress import bars_aside

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_QUIET = ("botocore", "boto3", "s3transfer", "urllib3", "watchdog")


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log line from now on."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


#: The password of a URL's user information: ``scheme://user:PASSWORD@host``.
_URL_PASSWORD = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@")


def mask_passwords(text: str) -> str:
    """``text`` with the password of every URL in it written ``***`` (``http://user:***@host:port``)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def redact(text: str) -> str:
    """``text`` with every registered secret written ``****`` and every URL's password ``***``."""
    text = mask_passwords(text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "****")
    return text


#: Characters a terminal acts on instead of printing: C0 and C1 controls (ESC, BEL, CR, LF, ...), DEL,
#: and the bidirectional overrides and isolates that reorder what follows them.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` for a terminal or a log line: every control character written as an escape (``\\x1b``)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = printable(redact(msg))
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose lines never land on a progress bar (see :func:`ckptsync.progress.bars_aside`)."""

    def emit(self, record: logging.LogRecord) -> None:
        with bars_aside(self.stream):
            super().emit(record)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))  # the message is clean already; a traceback may not be


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in getattr(record, "fields", {}).items():
            doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, default=str))


def setup(level: str = "info", fmt: str = "text", stream: object = None) -> None:
    """Configure the root logger for the CLI (idempotent)."""
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        lvl = logging.INFO
    handler = _Handler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ckptsync", False):
            root.removeHandler(h)
    handler._ckptsync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(lvl)
    debug_boto = os.environ.get("CKPTSYNC_DEBUG_BOTO") == "1"
    for name in _QUIET:
        logging.getLogger(name).setLevel(lvl if debug_boto else max(lvl, logging.WARNING))
    # watchdog reports paths that vanished under it (a folder renamed while its watches were
    # being added) as warnings and errors; ckptsync rescans on its own, so they are noise.
    logging.getLogger("watchdog").setLevel(lvl if lvl <= logging.DEBUG else logging.CRITICAL)
