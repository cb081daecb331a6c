"""One conformance suite for every store: local folder, S3 via moto in-process, and real servers.

Each test pins one line of the contract in ckptsync/store/base.py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from ckptsync.errors import AlreadyExists, NotFound, ObjectTooLarge, StoreError
from ckptsync.store import LocalStore, S3Options, S3Store, delete_many
from tests.helpers import use_env


@pytest.fixture(params=["local", "moto-inprocess", "seaweedfs", "rclone", "moto-server"])
def store(request, tmp_path, monkeypatch):
    kind = request.param
    if kind == "local":
        yield LocalStore(tmp_path)
        return
    if kind == "moto-inprocess":
        from moto import mock_aws

        use_env(monkeypatch, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
        with mock_aws():
            import boto3

            boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="conformance")
            s = S3Store("conformance")
            s.conditional_writes = True
            yield s
            s.close()
        return
    fixture = {"seaweedfs": "seaweedfs", "rclone": "rclone_s3", "moto-server": "moto_s3"}[kind]
    server = request.getfixturevalue(fixture)
    use_env(monkeypatch, server=server)
    bucket = server.create_bucket()
    s = S3Store(bucket, S3Options(endpoint_url=server.endpoint_url, region=server.region))
    s.conditional_writes = server.conditional_writes
    yield s
    s.close()


def test_put_then_get_returns_the_same_bytes(store):
    data = os.urandom(100_000)
    store.put("p/a/b", data)
    assert store.get("p/a/b") == data
    assert store.exists("p/a/b")


def test_put_accepts_a_memoryview(store):
    store.put("p/mv", memoryview(b"0123456789")[2:5])
    assert store.get("p/mv") == b"234"


def test_put_overwrites(store):
    store.put("p/x", b"one")
    store.put("p/x", b"two")
    assert store.get("p/x") == b"two"


def test_empty_object(store):
    store.put("p/empty", b"")
    assert store.get("p/empty") == b""


def test_get_missing_raises_not_found(store):
    with pytest.raises(NotFound):
        store.get("p/missing")
    assert not store.exists("p/missing")


def test_get_with_max_size_refuses_larger_objects(store):
    store.put("p/big", b"x" * 1000)
    assert store.get("p/big", max_size=1000) == b"x" * 1000
    with pytest.raises(ObjectTooLarge) as e:
        store.get("p/big", max_size=999)
    assert not e.value.transient


def test_put_if_absent_creates_and_then_refuses_where_enforced(store):
    store.put_if_absent("p/m/1.json", b"first")
    assert store.get("p/m/1.json") == b"first"
    if store.conditional_writes:
        with pytest.raises(AlreadyExists):
            store.put_if_absent("p/m/1.json", b"second")
        assert store.get("p/m/1.json") == b"first"
    else:  # the server ignores If-None-Match: the caller's keys must not collide
        store.put_if_absent("p/m/1.json", b"second")
        assert store.get("p/m/1.json") == b"second"


def test_concurrent_conditional_creates_let_exactly_one_win_where_enforced(store, request):
    def attempt(i):
        try:
            store.put_if_absent("p/race.json", f"writer {i}".encode())
            return i
        except AlreadyExists:
            return None
        except StoreError as exc:  # rclone answers concurrent writes of one key with a 500
            assert exc.transient and not store.conditional_writes
            return None

    with ThreadPoolExecutor(8) as pool:
        winners = [w for w in pool.map(attempt, range(8)) if w is not None]
    if store.conditional_writes:
        assert len(winners) == 1
        assert store.get("p/race.json") == f"writer {winners[0]}".encode()
    else:  # writers overwrite each other; the object is whole and one of theirs
        assert winners
        try:
            assert store.get("p/race.json") in {f"writer {i}".encode() for i in range(8)}
        except NotFound:
            # rclone serve s3 sometimes loses a key that several clients write at the same moment, whether the
            # payload is signed or not (measured: 2 of 300 rounds of 8 writers signed, 1 of 100 unsigned). Never
            # a torn object: what is there is whole. ckptsync never writes one key twice at once in one process.
            assert request.node.callspec.params["store"] == "rclone"


def test_list_returns_every_key_under_the_prefix_with_sizes(store):
    for i in range(25):
        store.put(f"p/list/k{i:02d}", b"x" * i)
    store.put("p/listing-not", b"y")
    store.put("p/other/k", b"z")
    found = {o.key: o.size for o in store.list("p/list/")}
    assert found == {f"p/list/k{i:02d}": i for i in range(25)}


def test_list_of_an_empty_prefix_is_empty(store):
    assert store.list("p/nothing/") == []


def test_delete_is_idempotent(store):
    store.put("p/d", b"x")
    store.delete("p/d")
    store.delete("p/d")
    assert not store.exists("p/d")
    assert store.list("p/d") == []


def test_cleanup_returns_a_count_and_keeps_objects(store):
    store.put("p/keep", b"x")
    assert store.cleanup("p/", timedelta(hours=1)) >= 0
    assert store.get("p/keep") == b"x"


def test_local_store_leaves_no_temp_file_and_cleans_stale_ones(tmp_path):
    s = LocalStore(tmp_path)
    s.put("a/b", b"x")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
    stale = tmp_path / "a" / ".ckptsync-tmp-b.123"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    assert [o.key for o in s.list("a/")] == ["a/b"]
    assert s.cleanup("a/", timedelta(hours=1)) == 1
    assert not stale.exists()


def test_local_store_refuses_keys_that_escape(tmp_path):
    s = LocalStore(tmp_path / "root")
    for key in ("../x", "a/../../x", "", "a//b"):
        with pytest.raises(StoreError):
            s.put(key, b"x")
    assert not (tmp_path / "x").exists()


def test_local_store_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        LocalStore(Path(tmp_path / "nope")).list("chunks/")


def test_delete_many_deletes_every_key_and_ignores_missing_ones(store):
    keys = [f"many/{i:04d}" for i in range(1005)]  # more than one DeleteObjects request
    for k in keys[:5] + keys[-3:]:
        store.put(k, b"x")
    delete_many(store, keys)
    assert store.list("many/") == []
    delete_many(store, keys[:2])  # again: nothing left, no error
