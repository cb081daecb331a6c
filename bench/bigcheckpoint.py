"""Push and restore of one large single-host checkpoint: does peak RSS stay flat as the checkpoint grows?

Usage: .venv/bin/python bench/bigcheckpoint.py [--sizes 1G,16G] [--remote file:///abs/path] [--json PATH] ...
   or: bench/.venv/bin/python bench/bigcheckpoint.py ...   (the venv bench/run.sh makes)
   Run it under `nice -n 10` on a shared machine. --help for every option.

For each size (default 1G and 16G), it writes one checkpoint folder shaped like a
Hugging Face Trainer checkpoint of a llama-like model saved in bf16:
``checkpoint-1000/`` with ``model-0000k-of-0000n.safetensors`` shards (bf16
tensors, N(0, 0.02) weights and ~1 norms), a large ``optimizer.pt`` (fp32 Adam
moments: exp_avg ~ N(0, 1e-4), exp_avg_sq its square, about 4/5 of the bytes,
which ckptsync cuts into fixed chunks) and the usual small files (config,
tokenizer, trainer_state.json, rng_state.pth, ...). Values are pseudo-random
floats with realistic exponents, so they compress a little and never
deduplicate; the data is written streaming, in pieces of at most 64 MiB, and
hashed (SHA-256) as it is written.

Then, as separate processes measured like bench/runner.py does (a bare launcher
forks and execs the command; wall time, user + system CPU and peak RSS of the
process tree from ``os.wait4``):

1. ``ckptsync push --dir SRC --remote REMOTE`` into a fresh bucket of a local
   ``rclone serve s3`` on 127.0.0.1 (or a fresh folder under ``--remote file:///...``);
2. if the disk is short of room for the restored copy, the source folder is
   deleted first (its hashes are known: the disk then holds about twice the
   size instead of three times);
3. ``ckptsync restore --dir FRESH --remote REMOTE --latest``, and every restored
   file is hashed and compared with the source's hash, and the file lists must match;
4. the restored copy and the remote copy are deleted before the next size.

Prints a markdown table (size, push and restore wall / CPU / peak RSS, stored
bytes) with the machine, and the peak-RSS ratio of the largest size to the
smallest, for push and for restore (target: at most 1.10); ``--json PATH``
writes the raw numbers. The ckptsync code measured is a snapshot of ckptsync/
taken at the start (as bench/runner.py does), so edits made meanwhile do not
change the code under test halfway through.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runner  # noqa: E402  (bench/runner.py: measure, Server, tool_env, machine, snapshot_ckptsync, ...)
from runner import log, parse_size  # noqa: E402

PIECE = 64 << 20  # bytes generated and written at a time
READ_BLOCK = 8 << 20
CKPT_NAME = "checkpoint-1000"
RSS_TARGET = 1.10  # peak RSS of the largest size / of the smallest
VOCAB = 32000
MAX_SHARD = 2 << 30  # bytes per safetensors shard (transformers' max_shard_size is of this order)


# --------------------------------------------------------------------------- the checkpoint's shape


def model_shape(weight_bytes: int) -> dict:
    """A llama-like shape (bf16) whose weights take about ``weight_bytes``: the widest with at least 4 layers."""
    for h in (8192, 6144, 5120, 4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 128):
        inter = max(256, round(h * 8 / 3 / 256) * 256)
        kv = max(64, h // 4)  # grouped-query attention
        layer = 2 * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h)
        embed = 2 * 2 * VOCAB * h  # embed_tokens and lm_head, untied
        layers = (weight_bytes - embed) // layer
        if layers >= 4:
            return {"hidden": h, "intermediate": inter, "kv": kv, "layers": int(layers), "vocab": VOCAB}
    return {"hidden": 128, "intermediate": 384, "kv": 64, "layers": 4, "vocab": VOCAB}


def tensors(shape: dict) -> list[tuple[str, list[int], str]]:
    """(name, shape, kind) of every tensor, in the model's order; kind is 'weight' or 'norm'."""
    h, inter, kv = shape["hidden"], shape["intermediate"], shape["kv"]
    out = [("model.embed_tokens.weight", [shape["vocab"], h], "weight")]
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", [h, h], "weight"),
            (p + "self_attn.k_proj.weight", [kv, h], "weight"),
            (p + "self_attn.v_proj.weight", [kv, h], "weight"),
            (p + "self_attn.o_proj.weight", [h, h], "weight"),
            (p + "mlp.gate_proj.weight", [inter, h], "weight"),
            (p + "mlp.up_proj.weight", [inter, h], "weight"),
            (p + "mlp.down_proj.weight", [h, inter], "weight"),
            (p + "input_layernorm.weight", [h], "norm"),
            (p + "post_attention_layernorm.weight", [h], "norm"),
        ]
    out += [("model.norm.weight", [h], "norm"), ("lm_head.weight", [shape["vocab"], h], "weight")]
    return out


