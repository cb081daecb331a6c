"""ckptsync: keep training checkpoints safe on object storage and bring them back on restart.

The public Python API::

    import ckptsync
    ckptsync.push("/opt/ml/checkpoints", "s3://bucket/run-1")
    result = ckptsync.restore("s3://bucket/run-1", "/opt/ml/checkpoints", select="best", metric="eval_loss")
"""

from __future__ import annotations

__version__ = "0.1.0"

import sys  # noqa: E402
import types  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from .api import list_checkpoints, open_repository, push, restore, verify  # noqa: E402
from .errors import CkptsyncError, IntegrityError, NothingToRestore, StoreError, UsageError  # noqa: E402
from .marker import mark  # noqa: E402
from .options import Options  # noqa: E402
from .store import RetryPolicy, S3Options  # noqa: E402

if TYPE_CHECKING:
    from .restore import RestoreResult
    from .syncer import Syncer

# Imported on first use: the restore pipeline pulls in numpy and zstandard, Syncer the
# watch daemon and watchdog, which the command line and most callers do not need.
_LAZY = {"RestoreResult": "restore", "Syncer": "syncer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """This package, keeping ``ckptsync.restore`` and ``ckptsync.verify`` the API functions.

    The import system binds a submodule on its package when the submodule is first
    loaded; ckptsync.restore (the module) is now loaded after this file has run,
    and would replace the function of the same name.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("restore", "verify") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "__version__",
    "push",
    "restore",
    "list_checkpoints",
    "verify",
    "mark",
    "Syncer",
    "open_repository",
    "Options",
    "S3Options",
    "RetryPolicy",
    "RestoreResult",
    "CkptsyncError",
    "IntegrityError",
    "NothingToRestore",
    "StoreError",
    "UsageError",
]
