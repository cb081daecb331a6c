"""Sharded checkpoints on node-local disks: which files are one rank's, which every node needs (pure).

In a multi-node job each node's checkpoint folder holds its own ranks' shard
files; the coordinator (rank 0) also writes files the other nodes need to load
(torch.distributed.checkpoint's ``.metadata``, DeepSpeed's ``latest`` and model
states, Hugging Face's ``trainer_state.json``). A restore gives each node its
own part plus the lead's files that are not one rank's shards. The rules and
the write orders they rest on are in docs/INTEGRATIONS.md ("Many nodes").
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from . import format as fmt
from .errors import UsageError

#: Base names of files that belong to one rank: never given to another node's restore.
RANK_FILES = (
    "*.distcp",  # torch.distributed.checkpoint: __{rank}_{n}.distcp
    "*zero_pp_rank_*",  # DeepSpeed ZeRO optimizer (and ZeRO-3 model) states, per data-parallel rank
    "rng_state_*.pth",  # Hugging Face Trainer: rng_state_{process_index}.pth
    "rng_state_*.pt",
)

#: Base names whose presence says this folder holds the coordinator's files, written after
#: (or, for ``latest``, by) the rank that finishes the save: every rank's files are written.
COORDINATOR_FILES = (".metadata", "trainer_state.json", "latest", "meta.pt")


def is_rank_file(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pat) for pat in RANK_FILES)


def holds_coordinator_files(relpaths: Iterable[str]) -> bool:
    """True if a folder's files include the coordinator's completion files (see :data:`COORDINATOR_FILES`).

    A torch.distributed.checkpoint folder counts only when every folder holding
    ``*.distcp`` files also holds ``.metadata``.
    """
    paths = list(relpaths)
    distcp_dirs = {p.rpartition("/")[0] for p in paths if p.endswith(".distcp")}
    metadata_dirs = {p.rpartition("/")[0] for p in paths if p.rsplit("/", 1)[-1] == ".metadata"}
    if distcp_dirs:
        return distcp_dirs <= metadata_dirs
    return any(p.rsplit("/", 1)[-1] in COORDINATOR_FILES for p in paths)


def shared_files(own: Sequence[fmt.FileEntry], lead: Sequence[fmt.FileEntry]) -> list[fmt.FileEntry]:
    """The lead's files a node needs beside its own: not rank files, not paths the node has, not in its way."""
    mine = {f.path for f in own}
    taken = mine | {p.rsplit("/", i)[0] for p in mine for i in range(1, p.count("/") + 1)}
    out = []
    for f in lead:
        if f.path in taken or is_rank_file(f.path):
            continue
        ancestors = f.path.split("/")
        if any("/".join(ancestors[:i]) in mine for i in range(1, len(ancestors))):
            continue
        out.append(f)
    return out


def union(name: str, parts: Sequence[Sequence[fmt.FileEntry]]) -> tuple[fmt.FileEntry, ...]:
    """Every part's files in one folder; UsageError on a path two parts give different contents."""
    files: dict[str, fmt.FileEntry] = {}
    for part in parts:
        for f in part:
            other = files.get(f.path)
            if other is not None and (other.hash, other.size) != (f.hash, f.size):
                raise UsageError(
                    f"hosts of checkpoint {name} wrote different contents to {f.path}", "restore one host's files (without --all-hosts)"
                )
            files[f.path] = f
    paths = set(files)
    for p in paths:
        segments = p.split("/")
        if any("/".join(segments[:i]) in paths for i in range(1, len(segments))):
            raise UsageError(
                f"hosts of checkpoint {name} disagree on whether {p.rsplit('/', 1)[0]} is a file or a folder",
                "restore one host's files (without --all-hosts)",
            )
    return tuple(files[p] for p in sorted(files))
