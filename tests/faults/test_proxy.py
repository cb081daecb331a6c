"""Pins the behaviour of tests/faults/proxy.py against the real test servers: plain pass-through on each of
seaweedfs, rclone and moto, and what a botocore client observes for each fault action."""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
import urllib.parse

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    FlexibleChecksumError,
    HTTPClientError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from tests.faults.proxy import (
    MAX_STALL_S,
    S3Proxy,
    flip_bits,
    reset_request,
    reset_response,
    stall,
    status,
    status_after_forward,
    trickle,
    truncate_body,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ONE_ATTEMPT = {"mode": "standard", "total_max_attempts": 1}
MiB = 1 << 20
CHUNK = "ckpts/chunks/ab/ab12cd.zst"
MANIFEST = "ckpts/manifests/run1/0001.json"


@pytest.fixture
def make_proxy():
    """``make_proxy(server, **kwargs)`` -> a started S3Proxy in front of ``server``; all stopped at teardown."""
    proxies: list[S3Proxy] = []

    def make(server, **kwargs) -> S3Proxy:
        proxy = S3Proxy(server, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield make
    for p in proxies:
        p.stop()


def client_via(proxy: S3Proxy, server, **config):
    """A boto3 client for ``server``'s credentials, pointed at the proxy: path-style, a single attempt."""
    return proxy.wrap(server).client(s3={"addressing_style": "path"}, retries=ONE_ATTEMPT, **config)


def exists(server, bucket: str, key: str) -> bytes | None:
    """The object's content, read directly from the server (not through the proxy), or None."""
    try:
        return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchKey"
        return None


def error_code(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


# --------------------------------------------------------------------------- pass-through, on every server


def test_pass_through_put_get_list_head_delete(s3_server):
    with S3Proxy(s3_server) as proxy:  # the context-manager form
        assert proxy.endpoint_url == f"http://127.0.0.1:{proxy.port}" and proxy.backend == s3_server.endpoint_url
        c = client_via(proxy, s3_server)
        bucket = s3_server.create_bucket()
        small, big = os.urandom(1000), os.urandom(5 * MiB)
        c.put_object(Bucket=bucket, Key=MANIFEST, Body=small)
        c.put_object(Bucket=bucket, Key=CHUNK, Body=big)  # >= 1 MB: botocore sends Expect: 100-continue

        assert c.get_object(Bucket=bucket, Key=MANIFEST)["Body"].read() == small
        assert c.get_object(Bucket=bucket, Key=CHUNK)["Body"].read() == big
        listed = c.list_objects_v2(Bucket=bucket, Prefix="ckpts/")
        assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {MANIFEST: 1000, CHUNK: 5 * MiB}
        assert c.head_object(Bucket=bucket, Key=CHUNK)["ContentLength"] == 5 * MiB
        c.delete_object(Bucket=bucket, Key=MANIFEST)
        with pytest.raises(ClientError) as e:  # errors of the backend are relayed as they are
            c.get_object(Bucket=bucket, Key=MANIFEST)
        assert error_code(e) == ("NoSuchKey", 404)

        log = proxy.requests()
        assert [(r.method, r.status) for r in log] == [
            ("PUT", 200),
            ("PUT", 200),
            ("GET", 200),
            ("GET", 200),
            ("GET", 200),
            ("HEAD", 200),
            ("DELETE", 204),
            ("GET", 404),
        ]
        assert all(r.fault is None and r.backend_status == r.status for r in log)
        put_big = log[1]
        assert put_big.path == f"/{bucket}/{CHUNK}" and put_big.body_bytes == 5 * MiB
        assert put_big.header("Expect") == "100-continue"
        assert put_big.header("Host") == f"127.0.0.1:{proxy.port}"  # forwarded unchanged: SigV4 signed it
        assert log[4].path == f"/{bucket}" and "list-type=2" in log[4].query
        assert proxy.connections == 1  # keep-alive: botocore reused one connection throughout
    assert exists(s3_server, bucket, CHUNK) == big


def test_pass_through_multipart_upload(s3_server, make_proxy):
    proxy = make_proxy(s3_server)
    c = client_via(proxy, s3_server)
    bucket = s3_server.create_bucket()
    parts = [os.urandom(5 * MiB), os.urandom(1234)]
    upload = c.create_multipart_upload(Bucket=bucket, Key=CHUNK)["UploadId"]
    etags = [c.upload_part(Bucket=bucket, Key=CHUNK, UploadId=upload, PartNumber=n, Body=b)["ETag"] for n, b in enumerate(parts, 1)]
    c.complete_multipart_upload(
        Bucket=bucket, Key=CHUNK, UploadId=upload, MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]}
    )
    assert c.get_object(Bucket=bucket, Key=CHUNK)["Body"].read() == b"".join(parts)
    log = proxy.requests()
    assert [(r.method, r.query.split("=")[0]) for r in log[:4]] == [
        ("POST", "uploads"),
        ("PUT", "uploadId"),
        ("PUT", "uploadId"),
        ("POST", "uploadId"),
    ]
    assert [r.body_bytes for r in log[1:3]] == [5 * MiB, 1234]


def _chunked_put(server, endpoint: str, bucket: str, key: str, data: bytes) -> int:
    """PUT with ``Transfer-Encoding: chunked`` (no Content-Length), signed for ``endpoint``; the HTTP status."""
    url = f"{endpoint}/{bucket}/{key}"
    req = AWSRequest(method="PUT", url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(server.access_key, server.secret_key), "s3", server.region).add_auth(req)
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest("PUT", u.path, skip_host=True, skip_accept_encoding=True)
        for k, v in [*req.headers.items(), ("Host", u.netloc), ("Transfer-Encoding", "chunked")]:
            conn.putheader(k, v)
        conn.endheaders()
        for i in range(0, len(data), 3000):
            conn.send(b"%x\r\n%s\r\n" % (len(data[i : i + 3000]), data[i : i + 3000]))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_pass_through_chunked_request_body(s3_server, make_proxy):
    """The chunk framing is forwarded as is. rclone refuses chunked PUTs (411 MissingContentLength, as AWS
    does); seaweedfs and moto accept them. Through the proxy each answers as it does directly."""
    proxy = make_proxy(s3_server)
    bucket = s3_server.create_bucket()
    data = os.urandom(10_000)
    direct = _chunked_put(s3_server, s3_server.endpoint_url, bucket, "direct", data)
    proxied = _chunked_put(s3_server, proxy.endpoint_url, bucket, "proxied", data)
    assert direct == proxied == (411 if s3_server.name == "rclone" else 200)
    assert proxy.requests()[0].body_bytes == 10_000
    if proxied == 200:
        assert exists(s3_server, bucket, "proxied") == data


# --------------------------------------------------------------------------- status / status_after_forward


def test_status_answers_without_forwarding(s3_server, make_proxy):
    proxy = make_proxy(s3_server)
    c = client_via(proxy, s3_server)
    bucket = s3_server.create_bucket()
    rule = proxy.add_rule(status(503, "SlowDown"), method="PUT", path=r"/chunks/", times=1)
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=bucket, Key=CHUNK, Body=os.urandom(2 * MiB))  # with Expect: 100-continue
    assert error_code(e) == ("SlowDown", 503)
    assert exists(s3_server, bucket, CHUNK) is None
    c.put_object(Bucket=bucket, Key=CHUNK, Body=b"second")  # times=1: the next one goes through
    assert exists(s3_server, bucket, CHUNK) == b"second"
    assert rule.hits == 1 and rule.used_up
    assert [(r.status, r.fault, r.backend_status) for r in proxy.requests()] == [(503, "status", None), (200, None, 200)]
    assert proxy.connections == 1  # the connection stays usable after an injected error


