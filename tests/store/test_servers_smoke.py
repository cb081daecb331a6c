"""The S3 servers the test session starts work, and behave as the rest of the suite assumes."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration


def test_put_get_list_delete(s3_server):
    c = s3_server.client()
    bucket = s3_server.create_bucket()
    data = os.urandom(10_000)
    c.put_object(Bucket=bucket, Key="p/a/one", Body=data)
    c.put_object(Bucket=bucket, Key="p/two", Body=b"2")

    assert c.get_object(Bucket=bucket, Key="p/a/one")["Body"].read() == data
    listed = c.list_objects_v2(Bucket=bucket, Prefix="p/")
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {"p/a/one": 10_000, "p/two": 1}

    c.delete_object(Bucket=bucket, Key="p/a/one")
    assert [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="p/").get("Contents", [])] == ["p/two"]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=bucket, Key="p/a/one")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_if_none_match_star_on_existing_key(s3_server):
    """seaweedfs and moto refuse with 412 PreconditionFailed; rclone ignores the header and overwrites.

    If rclone starts honouring If-None-Match this fails: then set conditional_writes=True for it.
    """
    c = s3_server.client()
    bucket = s3_server.create_bucket()
    c.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")  # a new key: accepted everywhere

    if s3_server.conditional_writes:
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
        assert e.value.response["Error"]["Code"] == "PreconditionFailed"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"
    else:
        assert s3_server.name == "rclone"
        c.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
        assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"second"


def test_s3_remote_points_the_environment_at_a_fresh_bucket(s3_server, s3_remote):
    assert s3_remote.startswith("s3://") and s3_remote.endswith("/ckpts")
    bucket = s3_remote[len("s3://") :].split("/", 1)[0]
    assert os.environ["CKPTSYNC_ENDPOINT_URL"] == s3_server.endpoint_url
    assert os.environ["AWS_ACCESS_KEY_ID"] == s3_server.access_key
    assert os.environ["AWS_CONFIG_FILE"] == os.devnull
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
