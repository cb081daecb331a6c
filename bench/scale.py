"""What job start and steady state cost per host as the fleet grows: 1,000 hosts x 10 checkpoints.

    python bench/scale.py --hosts 8,1000 --checkpoints 10 [--json out.json]

Against a local S3 server (``rclone serve s3``, started here), it writes the remote a
multi-host job of H hosts leaves after C checkpoints (each host's part: its own
shard file and a config file every host has; no data beyond a few KiB), then
measures, as one host (the last one, not the lead) sees it:

- ``restore --latest`` and ``restore --best --metric eval_loss`` (this host's part),
- ``list`` (as the CLI lists: without reading manifests that have a catalog entry),
- one daemon commit of a new checkpoint plus retention (``--keep-last 5``) on this host,
  and on the lead (which applies retention in a multi-host job),

counting every request ckptsync makes by key family (GET, HEAD, PUT, DELETE requests, each
of up to 1,000 keys, LIST pages of up to 1,000 keys) and the bytes it reads outside ``chunks/``. It prints them per host and
estimates the fleet's job start: H hosts restoring at once, at S3's published rates of 5,500
GET/s and 3,500 PUT/s per prefix partition, with the requests grouped by the prefix they fall
under (the first two key components: ``manifests/<name>``, ``parts/<name>``, ``catalog/<name>``).

It runs against whichever ckptsync is importable: point ``PYTHONPATH`` at a checkout of an
older commit to measure it the same way (format versions before 5 write ``hosts`` manifests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: an older checkout can be measured

import ckptsync  # noqa: E402
from ckptsync import format as fmt  # noqa: E402
from ckptsync.api import open_repository  # noqa: E402
from ckptsync.checkpoint import scan_entry  # noqa: E402
from ckptsync.policy import Retention  # noqa: E402
from ckptsync.session import RemoteSession  # noqa: E402
from tests.s3servers import start_rclone  # noqa: E402

V5 = hasattr(fmt, "Group")
GET_RATE, PUT_RATE = 5500.0, 3500.0
PAGE = 1000


@dataclass
class Count:
    """Requests and bytes of one operation, by key family."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verb, family) -> n
    prefixes: Counter[str] = field(default_factory=Counter)  # GET-class requests by prefix partition
    bytes_outside_chunks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, verb: str, key: str, n: int = 1, size: int = 0) -> None:
        parts = key.split("/")
        family = parts[0] if parts else ""
        with self.lock:
            self.requests[(verb, family)] += n
            if verb in ("GET", "HEAD", "LIST"):
                self.prefixes["/".join(parts[:2])] += n
            if family != "chunks":
                self.bytes_outside_chunks += size

    def total(self, verbs: tuple[str, ...], outside_chunks: bool = True) -> int:
        return sum(n for (v, fam), n in self.requests.items() if v in verbs and (fam != "chunks" or not outside_chunks))


class Counting:
    """A store wrapper that counts what passes through it (the ``wrap`` hook of the API)."""

    def __init__(self, inner: Any, count: Count, prefix: str) -> None:
        self.inner, self.count, self.prefix = inner, count, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _k(self, key: str) -> str:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        data = self.inner.get(key, max_size=max_size)
        self.count.add("GET", self._k(key), size=len(data))
        return data

    def exists(self, key: str) -> bool:
        self.count.add("HEAD", self._k(key))
        return self.inner.exists(key)

    def list(self, prefix: str) -> list[Any]:
        out = self.inner.list(prefix)
        pages = max(1, math.ceil(len(out) / PAGE))
        self.count.add("LIST", self._k(prefix), n=pages, size=sum(len(o.key) + 120 for o in out))  # ~XML per key
        return out

    def put(self, key: str, data: Any) -> None:
        self.count.add("PUT", self._k(key))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Any) -> None:
        self.count.add("PUT", self._k(key))
        self.inner.put_if_absent(key, data)

    def delete(self, key: str) -> None:
        self.count.add("DELETE", self._k(key))
        self.inner.delete(key)

    def delete_many(self, keys: list[str]) -> None:
        if keys:  # one DeleteObjects request per 1,000 keys
            self.count.add("DELETE", self._k(keys[0]), n=math.ceil(len(keys) / PAGE))
            self.inner.delete_many(keys)


def host_name(i: int) -> str:
    return f"algo-{i + 1}"


