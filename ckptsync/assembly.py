"""What one node restores of a committed checkpoint: the files its ranks need to load.

- single-host: the checkpoint's manifest;
- multi-host, versions 2 to 4: this host's member, or with ``all_hosts`` the union;
- multi-host, version 5 (sealed): this host's part plus the lead's files that
  are not one rank's shards (``.metadata``, ``latest``, ``trainer_state.json``,
  configuration: see :mod:`ckptsync.shards`), or with ``all_hosts`` the union of
  every part, which lets torch.distributed.checkpoint re-shard onto another
  number of nodes. A torch.distributed.checkpoint folder whose ``.metadata``
  says that a value every rank reads (a replicated tensor, a step counter) was
  saved by a rank of another node is restored whole on every node. A job whose host set differs from the one that saved the
  checkpoint is told so, never given a part that is not its own.

Reads the seal, this host's part and the lead's: three objects, whatever the
number of hosts (``all_hosts`` reads every part).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from . import catalog, dcp, shards
from . import format as fmt
from .errors import IntegrityError, UsageError
from .repository import ManifestKey, ManifestRecord, Repository

log = logging.getLogger(__name__)


def for_node(repo: Repository, ck: catalog.Checkpoint, host: str, hosts: Sequence[str], *, all_hosts: bool) -> ManifestRecord:
    """The record to restore on ``host`` of a job on ``hosts`` (empty: a single-host job)."""
    ck = catalog.resolve(repo, ck)
    if ck.hosts:
        return ck.merged() if all_hosts else ck.for_host(host)
    seal = ck.newest
    group = seal.manifest.group
    if group is None:
        return seal
    if all_hosts:
        return _union(repo, seal, group)
    if not hosts or fmt.group_id(hosts) != group.id:
        job = f"this job runs on {len(hosts)} hosts" if hosts else "this job runs on one host"
        raise UsageError(
            f"checkpoint {ck.name} was saved by {group.hosts} hosts (lead {group.lead}); {job}, a different set",
            "restore with --all-hosts on every node (torch.distributed.checkpoint re-shards on load), or pass the saving job's --hosts",
        )
    # The seal proves every part was committed. The lead's part missing is seen by every host alike
    # (all fall back together); this host's alone is not, and stops the restore (DamagedHere).
    by_host = {h: repo.list_parts(seal.name, group.id, h).get(h, []) for h in dict.fromkeys((group.lead, host))}
    lead = _latest_part(repo, seal, group, group.lead, by_host)
    try:
        own = lead if group.lead == host else _latest_part(repo, seal, group, host, by_host)
    except IntegrityError as exc:
        raise DamagedHere(exc.message) from None
    files = {f.path: f for f in own.manifest.files}
    if lead is not own:
        files.update((f.path, f) for f in shards.shared_files(own.manifest.files, lead.manifest.files))
    needed = _dcp_whole_entries(repo, lead.manifest.files)
    by_path = {f.path: f for f in lead.manifest.files}
    if needed is None or not needed <= files.keys() | by_path.keys():
        # A value every rank reads was saved by a rank of another node (the save planner's
        # de-duplication spreads them): this node needs the other parts too.
        log.info("%s: entries every rank reads lie in other nodes' files; restoring every part", ck.name)
        return _union(repo, seal, group)
    files.update((p, by_path[p]) for p in needed - files.keys())
    return _assembled(seal, own, tuple(files[p] for p in sorted(files)))


class DamagedHere(IntegrityError):
    """A multi-host checkpoint damaged in this host's files only: the other hosts may restore it, so
    falling back alone would resume the job from two different steps."""


def _dcp_whole_entries(repo: Repository, lead: Sequence[fmt.FileEntry]) -> set[str] | None:
    """The files of the checkpoint's torch.distributed.checkpoint folders that every rank reads
    (from the lead's ``.metadata``: see :mod:`ckptsync.dcp`); None if a ``.metadata`` cannot be read."""
    out: set[str] = set()
    for f in lead:
        folder, _, base = f.path.rpartition("/")
        if base != ".metadata" or f.size > dcp.MAX_METADATA_BYTES:
            continue
        pieces = [repo.get_chunk(c.whole())[c.offset : c.offset + c.used] for c in f.chunks]
        data = b"".join(pieces)
        if f.hash_of(pieces) != f.hash:
            raise IntegrityError(f"{f.path} does not match its hash")
        try:
            out.update(f"{folder}/{p}" if folder else p for p in dcp.shared_files(data))
        except dcp.MetadataError as exc:
            log.info("%s: %s", f.path, exc)
            return None
    return out


def _latest_part(
    repo: Repository, seal: ManifestRecord, group: fmt.Group, host: str, by_host: dict[str, list[ManifestKey]]
) -> ManifestRecord:
    keys = by_host.get(host, [])
    for key in sorted(keys, key=lambda k: k.commit, reverse=True):
        parts = repo.load_parts([key])
        if parts and _belongs(parts[0], seal, group):
            return parts[0]
    raise IntegrityError(f"checkpoint {seal.name} is sealed but host {host}'s part is missing")


def _belongs(rec: ManifestRecord, seal: ManifestRecord, group: fmt.Group) -> bool:
    g = rec.manifest.group
    return g is not None and g.id == group.id and rec.manifest.kind == seal.manifest.kind


def _union(repo: Repository, seal: ManifestRecord, group: fmt.Group) -> ManifestRecord:
    by_host = repo.list_parts(seal.name, group.id)
    newest: list[ManifestKey] = [max(keys, key=lambda k: k.commit) for keys in by_host.values()]
    parts = [p for p in repo.load_parts(newest) if _belongs(p, seal, group)]
    if len(parts) < group.hosts:
        raise IntegrityError(f"checkpoint {seal.name} is sealed but only {len(parts)} of its {group.hosts} parts are readable")
    parts.sort(key=lambda r: r.manifest.host)
    if seal.manifest.kind == "file":
        if len({(p.manifest.files[0].hash, p.manifest.files[0].size) for p in parts}) > 1:
            raise UsageError(
                f"hosts of checkpoint {seal.name} wrote different contents to it", "restore one host's file (without --all-hosts)"
            )
        return _assembled(seal, parts[0], parts[0].manifest.files)
    return _assembled(seal, parts[0], shards.union(seal.name, [p.manifest.files for p in parts]))


def _assembled(seal: ManifestRecord, part: ManifestRecord, files: tuple[fmt.FileEntry, ...]) -> ManifestRecord:
    """A record to restore: the seal's step and metrics, ``files`` in one folder (or the one file)."""
    s = seal.manifest
    m = replace(part.manifest, step=s.step, metrics=s.metrics, created=s.created, files=files)
    return ManifestRecord(part.key, m, part.modified)
