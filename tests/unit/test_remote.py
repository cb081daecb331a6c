"""Remote URI parsing."""

import pytest

from ckptsync.errors import UsageError
from ckptsync.store import parse_remote


def test_s3_with_and_without_prefix():
    r = parse_remote("s3://my-bucket/runs/job-1/")
    assert (r.scheme, r.bucket, r.prefix) == ("s3", "my-bucket", "runs/job-1")
    assert parse_remote("s3://my-bucket").prefix == ""


def test_file_uri():
    r = parse_remote("file:///tmp/remote")
    assert (r.scheme, r.bucket, r.prefix) == ("file", "/tmp/remote", "")


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "bucket/prefix",
        "s3:/bucket",
        "s3://",
        "s3://UPPER",
        "s3://ab",
        "s3://b_ad/x",
        "s3://bucket/a/../b",
        "file://relative/x",
        "file:relative",
        "http://x/y",
        "gs://b/p",
    ],
)
def test_malformed_uris_are_usage_errors_with_a_hint(uri):
    with pytest.raises(UsageError) as e:
        parse_remote(uri)
    assert e.value.hint