def numel(s: list[int]) -> int:
    n = 1
    for d in s:
        n *= d
    return n


def shards(ts: list[tuple[str, list[int], str]]) -> list[list[tuple[str, list[int], str]]]:
    """Tensors grouped into shards of at most MAX_SHARD bytes (bf16), in order."""
    out: list[list] = [[]]
    size = 0
    for t in ts:
        b = 2 * numel(t[1])
        if out[-1] and size + b > MAX_SHARD:
            out.append([])
            size = 0
        out[-1].append(t)
        size += b
    return out


# --------------------------------------------------------------------------- writing


class HashedWriter:
    """Writes pieces to a file on one background thread (double-buffered), hashing them as they go."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self.f = open(path, "wb")  # closed in close()
        self.h = hashlib.sha256()
        self.size = 0
        self.pool = pool
        self.pending: Future | None = None

    def _write(self, data: bytes) -> None:
        self.h.update(data)
        self.f.write(data)

    def write(self, data: bytes) -> None:
        if self.pending is not None:
            self.pending.result()  # at most one piece in flight and one being made
        self.pending = self.pool.submit(self._write, data)
        self.size += len(data)

    def close(self) -> tuple[int, str]:
        if self.pending is not None:
            self.pending.result()
        self.f.close()
        return self.size, self.h.hexdigest()


def bf16_bytes(x) -> bytes:
    """float32 array -> bf16 bytes (the upper halves, truncated, little-endian)."""
    import numpy as np

    return np.ascontiguousarray(x.view(np.uint16)[1::2]).tobytes()


def write_safetensors(path: Path, ts: list[tuple[str, list[int], str]], rng, pool: ThreadPoolExecutor) -> tuple[int, str]:
    import numpy as np

    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _kind in ts:
        n = 2 * numel(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    w = HashedWriter(path, pool)
    w.write(len(hb).to_bytes(8, "little") + hb)
    for _name, shape, kind in ts:
        left = numel(shape)
        # a per-tensor scale, as layers differ: exponents spread over a few binades, as in trained weights
        std = np.float32(0.02 * float(np.exp(rng.normal(0.0, 0.3))))
        while left:
            k = min(left, PIECE // 4)  # generated as fp32: 4 bytes per element before conversion
            x = rng.standard_normal(k, dtype=np.float32)
            if kind == "norm":
                x *= np.float32(0.05)
                x += np.float32(1.0)
            else:
                x *= std
            w.write(bf16_bytes(x))
            left -= k
    return w.close()


def write_optimizer(path: Path, nbytes: int, rng, pool: ThreadPoolExecutor) -> tuple[int, str]:
    """An fp32 blob like the tensor storage of a torch.save'd AdamW state: exp_avg, then exp_avg_sq."""
    import numpy as np

    head = b"PK\x03\x04" + json.dumps({"state": "adamw", "dtype": "float32"}).encode()
    head += b"\0" * (-len(head) % 64)
    w = HashedWriter(path, pool)
    w.write(head)
    elems = max(0, (nbytes - len(head)) // 4)
    half = elems // 2
    done = 0
    while done < elems:
        k = min(elems - done, PIECE // 4, (half - done) if done < half else elems)
        x = rng.standard_normal(k, dtype=np.float32)
        x *= np.float32(1e-4 * float(np.exp(rng.normal(0.0, 0.5))))
        if done >= half:
            x *= x  # exp_avg_sq: positive, exponents spread over twice as many binades
        w.write(x.tobytes())
        done += k
    return w.close()


def write_small(path: Path, data: bytes) -> tuple[int, str]:
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def generate(folder: Path, size: int, seed: int) -> dict:
    """Write FOLDER/checkpoint-1000 of about ``size`` bytes; return {relpath: (size, sha256)} and its shape."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ck = folder / CKPT_NAME
    shutil.rmtree(folder, ignore_errors=True)
    ck.mkdir(parents=True)
    files: dict[str, tuple[int, str]] = {}
    shape = model_shape(size // 5)  # bf16 weights: 2 bytes a parameter; Adam moments: 8
    ts = tensors(shape)
    groups = shards(ts)
    weight_map = {}
    with ThreadPoolExecutor(1, thread_name_prefix="bigckpt-writer") as pool:
        for i, g in enumerate(groups):
            name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            files[name] = write_safetensors(ck / name, g, rng, pool)
            weight_map.update({t[0]: name for t in g})
        params = sum(numel(t[1]) for t in ts)
        small = {
            "config.json": json.dumps(
                {
                    "architectures": ["LlamaForCausalLM"],
                    "hidden_size": shape["hidden"],
                    "intermediate_size": shape["intermediate"],
                    "num_hidden_layers": shape["layers"],
                    "num_attention_heads": max(1, shape["hidden"] // 128),
                    "num_key_value_heads": max(1, shape["kv"] // 128),
                    "vocab_size": shape["vocab"],
                    "torch_dtype": "bfloat16",
                    "model_type": "llama",
                },
                indent=2,
            ).encode(),
            "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": 2, "do_sample": True}, indent=2).encode(),
            "model.safetensors.index.json": json.dumps(
                {"metadata": {"total_size": sum(files[n][0] for n in weight_map.values() if n in files)}, "weight_map": weight_map},
                indent=2,
            ).encode(),
            "tokenizer.json": json.dumps(
                {"version": "1.0", "model": {"type": "BPE", "vocab": {f"tok{i}_{i * 7919 % 100003:x}": i for i in range(shape["vocab"])}}},
                indent=2,
            ).encode(),
            "tokenizer_config.json": json.dumps({"model_max_length": 4096, "tokenizer_class": "LlamaTokenizer"}, indent=2).encode(),
            "special_tokens_map.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}).encode(),
            "trainer_state.json": json.dumps(
                {
                    "global_step": 1000,
                    "log_history": [
                        {"epoch": s / 4000, "learning_rate": 3e-4 * (1 - s / 4000), "loss": 2.5 + 1 / (1 + s / 50), "step": s}
                        for s in range(1, 1001)
                    ],
                },
                indent=2,
            ).encode(),
            "training_args.bin": rng.bytes(5_000),
            "scheduler.pt": rng.bytes(1_100),
            "rng_state.pth": rng.bytes(14_500),
        }
        for name, data in small.items():
            files[name] = write_small(ck / name, data)
        have = sum(v[0] for v in files.values())
        files["optimizer.pt"] = write_optimizer(ck / "optimizer.pt", max(1 << 20, size - have), rng, pool)
    return {"files": files, "shape": shape, "parameters": params, "shards": len(groups)}


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def verify(restored: Path, files: dict[str, tuple[int, str]]) -> tuple[bool, str]:
    """Every source file restored with the same size and SHA-256, and nothing else."""
    got = sorted(p.relative_to(restored).as_posix() for p in restored.rglob("*") if p.is_file())
    if got != sorted(files):
        return False, f"file lists differ: missing {sorted(set(files) - set(got))}, extra {sorted(set(got) - set(files))}"
    for rel in got:
        size, digest = files[rel]
        p = restored / rel
        if p.stat().st_size != size:
            return False, f"{rel}: {p.stat().st_size} bytes, source {size}"
        if hash_file(p) != digest:
            return False, f"{rel}: SHA-256 differs from the source's"
    return True, f"{len(got)} files byte-identical (SHA-256)"


# --------------------------------------------------------------------------- remotes


class S3Remote:
    """A fresh bucket of the local `rclone serve s3` (bench/runner.py's Server) per run."""

    def __init__(self, server: runner.Server) -> None:
        self.server = server
        self.bucket = ""

    def fresh(self, label: str) -> tuple[str, list[str]]:
        self.bucket = f"bigckpt-{label.lower()}-{os.getpid()}-{int(time.time())}"
        self.server.make_bucket(self.bucket)
        return f"s3://{self.bucket}/run", ["--endpoint-url", self.server.url]

    def stored(self) -> tuple[int, int]:
        return self.server.stored(self.bucket)

    def server_cpu(self) -> float:
        return self.server.cpu()

    def drop(self) -> None:
        if self.bucket:
            self.server.drop_bucket(self.bucket)
            self.bucket = ""


class FileRemote:
    """A fresh folder under a file:/// remote per run."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        if u.scheme != "file" or u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            raise SystemExit(f"--remote must be s3 (default, local server) or file:///abs/path, not {url!r}")
        self.root = Path(u.path)
        self.folder: Path | None = None

    def fresh(self, label: str) -> tuple[str, list[str]]:
        self.folder = self.root / f"bigckpt-{label.lower()}-{os.getpid()}-{int(time.time())}"
        self.folder.mkdir(parents=True)
        return "file://" + str(self.folder), []

    def stored(self) -> tuple[int, int]:
        assert self.folder is not None
        fs = [p for p in self.folder.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in fs), len(fs)

    def server_cpu(self) -> float:
        return 0.0

    def drop(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


# --------------------------------------------------------------------------- one size


def run_size(label: str, size: int, reps: int, remote, work: Path, env: dict, seed: int) -> dict:
    src = work / f"src-{label}"
    dest = work / f"restore-{label}"
    t = time.time()
    gen = generate(src, size, seed)
    files = gen["files"]
    raw = sum(v[0] for v in files.values())
    log(
        f"{label}: generated {raw / 2**30:.2f} GiB in {time.time() - t:.0f}s: {len(files)} files, {gen['shards']} safetensors shard(s) "
        f"(hidden {gen['shape']['hidden']}, {gen['shape']['layers']} layers), optimizer.pt {files['optimizer.pt'][0] / 2**30:.2f} GiB"
    )
    timeout = max(runner.CMD_TIMEOUT, 600 * size / 2**30)
    runs = []
    try:
        for rep in range(reps):
            if rep and not src.is_dir():
                gen = generate(src, size, seed)  # the source was deleted after the previous push
            url, extra = remote.fresh(label)
            try:
                s0 = remote.server_cpu()
                push = runner.measure(
                    [str(runner.BIN / "ckptsync"), "push", "--dir", str(src), "--remote", url, *extra, *runner.CKPTSYNC_EXTRA["push"]],
                    work / "logs" / f"push-{label}-r{rep}.log",
                    env,
                    timeout,
                )
                push["server_cpu"] = remote.server_cpu() - s0
                push["stored"], push["objects"] = remote.stored()
                log(
                    f"{label} r{rep} push:    {push['wall']:7.1f}s wall, {push['cpu']:7.1f}s CPU, peak RSS {push['maxrss_mb']:6.0f} MB, "
                    f"stored {push['stored'] / raw:.3f} of raw in {push['objects']} objects"
                )
                if shutil.disk_usage(work).free < 1.3 * size + (4 << 30):
                    shutil.rmtree(src, ignore_errors=True)  # its hashes are known: the disk then holds ~2x the size, not 3x
                    log(f"{label}: source deleted before the restore (disk space); regenerated for a next repetition")
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir(parents=True)
                s0 = remote.server_cpu()
                restore = runner.measure(
                    [
                        str(runner.BIN / "ckptsync"),
                        "restore",
                        "--dir",
                        str(dest),
                        "--remote",
                        url,
                        "--latest",
                        *extra,
                        *runner.CKPTSYNC_EXTRA["restore"],
                    ],
                    work / "logs" / f"restore-{label}-r{rep}.log",
                    env,
                    timeout,
                )
                restore["server_cpu"] = remote.server_cpu() - s0
                log(
                    f"{label} r{rep} restore: {restore['wall']:7.1f}s wall, {restore['cpu']:7.1f}s CPU, peak RSS {restore['maxrss_mb']:6.0f} MB"
                )
                t = time.time()
                ok, detail = verify(dest / CKPT_NAME, files)
                log(f"{label} r{rep} verify: {'OK' if ok else 'FAILED'}: {detail} ({time.time() - t:.0f}s)")
                if not ok:
                    raise RuntimeError(f"restored {label} checkpoint differs from the source: {detail}")
            finally:
                remote.drop()
                shutil.rmtree(dest, ignore_errors=True)
            runs.append({"rep": rep, "push": push, "restore": restore, "verified": detail})
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
    return {
        "label": label,
        "bytes": raw,
        "files": len(files),
        "shards": gen["shards"],
        "shape": gen["shape"],
        "parameters": gen["parameters"],
        "optimizer_bytes": files["optimizer.pt"][0],
        "runs": runs,
        "push": median_of(runs, "push"),
        "restore": median_of(runs, "restore"),
    }


def median_of(runs: list[dict], op: str) -> dict:
    keys = [k for k, v in runs[0][op].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[op][k] for r in runs) for k in keys}


# --------------------------------------------------------------------------- report


def table(res: dict) -> str:
    m = res["machine"]
    L = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; kernel {m['kernel']}; Python {m['python']}; "
        f"ckptsync {m['packages'].get('ckptsync', '?')} (snapshot {m.get('ckptsync_snapshot', '?')}, commit {m.get('git', {}).get('commit', '?')})",
        f"Remote: {res['remote']}; ckptsync extra flags: push {' '.join(res['ckptsync_extra']['push']) or '-'}, "
        f"restore {' '.join(res['ckptsync_extra']['restore']) or '-'}; {res['args']['reps']} repetition(s), medians",
        "",
        "| size | raw GiB | files | push wall s | push CPU s | push peak RSS MB | stored / raw | restore wall s | restore CPU s | restore peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res["sizes"]:
        p, r = s["push"], s["restore"]
        L.append(
            f"| {s['label']} | {s['bytes'] / 2**30:.2f} | {s['files']} | {p['wall']:.1f} | {p['cpu']:.1f} | {p['maxrss_mb']:.0f} | "
            f"{p['stored'] / s['bytes']:.3f} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['maxrss_mb']:.0f} |"
        )
    if len(res["sizes"]) >= 2:
        L += ["", "| peak RSS ratio | push | restore | target |", "|---|---|---|---|"]
        rr = res["rss_ratio"]
        L.append(
            f"| {rr['big']} / {rr['small']} | {rr['push']:.3f} | {rr['restore']:.3f} | ≤ {RSS_TARGET:.2f}: "
            f"{'**met**' if rr['met'] else '**missed**'} |"
        )
    return "\n".join(L)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1G,16G", help="comma-separated checkpoint sizes, smallest first (default 1G,16G; binary units)")
    ap.add_argument("--remote", default="", help="file:///abs/path instead of the default local `rclone serve s3` on 127.0.0.1")
    ap.add_argument("--reps", type=int, default=1, help="push + restore runs per size (default 1; medians reported)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    ap.add_argument("--doc", type=Path, default=None, help="also write the table as a section of this file (docs/BENCHMARKS.md)")
    ap.add_argument("--report", type=Path, default=None, help="write --doc from the raw numbers of an earlier run (no measuring)")
    ap.add_argument(
        "--work", type=Path, default=runner.HERE / "out" / "bigcheckpoint", help="scratch folder (default bench/out/bigcheckpoint)"
    )
    ap.add_argument(
        "--ckptsync-args",
        default="--nice 0",
        help="extra flags for ckptsync push/restore (default '--nice 0', as bench/runner.py; flags this ckptsync lacks are dropped)",
    )
    ap.add_argument("--no-snapshot", action="store_true", help="measure the installed ckptsync as it is, not a snapshot of ckptsync/")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.report is not None:
        if a.doc is None:
            ap.error("--report needs --doc")
        write_doc(a.doc, json.loads(a.report.read_text()))
        return 0
    labels = [x.strip() for x in a.sizes.split(",") if x.strip()]
    try:
        sizes = [(x.upper(), parse_size(x)) for x in labels]
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if not sizes or any(s < (16 << 20) for _, s in sizes):
        ap.error("--sizes: each at least 16M")
    if not 1 <= a.reps <= 20:
        ap.error("--reps must be 1..20")

    t_start = time.time()
    work = a.work.resolve()
    env = runner.start_harness(work)
    res: dict = {
        "command": " ".join(["python bench/bigcheckpoint.py", *sys.argv[1:]]),
        "args": {**vars(a), "work": str(a.work), "json": str(a.json) if a.json else None},
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "sizes": [],
    }
    remote_obj = None
    try:
        res["machine"] = runner.machine()
        if not a.no_snapshot:
            env["PYTHONPATH"], res["machine"]["ckptsync_snapshot"] = runner.snapshot_ckptsync(work, env)
        runner.CKPTSYNC_EXTRA.update(runner.ckptsync_extra(a.ckptsync_args, env))
        res["ckptsync_extra"] = runner.CKPTSYNC_EXTRA
        m = res["machine"]
        log(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; ckptsync {m['packages']['ckptsync']}")
        need = 2.3 * max(s for _, s in sizes)
        free = shutil.disk_usage(work).free
        if free < need:
            log(f"warning: {free / 2**30:.0f} GiB free under {work}, about {need / 2**30:.0f} GiB needed for the largest size")
        if a.remote:
            remote_obj = FileRemote(a.remote)
            res["remote"] = f"{a.remote} (a fresh folder per run)"
        else:
            srv = runner.Server("bigckpt", work / "s3", None, work / "logs")
            srv.start()
            log(f"server: rclone serve s3 at {srv.url}")
            remote_obj = S3Remote(srv)
            res["remote"] = "local `rclone serve s3` on 127.0.0.1 (a fresh bucket per run)"
        for label, size in sizes:
            res["sizes"].append(run_size(label, size, a.reps, remote_obj, work, env, a.seed))
        if len(res["sizes"]) >= 2:
            small, big = res["sizes"][0], res["sizes"][-1]
            rp = big["push"]["maxrss_mb"] / small["push"]["maxrss_mb"]
            rr = big["restore"]["maxrss_mb"] / small["restore"]["maxrss_mb"]
            res["rss_ratio"] = {
                "small": small["label"],
                "big": big["label"],
                "push": rp,
                "restore": rr,
                "target": RSS_TARGET,
                "met": rp <= RSS_TARGET and rr <= RSS_TARGET,
            }
    finally:
        runner.stop_all()
        shutil.rmtree(work / "s3", ignore_errors=True)
        if remote_obj is not None:
            remote_obj.drop()
    res["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    res["seconds"] = time.time() - t_start
    print()
    print(table(res))
    print()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1, default=str))
        log(f"raw numbers in {a.json}")
    if a.doc:
        write_doc(a.doc, res)
    log(f"done in {res['seconds'] / 60:.1f} min")
    return 0


def write_doc(path: Path, res: dict) -> None:
    """The table as the section ``large-checkpoint`` of ``path``."""
    import docsection

    body = [
        "## One large checkpoint: memory stays flat",
        "",
        f"`{res['command']}`, {res['finished']} (UTC). A Hugging Face-shaped checkpoint (bf16 safetensors shards, an fp32",
        "`optimizer.pt` with Adam's two moments, small files) pushed into a fresh bucket and restored into an empty folder,",
        "each a separate process; peak RSS of the process tree. Target: the largest size's peak RSS within 10% of the smallest's.",
        "",
        table(res),
    ]
    docsection.replace(path, "large-checkpoint", "\n".join(body))


if __name__ == "__main__":
    sys.exit(main())