def populate(remote: str, opts: ckptsync.Options, hosts: list[str], checkpoints: int, work: Path) -> None:
    """The remote a job of ``hosts`` leaves after ``checkpoints`` checkpoints (parts committed directly)."""
    repo = open_repository(remote, opts)
    shared = os.urandom(2048)
    config = fmt.FileEntry("config.json", len(shared), 0o644, _sha(shared), (_chunk(repo, shared),))
    shard_of = {}
    with ThreadPoolExecutor(16) as pool:
        for h, entry in zip(hosts, pool.map(lambda h: _shard(repo, h), hosts), strict=True):
            shard_of[h] = entry
    created = datetime(2026, 12, 1, tzinfo=timezone.utc)
    group = fmt.Group(fmt.group_id(hosts), len(hosts), hosts[0]) if V5 else None
    jobs: list[Callable[[], Any]] = []
    for c in range(checkpoints):
        step = 100 * (c + 1)
        name = f"checkpoint-{step}"
        metrics = {"eval_loss": 1.0 / (c + 2) + (0.2 if c == checkpoints // 2 else 0.0)}
        for i, h in enumerate(hosts):
            t = created + timedelta(minutes=c, microseconds=i)
            kw: dict[str, Any] = {"group": group} if V5 else {"hosts": tuple(sorted(hosts))}
            m = fmt.Manifest(name, "dir", step, metrics, t, h, fmt.new_commit_id(t, h), (config, shard_of[h]), "ckptsync/bench", **kw)
            jobs.append(lambda m=m: repo.commit(m))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda j: j(), jobs))
    if V5:  # the lead seals each checkpoint once every part is in (as its daemon does)
        session = RemoteSession(repo, host=hosts[0], hosts=hosts)
        for c in range(checkpoints):
            name = f"checkpoint-{100 * (c + 1)}"
            [part] = session.repo.load_parts(session.repo.list_parts(name, group.id, hosts[0])[hosts[0]])  # type: ignore[union-attr]
            session.unsealed[name] = part.manifest
        session.seal_ready()
        session.close()
    repo.close()


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _chunk(repo: Any, data: bytes) -> Any:
    digest = _sha(data)
    repo.put_chunk(digest, "raw", data)
    return fmt.ChunkRef(digest, len(data), len(data), "raw")


def _shard(repo: Any, host: str) -> Any:
    data = os.urandom(4096)
    rank = int(host.rsplit("-", 1)[1]) - 1
    return fmt.FileEntry(f"__{rank}_0.distcp", len(data), 0o644, _sha(data), (_chunk(repo, data),))


def measure(remote: str, hosts: list[str], base: ckptsync.Options, prefix: str, work: Path) -> dict[str, Count]:
    me, lead = hosts[-1], hosts[0]
    out: dict[str, Count] = {}

    def opts(host: str) -> ckptsync.Options:
        return replace(base, host=host, hosts=tuple(hosts), workers=8)

    def wrap(count: Count) -> Callable[[Any], Any]:
        return lambda inner: Counting(inner, count, prefix)

    out["restore --latest"] = c = Count()
    ckptsync.restore(remote, work / "latest", options=opts(me), wrap=wrap(c))
    out["restore --best"] = c = Count()
    ckptsync.restore(remote, work / "best", "best", "eval_loss", "min", options=opts(me), wrap=wrap(c))
    out["list"] = c = Count()
    try:
        ckptsync.list_checkpoints(remote, opts(me), wrap=wrap(c), read=False)  # type: ignore[call-arg]
    except TypeError:  # before catalog entries: list read every manifest
        ckptsync.list_checkpoints(remote, opts(me), wrap=wrap(c))
    for who in (me, lead):
        out[f"commit + retention ({'lead' if who == lead else 'other host'})"] = c = Count()
        folder = work / f"new-{who}"
        (folder / "checkpoint-9999").mkdir(parents=True)
        (folder / "checkpoint-9999" / f"__{hosts.index(who)}_0.distcp").write_bytes(os.urandom(4096))
        repo = open_repository(remote, opts(who), wrap=wrap(c))
        session = RemoteSession.open(repo, opts(who), names=["checkpoint-9999"])
        session.upload(scan_entry(folder / "checkpoint-9999"))
        session.apply_retention(Retention(keep_last=5), timedelta(hours=2))
        session.close()
        repo.close()
    return out


