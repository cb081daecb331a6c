"""What the tests share: running the CLI, waiting for a condition, building checkpoint folders, comparing trees."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

#: Environment variables of the machine that must not reach a ckptsync under test.
FOREIGN_ENV = ("AWS_", "CKPTSYNC_", "SM_", "RCLONE_")


def clean_env(extra: Mapping[str, str] | None = None, server: Any = None) -> dict[str, str]:
    """This process's environment without AWS, ckptsync and SageMaker settings, plus a server's and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    if server is not None:
        env.update(server.env())
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, server: Any = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``ckptsync ARGS...`` as a subprocess, in a clean environment (see :func:`clean_env`)."""
    return subprocess.run(
        [sys.executable, "-m", "ckptsync", *args], env=clean_env(env, server), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def wait_until(predicate: Callable[[], T | None], timeout: float = 30.0, message: str = "", interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message or predicate!r}")
        time.sleep(interval)


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A valid safetensors file (header + data) without needing the library."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    dtypes = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64"}
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtypes[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def make_hf_checkpoint(parent: Path, step: int, eval_loss: float, *, seed: int | None = None, params: int = 1 << 20) -> Path:
    """A Hugging Face Trainer-style folder: weights, optimizer, scheduler, rng, trainer state."""
    rng = np.random.default_rng(step if seed is None else seed)
    d = parent / f"checkpoint-{step}"
    d.mkdir(parents=True)
    weights = {
        "embed.weight": rng.normal(0, 0.02, (params // 256, 256)).astype(np.float32),
        "head.bias": np.zeros(256, np.float32),
    }
    (d / "model.safetensors").write_bytes(safetensors_bytes(weights, {"format": "pt"}))
    (d / "optimizer.pt").write_bytes(rng.normal(0, 1e-3, params // 2).astype(np.float32).tobytes())
    (d / "scheduler.pt").write_bytes(os.urandom(1000))
    (d / "rng_state.pth").write_bytes(os.urandom(15000))
    (d / "config.json").write_text(json.dumps({"hidden_size": 256}))
    state = {
        "global_step": step,
        "best_metric": None,
        "log_history": [
            {"step": step, "loss": eval_loss + 0.1, "learning_rate": 1e-4},
            {"step": step, "eval_loss": eval_loss},
        ],
    }
    (d / "trainer_state.json").write_text(json.dumps(state))
    return d


def make_mixed_checkpoint(parent: Path, name: str = "checkpoint-7") -> Path:
    """Several files, an empty file, a multi-chunk file, nested folders, odd modes."""
    d = parent / name
    (d / "nested" / "deeper").mkdir(parents=True)
    (d / "empty.bin").write_bytes(b"")
    big = os.urandom(3 << 20) + bytes(6 << 20) + os.urandom(12345)  # 3 chunks, one of them zeros
    (d / "big.bin").write_bytes(big)
    (d / "nested" / "notes.txt").write_text("hello " * 1000)
    (d / "nested" / "deeper" / "tiny").write_bytes(b"x")
    (d / "readonly.txt").write_text("read only")
    os.chmod(d / "readonly.txt", 0o444)
    (d / ".metadata").write_bytes(b"dcp metadata")
    return d


def tree(path: Path) -> dict[str, tuple[str, int]]:
    """``{relpath: (sha256, mode)}`` of every regular file under ``path`` (or of the file itself)."""
    if path.is_file():
        return {path.name: (_digest(path), path.stat().st_mode & 0o777)}
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[p.relative_to(path).as_posix()] = (_digest(p), p.stat().st_mode & 0o777)
    return out


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, including hidden ones: for 'left exactly as it was' checks."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []
