"""A remote seen through the format: chunks and manifests under a key prefix.

Shared by every command; the only place that maps format objects to keys.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from . import format as fmt
from . import layout
from .errors import FormatError, IntegrityError, NewerFormatError, NotFound, ObjectTooLarge, StoreError
from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk object found by listing."""

    hash: str
    codec: str
    stored: int
    modified: datetime | None


@dataclass(frozen=True)
class ManifestRecord:
    """A committed manifest and the key it was read from."""

    key: str
    manifest: fmt.Manifest
    modified: datetime | None = None

    @property
    def name(self) -> str:
        return self.manifest.name


@dataclass(frozen=True)
class ManifestKey:
    key: str
    name: str
    commit: str
    modified: datetime | None


class Repository:
    """Chunks and manifests of one remote."""

    def __init__(self, store: Store, prefix: str = "", *, workers: int = 8) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.workers = max(1, workers)
        #: Manifests skipped as invalid or unreadable so far: a remote that holds only those is not empty.
        self.unusable = 0
        self._count_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.store.url}/{self.prefix}" if self.prefix else self.store.url

    def close(self) -> None:
        """Close the store's connections."""
        self.store.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- chunks

    def chunk_key(self, digest: str, codec_name: str) -> str:
        return fmt.chunk_key(self.prefix, digest, codec_name)

    def list_chunk_objects(self) -> dict[tuple[str, str], StoredChunk]:
        """Every chunk object under the prefix, by ``(hash, codec)`` (one listing)."""
        out: dict[tuple[str, str], StoredChunk] = {}
        for info in self.store.list(fmt.join_key(self.prefix, fmt.CHUNKS_DIR) + "/"):
            parsed = fmt.parse_chunk_key(info.key)
            if parsed is not None:
                out[parsed] = StoredChunk(parsed[0], parsed[1], info.size, info.modified)
        return out

    def list_chunks(self) -> dict[str, StoredChunk]:
        """Every stored chunk by hash; where one hash is stored under two codecs, either."""
        return {c.hash: c for c in self.list_chunk_objects().values()}

    def put_chunk(self, digest: str, codec_name: str, data: bytes | memoryview) -> None:
        self.store.put(self.chunk_key(digest, codec_name), data)

    def get_chunk(self, ref: fmt.ChunkRef) -> bytes | memoryview:
        """Fetch, decode and verify one chunk; IntegrityError if missing or corrupt."""
        key = self.chunk_key(ref.hash, ref.codec)
        try:
            stored = self.store.get(key, max_size=ref.stored)
        except NotFound:
            raise IntegrityError(f"chunk {ref.hash} is missing from the remote ({key})", chunk=ref.hash) from None
        except ObjectTooLarge:
            raise IntegrityError(f"chunk {ref.hash} is larger than the manifest says ({key})", chunk=ref.hash) from None
        except StoreError as exc:
            if exc.transient:  # retries exhausted on this one object: treat it as unreadable
                raise IntegrityError(f"chunk {ref.hash} could not be read ({exc.message})", chunk=ref.hash) from None
            raise
        if len(stored) != ref.stored:
            raise IntegrityError(f"chunk {ref.hash} is {len(stored)} bytes, the manifest says {ref.stored} ({key})", chunk=ref.hash)
        from . import codec  # here, not at the top: listing and reading manifests need no numpy or zstandard

        return codec.decode(ref.codec, stored, ref.size, ref.hash, ref.algorithm)

    # -- manifests

    def list_manifest_keys(self) -> list[ManifestKey]:
        out = []
        for info in self.store.list(fmt.join_key(self.prefix, fmt.MANIFESTS_DIR) + "/"):
            parsed = fmt.parse_manifest_key(info.key)
            if parsed is None:
                log.debug("ignoring unexpected object %s", info.key)
                continue
            out.append(ManifestKey(info.key, parsed[0], parsed[1], info.modified))
        return out

    def read_manifest(self, mkey: ManifestKey) -> ManifestRecord:
        data = self.store.get(mkey.key, max_size=fmt.MAX_MANIFEST_BYTES)
        m = fmt.decode_manifest(data, key=mkey.key)
        if m.name != mkey.name or m.commit != mkey.commit:
            raise FormatError(f"manifest {mkey.key} names another checkpoint ({m.name!r}, {m.commit!r})")
        return ManifestRecord(mkey.key, m, mkey.modified)

    def load_manifests(self, names: Iterable[str] | None = None, *, keys: list[ManifestKey] | None = None) -> list[ManifestRecord]:
        """Read every committed manifest (optionally only of some names), in parallel.

        Manifests that fail validation are skipped with a warning: a damaged or
        hostile manifest never stops the others from being used.
        """
        keys = self.list_manifest_keys() if keys is None else keys
        if names is not None:
            wanted = set(names)
            keys = [k for k in keys if k.name in wanted]
        if not keys:
            return []

        return self._read_all(keys, self.read_manifest)

    def _read_all(self, keys: list[ManifestKey], read: Callable[[ManifestKey], ManifestRecord]) -> list[ManifestRecord]:
        if not keys:
            return []
        skipped: list[str] = []

        def one(k: ManifestKey) -> ManifestRecord | None:
            try:
                return read(k)
            except NewerFormatError:
                raise
            except FormatError as exc:
                log.warning("skipping invalid manifest: %s", exc.message)
            except NotFound:
                log.debug("manifest %s vanished while listing (pruned)", k.key)
                return None
            except ObjectTooLarge:
                log.warning("skipping invalid manifest: %s is larger than %d bytes", k.key, fmt.MAX_MANIFEST_BYTES)
            except StoreError as exc:
                if exc.transient:
                    raise
                log.warning("skipping unreadable manifest %s: %s", k.key, exc.message)
            skipped.append(k.key)
            return None

        with ThreadPoolExecutor(max_workers=min(self.workers, len(keys)), thread_name_prefix="ckptsync-manifest") as pool:
            records = list(pool.map(one, keys))
        with self._count_lock:
            self.unusable += len(skipped)
        return [r for r in records if r is not None]

    def commit(self, manifest: fmt.Manifest) -> str:
        """Write a manifest with a conditional create: the commit point. Returns its key.

        A multi-host part goes under ``parts/``; a checkpoint's manifest or seal
        under ``manifests/``, then its catalog entry (best effort: a reader that
        misses it reads the manifest instead).
        """
        if manifest.is_part:
            assert manifest.group is not None
            key = layout.part_key(self.prefix, manifest.name, manifest.group.id, manifest.host, manifest.commit)
            self.store.put_if_absent(key, fmt.encode_manifest(manifest))
            return key
        key = fmt.manifest_key(self.prefix, manifest.name, manifest.commit)
        self.store.put_if_absent(key, fmt.encode_manifest(manifest))
        if not manifest.hosts:
            group = manifest.group.id if manifest.group else None
            hint = layout.hint_key(self.prefix, manifest.name, manifest.step, group, manifest.commit)
            try:
                self.store.put(hint, layout.encode_hint(manifest))
            except StoreError as exc:
                log.info("catalog entry of %s not written (%s); readers read its manifest instead", manifest.name, exc.message)
        return key

    # -- the catalog and multi-host parts (format version 5)

    def list_hints(self) -> list[layout.Hint]:
        """Every catalog entry (one listing)."""
        out = []
        for info in self.store.list(fmt.join_key(self.prefix, fmt.CATALOG_DIR) + "/"):
            hint = layout.parse_hint_key(info.key)
            if hint is not None:
                out.append(hint)
        return out

    def read_hint(self, hint: layout.Hint) -> dict[str, object] | None:
        """A catalog entry's body, or None if it is gone or invalid (the manifest is read instead)."""
        try:
            return layout.decode_hint(self.store.get(hint.key, max_size=layout.MAX_HINT_BYTES))
        except (NotFound, ObjectTooLarge, FormatError) as exc:
            log.debug("catalog entry %s unusable: %s", hint.key, exc)
            return None

    def list_parts(self, name: str, group: str, host: str | None = None) -> dict[str, list[ManifestKey]]:
        """The committed parts of one multi-host checkpoint (of one ``host``), by host."""
        prefix = layout.group_prefix(self.prefix, name, group) if host is None else layout.host_prefix(self.prefix, name, group, host)
        out: dict[str, list[ManifestKey]] = {}
        for info in self.store.list(prefix):
            parsed = layout.parse_part_key(info.key)
            if parsed is None or parsed[0] != name or parsed[1] != group or (host is not None and parsed[2] != host):
                continue
            out.setdefault(parsed[2], []).append(ManifestKey(info.key, name, parsed[3], info.modified))
        return out

    def list_all_parts(self) -> list[ManifestKey]:
        """Every part of every multi-host checkpoint (for verify and chunk collection: grows with the fleet)."""
        out = []
        for info in self.store.list(fmt.join_key(self.prefix, fmt.PARTS_DIR) + "/"):
            parsed = layout.parse_part_key(info.key)
            if parsed is not None:
                out.append(ManifestKey(info.key, parsed[0], parsed[3], info.modified))
        return out

    def read_part(self, mkey: ManifestKey) -> ManifestRecord:
        rec = self.read_manifest(mkey)
        if not rec.manifest.is_part:
            raise FormatError(f"{mkey.key} is not a multi-host part")
        parsed = layout.parse_part_key(mkey.key)
        group = rec.manifest.group
        if parsed is None or group is None or parsed[1] != group.id or parsed[2] != rec.manifest.host:
            raise FormatError(f"part {mkey.key} names another group or host")
        return rec

    def load_parts(self, keys: list[ManifestKey]) -> list[ManifestRecord]:
        """Read parts in parallel; invalid ones are skipped with a warning."""
        return self._read_all(keys, self.read_part)

    def announce(self, name: str, group: str, host: str, created: datetime) -> None:
        """Say that this host's part holds the coordinator's files: every rank has written its own."""
        body = json.dumps({"host": host, "created": fmt.format_time(created)}, sort_keys=True).encode()
        self.store.put(layout.coordinator_key(self.prefix, name, group), body)

    def announced(self, name: str, group: str) -> bool:
        return self.store.exists(layout.coordinator_key(self.prefix, name, group))

    def delete_manifest(self, record: ManifestRecord) -> None:
        self.store.delete(record.key)