def report(fleet: int, checkpoints: int, counts: dict[str, Count]) -> list[str]:
    lines = [
        f"### {fleet} hosts x {checkpoints} checkpoints (ckptsync {'format 5' if V5 else 'format 2-4'})",
        "",
        "| operation, per host | objects read outside chunks/ | LIST pages | HEAD | PUT | DELETE | bytes read outside chunks/ |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, c in counts.items():
        row = [c.total(("GET",)), c.total(("LIST",)), c.total(("HEAD",)), c.total(("PUT",)), c.total(("DELETE",))]
        lines.append(f"| {op} | " + " | ".join(map(str, row)) + f" | {c.bytes_outside_chunks / 1024:.1f} KiB |")
    start = counts["restore --latest"]
    busiest, n = max(start.prefixes.items(), key=lambda kv: kv[1]) if start.prefixes else ("-", 0)
    gets = start.total(("GET", "HEAD", "LIST"))
    puts = start.total(("PUT", "DELETE"))
    lines += [
        "",
        f"Job start, every host restoring --latest at once: {gets * fleet:,} GET-class requests outside chunks/ "
        f"(busiest prefix `{busiest}`: {n * fleet:,}, {n * fleet / GET_RATE:.1f} s at {GET_RATE:,.0f} GET/s); "
        f"{sum(start.prefixes.values()) * fleet / GET_RATE:.1f} s if one prefix partition served them all. "
        f"PUT-class: {puts * fleet:,} (each host's shared lock under `locks/`, written and deleted), "
        f"{puts * fleet / PUT_RATE:.1f} s at {PUT_RATE:,.0f} PUT/s.",
        "",
    ]
    return lines


def big_manifest(chunks: int = 25_600) -> list[str]:
    """A 100 GB part (25,600 chunks of 4 MiB in 64 files): manifest size, encode and decode times."""
    import time

    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    per_file = chunks // 64
    files = []
    for i in range(64):
        refs = tuple(fmt.ChunkRef(os.urandom(32).hex(), 4 << 20, 3 << 20, "bgr2") for _ in range(per_file))
        files.append(fmt.FileEntry(f"__{i}_0.distcp", per_file * (4 << 20), 0o644, os.urandom(32).hex(), refs))
    m = fmt.Manifest("step_1", "dir", 1, {}, now, "algo-1", fmt.new_commit_id(now, "algo-1"), tuple(files), "bench")
    t0 = time.perf_counter()
    data = fmt.encode_manifest(m)
    t1 = time.perf_counter()
    fmt.decode_manifest(data)
    t2 = time.perf_counter()
    return [
        f"A part of {chunks * 4 / 1024:.0f} GiB ({chunks:,} chunks of 4 MiB, 64 files): manifest {len(data) / 2**20:.1f} MiB, "
        f"encoded in {(t1 - t0) * 1000:.0f} ms, decoded and validated in {(t2 - t1) * 1000:.0f} ms (one core).",
        "",
    ]


def write_doc(path: Path, args: argparse.Namespace, lines: list[str]) -> None:
    """The tables as the section ``scale-v5`` (or ``scale-before-v5``, for an older ckptsync) of ``path``."""
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import docsection

    src = Path(ckptsync.__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    title = "Many hosts: what a host reads at job start and in steady state" + ("" if V5 else ", before format 5")
    head = [
        f"## {title}",
        "",
        f"`python bench/scale.py --hosts {args.hosts} --checkpoints {args.checkpoints}` against `rclone serve s3` on 127.0.0.1, "
        f"ckptsync at commit {commit or '?'}{'' if V5 else ' (PYTHONPATH=an older checkout)'}; {platform.machine()}, "
        f"{os.cpu_count()} cores. Each host's part is a shard and a config file; the host measured is the last one (not the "
        "lead), and the daemon's commit is followed by retention with `--keep-last 5`. Request counts do not depend on the "
        "machine; the job-start estimate divides the fleet's requests by S3's published 5,500 GET/s per prefix partition.",
        "",
    ]
    docsection.replace(path, "scale-v5" if V5 else "scale-before-v5", "\n".join(head + [ln.replace("### ", "#### ") for ln in lines]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="8,1000", help="fleet sizes, comma-separated")
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--doc", type=Path, help="also write the tables as a section of this file (docs/BENCHMARKS.md)")
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "v5": V5}
    with tempfile.TemporaryDirectory(prefix="ckptsync-scale-") as tmp:
        server, stop = start_rclone(Path(tmp) / "server")
        try:
            env = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_DEFAULT_REGION": server.region}
            os.environ.update(env)
            lines: list[str] = []
            for fleet in (int(x) for x in args.hosts.split(",")):
                bucket = f"scale-{fleet}"
                server.client().create_bucket(Bucket=bucket)
                remote = f"s3://{bucket}/job"
                hosts = [host_name(i) for i in range(fleet)]
                base = ckptsync.Options(workers=16, s3=ckptsync.S3Options(endpoint_url=server.endpoint_url, path_style=True))
                populate(remote, base, hosts, args.checkpoints, Path(tmp))
                counts = measure(remote, hosts, base, "job", Path(tmp) / f"work-{fleet}")
                lines += report(fleet, args.checkpoints, counts)
                results[str(fleet)] = {op: {f"{v} {f}": n for (v, f), n in c.requests.items()} for op, c in counts.items()}
            lines += big_manifest() if V5 else []
            print("\n".join(lines))
            if args.doc:
                write_doc(args.doc, args, lines)
        finally:
            stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
