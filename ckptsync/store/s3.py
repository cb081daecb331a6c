"""A store in an S3 bucket, or any S3-compatible server (the only botocore import).

botocore's own retries are switched off (``total_max_attempts=1``) so that the
retry budget is owned in one place, :mod:`ckptsync.store.retrying`; every
botocore failure is translated into a :class:`StoreError` that says whether it
may heal, a timeout into :class:`NoAnswer`.

Timeouts: a request is abandoned when connecting takes ``connect_timeout`` or
when the server sends nothing for ``read_timeout`` (botocore's read timeout
bounds each wait for the next bytes, not a whole transfer: a large body that
keeps flowing is never cut). 20 s of silence is far beyond a healthy server's
pause, and short enough for several attempts to fit in a retry budget
(:meth:`S3Options.within`).

botocore is imported when the first client is made, not with this module: a
command that never talks to S3 (``--help``, a ``file://`` remote) does not pay
its start-up. boto3 adds nothing ckptsync uses (its transfer manager, resources)
on top of botocore's client, so the client comes from botocore directly.

Integrity checks of object bodies, by ``--checksum`` (see :data:`CHECKSUM_MODES`):
``auto`` sends at most one check of each uploaded body, the cheapest the link
allows. Over plain HTTP to another machine, SigV4 signs the body's SHA-256 (botocore
signs the payload there), so a CRC32 on top adds CPU and no protection; over HTTPS
botocore signs ``UNSIGNED-PAYLOAD``, and a CRC32 is sent as the server-verified check
of the body. A loopback endpoint (``127.0.0.0/8``, ``::1``, ``localhost``) is no
network: the body crosses one kernel's memory, so nothing is hashed for the transfer
(``UNSIGNED-PAYLOAD``, no CRC32). That saves a SHA-256 pass over every byte uploaded
(about 0.5 CPU-s per GB). Downloads are validated against a stored CRC only over
plain HTTP to another machine. Whatever the link, every chunk is checked against
its hash (BLAKE3 or SHA-256) by the reader.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from ..errors import AlreadyExists, NoAnswer, NotFound, ObjectTooLarge, StoreError, UsageError
from ..logs import mask_passwords, register_secret
from .base import ObjectInfo

log = logging.getLogger(__name__)

#: ``--checksum`` values: ``auto`` as described above; ``when_supported`` sends a
#: CRC32 with every upload and validates every download that has one, whatever the
#: transport (botocore's default); ``when_required`` only where an operation
#: requires it, for servers that reject checksum headers.
CHECKSUM_MODES = ("auto", "when_supported", "when_required")

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
    "OperationAborted",
    "RequestLimitExceeded",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "IncompleteBody",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket. Every field maps to a CLI flag and CKPTSYNC_* variable."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    path_style: bool | None = None  # None: path-style with a custom endpoint, else virtual-hosted
    sse: str | None = None  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    expected_bucket_owner: str | None = None
    checksum: str = "auto"  # one of CHECKSUM_MODES
    max_connections: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 20.0

    @property
    def attempt_timeout(self) -> float:
        """The longest one request waits for a server that does not answer: connecting, then the answer."""
        return self.connect_timeout + self.read_timeout

    def within(self, budget: float) -> S3Options:
        """These options with each timeout at most a quarter of ``budget`` seconds, so that at least
        two attempts of a request that gets no answer fit in a retry budget of that length."""
        cap = budget / 4
        return replace(self, connect_timeout=min(self.connect_timeout, cap), read_timeout=min(self.read_timeout, cap))


def _path_style(o: S3Options) -> bool:
    return o.path_style if o.path_style is not None else bool(o.endpoint_url)


def _make_client(o: S3Options) -> tuple[Any, dict[str, str], dict[str, str]]:
    """A botocore S3 client for these options, and the checksum parameters of its puts and gets."""
    import botocore.exceptions as bex
    import botocore.session
    from botocore.config import Config

    if o.checksum not in CHECKSUM_MODES:
        raise UsageError(f"unknown checksum mode {o.checksum!r}", f"use one of {', '.join(CHECKSUM_MODES)}")
    try:
        session = botocore.session.Session(profile=o.profile or None)
        creds = session.get_credentials()
    except bex.ProfileNotFound:
        raise UsageError(f"AWS profile {o.profile!r} not found", "check --profile / AWS_PROFILE and ~/.aws/config") from None
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        for secret in (frozen.access_key, frozen.secret_key, frozen.token):
            register_secret(secret)
    region = o.region or session.get_config_variable("region") or os.environ.get("AWS_REGION") or "us-east-1"
    # auto: the client sends and validates nothing by itself; put/get ask per request.
    botocore_mode = "when_required" if o.checksum == "auto" else o.checksum
    loopback = o.checksum == "auto" and _is_loopback(o.endpoint_url)
    s3_config: dict[str, Any] = {"addressing_style": "path" if _path_style(o) else "auto"}
    if loopback:
        s3_config["payload_signing_enabled"] = False
    config = Config(
        region_name=region,
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=o.connect_timeout,
        read_timeout=o.read_timeout,
        max_pool_connections=max(4, o.max_connections),
        s3=s3_config,
        request_checksum_calculation=botocore_mode,
        response_checksum_validation=botocore_mode,
        user_agent_extra="ckptsync",
    )
    client = session.create_client("s3", endpoint_url=o.endpoint_url or None, config=config)
    put: dict[str, str] = {}
    get: dict[str, str] = {}
    if o.checksum == "auto" and not loopback:
        if str(client.meta.endpoint_url).lower().startswith("https:"):
            put = {"ChecksumAlgorithm": "CRC32"}
        else:
            get = {"ChecksumMode": "ENABLED"}
    return client, put, get


def _is_loopback(endpoint_url: str | None) -> bool:
    """Whether requests to this endpoint never leave the machine (a loopback address or ``localhost``)."""
    if not endpoint_url:
        return False
    host = urlsplit(endpoint_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _body(data: bytes | memoryview) -> bytearray:
    """A request body botocore sends as it is.

    botocore wraps a ``bytes`` body of PutObject in a BytesIO, which is then sent after
    an ``Expect: 100-continue`` round trip and in 16 KiB writes; a bytearray (a buffer,
    not a file) goes out in one ``sendall``. The copy costs less than the writes it
    saves (about 0.15 CPU-s per GB uploaded).
    """
    return bytearray(data)


class S3Store:
    """Objects in ``s3://bucket/...``; keys are used as given."""

    def __init__(self, bucket: str, options: S3Options | None = None) -> None:
        self.bucket = bucket
        self.options = options or S3Options()
        self.url = f"s3://{bucket}"
        self.conditional_writes: bool | None = None
        self._lock = threading.Lock()
        self._client_obj: Any = None
        # Extra parameters of put_object / get_object for --checksum auto, set with the client.
        self._put_checksum: dict[str, str] = {}
        self._get_checksum: dict[str, str] = {}

    # -- client

    @property
    def _client(self) -> Any:
        with self._lock:
            if self._client_obj is None:
                self._client_obj = self._make_client()
            return self._client_obj

    def _make_client(self) -> Any:
        client, self._put_checksum, self._get_checksum = _make_client(self.options)
        return client

    def _common(self) -> dict[str, str]:
        if self.options.expected_bucket_owner:
            return {"ExpectedBucketOwner": self.options.expected_bucket_owner}
        return {}

    def _put_args(self) -> dict[str, str]:
        args = self._common()
        if self.options.sse:
            args["ServerSideEncryption"] = self.options.sse
        if self.options.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.options.sse_kms_key_id
        return args

    # -- operations

    def put(self, key: str, data: bytes | memoryview) -> None:
        try:
            client = self._client  # first: making the client sets self._put_checksum
            client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=_body(data),
                **self._put_checksum,
                **self._put_args(),
            )
        except Exception as exc:
            raise self._translate(exc, "put", key) from None

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        # s3transfer does not pass IfNoneMatch: this must be a plain put_object.
        try:
            client = self._client
            client.put_object(Bucket=self.bucket, Key=key, Body=_body(data), IfNoneMatch="*", **self._put_checksum, **self._put_args())
        except Exception as exc:
            raise self._translate(exc, "put", key) from None

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        try:
            client = self._client
            resp = client.get_object(Bucket=self.bucket, Key=key, **self._get_checksum, **self._common())
            length = resp.get("ContentLength")
            body = resp["Body"]
            try:
                if max_size is not None and length is not None and length > max_size:
                    raise ObjectTooLarge(f"object {key} is {length} bytes, more than the {max_size} allowed", key=key)
                data: bytes = body.read() if max_size is None else body.read(max_size + 1)
            finally:
                body.close()
            if max_size is not None and len(data) > max_size:
                raise ObjectTooLarge(f"object {key} is larger than {max_size} bytes", key=key)
            if length is not None and len(data) != length:
                raise StoreError(f"short read of {key}: {len(data)} of {length} bytes", key=key, transient=True)
            return data
        except StoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, "get", key) from None

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key, **self._common())
            return True
        except Exception as exc:
            err = self._translate(exc, "head", key)
            if isinstance(err, NotFound):
                return False
            raise err from None

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, **self._common())
            for page in pages:
                # botocore does not check the length of listing responses: a body cut
                # short can parse as an empty listing. Every real answer says IsTruncated.
                if "IsTruncated" not in page:
                    raise StoreError(f"incomplete listing of s3://{self.bucket}/{prefix}", key=prefix, transient=True)
                for obj in page.get("Contents", ()):
                    out.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj.get("LastModified")))
        except Exception as exc:
            raise self._translate(exc, "list", prefix) from None
        return out

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key, **self._common())
        except Exception as exc:
            err = self._translate(exc, "delete", key)
            if not isinstance(err, NotFound):
                raise err from None

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` with one DeleteObjects request per 1,000 (missing keys are no error); a server
        that does not implement it gets one delete per key."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                reply = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}, **self._common()
                )
            except Exception as exc:
                err = self._translate(exc, "delete", batch[0])
                if err.code not in ("NotImplemented", "MethodNotAllowed", "InvalidRequest", "MissingContentMD5"):
                    raise err from None
                for key in batch:
                    self.delete(key)
                continue
            failed = [e for e in reply.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise StoreError(f"delete {first.get('Key')}: {first.get('Code')}: {first.get('Message', '')}", transient=True)

    def cleanup(self, prefix: str, older_than: timedelta) -> int:
        """Abort multipart uploads under ``prefix`` started more than ``older_than`` ago.

        Parts of an upload killed midway are billed until aborted. Servers that
        do not implement multipart listing, and transient errors, are skipped
        silently; a server that does not answer raises :class:`NoAnswer`.
        """
        limit = datetime.now(timezone.utc) - older_than
        aborted = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix, **self._common())
            for page in pages:
                for up in page.get("Uploads", ()):
                    initiated = up.get("Initiated")
                    rest = up["Key"][len(prefix) :].lstrip("/")
                    ours = rest.startswith(("chunks/", "manifests/", "locks/", "parts/", "catalog/"))
                    if ours and initiated is not None and initiated < limit:
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"], **self._common())
                        aborted += 1
        except Exception as exc:
            err = self._translate(exc, "list uploads", prefix)
            # A store that does not answer is not skipped: the retry layer must see it (it then
            # stops waiting for that store), and the caller treats the cleanup as best effort anyway.
            if isinstance(err, NoAnswer):
                raise err from None
            if err.transient or isinstance(err, NotFound) or err.code in ("NotImplemented", "NoSuchUpload"):
                log.debug("multipart cleanup skipped: %s", err.message)
                return aborted
            raise err from None
        return aborted

    def close(self) -> None:
        with self._lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()

    # -- errors

    def _endpoint(self) -> str:
        """Where requests go, for messages (a password in the URL masked)."""
        client = self._client_obj
        url = self.options.endpoint_url or (str(client.meta.endpoint_url) if client is not None else "(AWS)")
        return mask_passwords(url)

    def _no_answer_hint(self) -> str:
        check = (
            "that --endpoint-url points at an S3 server and that it is healthy"
            if self.options.endpoint_url
            else "the network path to S3 (proxy, firewall, VPC endpoint)"
        )
        return f"check {check}; --retry-budget and --retries set how long ckptsync waits for an answer"

    def _translate(self, exc: BaseException, op: str, key: str) -> StoreError:
        where = f"s3://{self.bucket}/{key}"
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, UsageError):
            raise exc
        import botocore.exceptions as bex  # loaded already by the client the failed call went through

        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            detail = f"{code or status}"
            if code in ("NoSuchKey", "NotFound", "404") or (status == 404 and code not in ("NoSuchBucket",) and op in ("get", "head")):
                return NotFound(f"object {where} not found", key=key)
            if code == "NoSuchBucket":
                return StoreError(
                    f"bucket {self.bucket!r} does not exist",
                    "create the bucket, or check the remote URI and --endpoint-url",
                    key=key,
                )
            if code in ("PreconditionFailed",) or status == 412:
                return AlreadyExists(f"object {where} already exists", key=key)
            if code in _CREDENTIAL_CODES:
                return StoreError(
                    f"the S3 credentials were rejected ({code}) on {op} {where}",
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, --profile and the session token's expiry",
                    key=key,
                )
            if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
                return StoreError(
                    f"access denied ({code or 403}) on {op} {where}",
                    "grant s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject on the bucket, or check --expected-bucket-owner",
                    key=key,
                )
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return StoreError(f"S3 {op} {where} failed: {detail} (retrying may help)", key=key, transient=True, code=code or None)
            return StoreError(f"S3 {op} {where} failed: {detail} {err.get('Message', '')}".rstrip(), key=key, code=code or None)
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return StoreError(
                "no AWS credentials found",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an instance role",
            )
        if isinstance(exc, bex.ParamValidationError):
            return StoreError(f"invalid S3 request for {where}: {mask_passwords(str(exc))}")
        if isinstance(exc, bex.ConnectTimeoutError):
            return NoAnswer(
                f"cannot connect to the S3 endpoint {self._endpoint()}: no answer within {self.options.connect_timeout:g} s ({op} {where})",
                self._no_answer_hint(),
                key=key,
            )
        if isinstance(exc, (bex.ReadTimeoutError, TimeoutError)):
            return NoAnswer(
                f"the S3 endpoint {self._endpoint()} accepted the connection but sent nothing for {self.options.read_timeout:g} s"
                f" ({op} {where})",
                self._no_answer_hint(),
                key=key,
            )
        if isinstance(exc, bex.EndpointConnectionError):
            return StoreError(
                f"cannot connect to the S3 endpoint {self._endpoint()}",
                "check --endpoint-url and the network",
                key=key,
                transient=True,
            )
        if isinstance(exc, (bex.ConnectionClosedError, bex.ResponseStreamingError, bex.IncompleteReadError, bex.HTTPClientError)):
            return StoreError(f"connection failed during {op} {where}: {type(exc).__name__}", key=key, transient=True)
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return StoreError(f"connection failed during {op} {where}: {mask_passwords(str(exc))}", key=key, transient=True)
        if isinstance(exc, bex.BotoCoreError):
            return StoreError(f"S3 {op} {where} failed: {mask_passwords(str(exc))}", key=key)
        raise exc
