"""Where `ckptsync push` and `ckptsync restore` spend their CPU: a py-spy sample, grouped by cost centre.

Usage: bench/.venv/bin/pip install py-spy   # once; not in requirements.txt
       bench/.venv/bin/python bench/profile_push.py [--series full] [--scale 1] [--rate 250]

Starts an unthrottled `rclone serve s3` on 127.0.0.1, pushes one generated series
(bench/data/scale-SCALE/series/SERIES) into a fresh bucket under
`py-spy record --threads --subprocesses` (native frames off, idle samples off:
only threads that were running), restores its latest checkpoint the same way,
and prints the share of samples per cost centre: SHA-256, zstd, byte grouping
(numpy), reading files, botocore request signing and checksums, HTTP, imports
(start-up), other. Raw collapsed stacks go to bench/out/profile-*.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runner  # noqa: E402

# (category, substrings of a frame "function (file:line)"): the first rule matching, from the leaf up, wins
RULES = [
    ("import / start-up", ("_find_and_load", "_call_with_frames_removed", "exec_module")),
    ("sha256", ("sha256", "hashlib", "hexdigest", "new_file_hasher")),
    ("zstd (de)compress", ("compress (", "decompress (", "_decompress", "zstandard")),
    ("byte grouping (numpy)", ("_planes", "_group_encode", "_group_decode", "ascontiguousarray", "tobytes", "frombuffer")),
    ("botocore signing", ("botocore/auth.py",)),
    ("botocore checksums", ("httpchecksum", "crc32", "crt", "checksum")),
    ("HTTP send/receive", ("http/client.py", "urllib3", "socket.py", "ssl.py", "sendall", "_send_output", "recv_into")),
    ("botocore other", ("botocore/",)),
    ("file read/write", ("readinto", "read (", "pread", "write (", "os.py")),
]


def category(stack: str) -> str:
    frames = stack.split(";")
    if any(r in f for f in frames for r in RULES[0][1]):
        return RULES[0][0]
    for f in reversed(frames):
        for name, keys in RULES[1:]:
            if any(k in f for k in keys):
                return name
    return "other (ckptsync logic, threads, GC)"


def report(path: Path, title: str) -> None:
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        counts[category(stack)] += int(n)
        total += int(n)
    print(f"\n{title}: {total} samples of running threads")
    for name, n in counts.most_common():
        print(f"  {name:40} {n / max(1, total):6.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="full")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rate", type=int, default=250)
    a = ap.parse_args()
    pyspy = runner.BIN / "py-spy"
    if not pyspy.exists():
        sys.exit("py-spy is not installed: bench/.venv/bin/pip install py-spy")
    src = runner.HERE / "data" / f"scale-{a.scale:g}" / "series" / a.series
    if not src.is_dir():
        sys.exit(f"{src} missing: run bench/generate.py --scale {a.scale:g} first")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, runner._on_signal)
    out = runner.HERE / "out"
    env = runner.tool_env(out)
    srv = runner.Server("profile", out / "s3-profile", None, out / "logs")
    try:
        srv.start()
        bucket = f"profile-{os.getpid()}"
        srv.make_bucket(bucket)
        rec = [str(pyspy), "record", "--format", "raw", "--rate", str(a.rate), "--threads", "--subprocesses", "--nonblocking"]
        up = out / f"profile-push-{a.series}.txt"
        m = runner.measure(
            rec + ["-o", str(up), "--"] + runner.upload_cmd("ckptsync", src, bucket, srv.url), out / "logs" / "profile-push.log", env
        )
        print(f"push {a.series}: {m['wall']:.2f}s wall, {m['cpu']:.2f}s CPU (py-spy included)")
        report(up, f"ckptsync push {a.series}")
        latest = max((c.name for c in src.iterdir() if c.is_dir()), key=runner.step_of)
        dest = out / "restore-profile"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        down = out / f"profile-restore-{a.series}.txt"
        m = runner.measure(
            rec + ["-o", str(down), "--"] + runner.download_cmd("ckptsync", bucket, latest, dest, srv.url),
            out / "logs" / "profile-restore.log",
            env,
        )
        print(f"restore {latest}: {m['wall']:.2f}s wall, {m['cpu']:.2f}s CPU (py-spy included)")
        report(down, f"ckptsync restore {a.series}/{latest}")
        shutil.rmtree(dest, ignore_errors=True)
        # start-up alone: the CLI's imports
        r = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import ckptsync.cli, ckptsync.upload, ckptsync.recovery, ckptsync.store.s3"],
            capture_output=True,
            text=True,
            env=env,
        )
        tops = []
        for line in r.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                tops.append((int(parts[1]), parts[2].rstrip()))
        print("\nimport time (cumulative µs), top 8:")
        for us, name in sorted(tops, reverse=True)[:8]:
            print(f"  {us:>9}  {name}")
    finally:
        runner.stop_all()
        shutil.rmtree(out / "s3-profile", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