def test_status_on_head_has_no_body(moto_s3, make_proxy):
    """A HEAD error has no body, so botocore only sees the HTTP status: code "500", not the S3 code."""
    proxy = make_proxy(moto_s3)
    proxy.add_rule(status(500, "InternalError"), method="HEAD")
    with pytest.raises(ClientError) as e:
        client_via(proxy, moto_s3).head_object(Bucket=moto_s3.create_bucket(), Key=MANIFEST)
    assert error_code(e) == ("500", 500)


def test_status_after_forward_applies_the_put(s3_server, make_proxy):
    proxy = make_proxy(s3_server)
    c = client_via(proxy, s3_server)
    bucket = s3_server.create_bucket()
    proxy.add_rule(status_after_forward(500, "InternalError"), method="PUT", path="/manifests/")
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=bucket, Key=MANIFEST, Body=b'{"v": 1}')
    assert error_code(e) == ("InternalError", 500)
    assert exists(s3_server, bucket, MANIFEST) == b'{"v": 1}'
    (rec,) = proxy.requests()
    assert (rec.status, rec.backend_status, rec.fault) == (500, 200, "status_after_forward")


def test_status_after_forward_applies_complete_multipart(s3_server, make_proxy):
    proxy = make_proxy(s3_server)
    c = client_via(proxy, s3_server)
    bucket = s3_server.create_bucket()
    upload = c.create_multipart_upload(Bucket=bucket, Key=CHUNK)["UploadId"]
    etag = c.upload_part(Bucket=bucket, Key=CHUNK, UploadId=upload, PartNumber=1, Body=b"part")["ETag"]
    proxy.add_rule(status_after_forward(), method="POST", query="uploadId=")
    with pytest.raises(ClientError) as e:
        c.complete_multipart_upload(Bucket=bucket, Key=CHUNK, UploadId=upload, MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
    assert error_code(e) == ("InternalError", 500)
    assert exists(s3_server, bucket, CHUNK) == b"part"


# --------------------------------------------------------------------------- resets


def test_reset_request_before_forwarding(moto_s3, make_proxy):
    proxy = make_proxy(moto_s3)
    bucket = moto_s3.create_bucket()
    proxy.add_rule(reset_request(), method="PUT")
    with pytest.raises(ConnectionClosedError):
        client_via(proxy, moto_s3).put_object(Bucket=bucket, Key=CHUNK, Body=b"x" * 100)
    assert exists(moto_s3, bucket, CHUNK) is None
    (rec,) = proxy.requests()
    assert (rec.status, rec.body_bytes, rec.fault, rec.backend_status) == (None, 100, "reset_request", None)


def test_reset_request_mid_body(rclone_s3, make_proxy):
    proxy = make_proxy(rclone_s3)
    bucket = rclone_s3.create_bucket()
    proxy.add_rule(reset_request(after_bytes=MiB), method="PUT", path="/chunks/")
    with pytest.raises(HTTPClientError):  # ConnectionClosedError (reset while sending or waiting)
        client_via(proxy, rclone_s3).put_object(Bucket=bucket, Key=CHUNK, Body=os.urandom(5 * MiB))
    assert exists(rclone_s3, bucket, CHUNK) is None
    assert proxy.requests()[0].body_bytes == MiB


def test_reset_response_after_the_server_applied_it(s3_server, make_proxy):
    proxy = make_proxy(s3_server)
    bucket = s3_server.create_bucket()
    proxy.add_rule(reset_response(), method="PUT")
    with pytest.raises(ConnectionClosedError):
        client_via(proxy, s3_server).put_object(Bucket=bucket, Key=MANIFEST, Body=b"applied")
    assert exists(s3_server, bucket, MANIFEST) == b"applied"
    (rec,) = proxy.requests()
    assert (rec.status, rec.backend_status) == (None, 200)


def test_reset_response_mid_body(seaweedfs, make_proxy):
    proxy = make_proxy(seaweedfs)
    bucket = seaweedfs.create_bucket()
    seaweedfs.client().put_object(Bucket=bucket, Key=CHUNK, Body=os.urandom(100_000))
    proxy.add_rule(reset_response(after_bytes=1000), method="GET")
    resp = client_via(proxy, seaweedfs).get_object(Bucket=bucket, Key=CHUNK)  # the headers arrive whole
    assert resp["ContentLength"] == 100_000
    with pytest.raises(ResponseStreamingError, match="reset"):
        resp["Body"].read()


# --------------------------------------------------------------------------- stall / trickle / bwlimit


def test_stall_beyond_the_read_timeout(rclone_s3, make_proxy):
    proxy = make_proxy(rclone_s3)
    bucket = rclone_s3.create_bucket()
    proxy.add_rule(stall(0.6), method="HEAD", times=1)
    c = client_via(proxy, rclone_s3, read_timeout=0.2)
    with pytest.raises(ReadTimeoutError):
        c.head_bucket(Bucket=bucket)


def test_stall_then_forwards(rclone_s3, make_proxy):
    proxy = make_proxy(rclone_s3)
    bucket = rclone_s3.create_bucket()
    proxy.add_rule(stall(0.3), method="PUT")
    t0 = time.monotonic()
    client_via(proxy, rclone_s3).put_object(Bucket=bucket, Key=MANIFEST, Body=b"late")
    assert time.monotonic() - t0 >= 0.3
    assert exists(rclone_s3, bucket, MANIFEST) == b"late"


def test_trickle_sends_the_body_slowly(rclone_s3, make_proxy):
    proxy = make_proxy(rclone_s3)
    bucket = rclone_s3.create_bucket()
    data = os.urandom(20_000)
    rclone_s3.client().put_object(Bucket=bucket, Key=CHUNK, Body=data)
    proxy.add_rule(trickle(50_000), method="GET")
    t0 = time.monotonic()
    assert client_via(proxy, rclone_s3).get_object(Bucket=bucket, Key=CHUNK)["Body"].read() == data
    assert 0.35 <= time.monotonic() - t0 < 2.0  # 20 kB at 50 kB/s: 0.4 s


def test_bwlimit_limits_both_directions(rclone_s3, make_proxy):
    proxy = make_proxy(rclone_s3, bwlimit=400_000)
    c = client_via(proxy, rclone_s3)
    bucket = rclone_s3.create_bucket()
    data = os.urandom(100_000)
    t0 = time.monotonic()
    c.put_object(Bucket=bucket, Key=CHUNK, Body=data)
    t1 = time.monotonic()
    assert c.get_object(Bucket=bucket, Key=CHUNK)["Body"].read() == data
    t2 = time.monotonic()
    assert t1 - t0 >= 0.2 and t2 - t1 >= 0.2  # 100 kB at 400 kB/s: 0.25 s each way


# --------------------------------------------------------------------------- truncate / flip


def test_truncate_body_of_a_download(moto_s3, make_proxy):
    proxy = make_proxy(moto_s3)
    bucket = moto_s3.create_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key=CHUNK, Body=os.urandom(100_000))
    proxy.add_rule(truncate_body(1000), method="GET")
    resp = client_via(proxy, moto_s3).get_object(Bucket=bucket, Key=CHUNK)
    assert resp["ContentLength"] == 100_000  # the original length is announced
    with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
        resp["Body"].read()


