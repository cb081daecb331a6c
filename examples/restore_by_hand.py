"""Restore the newest checkpoint of an s3:// ckptsync remote (format versions 1 to 7), without ckptsync.

    python examples/restore_by_hand.py s3://bucket/prefix /path/to/target [host]

A reader written from docs/FORMAT.md with boto3, zstandard, numpy (for byte grouping), blake3 (for
version 7) and the standard library only; a reference for the format, not a replacement for
``ckptsync restore``.
It prints the path of the restored checkpoint, or nothing if the remote holds no committed
checkpoint. Credentials, region and endpoint come from the usual boto3 configuration (for an
S3-compatible server, set ``AWS_ENDPOINT_URL``).

It applies the latest order (FORMAT 6), the version rules (5.8: it stops with an error that names the
version on a remote that holds a manifest of version 8 or later, rather than restore an older
checkpoint), the key checks (5.7), the grouping and completeness of multi-host checkpoints (7.3,
and the seals of version 5, 7.5), the choice of this host's part (7.4: the host given as the third
argument, else ``SM_CURRENT_HOST``, else the machine's host name; an error when that host has no
part) with, in version 5, the lead's files that are not one rank's, the path rules that matter for
safety, the chunk checks of every codec (4.3 to 4.5), the ranges of chunk parts (5.5), the file hash
check (5.4: the content's hash, or from version 6 the piece digest of a file of several pieces, by
SHA-256 or from version 7 BLAKE3, 4.1), and staged placement (R3). Its staging folder is named as ckptsync names its own (2.4), so a
ckptsync restore into the same target folder on another machine leaves it alone.

It does not apply every rule of the reader checklist (5.9), does not fall back to an older checkpoint
when the newest is damaged, does not restore every host's files of a multi-host checkpoint (nor read
a torch.distributed.checkpoint ``.metadata`` for values another node saved), does not use the
catalog (5.10), and
fetches chunks one at a time. It ignores ``locks/`` and takes no shared lock (8.4), so a prune that
runs at the same time can make it fail on a missing chunk; it never restores wrong data, and running
it again after the prune succeeds. Unlike ckptsync, it replaces an existing ``<target>/<name>`` in
two renames, so for a moment neither the old nor the new checkpoint is at the final path.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import socket
import struct
import sys
from datetime import datetime
from urllib.parse import quote, unquote, urlsplit

import boto3
import numpy
import zstandard

READS = 7  # the newest format version this program reads
RANK_FILES = ("*.distcp", "*zero_pp_rank_*", "rng_state_*.pth", "rng_state_*.pt")  # one rank's files (FORMAT 7.5)
MAX_MANIFEST = 64 << 20
CODEC_SINCE = {"raw": 1, "zstd": 1, "bg2": 3, "bg4": 3, "bg8": 3, "bgr2": 4, "bgr4": 4, "bgr8": 4}
HASH_SINCE = {"sha256": 1, "blake3": 7}


def hasher(algorithm):
    """An empty hash object of a manifest's hash_algorithm (FORMAT 4.1)."""
    if algorithm == "blake3":
        from blake3 import blake3  # only remotes of version 7 need it

        return blake3()
    return hashlib.sha256()


def component_ok(c):
    return c not in ("", ".", "..") and not any(ch in c for ch in "/\\\0")


def newest_key(m):  # FORMAT 7.3: created, then commit
    return (datetime.fromisoformat(m["created"].replace("Z", "+00:00")), m["commit"])


def latest_key(m):  # FORMAT 6: has a step, step, created, commit
    step = m.get("step")
    return (step is not None, step if step is not None else -1, *newest_key(m))


