"""The S3 store under injected network faults: each fault is either retried into a correct result or
reported as an error, never silently turned into a wrong one."""

from __future__ import annotations

import os

import pytest

from ckptsync.errors import StoreError
from ckptsync.store import RetryingStore, RetryPolicy, S3Options, S3Store
from tests.faults.proxy import S3Proxy, reset_request, reset_response, status, truncate_body
from tests.helpers import use_env

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied(rclone_s3, monkeypatch):
    use_env(monkeypatch, server=rclone_s3)
    bucket = rclone_s3.create_bucket()
    with S3Proxy(rclone_s3) as proxy:
        store = S3Store(bucket, S3Options(endpoint_url=proxy.endpoint_url))
        yield proxy, store
        store.close()


def test_a_listing_cut_short_is_an_error_not_an_empty_listing(proxied):
    proxy, store = proxied
    store.put("p/a", b"x")
    proxy.add_rule(truncate_body(0), method="GET", query="list-type", times=1)
    with pytest.raises(StoreError) as e:
        store.list("p/")
    assert e.value.transient
    assert [o.key for o in RetryingStore(store, RetryPolicy(attempts=3), sleep=lambda s: None).list("p/")] == ["p/a"]


@pytest.mark.parametrize(
    "fault",
    [status(503, "SlowDown"), status(500, "InternalError"), reset_request(), reset_request(after_bytes=1000), reset_response()],
    ids=["503", "500", "reset-before", "reset-mid-body", "reset-after-applied"],
)
def test_transient_put_faults_are_retried_and_the_object_is_byte_identical(proxied, fault):
    proxy, store = proxied
    data = os.urandom(300_000)
    proxy.add_rule(fault, method="PUT", times=2)
    sleeps: list[float] = []
    RetryingStore(store, RetryPolicy(attempts=4), sleep=sleeps.append).put("p/chunk", data)
    assert len(sleeps) == 2
    assert store.get("p/chunk") == data


@pytest.mark.parametrize("fault", [truncate_body(1000), reset_response(after_bytes=5000)], ids=["truncated", "reset"])
def test_a_download_cut_short_is_retried_and_never_returned_short(proxied, fault):
    proxy, store = proxied
    data = os.urandom(200_000)
    store.put("p/obj", data)
    proxy.add_rule(fault, method="GET", path=r"/p/obj", times=1)
    with pytest.raises(StoreError) as e:
        store.get("p/obj")
    assert e.value.transient
    proxy.add_rule(fault, method="GET", path=r"/p/obj", times=1)
    assert RetryingStore(store, RetryPolicy(attempts=3), sleep=lambda s: None).get("p/obj") == data
