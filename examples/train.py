"""A small, deterministic training job that checkpoints the way real trainers do.

A two-layer MLP (tanh) learns a noisy non-linear regression on synthetic data,
with minibatch SGD and momentum, in plain numpy (float64). It is the job that
``ckptsync run`` wraps in the examples:

    ckptsync run --dir /opt/ml/checkpoints --remote s3://bucket/run -- \\
        python examples/train.py --steps 400 --every 50

Behaviour:

* At start it resumes from the newest *complete* checkpoint in ``--dir`` (a
  ``checkpoint-*`` folder holding ``ckptsync.json``; ``tmp-*`` and other
  temporary names are ignored) and prints exactly one line
  ``resumed from step N`` to stdout (N=0 when starting fresh).
* Every ``--every`` steps (and at the last step) it writes ``model.npz``,
  ``optimizer.npz``, ``rng_state.json`` and, last, ``ckptsync.json``
  (``{"step": N, "metrics": {"loss": ..., "eval_loss": ...}}``) into
  ``tmp-checkpoint-N``, fsyncs them, renames the folder to ``checkpoint-N`` and
  prints ``saved checkpoint-N loss=...``. At most ``--keep`` complete
  checkpoints stay on disk; the oldest are deleted (like Hugging Face's
  ``save_total_limit``).
* SIGTERM (also SIGINT, SIGHUP) stops it after the current step: it writes a
  final checkpoint at that step unless it has just saved one, and exits 0.
* Resuming from step N gives exactly the losses and weights of an uninterrupted
  run: weights, momentum and the minibatch RNG state are all checkpointed.

Only stdout carries the lines above; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 8
N_HIDDEN = 32
N_TRAIN = 2048
N_EVAL = 512
BATCH = 64
LR = 0.05
MOMENTUM = 0.9
PARAMS = ("w1", "b1", "w2", "b2")
MARKER = "ckptsync.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# SageMaker writes the job's hyperparameters here (values are strings); they override the defaults below.
SAGEMAKER_HYPERPARAMETERS = Path("/opt/ml/input/config/hyperparameters.json")


def log(msg: str) -> None:
    print(f"train.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the model


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed synthetic regression problem: y = sin(X a) + 0.5 tanh(X b) + noise."""
    rng = np.random.default_rng([seed, 1])
    x = rng.normal(size=(N_TRAIN + N_EVAL, N_FEATURES))
    a = rng.normal(size=N_FEATURES) / np.sqrt(N_FEATURES)
    b = rng.normal(size=N_FEATURES) / np.sqrt(N_FEATURES)
    y = np.sin(x @ a) + 0.5 * np.tanh(2.0 * (x @ b)) + 0.05 * rng.normal(size=len(x))
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def init_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 2])
    return {
        "w1": rng.normal(size=(N_FEATURES, N_HIDDEN)) / np.sqrt(N_FEATURES),
        "b1": np.zeros(N_HIDDEN),
        "w2": rng.normal(size=N_HIDDEN) / np.sqrt(N_HIDDEN),
        "b2": np.zeros(()),
    }


def forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.tanh(x @ p["w1"] + p["b1"])
    return h, h @ p["w2"] + p["b2"]


def mse(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((forward(p, x)[1] - y) ** 2))


def sgd_step(p: dict[str, np.ndarray], m: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
    """One step of SGD with momentum on the mean squared error, in place."""
    h, pred = forward(p, x)
    d_pred = 2.0 * (pred - y) / len(y)
    d_h = np.outer(d_pred, p["w2"]) * (1.0 - h * h)
    grads = {"w2": h.T @ d_pred, "b2": d_pred.sum(), "w1": x.T @ d_h, "b1": d_h.sum(axis=0)}
    for k in PARAMS:
        m[k] = MOMENTUM * m[k] + grads[k]
        p[k] = p[k] - LR * m[k]


# ---------------------------------------------------------------- checkpoints


def checkpoint_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, or None if it is not one."""
    match = CHECKPOINT_NAME.match(folder.name)
    if not match or not folder.is_dir():
        return None
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None  # no marker (still being written, or broken): not complete
    step = marker.get("step") if isinstance(marker, dict) else None
    return step if isinstance(step, int) and step >= 0 else int(match.group(1))


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``root``, oldest (lowest step) first."""
    found = []
    for entry in root.iterdir():
        step = checkpoint_step(entry)
        if step is not None:
            found.append((step, entry))
    return sorted(found)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write: Any) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def padding(step: int, which: int, nbytes: int) -> np.ndarray:
    """Deterministic, incompressible filler so a checkpoint weighs about --size-mb.

    It differs at every step, as real weights do, so nothing deduplicates.
    """
    return np.frombuffer(np.random.default_rng([step, which, 3]).bytes(max(0, nbytes)), dtype=np.uint8)