def usable(m, version):
    """The checks of FORMAT 5.9 this program relies on, besides names and paths."""
    step, hosts = m.get("step"), m.get("hosts") if version >= 2 else None
    if step is not None and (type(step) is not int or step < 0) or newest_key(m)[0].tzinfo is None:
        return False
    if hosts is not None and not (
        isinstance(hosts, list)
        and hosts
        and all(isinstance(h, str) and h for h in hosts)
        and len(set(hosts)) == len(hosts)
        and m["host"] in hosts
    ):
        return False
    m["hosts"] = hosts  # a version-1 manifest's hosts member is not read (FORMAT 7.1)
    group = m.get("group") if version >= 5 else None
    if group is not None and not (isinstance(group, dict) and group.get("role") in ("part", "seal") and isinstance(group.get("lead"), str)):
        return False
    m["group"] = group
    if HASH_SINCE.get(m.setdefault("hash_algorithm", "sha256"), READS + 1) > version:
        return False
    refs = [c for f in m["files"] for c in f["chunks"]]
    parts = any("offset" in c or "length" in c for c in refs)  # parts need version 4 (FORMAT 5.5)
    return all(CODEC_SINCE.get(c["codec"], READS + 1) <= version for c in refs) and (version >= 4 or not parts)


def manifests(s3, bucket, base):
    """Every valid manifest of the remote; RuntimeError on one of a newer version (FORMAT 5.8)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base + "manifests/")
    for obj in (o for page in pages for o in page.get("Contents", [])):
        parts = obj["Key"][len(base) :].split("/")  # ["manifests", quoted name, "<commit>.json"]
        if len(parts) != 3 or not parts[2].endswith(".json") or obj["Size"] > MAX_MANIFEST:
            continue
        try:
            m = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            version = m["version"] if m.get("format") == "ckptsync.manifest" else None
        except (ValueError, AttributeError, KeyError):
            continue  # not a manifest: ignore it
        if type(version) is not int or version < 1:
            continue
        if version > READS:  # abort, never fall back to an older checkpoint
            raise RuntimeError(
                f"{obj['Key']}: format version {version} is newer than this program reads ({READS}); restore this remote with ckptsync"
            )
        try:
            if (m["name"], m["commit"]) == (unquote(parts[1]), parts[2][:-5]) and usable(m, version):
                yield m
        except (KeyError, TypeError, AttributeError, ValueError):
            continue  # an invalid manifest: skip it


def choose(found, host):
    """The newest committed checkpoint (FORMAT 6), as the manifest to restore on this host (FORMAT 7).
    A version-5 seal is returned as it is: :func:`assemble` reads its parts."""
    found = [m for m in found if not (m["group"] and m["group"]["role"] == "part")]  # parts live under parts/
    candidates, parts = [(m, None) for m in found if not m["hosts"]], {}
    for m in (m for m in found if m["hosts"]):
        members = parts.setdefault((m["name"], frozenset(m["hosts"])), {})
        if m["host"] not in members or newest_key(m) > newest_key(members[m["host"]]):
            members[m["host"]] = m  # each host's newest manifest is its part
    for (_, hosts), members in parts.items():
        if set(members) == hosts:  # complete; an incomplete checkpoint is never restored
            candidates.append((max(members.values(), key=newest_key), members))
    if not candidates:
        return None
    newest, members = max(candidates, key=lambda c: latest_key(c[0]))
    if members is not None and host not in members:
        raise RuntimeError(f"{newest['name']}: host {host!r} has no part in it (hosts: {sorted(members)})")
    return newest if members is None else members[host]


def unzstd(data, size, key):
    """One frame that declares its size (FORMAT 4.3 and 4.4)."""
    try:
        if zstandard.frame_content_size(data) != size:
            raise ValueError(f"{key}: a zstd frame does not declare {size} bytes")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"{key}: {exc}") from None


def ungroup(stored, width, size, key, rotated=False):
    """The raw bytes of a bg<W> object, or of a bgr<W> one with ``rotated`` (FORMAT 4.4 and 4.5)."""
    count, tail = divmod(size, width)
    pos = 1 + 5 * width
    if len(stored) < pos or stored[0] != width:
        raise ValueError(f"{key}: not a bg{width} object")
    grid = numpy.empty((count, width), dtype=numpy.uint8)
    for i in range(width):
        kind, length = struct.unpack_from("<BI", stored, 1 + 5 * i)
        body, pos = stored[pos : pos + length], pos + length
        if len(body) != length or kind not in (0, 1):
            raise ValueError(f"{key}: plane {i} is damaged")
        plane = unzstd(body, count, key) if kind == 1 else body
        if len(plane) != count:
            raise ValueError(f"{key}: plane {i} is not {count} bytes")
        grid[:, i] = numpy.frombuffer(plane, dtype=numpy.uint8)
    if len(stored) - pos != tail:
        raise ValueError(f"{key}: the tail is not {tail} bytes")
    if rotated:  # rotate each element's top 16 bits right by one bit
        r = grid[:, width - 2].astype("<u2") | grid[:, width - 1].astype("<u2") << 8
        t = (r >> 1) | (r << 15)  # uint16 arithmetic drops the bits shifted out
        grid[:, width - 2], grid[:, width - 1] = t & 0xFF, t >> 8
    return grid.tobytes() + stored[pos:]


def fetch_chunk(s3, bucket, base, ref, algorithm):
    """The raw bytes of the chunk a chunk entry names, checked (FORMAT 4.3)."""
    digest, size, codec = ref["hash"], ref["size"], ref["codec"]
    key = f"{base}chunks/{digest[:2]}/{digest}.{codec}"
    stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read(ref["stored"] + 1)
    if len(stored) != ref["stored"]:
        raise ValueError(f"{key}: {len(stored)} bytes stored, the manifest says {ref['stored']}")
    if codec == "raw":
        raw = stored
    elif codec == "zstd":
        raw = unzstd(stored, size, key)
    elif codec in ("bg2", "bg4", "bg8", "bgr2", "bgr4", "bgr8"):
        raw = ungroup(stored, int(codec[-1]), size, key, rotated=codec.startswith("bgr"))
    else:
        raise ValueError(f"{key}: unknown codec {codec!r}")
    h = hasher(algorithm)
    h.update(raw)
    if len(raw) != size or h.hexdigest() != digest:
        raise ValueError(f"{key}: content does not match its hash")
    return raw


def newest_part(s3, bucket, base, seal, host):
    """A host's member of a sealed checkpoint: its part with the greatest commit id (FORMAT 7.5)."""
    prefix = f"{base}parts/{quote(seal['name'], safe='')}/{seal['group']['id']}/{quote(host, safe='')}/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = sorted((o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".json")), reverse=True)
    for key in keys:
        m = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        group = m.get("group") or {}
        ok = (m.get("name"), m.get("host"), f"{m.get('commit')}.json") == (seal["name"], host, key.rsplit("/", 1)[1])
        if ok and group.get("id") == seal["group"]["id"] and group.get("role") == "part" and usable(m, m["version"]):
            return m
    raise RuntimeError(f"{seal['name']}: host {host!r} has no part in it")