def test_truncate_body_of_a_listing_botocore_quirk(moto_s3, make_proxy):
    """botocore does not check Content-Length for non-streaming responses (enforce_content_length=False): a
    cut XML body is only noticed when it does not parse (then it reports a retryable 500), and a body cut to
    0 bytes is parsed as an EMPTY listing, no error at all."""
    proxy = make_proxy(moto_s3)
    bucket = moto_s3.create_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key=MANIFEST, Body=b"{}")
    c = client_via(proxy, moto_s3)
    proxy.add_rule(truncate_body(0), method="GET", times=1)
    listed = c.list_objects_v2(Bucket=bucket, Prefix="ckpts/")
    assert "Contents" not in listed and "KeyCount" not in listed  # silently empty
    proxy.add_rule(truncate_body(50), method="GET", times=1)
    with pytest.raises(ClientError) as e:
        c.list_objects_v2(Bucket=bucket, Prefix="ckpts/")
    assert error_code(e) == ("500", 500)
    assert c.list_objects_v2(Bucket=bucket, Prefix="ckpts/")["KeyCount"] == 1


def test_flip_bits_is_caught_by_the_response_checksum(s3_server, make_proxy):
    """All three servers return the x-amz-checksum-crc32 botocore sent with the PUT, so a default client
    (response_checksum_validation="when_supported") notices; one that skips validation gets the bad bytes."""
    proxy = make_proxy(s3_server, rng=random.Random(1))
    bucket = s3_server.create_bucket()
    data = os.urandom(10_000)
    s3_server.client().put_object(Bucket=bucket, Key=CHUNK, Body=data)
    proxy.add_rule(flip_bits(), method="GET")
    with pytest.raises(FlexibleChecksumError):
        client_via(proxy, s3_server).get_object(Bucket=bucket, Key=CHUNK)["Body"].read()
    got = client_via(proxy, s3_server, response_checksum_validation="when_required").get_object(Bucket=bucket, Key=CHUNK)["Body"].read()
    assert len(got) == len(data) and got != data
    diff = int.from_bytes(got, "big") ^ int.from_bytes(data, "big")
    assert diff.bit_count() == 1


