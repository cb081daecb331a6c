"""Shared by the reliability scenarios: the run size, and recording each scenario's figure.

``CKPTSYNC_RELIABILITY_FULL=1`` selects the full counts (100+ runs where the issue asks);
``CKPTSYNC_RELIABILITY_OUT=FILE`` appends one JSON line per scenario for docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import threading

_lock = threading.Lock()


def full_size() -> bool:
    return os.environ.get("CKPTSYNC_RELIABILITY_FULL") == "1"


def record(scenario: int, name: str, runs: int, figure: str, ok: bool) -> None:
    """Append a scenario's figure to $CKPTSYNC_RELIABILITY_OUT (if set)."""
    out = os.environ.get("CKPTSYNC_RELIABILITY_OUT")
    if not out:
        return
    line = json.dumps({"scenario": scenario, "name": name, "runs": runs, "figure": figure, "result": "pass" if ok else "fail"})
    with _lock, open(out, "a") as f:
        f.write(line + "\n")
