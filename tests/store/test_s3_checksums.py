"""Which integrity checks S3Store asks botocore for, by --checksum and by transport.

Requests are caught before they leave the client (botocore's ``before-send`` event
answers them), so these tests need no server and run the same for http and https.
"""

from __future__ import annotations

import hashlib
import io
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


def test_auto_over_http_signs_the_payload_sha256_and_sends_no_crc() -> None:
    """Over plain HTTP to another machine, SigV4 covers the body's SHA-256: no CRC32 is computed on top."""
    store, sent = _store("http://s3.example.test:9")
    config = store._client.meta.config
    assert (config.request_checksum_calculation, config.response_checksum_validation) == ("when_required", "when_required")
    store.put("chunks/ab/x.raw", BODY)
    store.put_if_absent("manifests/m.json", BODY)
    for request in sent:
        h = _headers(request)
        assert h["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest()
        assert not any(k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm" for k in h)


def test_auto_over_http_validates_downloads_that_carry_a_crc() -> None:
    """The response body is not signed over plain HTTP: a stored CRC is still asked for and checked."""
    store, sent = _store("http://10.0.0.7:9")
    assert store.get("manifests/m.json") == BODY
    assert _headers(sent[-1]).get("x-amz-checksum-mode") == "ENABLED"


def test_auto_over_https_sends_a_crc32_instead_of_signing_the_payload() -> None:
    """Over HTTPS botocore signs UNSIGNED-PAYLOAD: the CRC32 is the body's only end-to-end check, so it is sent."""
    store, sent = _store("https://s3.example.test")
    store.put("chunks/ab/x.raw", BODY)
    store.put_if_absent("manifests/m.json", BODY)
    for request in sent:
        h = _headers(request)
        assert "UNSIGNED-PAYLOAD" in h["x-amz-content-sha256"]
        assert "x-amz-checksum-crc32" in h or h.get("x-amz-trailer") == "x-amz-checksum-crc32"


def test_auto_over_https_does_not_validate_downloads() -> None:
    """TLS protects the transfer, and the reader checks every chunk's SHA-256."""
    store, sent = _store("https://s3.example.test")
    assert store.get("chunks/ab/x.raw") == BODY
    assert "x-amz-checksum-mode" not in _headers(sent[-1])


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "https://127.0.0.2:9"])
def test_auto_over_loopback_hashes_nothing_for_the_transfer(endpoint: str) -> None:
    """A loopback endpoint is no network: no payload SHA-256, no CRC32, no CRC asked for on downloads."""
    store, sent = _store(endpoint)
    store.put("chunks/ab/x.raw", BODY)
    store.put_if_absent("manifests/m.json", BODY)
    for request in sent:
        h = _headers(request)
        assert "UNSIGNED-PAYLOAD" in h["x-amz-content-sha256"]
        assert not any(k.startswith("x-amz-checksum-") or k in ("x-amz-sdk-checksum-algorithm", "x-amz-trailer") for k in h)
    assert store.get("chunks/ab/x.raw") == BODY
    assert "x-amz-checksum-mode" not in _headers(sent[-1])


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://s3.example.test:9"])
def test_when_supported_on_loopback_or_not_still_signs_plain_http_payloads(endpoint: str) -> None:
    """Only ``auto`` drops the transfer checks on loopback: an explicit mode keeps botocore's rules."""
    store, sent = _store(endpoint, "when_supported")
    store.put("chunks/ab/x.raw", BODY)
    assert _headers(sent[-1])["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest()


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
