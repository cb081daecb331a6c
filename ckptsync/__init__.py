"""ckptsync: keep training checkpoints safe on object storage and bring them back on restart.

The public Python API::

    import ckptsync
    ckptsync.push("/opt/ml/checkpoints", "s3://bucket/run-1")
    result = ckptsync.restore("s3://bucket/run-1", "/opt/ml/checkpoints", select="best", metric="eval_loss")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import list_checkpoints, open_repository, push, restore, verify  # noqa: E402
from .config import Options  # noqa: E402
from .errors import CkptsyncError, IntegrityError, NothingToRestore, StoreError, UsageError  # noqa: E402
from .marker import mark  # noqa: E402
from .restore import RestoreResult  # noqa: E402
from .store import RetryPolicy, S3Options  # noqa: E402
from .syncer import Syncer  # noqa: E402

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
