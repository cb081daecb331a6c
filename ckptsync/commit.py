"""The commit decision (pure): the manifest of an uploaded checkpoint, and whether an equal one is committed.

A checkpoint whose chunks are all stored gets a new manifest only if no
manifest already committed by this host says the same: the same files, and
nothing new about them. The caller writes the manifest (the commit point); this
module only decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from . import format as fmt
from .checkpoint import LocalCheckpoint
from .hashes import HASH_ALGORITHM
from .metrics import MARKER_FILE


def build_manifest(
    ckpt: LocalCheckpoint,
    files: Sequence[fmt.FileEntry],
    *,
    host: str,
    group: fmt.Group | None,
    created: datetime,
    tool: str,
) -> fmt.Manifest:
    """The manifest that commits ``ckpt`` with these stored ``files``."""
    return fmt.Manifest(
        name=ckpt.name,
        kind=ckpt.kind,
        step=ckpt.score.step,
        metrics=dict(ckpt.score.metrics),
        created=created,
        host=host,
        commit=fmt.new_commit_id(created, host),
        files=tuple(files),
        tool=tool,
        group=group,
        # The hash its files were named by (a manifest of no file names nothing: the lowest version's).
        hash_algorithm=files[0].algorithm if files else HASH_ALGORITHM,
    )


@dataclass(frozen=True)
class Equivalent:
    """A committed manifest that makes a new commit unnecessary, and why."""

    manifest: fmt.Manifest
    reason: str


def find_equivalent(manifest: fmt.Manifest, committed: Iterable[fmt.Manifest], *, score_source: str) -> Equivalent | None:
    """A manifest among ``committed`` that already says what ``manifest`` would, or None.

    Only this host's own commits of the same host set count: another host's
    identical files do not complete this host's part of a multi-host
    checkpoint. Same bytes need a new commit only if a ``ckptsync.json``
    marker (``score_source``) now says something new about them: a restored
    copy without its marker says less, not something new. A strict subset of a
    committed checkpoint's files (the trainer's rotation died halfway through
    deleting a committed folder) is not a new version either.
    """
    for other in committed:
        multi = manifest.hosts or manifest.group
        mine = (other.hosts, other.group) == (manifest.hosts, manifest.group) and (not multi or other.host == manifest.host)
        if not (mine and other.name == manifest.name and other.kind == manifest.kind):
            continue
        same_score = (other.step, dict(other.metrics)) == (manifest.step, dict(manifest.metrics))
        if other.content_key() == manifest.content_key() and (same_score or score_source != MARKER_FILE):
            return Equivalent(other, "already committed")
        if _strict_subset(manifest, other):
            return Equivalent(other, "a partial copy of a committed checkpoint")
    return None


def _strict_subset(part: fmt.Manifest, whole: fmt.Manifest) -> bool:
    mine = {(f.path, f.size, f.hash, f.mode) for f in part.files}
    theirs = {(f.path, f.size, f.hash, f.mode) for f in whole.files}
    return mine < theirs
