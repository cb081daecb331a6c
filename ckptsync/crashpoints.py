"""Named points where a test can have the process killed (``kill -9``) on purpose.

``CKPTSYNC_CRASH_AT=PHASE[:N]`` makes the process SIGKILL itself the N-th time
(default 1st) it passes PHASE. Phases: ``chunk-stored``, ``before-manifest``,
``after-manifest``, ``restore-chunk``, ``before-rename``. Unset (always, in
production), a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("CKPTSYNC_CRASH_AT")
    if not spec:
        return None
    phase, _, n = spec.partition(":")
    return phase, int(n) if n.isdigit() else 1


def reached(phase: str) -> None:
    """Die here if the environment asks for it."""
    target = _target()
    if target is None or target[0] != phase:
        return
    with _lock:
        _counts[phase] = _counts.get(phase, 0) + 1
        hit = _counts[phase] == target[1]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
