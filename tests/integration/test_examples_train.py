"""examples/train.py on its own (no ckptsync, no server): the trainer the examples wrap.

It must resume from the newest complete checkpoint, write checkpoints through a
temporary folder and a rename, keep at most --keep, be deterministic across a
resume, and turn SIGTERM into a final checkpoint and exit status 0.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ONE_BLAS_THREAD, run_python, start_python

TRAIN = Path(__file__).resolve().parents[2] / "examples" / "train.py"
pytestmark = pytest.mark.timeout(60)


def train(folder: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = run_python(
        str(TRAIN), "--dir", str(folder), "--step-seconds", "0", "--size-mb", "0.05", *args, env=ONE_BLAS_THREAD, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def marker(folder: Path) -> dict:
    return json.loads((folder / "ckptsync.json").read_text())


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def saved_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("saved ")]


def test_fresh_run_saves_through_renames_and_keeps_at_most_keep(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # leftovers a crashed run and a crashed upload would leave: never resumed from
    (ckpt / "tmp-checkpoint-500").mkdir()
    (ckpt / "tmp-checkpoint-500" / "ckptsync.json").write_text('{"step": 500, "metrics": {}}')
    (ckpt / "checkpoint-400").mkdir()  # no ckptsync.json: incomplete
    (ckpt / "checkpoint-400" / "model.npz").write_bytes(b"partial")

    proc = train(ckpt, "--steps", "100", "--every", "10", "--keep", "3")

    lines = proc.stdout.splitlines()
    assert lines[0] == "resumed from step 0"
    assert sum(line.startswith("resumed from step") for line in lines) == 1
    assert [line.split()[1] for line in saved_lines(proc.stdout)] == [f"checkpoint-{s}" for s in range(10, 101, 10)]
    assert all(line.split()[2].startswith("loss=") for line in saved_lines(proc.stdout))

    names = sorted(p.name for p in ckpt.iterdir())
    assert not [n for n in names if n.startswith("tmp-")]
    # the incomplete folder is not a checkpoint: neither resumed from, nor counted, nor deleted
    assert names == ["checkpoint-100", "checkpoint-400", "checkpoint-80", "checkpoint-90"]
    for step in (80, 90, 100):
        folder = ckpt / f"checkpoint-{step}"
        assert sorted(p.name for p in folder.iterdir()) == ["ckptsync.json", "model.npz", "optimizer.npz", "rng_state.json"]
        m = marker(folder)
        assert m["step"] == step and set(m["metrics"]) >= {"loss"}
    # --size-mb pads the checkpoint to about that size
    size = sum(p.stat().st_size for p in (ckpt / "checkpoint-100").iterdir())
    assert 0.04 * 2**20 < size < 0.07 * 2**20


def test_resume_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = train(a, "--steps", "60", "--every", "10", "--keep", "10")
    first = train(b, "--steps", "30", "--every", "10", "--keep", "10")
    second = train(b, "--steps", "60", "--every", "10", "--keep", "10")

    assert "resumed from step 0" in first.stdout.splitlines()
    assert second.stdout.splitlines()[0] == "resumed from step 30"
    assert saved_lines(first.stdout) + saved_lines(second.stdout) == saved_lines(full.stdout)

    for step in (40, 50, 60):
        fa, fb = a / f"checkpoint-{step}", b / f"checkpoint-{step}"
        assert marker(fa) == marker(fb)  # exact float equality of loss and eval_loss
        assert json.loads((fa / "rng_state.json").read_text()) == json.loads((fb / "rng_state.json").read_text())
        for name in ("model.npz", "optimizer.npz"):
            xa, xb = arrays(fa / name), arrays(fb / name)
            assert xa.keys() == xb.keys()
            for k in xa:
                np.testing.assert_array_equal(xa[k], xb[k], err_msg=f"{name}:{k} at step {step}")
    # and training did something
    assert marker(a / "checkpoint-60")["metrics"]["loss"] < marker(a / "checkpoint-10")["metrics"]["loss"]


def test_sigterm_writes_a_final_checkpoint_and_exits_0(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = start_python(
        *(str(TRAIN), "--dir", str(ckpt), "--steps", "1000000", "--every", "20", "--step-seconds", "0.002"),
        *("--size-mb", "0.05", "--keep", "3"),
        env=ONE_BLAS_THREAD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n")]
        assert lines[0] == "resumed from step 0"
        lines.append(proc.stdout.readline().rstrip("\n"))
        assert lines[1].startswith("saved checkpoint-20 ")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines += out.splitlines()

    assert "received SIGTERM at step" in err
    stopped_at = int(err.split("received SIGTERM at step ")[1].split(";")[0])
    assert stopped_at >= 20
    # the final checkpoint is at the step where it stopped: a new one, unless the signal came right after a save
    if stopped_at % 20:
        assert lines[-1].startswith(f"saved checkpoint-{stopped_at} ")
    steps = sorted(int(p.name.split("-")[1]) for p in ckpt.iterdir() if p.name.startswith("checkpoint-"))
    assert steps[-1] == stopped_at
    assert not [p for p in ckpt.iterdir() if p.name.startswith("tmp-")]
    assert marker(ckpt / f"checkpoint-{stopped_at}")["step"] == stopped_at

    # the next instance picks up exactly there
    again = train(ckpt, "--steps", str(stopped_at + 5), "--every", "20")
    assert again.stdout.splitlines()[0] == f"resumed from step {stopped_at}"
    loss = marker(ckpt / f"checkpoint-{stopped_at + 5}")["metrics"]["loss"]
    assert saved_lines(again.stdout) == [f"saved checkpoint-{stopped_at + 5} loss={loss:.6f}"]
