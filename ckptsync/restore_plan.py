"""What restoring one manifest takes (pure): files to reuse, files to write, chunks to fetch and where their bytes go.

:func:`plan_restore` decides from the manifest and from what is already at the
checkpoint's final path (:class:`LocalView`, probed by the executor in
:mod:`ckptsync.download`): a file already there with the right size and hash
is reused, not downloaded; a checkpoint already there, exactly, is not touched.
Every chunk is fetched once, however many files or parts of files use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import format as fmt


@dataclass(frozen=True)
class LocalView:
    """What the final path already holds: files matching the manifest (by path), and whether it matches exactly."""

    #: Manifest paths whose local file has the right size and hash (and may be linked or copied).
    reusable: Mapping[str, Path] = field(default_factory=dict)
    #: The final path holds exactly the manifest's files, with their modes, and nothing else.
    exact: bool = False


@dataclass(frozen=True)
class Target:
    """Where bytes ``[start, start + length)`` of a chunk go: file ``file`` (an index into ``write``) at ``offset``."""

    file: int
    offset: int
    start: int
    length: int


@dataclass(frozen=True)
class Fetch:
    """One chunk to download, and every place its bytes go."""

    ref: fmt.ChunkRef
    targets: tuple[Target, ...]

    @property
    def length(self) -> int:
        """The file bytes it provides."""
        return sum(t.length for t in self.targets)


@dataclass(frozen=True)
class RestorePlan:
    """How to restore one manifest at its final path."""

    manifest: fmt.Manifest
    #: Nothing to do: the final path already holds exactly this checkpoint.
    already_present: bool = False
    #: Files taken from the final path as they are (linked or copied into the staging folder).
    reuse: tuple[tuple[fmt.FileEntry, Path], ...] = ()
    #: Files assembled from chunks.
    write: tuple[fmt.FileEntry, ...] = ()
    #: Folders to create inside the checkpoint, parents first.
    folders: tuple[str, ...] = ()
    fetches: tuple[Fetch, ...] = ()

    @property
    def bytes_to_write(self) -> int:
        """Bytes assembled from chunks: what the local file system must have free."""
        return sum(f.size for f in self.write)


def plan_restore(manifest: fmt.Manifest, local: LocalView | None = None) -> RestorePlan:
    """The plan for restoring ``manifest`` given what is at its final path."""
    local = local or LocalView()
    if local.exact and len(local.reusable) == len(manifest.files):
        return RestorePlan(manifest, already_present=True)
    reuse: list[tuple[fmt.FileEntry, Path]] = []
    write: list[fmt.FileEntry] = []
    targets: dict[str, list[Target]] = {}
    refs: dict[str, fmt.ChunkRef] = {}
    for entry in manifest.files:
        if manifest.kind == "dir":
            fmt.check_relpath(entry.path)
        found = local.reusable.get(entry.path)
        if found is not None:
            reuse.append((entry, found))
            continue
        offset = 0
        for ref in entry.chunks:
            targets.setdefault(ref.hash, []).append(Target(len(write), offset, ref.offset, ref.used))
            refs[ref.hash] = ref.whole()
            offset += ref.used
        write.append(entry)
    folders = sorted({"/".join(p[:i]) for e in manifest.files for p in [e.path.split("/")] for i in range(1, len(p))}, key=_depth_first)
    return RestorePlan(
        manifest,
        reuse=tuple(reuse),
        write=tuple(write),
        folders=tuple(folders) if manifest.kind == "dir" else (),
        fetches=tuple(Fetch(refs[h], tuple(ts)) for h, ts in targets.items()),
    )


def _depth_first(path: str) -> tuple[int, str]:
    return (path.count("/"), path)