def test_flip_bits_at_an_offset(moto_s3, make_proxy):
    proxy = make_proxy(moto_s3)
    bucket = moto_s3.create_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key=MANIFEST, Body=b"abcdef")
    proxy.add_rule(flip_bits(offset=3), method="GET")
    got = client_via(proxy, moto_s3, response_checksum_validation="when_required").get_object(Bucket=bucket, Key=MANIFEST)["Body"].read()
    assert got == b"abceef"


# --------------------------------------------------------------------------- rules, counting, lifecycle


def test_first_matching_rule_wins_and_filters(moto_s3, make_proxy):
    proxy = make_proxy(moto_s3)
    c = client_via(proxy, moto_s3)
    bucket = moto_s3.create_bucket()
    proxy.add_rule(status(503, "SlowDown"), method="put", path=r"/manifests/[^/]+/\d+\.json$")
    proxy.add_rule(status(500, "InternalError"), method=("PUT", "DELETE"))
    proxy.add_rule(status(503, "ServiceUnavailable"), method="POST", query="uploads")
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=bucket, Key=MANIFEST, Body=b"m")
    assert error_code(e) == ("SlowDown", 503)
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=bucket, Key=CHUNK, Body=b"c")
    assert error_code(e) == ("InternalError", 500)
    with pytest.raises(ClientError) as e:
        c.create_multipart_upload(Bucket=bucket, Key=CHUNK)
    assert error_code(e) == ("ServiceUnavailable", 503)
    c.list_objects_v2(Bucket=bucket)  # GET: no rule matches
    assert [r.hits for r in proxy.rules] == [1, 1, 1]
    proxy.clear_rules()
    c.put_object(Bucket=bucket, Key=MANIFEST, Body=b"m")


