"""Stores: where chunks and manifests live. :func:`open_remote` is the one factory."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UsageError
from .base import ObjectInfo, Store, delete_many
from .local import LocalStore
from .retrying import RetryingStore, RetryPolicy, is_transient
from .s3 import S3Options, S3Store
from .throttled import ThrottledStore

__all__ = [
    "ObjectInfo",
    "Store",
    "delete_many",
    "LocalStore",
    "S3Store",
    "S3Options",
    "RetryingStore",
    "RetryPolicy",
    "is_transient",
    "Remote",
    "parse_remote",
    "open_remote",
]

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]\Z")
_URI_HINT = "use s3://bucket/prefix or file:///absolute/path"

#: Tests insert a fault-injecting layer here: ``wrap(store) -> store``.
StoreWrapper = Callable[[Store], Store]


@dataclass(frozen=True)
class Remote:
    """A parsed remote URI: a store location and a key prefix inside it."""

    uri: str
    scheme: str  # "s3" or "file"
    bucket: str  # bucket, or the absolute folder for file://
    prefix: str  # key prefix without leading/trailing slash ("" for none)


def parse_remote(uri: str) -> Remote:
    """Parse ``s3://bucket/prefix`` or ``file:///abs/path``; UsageError if malformed."""
    if not uri:
        raise UsageError("no remote given", "pass --remote (or set CKPTSYNC_REMOTE); " + _URI_HINT)
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket or not _BUCKET.match(bucket) or ".." in bucket:
            raise UsageError(f"remote {uri!r} has no valid bucket name", _URI_HINT)
        if parts.query or parts.fragment:
            raise UsageError(f"remote {uri!r} must not have a query or fragment", _URI_HINT)
        prefix = parts.path.strip("/")
        if any(p in (".", "..") for p in prefix.split("/")) or "//" in prefix:
            raise UsageError(f"remote {uri!r} has an invalid prefix", _URI_HINT)
        return Remote(uri, "s3", bucket, prefix)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"remote {uri!r} names a host; file remotes are local", "use file:///absolute/path (three slashes)")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise UsageError(f"remote {uri!r} is not an absolute path", "use file:///absolute/path (three slashes)")
        return Remote(uri, "file", str(Path(path)), "")
    raise UsageError(f"remote {uri!r} is not a supported URI", _URI_HINT)


def open_remote(
    remote: Remote,
    s3: S3Options | None = None,
    retry: RetryPolicy | None = None,
    wrap: StoreWrapper | None = None,
    bwlimit: float | None = None,
) -> Store:
    """Build the store stack for a remote: backend, optional test layer, bandwidth limit, retries.

    S3's timeouts are capped to fit the retry budget (:meth:`S3Options.within`), and the
    retries know how long one request waits for no answer.
    """
    retry = retry or RetryPolicy()
    inner: Store
    attempt_timeout = 0.0
    if remote.scheme == "s3":
        s3 = (s3 or S3Options()).within(retry.max_seconds)
        inner = S3Store(remote.bucket, s3)
        attempt_timeout = s3.attempt_timeout
    else:
        inner = LocalStore(Path(remote.bucket))
    if wrap is not None:
        inner = wrap(inner)
    if bwlimit:
        inner = ThrottledStore(inner, bwlimit)
    return RetryingStore(inner, retry, attempt_timeout=attempt_timeout)
