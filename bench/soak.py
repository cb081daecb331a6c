"""Soak run (scenario 20): the daemon beside a writer, for a long time, with faults injected.

Usage: python bench/soak.py [--minutes 30] [--every 3] [--size-mb 4] [--out FILE]

Starts `rclone serve s3` on 127.0.0.1 behind the fault proxy of tests/faults
(503 SlowDown on 5% of requests, connection resets on 2% of chunk uploads),
runs `ckptsync watch --keep-last 10` against it, and a writer that saves a
checkpoint (temp folder, then rename, marker last) every few seconds and keeps
the newest five on disk. Every 30 s it samples the daemon's resident memory. At
the end it stops the daemon with SIGTERM, restores every committed checkpoint
and compares it with what the writer wrote, and prints (and writes to --out) a
summary: checkpoints written, committed, restored byte-identical, memory first
and last and the largest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.proxy import S3Proxy, reset_request, status  # noqa: E402
from tests.s3servers import start_rclone  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=3.0)
    ap.add_argument("--size-mb", type=float, default=4.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rng = random.Random(20)
    with tempfile.TemporaryDirectory(prefix="ckptsync-soak-") as tmp:
        work = Path(tmp)
        server, stop_server = start_rclone(work / "server")
        proxy = S3Proxy(server, rng=random.Random(21)).start()
        proxy.add_rule(status(503, "SlowDown"), probability=0.05)
        proxy.add_rule(reset_request(), method="PUT", path=r"/chunks/", probability=0.02)
        bucket = server.create_bucket("soak")
        remote = f"s3://{bucket}/run"
        folder = work / "ckpts"
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CKPTSYNC_"))}
        env.update(proxy.wrap(server).env())
        log = open(work / "watch.log", "w")
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ckptsync",
                "watch",
                "--dir",
                str(folder),
                "--remote",
                remote,
                "--state-dir",
                str(work / "state"),
                "--settle",
                "2",
                "--keep-last",
                "10",
                "--grace",
                "0",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        written: dict[str, str] = {}
        samples: list[float] = []
        deadline = time.monotonic() + a.minutes * 60
        next_sample = time.monotonic()
        step = 0
        try:
            while time.monotonic() < deadline:
                step += 1
                tmpdir = folder / f"tmp-checkpoint-{step}"
                tmpdir.mkdir()
                (tmpdir / "model.bin").write_bytes(rng.randbytes(int(a.size_mb * (1 << 20))))
                (tmpdir / "optimizer.bin").write_bytes(rng.randbytes(int(a.size_mb * (1 << 19))))
                (tmpdir / "ckptsync.json").write_text(json.dumps({"step": step, "metrics": {"loss": rng.random()}}))
                os.rename(tmpdir, folder / f"checkpoint-{step}")
                written[f"checkpoint-{step}"] = tree_hash(folder / f"checkpoint-{step}")
                if step > 5:
                    shutil.rmtree(folder / f"checkpoint-{step - 5}", ignore_errors=True)
                if time.monotonic() >= next_sample:
                    samples.append(rss_mb(watch.pid))
                    next_sample += 30
                time.sleep(a.every)
            watch.send_signal(signal.SIGTERM)
            code = watch.wait(200)
        finally:
            if watch.poll() is None:
                watch.kill()
            log.close()
        listed = json.loads(
            subprocess.run(
                [sys.executable, "-m", "ckptsync", "list", "--remote", remote, "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        ok = bad = 0
        for row in listed:
            out = work / "restored" / row["name"]
            r = subprocess.run(
                [sys.executable, "-m", "ckptsync", "restore", "--remote", remote, "--dir", str(out.parent), "--name", row["name"]],
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode == 0 and tree_hash(out) == written.get(row["name"]):
                ok += 1
            else:
                bad += 1
        requests = len(proxy.requests())
        faults = sum(1 for r in proxy.requests() if r.fault)
        proxy.stop()
        stop_server()
    summary = {
        "minutes": a.minutes,
        "checkpoints_written": step,
        "committed_and_kept": len(listed),
        "restored_byte_identical": ok,
        "restore_failures": bad,
        "watch_exit_code": code,
        "requests": requests,
        "faults_injected": faults,
        "rss_mb_samples_every_30s": [round(x, 1) for x in samples],
        "rss_mb_after_5_min": round(samples[min(10, len(samples) - 1)], 1) if samples else None,
        "rss_mb_first": round(samples[0], 1) if samples else None,
        "rss_mb_last": round(samples[-1], 1) if samples else None,
        "rss_mb_max": round(max(samples), 1) if samples else None,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