def test_times_and_seeded_probability(moto_s3, make_proxy):
    bucket = moto_s3.create_bucket()

    def pattern(seed: int) -> list[bool]:
        proxy = make_proxy(moto_s3, rng=random.Random(seed))
        proxy.add_rule(status(503, "SlowDown"), method="HEAD", probability=0.5)
        c = client_via(proxy, moto_s3)
        failed = []
        for _ in range(24):
            try:
                c.head_bucket(Bucket=bucket)
                failed.append(False)
            except ClientError:
                failed.append(True)
        assert failed == [r.fault == "status" for r in proxy.requests()]
        return failed

    first = pattern(42)
    assert first == pattern(42)  # reproducible
    assert 0 < sum(first) < len(first)

    proxy = make_proxy(moto_s3)
    rule = proxy.add_rule(status(503, "SlowDown"), method="HEAD", times=3)
    c = client_via(proxy, moto_s3)
    outcomes = []
    for _ in range(5):
        try:
            c.head_bucket(Bucket=bucket)
            outcomes.append("ok")
        except ClientError:
            outcomes.append("503")
    assert outcomes == ["503", "503", "503", "ok", "ok"] and rule.hits == 3


def test_count_and_reset(moto_s3, make_proxy):
    proxy = make_proxy(moto_s3)
    c = client_via(proxy, moto_s3)
    bucket = moto_s3.create_bucket()
    for h in ("aa", "bb", "cc"):
        c.put_object(Bucket=bucket, Key=f"ckpts/chunks/{h}/{h * 32}.zst", Body=b"c")
    c.put_object(Bucket=bucket, Key=MANIFEST, Body=b"m")
    c.get_object(Bucket=bucket, Key=MANIFEST)["Body"].read()
    assert proxy.count("PUT", "/chunks/") == 3
    assert proxy.count("put") == 4 and proxy.count(path_contains="/manifests/") == 2 and proxy.count() == 5
    assert proxy.count("GET", "/chunks/") == 0
    snapshot = proxy.requests()
    proxy.reset()
    assert proxy.count() == 0 and len(snapshot) == 5  # requests() is a copy


def test_backend_down_is_a_502(moto_s3, make_proxy):
    dead = S3Proxy(moto_s3).start()
    dead.stop()  # nothing listens on its port any more
    proxy = make_proxy(dead.endpoint_url)
    with pytest.raises(ClientError) as e:
        client_via(proxy, moto_s3).head_bucket(Bucket="whatever")
    assert error_code(e)[1] == 502
    assert proxy.requests()[0].fault == "backend-error"


def test_stop_is_prompt_with_stalled_and_trickling_connections(rclone_s3):
    bucket = rclone_s3.create_bucket()
    rclone_s3.client().put_object(Bucket=bucket, Key=CHUNK, Body=os.urandom(10_000))
    proxy = S3Proxy(rclone_s3).start()
    stalled = proxy.add_rule(stall(MAX_STALL_S), method="HEAD")
    trickling = proxy.add_rule(trickle(10), method="GET")
    errors: list[BaseException] = []

    def call(fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - whatever the client makes of the closed connection
            errors.append(e)

    c = client_via(proxy, rclone_s3)
    threads = [
        threading.Thread(target=call, args=(lambda: c.head_object(Bucket=bucket, Key=CHUNK),), daemon=True),
        threading.Thread(target=call, args=(lambda: c.get_object(Bucket=bucket, Key=CHUNK)["Body"].read(),), daemon=True),
    ]
    for t in threads:
        t.start()
    assert stalled.wait() and trickling.wait()
    t0 = time.monotonic()
    proxy.stop()
    assert time.monotonic() - t0 < 2.0
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert len(errors) == 2 and all(isinstance(e, HTTPClientError) for e in errors)
