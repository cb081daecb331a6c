"""What the framework callbacks share: where checkpoints go, who uploads them, marking and waiting.

The uploader is either a :class:`~ckptsync.Syncer` in the training process, or a
daemon in another process (``ckptsync run``, which gives the training command
``CKPTSYNC_DIR``, ``CKPTSYNC_REMOTE`` and ``CKPTSYNC_STATE_DIR``; or a ``ckptsync watch``
sidecar). Marking a checkpoint is what tells either of them to look now: the
marker is a completion signal its watcher sees at once.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..marker import mark
from ..state import default_state_dir, read_status
from ..status import LastCommit

if TYPE_CHECKING:
    from ..syncer import Syncer
    from ..waiting import WaitResult

log = logging.getLogger("ckptsync")

#: How long a callback waits at the end of training for its last checkpoint to be committed, by default.
DEFAULT_WAIT = 600.0
#: Seconds between two looks at the uploader's last commit.
ASK_EVERY = 2.0


class Companion:
    """A training process's view of the ckptsync that uploads its checkpoints."""

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        remote: str | None = None,
        *,
        syncer: Syncer | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        wait_timeout: float = DEFAULT_WAIT,
    ) -> None:
        self.syncer = syncer
        self.remote = syncer.remote if syncer is not None else remote or os.environ.get("CKPTSYNC_REMOTE") or None
        folder = syncer.dir if syncer is not None else dir or os.environ.get("CKPTSYNC_DIR")
        self.dir = Path(folder).absolute() if folder else None
        given = state_dir or os.environ.get("CKPTSYNC_STATE_DIR")
        self.state_dir: Path | None = Path(given) if given else None
        if self.state_dir is None and self.dir is not None and self.remote:
            self.state_dir = default_state_dir(self.dir, self.remote)
        self.wait_timeout = wait_timeout
        self.reported: str | None = None  # the commit id last reported
        self._asked = float("-inf")

    def folder_for(self, framework_dir: str | os.PathLike[str]) -> Path:
        """The watched folder: the one given (or ``ckptsync run``'s), else the framework's own."""
        return self.dir if self.dir is not None else Path(framework_dir).absolute()

    def mark(self, path: Path, step: int | None, metrics: Mapping[str, Any]) -> None:
        """Write the checkpoint's completion marker with its step and numeric metrics."""
        mark(path, step=step, metrics=numeric(metrics))

    def last_commit(self) -> LastCommit | None:
        """The uploader's most recent commit, as far as it says (None: none yet, or nobody to ask)."""
        if self.syncer is not None:
            return self.syncer.status().last_commit if self.syncer.daemon is not None else None
        if self.state_dir is None:
            return None
        status = read_status(self.state_dir)
        return status.last_commit if status is not None else None

    def new_commit(self) -> LastCommit | None:
        """The last commit if it was not reported yet (then it counts as reported). Asks the uploader
        at most every :data:`ASK_EVERY` seconds: a training loop may call this at every batch."""
        now = time.monotonic()
        if now - self._asked < ASK_EVERY:
            return None
        self._asked = now
        last = self.last_commit()
        if last is None or last.commit == self.reported:
            return None
        self.reported = last.commit
        return last

    def wait(self, name: str, framework_dir: str | os.PathLike[str]) -> WaitResult | None:
        """Wait (up to ``wait_timeout``) until checkpoint ``name`` is committed; None if no remote is known."""
        if self.syncer is not None:
            if self.syncer.daemon is None:
                return None
            return self.syncer.wait(name, timeout=self.wait_timeout)
        if not self.remote:
            log.warning("ckptsync: no remote known (CKPTSYNC_REMOTE, or the callback's remote=): not waiting for %s", name)
            return None
        from ..api import wait

        return wait(self.folder_for(framework_dir), self.remote, name=name, timeout=self.wait_timeout, state_dir=self.state_dir)


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are finite numbers (tensors of one element included), as floats."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def describe_wait(result: WaitResult | None, name: str) -> tuple[int, str]:
    """(log level, message) for the outcome of the final wait."""
    if result is None:
        return logging.INFO, f"ckptsync: not waiting for {name} (no uploader known)"
    if result.committed:
        step = "" if result.step is None else f" (step {result.step})"
        return logging.INFO, f"ckptsync: {name}{step} is committed ({result.commit}) after {result.seconds:.1f}s"
    return logging.WARNING, f"ckptsync: {name} is NOT committed after {result.seconds:.0f}s: {result.reason}"
