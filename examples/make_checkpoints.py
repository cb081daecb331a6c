"""Write sample checkpoints the way Hugging Face Trainer lays them out.

Usage: python examples/make_checkpoints.py DIR [--count N] [--size-mb M]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path


def write_checkpoint(folder: Path, step: int, eval_loss: float, size: int) -> None:
    folder.mkdir(parents=True)
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    weights = os.urandom(size // 2) + bytes(size - size // 2)  # half noise, half zeros
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + weights)
    (folder / "optimizer.pt").write_bytes(os.urandom(size // 4))
    (folder / "scheduler.pt").write_bytes(os.urandom(1024))
    (folder / "rng_state.pth").write_bytes(os.urandom(14_000))
    state = {"global_step": step, "log_history": [{"step": step, "loss": eval_loss + 0.05}, {"step": step, "eval_loss": eval_loss}]}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--size-mb", type=int, default=8)
    a = p.parse_args()
    losses = [0.9, 0.41, 0.55, 0.38, 0.47]
    for i in range(a.count):
        step = (i + 1) * 100
        write_checkpoint(a.dir / f"checkpoint-{step}", step, losses[i % len(losses)], a.size_mb << 20)
        print(f"wrote {a.dir / f'checkpoint-{step}'} (eval_loss={losses[i % len(losses)]})")


if __name__ == "__main__":
    main()
