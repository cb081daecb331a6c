"""Which integrity checks S3Store asks botocore for, by --checksum and by transport.

Requests are caught before they leave the client (botocore's ``before-send`` event
answers them), so these tests need no server and run the same for http and https.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from typing import Any

import pytest

from ckptsync.errors import UsageError
from ckptsync.store import S3Options, S3Store

BODY = b"chunk bytes " * 1000


class _Raw:
    """The little of urllib3's response that botocore reads."""

    def __init__(self, body: bytes) -> None:
        self._buf = io.BytesIO(body)

    def stream(self, amt: int = 1024, decode_content: bool = False) -> Any:
        while chunk := self._buf.read(amt):
            yield chunk

    def read(self, amt: int | None = None, **_: Any) -> bytes:
        return self._buf.read(amt)

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REQUEST_CHECKSUM_CALCULATION",
        "AWS_RESPONSE_CHECKSUM_VALIDATION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "checksumtestaccesskey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "checksumtestsecretkey")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _store(endpoint: str, checksum: str | None = None) -> tuple[S3Store, list[Any]]:
    """A store whose requests are recorded and answered without a network."""
    opts = S3Options(endpoint_url=endpoint) if checksum is None else S3Options(endpoint_url=endpoint, checksum=checksum)
    store = S3Store("bucket", opts)
    sent: list[Any] = []

    def answer(request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        sent.append(request)
        if request.method == "GET":
            return AWSResponse(request.url, 200, {"Content-Length": str(len(BODY))}, _Raw(BODY))
        return AWSResponse(request.url, 200, {}, _Raw(b""))

    store._client.meta.events.register("before-send.s3", answer)
    return store, sent


def _headers(request: Any) -> dict[str, str]:
    return {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}


def test_auto_is_the_default() -> None:
    assert S3Options().checksum == "auto"


CHUNK = "run/chunks/ab/" + "ab" * 32 + ".zstd"


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://s3.example.test"])
def test_auto_signs_unsigned_payload_and_sends_the_crc32_computed_by_ckptsync(endpoint: str) -> None:
    """No SigV4 SHA-256 pass over the body, on either transport: the server checks one CRC32 instead,
    computed once by the store (botocore adds no checksum of its own)."""
    store, sent = _store(endpoint)
    config = store._client.meta.config
    assert (config.request_checksum_calculation, config.response_checksum_validation) == ("when_required", "when_required")
    store.put(CHUNK, BODY)
    store.put_if_absent("run/manifests/m.json", BODY)
    expected = base64.b64encode(zlib.crc32(BODY).to_bytes(4, "big")).decode()
    for request in sent:
        h = _headers(request)
        assert h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert h["x-amz-checksum-crc32"] == expected
        assert not any(k.startswith("x-amz-checksum-") and k != "x-amz-checksum-crc32" for k in h)
        assert "x-amz-trailer" not in h


def test_auto_over_http_validates_downloads_but_chunks_by_their_own_sha256() -> None:
    """The response body is not signed over plain HTTP: a stored CRC is asked for and checked, except for
    chunks, whose content the reader checks against the SHA-256 that names them."""
    store, sent = _store("http://127.0.0.1:9")
    assert store.get("run/manifests/m.json") == BODY
    assert _headers(sent[-1]).get("x-amz-checksum-mode") == "ENABLED"
    assert store.get(CHUNK) == BODY
    assert "x-amz-checksum-mode" not in _headers(sent[-1])


def test_auto_over_https_does_not_validate_downloads() -> None:
    """TLS protects the transfer, and the reader checks every chunk's SHA-256."""
    store, sent = _store("https://s3.example.test")
    assert store.get(CHUNK) == BODY
    assert "x-amz-checksum-mode" not in _headers(sent[-1])


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://s3.example.test"])
def test_when_supported_sends_and_validates_crcs_on_any_transport(endpoint: str) -> None:
    store, sent = _store(endpoint, "when_supported")
    config = store._client.meta.config
    assert (config.request_checksum_calculation, config.response_checksum_validation) == ("when_supported", "when_supported")
    store.put("chunks/ab/x.raw", BODY)
    h = _headers(sent[-1])
    assert "x-amz-checksum-crc32" in h or h.get("x-amz-trailer") == "x-amz-checksum-crc32"
    store.get("chunks/ab/x.raw")
    assert _headers(sent[-1]).get("x-amz-checksum-mode") == "ENABLED"


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://s3.example.test"])
def test_when_required_sends_no_checksum_headers(endpoint: str) -> None:
    """For servers that reject checksum headers; the payload's SHA-256 is signed instead (botocore's rule)."""
    store, sent = _store(endpoint, "when_required")
    store.put("chunks/ab/x.raw", BODY)
    store.get("chunks/ab/x.raw")
    for request in sent:
        h = _headers(request)
        assert not any(k.startswith("x-amz-checksum") or k in ("x-amz-sdk-checksum-algorithm", "x-amz-trailer") for k in h)
    assert _headers(sent[0])["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest()


def test_unknown_checksum_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        S3Store("bucket", S3Options(endpoint_url="http://127.0.0.1:9", checksum="always"))._client  # noqa: B018
