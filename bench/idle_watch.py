"""CPU used by an idle `ckptsync watch` on a folder of 1,000 files.

Usage: python bench/idle_watch.py [--files 1000] [--seconds 60] [--poll]

Creates 20 checkpoint folders of 50 small files each, lets `ckptsync watch`
commit them to a file:// remote, then measures the daemon's CPU time (user +
system, from /proc) over a quiet period and prints it as a percentage of one
core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--poll", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder, remote, state = work / "ckpts", work / "remote", work / "state"
        remote.mkdir()
        per = 50
        for c in range(a.files // per):
            d = folder / f"checkpoint-{c}"
            d.mkdir(parents=True)
            for i in range(per):
                (d / f"shard-{i:03d}.bin").write_bytes(os.urandom(1024))
            (d / "ckptsync.json").write_text(json.dumps({"step": c}))
        cmd = [
            sys.executable,
            "-m",
            "ckptsync",
            "watch",
            "--dir",
            str(folder),
            "--remote",
            f"file://{remote}",
            "--state-dir",
            str(state),
            "--settle",
            "1",
            "--log-level",
            "warning",
        ]
        if a.poll:
            cmd.append("--poll")
        proc = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = state / "status.json"
                if st.exists():
                    doc = json.loads(st.read_text())
                    if doc.get("committed") == a.files // per and not doc.get("queue") and not doc.get("in_flight"):
                        break
                time.sleep(0.5)
            else:
                sys.exit("daemon did not commit the folder in time")
            time.sleep(3)  # let the last commit's bookkeeping finish before measuring
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(a.seconds)
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        finally:
            proc.terminate()
            proc.wait(30)
    pct = 100.0 * (c1 - c0) / (t1 - t0)
    mode = "polling" if a.poll else "inotify"
    print(
        f"idle watch, {a.files} files, {mode}, {t1 - t0:.0f} s: {c1 - c0:.2f} CPU-s = {pct:.2f}% of one core "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})"
    )


if __name__ == "__main__":
    main()