def save_checkpoint(
    root: Path,
    step: int,
    params: dict[str, np.ndarray],
    momentum: dict[str, np.ndarray],
    rng: np.random.Generator,
    metrics: dict[str, float],
    size_bytes: int,
) -> Path:
    """Write checkpoint-{step} through tmp-checkpoint-{step} and a rename."""
    tmp = root / f"tmp-checkpoint-{step}"
    final = root / f"checkpoint-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    real = sum(a.nbytes for a in params.values())
    write_file(tmp / "model.npz", lambda f: np.savez(f, **params, _padding=padding(step, 0, size_bytes // 3 - real)))
    write_file(
        tmp / "optimizer.npz",
        lambda f: np.savez(
            f, **{f"momentum_{k}": v for k, v in momentum.items()}, _padding=padding(step, 1, size_bytes - size_bytes // 3 - real)
        ),
    )
    write_file(tmp / "rng_state.json", lambda f: f.write(json.dumps(rng.bit_generator.state).encode()))
    # The marker goes last: its presence says every other file is complete.
    write_file(tmp / MARKER, lambda f: f.write(json.dumps({"step": step, "metrics": metrics}).encode()))
    fsync_dir(tmp)
    if final.exists():  # an incomplete leftover of an earlier attempt at this step
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    return final


def load_checkpoint(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    with np.load(folder / "model.npz") as z:
        params = {k: z[k] for k in PARAMS}
    with np.load(folder / "optimizer.npz") as z:
        momentum = {k: z[f"momentum_{k}"] for k in PARAMS}
    rng_state = json.loads((folder / "rng_state.json").read_text())
    return params, momentum, rng_state


def prune(root: Path, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond ``keep``."""
    ckpts = complete_checkpoints(root)
    for _, folder in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    # SageMaker starts a training image as `<entrypoint> train`: accept that word and ignore it.
    p.add_argument("mode", nargs="?", choices=["train"], help=argparse.SUPPRESS)
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("CKPTSYNC_DIR") or "/opt/ml/checkpoints"),
        help="Checkpoint folder (default: $CKPTSYNC_DIR, else /opt/ml/checkpoints).",
    )
    p.add_argument("--steps", type=int, default=1000, help="Total training steps.")
    p.add_argument("--every", type=int, default=100, help="Checkpoint interval in steps.")
    p.add_argument("--step-seconds", type=float, default=0.005, help="Sleep per step, to simulate work.")
    p.add_argument("--size-mb", type=float, default=2.0, help="Pad each checkpoint to about this many MB.")
    p.add_argument("--keep", type=int, default=3, help="Complete checkpoints kept on disk, the oldest deleted first.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data, the initial weights and the minibatch order.")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=_default_model_dir(),
        help="Write the final weights here when training completes (default: $SM_MODEL_DIR, else /opt/ml/model if it exists).",
    )
    p.set_defaults(**sagemaker_hyperparameters())
    a = p.parse_args(argv)
    if a.steps < 0 or a.every < 1 or a.keep < 1 or a.size_mb < 0 or a.step_seconds < 0:
        p.error("--steps >= 0, --every >= 1, --keep >= 1, --size-mb >= 0 and --step-seconds >= 0 are required")
    return a


def sagemaker_hyperparameters() -> dict[str, Any]:
    """Defaults from SageMaker's hyperparameters.json (string values; unknown keys are ignored)."""
    if not SAGEMAKER_HYPERPARAMETERS.is_file():
        return {}
    types = {"steps": int, "every": int, "step_seconds": float, "size_mb": float, "keep": int, "seed": int}
    out = {}
    for key, value in json.loads(SAGEMAKER_HYPERPARAMETERS.read_text()).items():
        dest = key.replace("-", "_")
        if dest in types:
            out[dest] = types[dest](str(value).strip('"'))
    return out


def _default_model_dir() -> Path | None:
    if os.environ.get("SM_MODEL_DIR"):
        return Path(os.environ["SM_MODEL_DIR"])
    return Path("/opt/ml/model") if Path("/opt/ml/model").is_dir() else None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    stop: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop:
            stop.append(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    root = a.dir
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob("tmp-checkpoint-*"):  # from a run that died mid-save
        shutil.rmtree(leftover, ignore_errors=True)

    x, y, x_eval, y_eval = make_data(a.seed)
    ckpts = complete_checkpoints(root)
    if ckpts:
        step, folder = ckpts[-1]
        params, momentum, rng_state = load_checkpoint(folder)
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        log(f"loaded {folder}")
    else:
        step = 0
        params = init_params(a.seed)
        momentum = {k: np.zeros_like(v) for k, v in params.items()}
        rng = np.random.default_rng([a.seed, 4])
    print(f"resumed from step {step}", flush=True)

    size_bytes = int(a.size_mb * (1 << 20))
    last_saved = step

    def save() -> None:
        nonlocal last_saved
        metrics = {"loss": mse(params, x, y), "eval_loss": mse(params, x_eval, y_eval)}
        final = save_checkpoint(root, step, params, momentum, rng, metrics, size_bytes)
        last_saved = step
        print(f"saved {final.name} loss={metrics['loss']:.6f}", flush=True)
        prune(root, a.keep)

    while step < a.steps and not stop:
        idx = rng.integers(0, N_TRAIN, size=BATCH)
        sgd_step(params, momentum, x[idx], y[idx])
        step += 1
        if a.step_seconds:
            time.sleep(a.step_seconds)
        if step % a.every == 0 or step == a.steps:
            save()

    if stop:
        log(f"received {stop[0]} at step {step}" + ("; writing a final checkpoint" if step != last_saved else "; checkpoint already saved"))
        if step != last_saved:
            save()
        return 0

    log(f"finished at step {step}: loss={mse(params, x, y):.6f} eval_loss={mse(params, x_eval, y_eval):.6f}")
    if a.model_dir is not None:
        a.model_dir.mkdir(parents=True, exist_ok=True)
        write_file(a.model_dir / "model.npz", lambda f: np.savez(f, **params))
        log(f"wrote the final weights to {a.model_dir / 'model.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
