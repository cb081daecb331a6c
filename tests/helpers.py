"""What the tests share: the CLI and Python as child processes in a clean environment, waiting for a condition,
building checkpoint folders, comparing trees."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

T = TypeVar("T")

#: The repository's root folder: where children run unless told otherwise.
ROOT = Path(__file__).resolve().parents[1]

#: Environment variables of the machine that must not reach a process under test: AWS, ckptsync, SageMaker and
#: rclone settings, and a service manager's notify socket and watchdog.
FOREIGN_ENV = ("AWS_", "CKPTSYNC_", "SM_", "RCLONE_", "NOTIFY_SOCKET", "WATCHDOG_")
#: For a child running numpy (examples/train.py): one BLAS thread each, so a two-core machine is not oversubscribed.
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def clean_env(extra: Mapping[str, str] | None = None, server: Any = None) -> dict[str, str]:
    """This process's environment without the :data:`FOREIGN_ENV` variables, with Python's output unbuffered (a
    parent reading lines gets each as it is printed), plus a server's (see ``S3Server.env``) and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    env["PYTHONUNBUFFERED"] = "1"
    if server is not None:
        env.update(server.env())
    env.update(extra or {})
    return env


def use_env(monkeypatch: pytest.MonkeyPatch, extra: Mapping[str, str] | None = None, server: Any = None) -> None:
    """This process's environment made what :func:`clean_env` returns, until the end of the test: for ckptsync and
    boto3 called in this process."""
    wanted = clean_env(extra, server)
    for k in list(os.environ):
        if k not in wanted:
            monkeypatch.delenv(k)
    for k, v in wanted.items():
        monkeypatch.setenv(k, v)


def run_python(
    *args: str,
    env: Mapping[str, str] | None = None,
    server: Any = None,
    timeout: float = 120,
    cwd: Path | None = None,
    **popen: Any,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` (this interpreter) to completion in a clean environment (see :func:`clean_env`), in ``cwd``
    (default :data:`ROOT`), its output captured as text; ``popen`` goes to :func:`subprocess.run` (``check``...)."""
    argv = [sys.executable, *args]
    return subprocess.run(argv, env=clean_env(env, server), capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, **popen)


def run_cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``ckptsync ARGS...`` as a subprocess to completion; keyword arguments as for :func:`run_python`."""
    return run_python("-m", "ckptsync", *args, **kwargs)


def start_python(
    *args: str, env: Mapping[str, str] | None = None, server: Any = None, cwd: Path | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """``python ARGS...`` started in a clean environment (see :func:`clean_env`), in ``cwd`` (default :data:`ROOT`),
    in text mode unless ``popen`` says otherwise; ``popen`` goes to :class:`subprocess.Popen` (``stdout``, ``stderr``...).
    The caller reaps it."""
    popen.setdefault("text", True)
    return subprocess.Popen([sys.executable, *args], env=clean_env(env, server), cwd=cwd or ROOT, **popen)


def start_cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``ckptsync ARGS...`` started as a child; keyword arguments as for :func:`start_python`. The caller reaps it."""
    return start_python("-m", "ckptsync", *args, **kwargs)


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 30.0, message: str | Callable[[], str] = "", interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` seconds.

    ``message`` names what is awaited; a callable is called at the timeout (to report the state at that moment).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what or predicate!r}")
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


class _FakeTorchPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Pickles stand-ins of torch's classes under torch's names (no torch needed)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module, qualname = getattr(obj, "torch_name", (obj.__module__, obj.__qualname__))
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def _torch_class(module: str, name: str) -> type:
    return type(name, (), {"torch_name": (f"torch.distributed.checkpoint.{module}", name)})


def dcp_metadata(sharded: dict[str, list[str]], whole: dict[str, str]) -> bytes:
    """A torch.distributed.checkpoint ``.metadata`` as ``FileSystemWriter`` pickles it: ``sharded`` maps
    an entry to the file of each of its shards (one per rank, split on dim 0), ``whole`` a non-tensor
    entry to the one file that holds it."""
    Metadata, TSM, BSM, Chunk, Index = (
        _torch_class("metadata", n)
        for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "MetadataIndex")
    )
    Info = _torch_class("filesystem", "_StorageInfo")

    def obj(cls: type, **state: Any) -> Any:
        o = cls.__new__(cls)
        o.__dict__.update(state)
        return o

    entries: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    for fqn, files in sharded.items():
        entries[fqn] = obj(TSM, size=[4 * len(files)], chunks=[obj(Chunk, offsets=[4 * i], sizes=[4]) for i in range(len(files))])
        for i, f in enumerate(files):
            storage[obj(Index, fqn=fqn, offset=[4 * i], index=None)] = obj(Info, relative_path=f, offset=0, length=16)
    for fqn, f in whole.items():
        entries[fqn] = obj(BSM)
        storage[obj(Index, fqn=fqn, offset=None, index=None)] = obj(Info, relative_path=f, offset=0, length=8)
    buf = io.BytesIO()
    _FakeTorchPickler(buf, protocol=2).dump(obj(Metadata, state_dict_metadata=entries, storage_data=storage))
    return buf.getvalue()
