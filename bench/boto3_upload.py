"""The simplest uploader a training script would write: a boto3 ``upload_file`` loop.

Usage: python bench/boto3_upload.py SRC_DIR s3://bucket/prefix [--endpoint-url URL]

Uploads every file under SRC_DIR, in sorted order, one after the other, as
``prefix/<relative path>``, with boto3's default TransferConfig (multipart
above 8 MiB, 10 threads per file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import boto3
from botocore.config import Config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("remote")
    ap.add_argument("--endpoint-url")
    a = ap.parse_args()
    if not a.remote.startswith("s3://"):
        sys.exit("remote must be s3://bucket/prefix")
    bucket, _, prefix = a.remote[5:].partition("/")
    prefix = prefix.strip("/")
    cfg = Config(s3={"addressing_style": "path"}) if a.endpoint_url else None
    s3 = boto3.client("s3", endpoint_url=a.endpoint_url, config=cfg)
    n = 0
    for f in sorted(p for p in a.src.rglob("*") if p.is_file()):
        key = f.relative_to(a.src).as_posix()
        s3.upload_file(str(f), bucket, f"{prefix}/{key}" if prefix else key)
        n += 1
    print(f"uploaded {n} files")


if __name__ == "__main__":
    main()
