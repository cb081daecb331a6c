"""One rank of a small torch.distributed job that saves and loads sharded checkpoints with torch.distributed.checkpoint
(DCP), run as a child process by test_dcp_multinode.py: one process per rank, gloo over 127.0.0.1, CPU only.

Each rank is a "node" with a disk of its own: it saves to and loads from its own folder (``--dir``), as a job on
node-local disks does. DCP then leaves rank 0's folder with ``.metadata`` and ``__0_0.distcp`` and rank 1's with
``__1_0.distcp`` only.

``train``: a few hundred "steps" of deterministic, rank-dependent updates of a sharded state (every tensor a DTensor
sharded on dim 0; with ``--replicated`` also a replicated DTensor and a step counter), saved with ``dcp.save`` (or
the ``save`` function of ``--save-code``) to ``DIR/step_<N>`` at each step of ``--save-at``. After each save, what was saved is written with ``torch.save`` to
``--record`` (outside the checkpoint folders): ``rank<R>_step<N>.pt`` with this rank's local shards, and (rank 0)
``full_step<N>.pt`` with the full tensors. Then it prints ``saved step_<N>``. After the last save it prints ``trained`` and idles (a job still running) until it is
killed or ``--linger`` seconds have passed.

``load``: a freshly initialised state of the same shapes (filled with -1), ``dcp.load`` from ``--dir`` (a checkpoint
folder), and the loaded tensors written with ``torch.save`` to ``--out``: this rank's local shards, or with
``--world-size 1`` plain, unsharded tensors (DCP re-shards what two ranks saved). Then it prints ``loaded``.

The rank, world size and rendezvous port are options; the address is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

#: The state's tensors, name -> (shape, dtype), each sharded on dim 0 over the ranks.
SHARDED: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
    "weight": ((8, 4), torch.float32),
    "exp_avg": ((8, 4), torch.float32),
    "count": ((6,), torch.int64),
}
#: With ``--replicated``, also a tensor every rank holds whole and a plain int, as most training states have (a bias
#: or norm weight, a step counter). DCP saves each such entry once, into one rank's file, and every rank reads it.
REPLICATED: dict[str, tuple[tuple[int, ...], torch.dtype]] = {"bias": ((3,), torch.float32)}


def initial_state(mesh: DeviceMesh | None, *, replicated: bool, fill: float | None = None) -> dict[str, Any]:
    """The state at step 0 (the same seed on every rank, so the shards make one tensor), or every element ``fill``;
    DTensors over ``mesh``, plain tensors without one."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, Any] = {}
    shapes = {**SHARDED, **(REPLICATED if replicated else {})}
    for name, (shape, dtype) in shapes.items():
        if fill is not None:
            full = torch.full(shape, fill, dtype=dtype)
        elif dtype.is_floating_point:
            full = torch.randn(shape, generator=g, dtype=dtype)
        else:
            full = torch.randint(0, 1000, shape, generator=g, dtype=dtype)
        placement = Shard(0) if name in SHARDED else Replicate()
        state[name] = full if mesh is None else distribute_tensor(full, mesh, [placement])
    if replicated:
        state["step"] = 0 if fill is None else int(fill)
    return state


def local(t: Any) -> Any:
    """This rank's part of a state entry: a DTensor's local tensor (a copy), a tensor (a copy), or the value itself."""
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.clone() if isinstance(t, torch.Tensor) else t


def full(t: Any) -> Any:
    """The whole of a state entry (a collective for a DTensor: every rank takes part)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def train_step(state: dict[str, Any], step: int, rank: int) -> None:
    """An update of every entry, in place: a sharded tensor's shards differently on each rank, a replicated tensor the
    same on every rank."""
    for name, t in state.items():
        if name == "step":
            state[name] = step
            continue
        g = torch.Generator().manual_seed(step * 1000 + (rank if name in SHARDED else 999))
        shard = t.to_local() if isinstance(t, DTensor) else t
        if shard.dtype.is_floating_point:
            shard.mul_(0.99).add_(torch.randn(shard.shape, generator=g, dtype=shard.dtype), alpha=0.01)
        else:
            shard.add_(step + rank)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["train", "load"])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", type=Path, required=True, help="train: this node's checkpoint folder; load: the checkpoint to load")
    p.add_argument("--save-at", default="100,200,300", help="train: steps to save at (the last one ends training)")
    p.add_argument("--record", type=Path, help="train: where to write what each save saved")
    p.add_argument("--linger", type=float, default=120.0, help="train: seconds to idle after the last save")
    p.add_argument("--out", type=Path, help="load: where to write the loaded tensors")
    p.add_argument("--replicated", action="store_true", help="a replicated tensor and a step counter in the state too")
    p.add_argument("--save-code", type=Path, help="train: a file defining save(state, path), used instead of dcp.save")
    a = p.parse_args(argv)

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{a.port}",
        rank=a.rank,
        world_size=a.world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (a.world_size,))
    if a.mode == "train":
        save_at = sorted(int(s) for s in a.save_at.split(","))
        a.record.mkdir(parents=True, exist_ok=True)
        state = initial_state(mesh, replicated=a.replicated)
        save = lambda s, path: dcp.save(s, checkpoint_id=path)  # noqa: E731
        if a.save_code is not None:  # a recipe of docs/INTEGRATIONS.md, as written
            code: dict[str, Any] = {}
            exec(compile(a.save_code.read_text(), str(a.save_code), "exec"), code)
            save = code["save"]
        for step in range(1, save_at[-1] + 1):
            train_step(state, step, a.rank)
            if step in save_at:
                save({"model": state}, str(a.dir / f"step_{step}"))
                torch.save({k: local(t) for k, t in state.items()}, a.record / f"rank{a.rank}_step{step}.pt")
                whole = {k: full(t) for k, t in state.items()}
                if a.rank == 0:
                    torch.save(whole, a.record / f"full_step{step}.pt")
                print(f"saved step_{step}", flush=True)
        print("trained", flush=True)
        deadline = time.monotonic() + a.linger  # a job that goes on running: the test kills it
        while time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        state = initial_state(None if a.world_size == 1 else mesh, replicated=a.replicated, fill=-1)
        dcp.load({"model": state}, checkpoint_id=a.dir)
        torch.save({k: local(t) for k, t in state.items()}, a.out)
        print("loaded", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
