"""Step and metrics of a checkpoint, from its marker, trainer state or name (pure).

Sources, first match wins (docs/DESIGN.md section 1.3 and README describe them):

1. ``ckptsync.json`` in the checkpoint folder: ``{"step": 1200, "metrics": {...}}``.
2. Hugging Face ``trainer_state.json``: ``global_step`` and the numeric entries
   of ``log_history`` logged at that step.
3. The name: ``checkpoint-500``, ``step_500``, ``global_step500``, a bare number
   (Orbax), and ``key=value`` pairs as Lightning writes them
   (``epoch=3-step=1200-val_loss=0.213.ckpt``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MARKER_FILE = "ckptsync.json"
HF_STATE_FILE = "trainer_state.json"

_EXTENSIONS = (".ckpt", ".pt", ".pth", ".safetensors", ".bin", ".pkl", ".npz", ".h5", ".msgpack")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_PAIR = re.compile(r"(?:^|(?<=[-_ ]))([A-Za-z][A-Za-z0-9_./]*)=(" + _NUMBER + r")(?=$|[-_ ])", re.IGNORECASE)
_STEP_WORD = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:global_step|checkpoint|ckpt|step|iter|iteration)[-_]?(\d+)(?![0-9])",
    re.IGNORECASE,
)
_BARE = re.compile(r"\d+\Z")


@dataclass(frozen=True)
class Score:
    """Step and metrics of one checkpoint, and where they were read from."""

    step: int | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    source: str = "none"


def from_marker(doc: Any) -> Score | None:
    """Score from a parsed ``ckptsync.json``; None if it is not a usable marker."""
    if not isinstance(doc, dict):
        return None
    step = _as_step(doc.get("step"))
    metrics = _numeric_items(doc.get("metrics") or {})
    return Score(step, metrics, MARKER_FILE)


def from_trainer_state(doc: Any) -> Score | None:
    """Score from a parsed Hugging Face ``trainer_state.json``."""
    if not isinstance(doc, dict):
        return None
    step = _as_step(doc.get("global_step"))
    metrics: dict[str, float | None] = {}
    history = doc.get("log_history")
    if isinstance(history, list):
        for entry in history:
            if isinstance(entry, dict) and step is not None and _as_step(entry.get("step")) == step:
                metrics.update(_numeric_items({k: v for k, v in entry.items() if k != "step"}))
    return Score(step, metrics, HF_STATE_FILE)


def from_name(name: str) -> Score:
    """Score from a checkpoint's file or folder name."""
    stem = name
    for ext in _EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    metrics: dict[str, float | None] = {}
    for key, value in _PAIR.findall(stem):
        metrics[key] = _finite(float(value))
    step: int | None = None
    if "step" in metrics:
        raw = metrics.pop("step")
        if raw is not None and raw >= 0 and raw == int(raw):
            step = int(raw)
    if step is None:
        m = _STEP_WORD.search(stem)
        if m:
            step = int(m.group(1))
        elif _BARE.match(stem):
            step = int(stem)
    source = "name" if step is not None or metrics else "none"
    return Score(step, metrics, source)


def _as_step(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value == int(value):
        return int(value)
    return None


def _numeric_items(doc: Any) -> dict[str, float | None]:
    if not isinstance(doc, Mapping):
        return {}
    out: dict[str, float | None] = {}
    for k, v in doc.items():
        if isinstance(k, str) and k and len(k) <= 256 and isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                out[k] = _finite(float(v))
            except OverflowError:
                out[k] = None
    return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