def assemble(s3, bucket, base, seal, host):
    """This host's part plus the lead's files that are not one rank's (FORMAT 7.5)."""
    own = newest_part(s3, bucket, base, seal, host)
    if seal["group"]["lead"] != host:
        mine = {f["path"] for f in own["files"]}
        lead = newest_part(s3, bucket, base, seal, seal["group"]["lead"])
        for f in lead["files"]:
            base_name, parents = f["path"].rsplit("/", 1)[-1], f["path"].split("/")
            in_the_way = any("/".join(parents[:i]) in mine for i in range(1, len(parents)))
            if f["path"] not in mine and not in_the_way and not any(fnmatch.fnmatchcase(base_name, p) for p in RANK_FILES):
                if not any(p.startswith(f["path"] + "/") for p in mine):
                    own["files"].append(dict(f, version=lead["version"], algorithm=lead["hash_algorithm"]))  # the lead's rules
    return own


def restore_latest(bucket, prefix, dest, s3=None, host=None):
    """Restore the newest checkpoint into dest/<name>; return that path, or None if none is committed."""
    s3 = s3 or boto3.client("s3")
    host = host or os.environ.get("SM_CURRENT_HOST") or socket.gethostname()
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    m = choose(list(manifests(s3, bucket, base)), host)
    if m is None:
        return None
    if m["group"]:  # a version-5 seal: this host's part and the lead's shared files
        m = assemble(s3, bucket, base, m, host)
    name, kind = m["name"], m["kind"]
    if not component_ok(name) or kind not in ("dir", "file"):
        raise ValueError(f"unsupported manifest for {name!r}")
    os.makedirs(dest, exist_ok=True)
    me = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())[:63] or "host"
    staging = os.path.join(dest, f".ckptsync-staging-{os.getpid()}-{me}-{secrets.token_hex(6)}")
    os.mkdir(staging, 0o700)
    try:
        built = os.path.join(staging, name)
        if kind == "dir":
            os.mkdir(built)
        last = (None, b"")  # the chunk fetched last: (hash, raw bytes)
        for f in m["files"]:
            parts = f["path"].split("/")
            if not all(map(component_ok, parts)) or (kind == "file" and f["path"] != name):
                raise ValueError(f"unsafe path {f['path']!r}")
            path = built if kind == "file" else os.path.join(built, *parts)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # FORMAT 5.4: from version 6, a file of several pieces is hashed over its pieces' hashes
            by_pieces = f.get("version", m["version"]) >= 6 and len(f["chunks"]) > 1
            algorithm = f.get("algorithm", m["hash_algorithm"])
            whole, pieces, written = hasher(algorithm), [], 0
            with open(path, "xb") as out:
                for ref in f["chunks"]:
                    if ref["hash"] != last[0]:  # the small files of a pack share its chunk
                        last = (ref["hash"], fetch_chunk(s3, bucket, base, ref, algorithm))
                    raw = last[1]
                    start = ref.get("offset", 0)  # a part: a range of the chunk (FORMAT 5.5)
                    length = ref.get("length", len(raw) - start)
                    if type(start) is not int or type(length) is not int or not (0 <= start < start + length <= len(raw)):
                        raise ValueError(f"{f['path']}: a chunk part lies outside its chunk")
                    piece = raw[start : start + length]
                    whole.update(piece)
                    h = hasher(algorithm)
                    h.update(piece)
                    pieces.append(h.digest())
                    written += out.write(piece)
                out.flush()
                os.fsync(out.fileno())
            if by_pieces:
                whole = hasher(algorithm)
                whole.update(b"ckptsync.pieces\n" + b"".join(pieces))
            if written != f["size"] or whole.hexdigest() != f["hash"]:
                raise ValueError(f"{f['path']}: does not match its hash")
            os.chmod(path, f["mode"] & 0o1777)
        final = os.path.join(dest, name)
        if os.path.lexists(final):
            os.rename(final, built + ".old")  # moved aside into staging, removed below
        os.rename(built, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Restore the newest checkpoint of an s3:// ckptsync remote.")
    parser.add_argument("remote", help="s3://bucket/prefix")
    parser.add_argument("target", help="the folder to restore into, as <target>/<name>")
    parser.add_argument("host", nargs="?", help="this host, for a multi-host checkpoint")
    args = parser.parse_args(argv)
    remote = urlsplit(args.remote)
    if remote.scheme != "s3" or not remote.netloc:
        parser.error(f"not an s3:// remote: {args.remote}")
    try:
        found = restore_latest(remote.netloc, remote.path, args.target, host=args.host)
    except (RuntimeError, ValueError) as exc:
        print(f"restore_by_hand: {exc}", file=sys.stderr)
        return 1
    if found:
        print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
