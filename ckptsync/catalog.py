"""Committed checkpoints as restore, list and retention see them.

A single-host checkpoint is one manifest. A multi-host checkpoint of format
version 5 is one *seal*, written by the group's lead once every host committed
its part under ``parts/``; one of versions 2 to 4 (manifests with ``hosts``) is
the newest manifest of each host for one name and host set, *complete* only
when every host of the set has committed.

:func:`load` reads as little as the caller needs: a checkpoint with a catalog
entry is known from its key (and, with ``metrics``, the entry's small body)
until :func:`resolve` reads its manifest or seal; only manifests without one
are read at once. :func:`group` is the pure grouping of read manifests.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from . import layout, shards
from .errors import FormatError, IntegrityError, NewerFormatError, NotFound, UsageError
from .format import Group, Manifest
from .repository import ManifestKey, ManifestRecord, Repository

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """One committed checkpoint: its manifest(s) by host, or its manifest or seal known by key."""

    name: str
    hosts: tuple[str, ...]
    members: Mapping[str, ManifestRecord]
    #: Known from the catalog, not read yet: the key of its manifest or seal, and what the entry says.
    entry: layout.Hint | None = None
    mkey: ManifestKey | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    #: Older seals of the same parts (and their catalog entries), deleted with it.
    also: list[str] = field(default_factory=list)

    def object_keys(self) -> list[str]:
        """Its manifests, or its seal, and its catalog entry (not a sealed checkpoint's parts)."""
        keys = [rec.key for rec in self.members.values()] if self.members else ([self.mkey.key] if self.mkey else [])
        return keys + ([self.entry.key] if self.entry is not None else []) + self.also

    @property
    def complete(self) -> bool:
        return not self.hosts or all(h in self.members for h in self.hosts)

    @property
    def group(self) -> Group | None:
        """The host set of a version-5 multi-host checkpoint (None until its seal is read, or single-host)."""
        return self.members[next(iter(self.members))].manifest.group if self.members else None

    @property
    def sealed(self) -> bool:
        """A version-5 multi-host checkpoint (by its catalog entry, or its seal)."""
        return (self.entry is not None and self.entry.group is not None) or self.group is not None

    @property
    def host_count(self) -> int:
        """How many hosts committed parts: 1 for a single-host checkpoint."""
        if self.hosts:
            return len(self.hosts)
        g = self.group
        if g is not None:
            return g.hosts
        return int(self.info.get("hosts", 1)) if self.sealed else 1

    def totals(self) -> tuple[int, int, int] | None:
        """``(files, raw bytes, stored bytes)``, when known without reading parts."""
        if self.sealed:
            return None
        if self.members:
            m = self.manifest
            return len(m.files), m.raw_bytes, m.stored_bytes
        if all(k in self.info for k in ("files", "raw_bytes", "stored_bytes")):
            return int(self.info["files"]), int(self.info["raw_bytes"]), int(self.info["stored_bytes"])
        return None

    @property
    def missing(self) -> list[str]:
        return [h for h in self.hosts if h not in self.members]

    @property
    def newest(self) -> ManifestRecord:
        return max(self.members.values(), key=lambda r: (r.manifest.created, r.manifest.commit))

    @property
    def manifest(self) -> Manifest:
        """The representative manifest (step, metrics, created): the newest member's, or the catalog
        entry's summary (no files) until the manifest is read."""
        if self.members:
            return self.newest.manifest
        assert self.entry is not None
        e = self.entry
        created = self.info.get("created") or _stamp(e.commit)
        return Manifest(e.name, "dir", e.step, dict(self.info.get("metrics", {})), created, self.info.get("host", ""), e.commit, ())

    @property
    def records(self) -> list[ManifestRecord]:
        return list(self.members.values())

    def for_host(self, host: str) -> ManifestRecord:
        """This host's part; UsageError if the host is not one of the checkpoint's hosts."""
        if not self.hosts:
            return self.newest
        rec = self.members.get(host)
        if rec is None:
            raise UsageError(
                f"host {host!r} has no part in checkpoint {self.name} (hosts: {', '.join(self.hosts)})",
                "pass --host (or SM_CURRENT_HOST) naming one of them, or --all-hosts",
            )
        return rec

    def merged(self) -> ManifestRecord:
        """Every host's files in one manifest (for --all-hosts); UsageError on conflicting paths."""
        if not self.hosts:
            return self.newest
        if self.newest.manifest.kind == "file":
            if len({(r.manifest.files[0].hash, r.manifest.files[0].size) for r in self.members.values()}) > 1:
                raise UsageError(
                    f"hosts of checkpoint {self.name} wrote different contents to it", "restore one host's file (without --all-hosts)"
                )
            return self.newest
        files = shards.union(self.name, [self.members[h].manifest.files for h in self.hosts])
        base = self.newest
        m = base.manifest
        merged = Manifest(
            name=m.name,
            kind="dir",
            step=m.step,
            metrics=m.metrics,
            created=m.created,
            host=m.host,
            commit=m.commit,
            files=files,
            tool=m.tool,
            hosts=m.hosts,
            hash_algorithm=m.hash_algorithm,
        )
        return ManifestRecord(base.key, merged, base.modified)


def group(records: Iterable[ManifestRecord]) -> list[Checkpoint]:
    """Group manifests into checkpoints (multi-host: newest manifest per host)."""
    out: list[Checkpoint] = []
    multi: dict[tuple[str, tuple[str, ...]], dict[str, ManifestRecord]] = defaultdict(dict)
    for r in records:
        m = r.manifest
        if not m.hosts:
            out.append(Checkpoint(m.name, (), {m.host: r}))
            continue
        members = multi[(m.name, m.hosts)]
        old = members.get(m.host)
        if old is None or (m.created, m.commit) > (old.manifest.created, old.manifest.commit):
            members[m.host] = r
    out.extend(Checkpoint(name, hosts, members) for (name, hosts), members in multi.items())
    return out


def _stamp(commit: str) -> datetime:
    """The time at the head of a commit id (catalog entries without a readable body)."""
    return datetime.strptime(commit[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)


def load(repo: Repository, *, names: Iterable[str] | None = None, metrics: bool = False) -> list[Checkpoint]:
    """The committed checkpoints of ``repo`` (of ``names``), reading only manifests without a catalog entry.

    With ``metrics``, each catalog entry's body is read too (one small object per
    checkpoint: what ``--best``, ``list`` and metric retention need).
    """
    wanted = set(names) if names is not None else None
    keys = [k for k in repo.list_manifest_keys() if wanted is None or k.name in wanted]
    hints = {(h.name, h.commit): h for h in repo.list_hints() if wanted is None or h.name in wanted}
    hinted: list[Checkpoint] = []
    unread: list[ManifestKey] = []
    for k in keys:
        h = hints.get((k.name, k.commit))
        if h is None:
            unread.append(k)
        else:
            hinted.append(Checkpoint(k.name, (), {}, entry=h, mkey=k))
    if metrics and hinted:
        with ThreadPoolExecutor(max_workers=min(repo.workers, len(hinted)), thread_name_prefix="ckptsync-catalog") as pool:
            for ck, info in zip(hinted, pool.map(lambda c: repo.read_hint(c.entry), hinted), strict=True):
                if info is None:  # unreadable entry: read the manifest itself
                    unread.append(ck.mkey)  # type: ignore[arg-type]
                    ck.entry = None
                else:
                    ck.info = info
    records = [r for r in repo.load_manifests(keys=unread) if _usable(r)]
    return _one_seal_each([ck for ck in hinted if ck.entry is not None] + group(records))


def _one_seal_each(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per name and group: a lead that sealed twice (restarted, or a rewritten part) left
    two seals of the same parts; the newest counts, the others go with it (``also``)."""
    out: list[Checkpoint] = []
    seals: dict[tuple[str, str], Checkpoint] = {}
    for ck in checkpoints:
        gid = ck.entry.group if ck.entry is not None else (ck.group.id if ck.group else None)
        if gid is None:
            out.append(ck)
            continue
        other = seals.get((ck.name, gid))
        if other is None:
            seals[(ck.name, gid)] = ck
            continue
        new, old = (ck, other) if ck.manifest.commit > other.manifest.commit else (other, ck)
        new.also = [*new.also, *old.also, *old.object_keys()]
        seals[(ck.name, gid)] = new
    return out + list(seals.values())


def _usable(rec: ManifestRecord) -> bool:
    if rec.manifest.is_part:
        log.warning("skipping invalid manifest: %s is a multi-host part outside parts/", rec.key)
        return False
    return True


def resolve(repo: Repository, ck: Checkpoint) -> Checkpoint:
    """``ck`` with its manifest or seal read (``ck`` itself if it was). IntegrityError if it cannot be
    read; FormatError if it disagrees with its catalog entry."""
    if ck.members:
        return ck
    assert ck.mkey is not None and ck.entry is not None
    try:
        rec = repo.read_manifest(ck.mkey)
    except NewerFormatError:
        raise
    except (NotFound, FormatError) as exc:
        raise IntegrityError(f"manifest of {ck.name} is unreadable: {exc}") from None
    m = rec.manifest
    if m.is_part or m.step != ck.entry.step or (m.group.id if m.group else None) != ck.entry.group:
        raise FormatError(f"catalog entry {ck.entry.key} disagrees with its manifest")
    return replace(ck, members={m.host: rec})
