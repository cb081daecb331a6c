"""Committed checkpoints as restore and retention see them (pure).

A single-host checkpoint is one manifest. A multi-host checkpoint (manifests
with ``hosts``) is the newest manifest of each host for one name and host set;
it is *complete* only when every host of the set has committed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import UsageError
from .format import FileEntry, Manifest
from .repository import ManifestRecord


@dataclass(frozen=True)
class Checkpoint:
    """One committed checkpoint: its manifest(s) by host."""

    name: str
    hosts: tuple[str, ...]
    members: Mapping[str, ManifestRecord]

    @property
    def complete(self) -> bool:
        return not self.hosts or all(h in self.members for h in self.hosts)

    @property
    def missing(self) -> list[str]:
        return [h for h in self.hosts if h not in self.members]

    @property
    def newest(self) -> ManifestRecord:
        return max(self.members.values(), key=lambda r: (r.manifest.created, r.manifest.commit))

    @property
    def manifest(self) -> Manifest:
        """The representative manifest (step, metrics, created): the newest member's."""
        return self.newest.manifest

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
        files: dict[str, FileEntry] = {}
        for host in self.hosts:
            for f in self.members[host].manifest.files:
                other = files.get(f.path)
                if other is not None and (other.hash, other.size) != (f.hash, f.size):
                    raise UsageError(
                        f"hosts of checkpoint {self.name} wrote different contents to {f.path}",
                        "restore one host's files (without --all-hosts)",
                    )
                files[f.path] = f
        paths = set(files)
        for p in paths:
            parts = p.split("/")
            if any("/".join(parts[:i]) in paths for i in range(1, len(parts))):
                raise UsageError(
                    f"hosts of checkpoint {self.name} disagree on whether {p.rsplit('/', 1)[0]} is a file or a folder",
                    "restore one host's files (without --all-hosts)",
                )
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
            files=tuple(files[p] for p in sorted(files)),
            tool=m.tool,
            hosts=m.hosts,
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
