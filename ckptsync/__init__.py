"""ckptsync: keep training checkpoints safe on object storage and bring them back on restart.

The public Python API::

    import ckptsync
    ckptsync.push("/opt/ml/checkpoints", "s3://bucket/run-1")
    result = ckptsync.restore("s3://bucket/run-1", "/opt/ml/checkpoints", select="best", metric="eval_loss")
    ckptsync.wait("/opt/ml/checkpoints", "s3://bucket/run-1", name="checkpoint-40", timeout=60)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .api import list_checkpoints, open_repository, prune, push, restore, verify, wait
from .errors import CkptsyncError, IntegrityError, NothingToRestore, StoreError, UsageError
from .marker import mark
from .options import Options
from .policy import Retention
from .store import RetryPolicy, S3Options

if TYPE_CHECKING:
    from .download import RestoreResult
    from .syncer import Syncer

# Imported on first use: the restore pipeline pulls in numpy and zstandard, Syncer the
# watch daemon and watchdog, which the command line and most callers do not need.
_LAZY = {"RestoreResult": "download", "Syncer": "syncer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "push",
    "restore",
    "list_checkpoints",
    "verify",
    "prune",
    "wait",
    "mark",
    "Syncer",
    "open_repository",
    "Options",
    "S3Options",
    "RetryPolicy",
    "Retention",
    "RestoreResult",
    "CkptsyncError",
    "IntegrityError",
    "NothingToRestore",
    "StoreError",
    "UsageError",
]
