"""Which entries of a checkpoint folder are checkpoints, and which are still being written (pure).

Each top-level entry (a folder or a file) of the checkpoint folder is one
checkpoint, named by its entry name, unless its name marks it as temporary.
"""

from __future__ import annotations

import fnmatch

# Names trainers and tools give to entries that are not finished yet.
TEMPORARY_PATTERNS = (
    ".*",  # hidden: our own staging folders, editors, rsync, HF's .tmpXXXX
    "tmp-*",  # Hugging Face Trainer's tmp-checkpoint-N
    "*.tmp",
    "*.partial",
    "*.orbax-checkpoint-tmp-*",
    "*.orbax-checkpoint-tmp",
    "lost+found",
)


# Sidecar markers of single-file checkpoints (``model.ckpt.ckptsync.json``).
SIDECAR_SUFFIX = ".ckptsync.json"


def is_checkpoint_name(name: str) -> bool:
    """True if a top-level entry with this name may be a checkpoint."""
    return not is_temporary_name(name) and not name.endswith(SIDECAR_SUFFIX)


def is_temporary_name(name: str) -> bool:
    """True if an entry with this name is never a (finished) checkpoint."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMPORARY_PATTERNS)
