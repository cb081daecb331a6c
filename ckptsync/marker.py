"""The ``ckptsync.json`` completion marker: step and metrics, written last and atomically.

A training loop that writes its checkpoint, then calls :func:`mark`, gets it
committed as soon as it settles: the marker is a completion signal, and its
step and metrics are recorded in the manifest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import UsageError
from .fsutil import write_json_atomic
from .metrics import MARKER_FILE


def marker_path(path: Path) -> Path:
    """Where the marker of a checkpoint lives: inside a folder, beside a single file."""
    return path / MARKER_FILE if path.is_dir() else path.with_name(path.name + "." + MARKER_FILE)


def mark(path: str | os.PathLike[str], step: int | None = None, metrics: Mapping[str, float] | None = None) -> Path:
    """Write the completion marker of the checkpoint at ``path``; returns the marker's path.

    ``path`` is a checkpoint folder (the marker goes inside it) or a single-file
    checkpoint (the marker goes beside it, as ``<name>.ckptsync.json``). The
    write is atomic: temp file, fsync, rename, fsync of the folder.
    """
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p} does not exist", "write the checkpoint first, then mark it")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise UsageError(f"step must be a non-negative integer, not {step!r}")
    clean: dict[str, float | None] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"metric {k!r} must be a number, not {v!r}")
        clean[str(k)] = float(v) if math.isfinite(v) else None
    doc = {"step": step, "metrics": clean}
    target = marker_path(p)
    write_json_atomic(target, doc, prefix=".ckptsync-marker-")
    return target


def parse_metric_args(items: list[str]) -> dict[str, float]:
    """``["eval_loss=0.21", "acc=0.9"]`` -> ``{"eval_loss": 0.21, "acc": 0.9}``; UsageError if malformed."""
    out: dict[str, float] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"--metric {item!r} is not NAME=VALUE", "for example --metric eval_loss=0.213")
        try:
            out[name] = float(value)
        except ValueError:
            raise UsageError(f"--metric {item!r}: {value!r} is not a number") from None
    return out
