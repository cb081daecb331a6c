"""The on-storage format: key layout and manifests (docs/FORMAT.md is the spec).

Pure: no I/O. Everything read from a remote passes through :func:`decode_manifest`,
which treats its input as hostile and raises :class:`FormatError` on anything
docs/FORMAT.md does not allow.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, cast
from urllib.parse import quote, unquote

from .errors import FormatError, NewerFormatError
from .hashes import HASH_ALGORITHM, HASH_SINCE, empty_hash, hash_hex, new_hasher
from .jsonfields import field_of, finite_float, format_time, is_int, json_number, parse_time, reject_constant, unique_keys

FORMAT_NAME = "ckptsync.manifest"
HINT_NAME = "ckptsync.hint"
#: The newest version this code reads. Writers use the lowest version that can
#: express a manifest (version 2: ``hosts``; version 3: byte-grouped codecs;
#: version 4: chunk parts, several small files packed into one chunk; version 5:
#: ``group``, the parts and seal of a multi-host checkpoint; version 6: the hash of a
#: file of several chunk entries is taken over its pieces' hashes, :func:`piece_digest`; version 7:
#: ``hash_algorithm`` ``blake3``).
FORMAT_VERSION = 7
CODECS = ("raw", "zstd", "bg2", "bg4", "bg8", "bgr2", "bgr4", "bgr8")
#: Codecs a manifest of each version may use (byte grouping needs version 3, rotated byte grouping 4).
CODECS_SINCE = {"raw": 1, "zstd": 1, "bg2": 3, "bg4": 3, "bg8": 3, "bgr2": 4, "bgr4": 4, "bgr8": 4}

CHUNKS_DIR = "chunks"
MANIFESTS_DIR = "manifests"
PARTS_DIR = "parts"
CATALOG_DIR = "catalog"
COORDINATOR_FILE = "coordinator.json"

MAX_CHUNK_SIZE = 64 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_NAME_BYTES = 255

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
HEX32 = re.compile(r"[0-9a-f]{32}\Z")
COMMIT_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z-[A-Za-z0-9._-]{1,63}-[0-9a-f]{16}\Z")


#: What a checkpoint is: a folder of files, or a single file.
Kind = Literal["dir", "file"]

#: The format version that introduced chunk parts (``offset``/``length``).
PARTS_SINCE = 4
#: The format version that introduced ``group``: multi-host parts and seals.
GROUP_SINCE = 5
#: The format version that introduced piece digests: a file's ``hash`` over its pieces' hashes.
PIECES_SINCE = 6
#: What a piece digest hashes before its pieces' hashes, so that it is never the hash of
#: the pieces' hashes as a file's content.
PIECES_PREFIX = b"ckptsync.pieces\n"
#: Most hosts a group may have.
MAX_GROUP_HOSTS = 1 << 20

#: What a version-5 multi-host manifest is: one host's part, or the seal that completes the checkpoint.
Role = Literal["part", "seal"]


@dataclass(frozen=True)
class Group:
    """The host set of a multi-host checkpoint (format version 5), named by a digest instead of listed.

    ``id`` is :func:`group_id` of the hosts, ``hosts`` how many there are and
    ``lead`` the host that seals the checkpoint once every part is committed
    (and whose part holds the files only the coordinator writes).
    """

    id: str
    hosts: int
    lead: str
    role: Role = "part"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "hosts": self.hosts, "lead": self.lead, "role": self.role}

    def as_seal(self) -> Group:
        return Group(self.id, self.hosts, self.lead, "seal")


def group_id(hosts: Iterable[str]) -> str:
    """The digest that names a host set: SHA-256 of the sorted names, one per line, first 32 hex digits."""
    return hashlib.sha256("\n".join(sorted(set(hosts))).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its hash (of the raw bytes), raw size, stored size and codec.

    A *part* (format version 4) uses only ``length`` bytes of the chunk's raw
    bytes, from ``offset``: several small files packed into one chunk each
    refer to their own range of it. ``length`` None means the whole chunk.
    ``algorithm`` is the hash that names it, its manifest's ``hash_algorithm``.
    """

    hash: str
    size: int
    stored: int
    codec: str
    offset: int = 0
    length: int | None = None
    algorithm: str = HASH_ALGORITHM

    @property
    def used(self) -> int:
        """How many of the chunk's raw bytes belong to the file."""
        return self.size - self.offset if self.length is None else self.length

    @property
    def is_part(self) -> bool:
        return self.offset != 0 or self.used != self.size

    def whole(self) -> ChunkRef:
        """The reference to the whole chunk."""
        return ChunkRef(self.hash, self.size, self.stored, self.codec, algorithm=self.algorithm)

    def part(self, offset: int, length: int) -> ChunkRef:
        return ChunkRef(self.hash, self.size, self.stored, self.codec, offset, length, self.algorithm)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"hash": self.hash, "size": self.size, "stored": self.stored, "codec": self.codec}
        if self.is_part:
            doc["offset"] = self.offset
            doc["length"] = self.used
        return doc


def piece_digest(piece_hashes: Sequence[str], algorithm: str = HASH_ALGORITHM) -> str:
    """A file's hash in format version 6, from the hash (hex) of each of its pieces, in order.

    A piece is what one chunk entry contributes to the file: the whole chunk (its hash
    is the chunk's name) or a part's range. A file of no piece or one piece has the
    hash of its content, as in every version; a file of several pieces has
    ``H(PIECES_PREFIX || d1 || d2 || ...)`` over the pieces' 32-byte hashes, so that
    neither writer nor reader hashes the content of a multi-chunk file a second time.
    ``H`` is the manifest's ``algorithm``.
    """
    if not piece_hashes:
        return empty_hash(algorithm)
    if len(piece_hashes) == 1:
        return piece_hashes[0]
    return hash_hex(algorithm, PIECES_PREFIX + b"".join(bytes.fromhex(h) for h in piece_hashes))


@dataclass(frozen=True)
class FileEntry:
    """One regular file of a checkpoint, relative to the checkpoint's root.

    ``pieces``: ``hash`` is the :func:`piece_digest` of the file's pieces (format
    version 6), not the hash of its content. The two are the same for a file of
    at most one chunk entry. ``algorithm``: the hash of the file and its chunks,
    its manifest's ``hash_algorithm``.
    """

    path: str
    size: int
    mode: int
    hash: str
    chunks: tuple[ChunkRef, ...]
    pieces: bool = False
    algorithm: str = HASH_ALGORITHM

    @property
    def needs_pieces(self) -> bool:
        """Whether the hash is a piece digest that differs from the content hash: format version 6."""
        return self.pieces and len(self.chunks) > 1

    def hash_of(self, pieces: Iterable[bytes | memoryview]) -> str:
        """The hash of content given as the bytes of each piece, in order, under this entry's rule."""
        if self.needs_pieces:
            return piece_digest([hash_hex(self.algorithm, p) for p in pieces], self.algorithm)
        h = new_hasher(self.algorithm)
        for p in pieces:
            h.update(p)
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "hash": self.hash,
            "chunks": [c.to_json() for c in self.chunks],
        }


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint: the object whose existence is the commit."""

    name: str
    kind: Kind
    step: int | None
    metrics: Mapping[str, float | None]
    created: datetime
    host: str
    commit: str
    files: tuple[FileEntry, ...]
    tool: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The hosts that each commit their part of this checkpoint (empty: a single host; version 2 to 4).
    hosts: tuple[str, ...] = ()
    #: A version-5 multi-host part or seal: the host set by digest.
    group: Group | None = None
    #: The hash of its chunks and files (every entry's ``algorithm``).
    hash_algorithm: str = HASH_ALGORITHM

    @property
    def version(self) -> int:
        """The lowest format version that can express this manifest."""
        codecs = max((CODECS_SINCE[c.codec] for f in self.files for c in f.chunks), default=1)
        parts = PARTS_SINCE if any(c.is_part for f in self.files for c in f.chunks) else 1
        pieces = PIECES_SINCE if any(f.needs_pieces for f in self.files) else 1
        return max(codecs, parts, pieces, 2 if self.hosts else 1, GROUP_SINCE if self.group else 1, HASH_SINCE[self.hash_algorithm])

    @property
    def is_seal(self) -> bool:
        return self.group is not None and self.group.role == "seal"

    @property
    def is_part(self) -> bool:
        return self.group is not None and self.group.role == "part"

    @property
    def raw_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def stored_bytes(self) -> int:
        """Stored size of the checkpoint's distinct chunks."""
        seen: dict[str, int] = {}
        for f in self.files:
            for c in f.chunks:
                seen[c.hash] = c.stored
        return sum(seen.values())

    def chunk_refs(self) -> dict[str, ChunkRef]:
        """Every distinct chunk the manifest names, by hash (whole chunks, not parts)."""
        return {c.hash: c.whole() for f in self.files for c in f.chunks}

    def content_key(self) -> tuple[Any, ...]:
        """What identifies the content: equal keys mean identical files."""
        return (self.kind, tuple(sorted((f.path, f.size, f.hash, f.mode) for f in self.files)))

    def to_json(self) -> dict[str, Any]:
        # One manifest, one hash (a merged view of several hosts' parts may mix them, but is never written).
        if any(f.algorithm != self.hash_algorithm or any(c.algorithm != self.hash_algorithm for c in f.chunks) for f in self.files):
            raise ValueError(f"every file and chunk of a {self.hash_algorithm} manifest must be named by {self.hash_algorithm}")
        doc: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": self.version,
            "name": self.name,
            "kind": self.kind,
            "step": self.step,
            "metrics": {k: json_number(v) for k, v in sorted(self.metrics.items())},
            "created": format_time(self.created),
            "host": self.host,
            "commit": self.commit,
            "tool": self.tool,
            "hash_algorithm": self.hash_algorithm,
            "files": [f.to_json() for f in self.files],
        }
        if self.hosts:
            doc["hosts"] = list(self.hosts)
        if self.group is not None:
            doc["group"] = self.group.to_json()
        for k, v in self.extra.items():
            doc.setdefault(k, v)
        return doc


# ---------------------------------------------------------------- keys


def chunk_key(prefix: str, digest: str, codec: str) -> str:
    """Key of a chunk object: ``<prefix>/chunks/<hh>/<hash>.<codec>``."""
    return join_key(prefix, CHUNKS_DIR, digest[:2], f"{digest}.{codec}")


def parse_chunk_key(key: str) -> tuple[str, str] | None:
    """``(hash, codec)`` from a chunk key's last component, or None if it is not one."""
    base = key.rsplit("/", 1)[-1]
    digest, dot, codec = base.partition(".")
    if not dot or codec not in CODECS or not _HEX64.match(digest):
        return None
    return digest, codec


def manifest_key(prefix: str, name: str, commit: str) -> str:
    """Key of a manifest: ``<prefix>/manifests/<quoted name>/<commit>.json``."""
    return join_key(prefix, MANIFESTS_DIR, quote_name(name), f"{commit}.json")


def parse_manifest_key(key: str) -> tuple[str, str] | None:
    """``(name, commit)`` from a manifest key, or None if it is not one."""
    parts = key.split("/")
    if len(parts) < 3 or parts[-3] != MANIFESTS_DIR or not parts[-1].endswith(".json"):
        return None
    commit = parts[-1][: -len(".json")]
    if not COMMIT_ID.match(commit):
        return None
    try:
        name = unquote(parts[-2], errors="strict")
        check_name(name)
    except (FormatError, UnicodeDecodeError):
        return None
    return name, commit


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def quote_name(name: str) -> str:
    return quote(name, safe="")


def host_slug(host: str, keep: str = "._-") -> str:
    """``host`` as a token for keys and file names: ASCII letters and digits and the
    characters of ``keep`` stay, anything else becomes ``_``; at most 63 characters, ``host`` if empty."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in keep else "_" for c in host)[:63] or "host"


def new_commit_id(created: datetime, host: str) -> str:
    """A key component that cannot collide: time, host and 64 random bits."""
    slug = host_slug(host)
    stamp = created.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{slug}-{secrets.token_hex(8)}"


# ---------------------------------------------------------------- names and paths


def check_name(name: str) -> str:
    """Validate a checkpoint name: one path component, printable, at most 255 bytes."""
    if not isinstance(name, str) or not name:
        raise FormatError("checkpoint name is empty")
    _check_component(name, what="checkpoint name")
    return name


def check_relpath(path: str) -> str:
    """Validate a file path inside a checkpoint: relative, normalised, no '..', printable."""
    if not isinstance(path, str) or not path:
        raise FormatError("file path is empty")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise FormatError(f"file path is longer than {MAX_PATH_BYTES} bytes: {path[:60]!r}...")
    if path.startswith("/"):
        raise FormatError(f"file path is absolute: {path!r}")
    for part in path.split("/"):
        _check_component(part, what=f"file path {path!r}")
    return path


def _check_component(part: str, *, what: str) -> None:
    if part in ("", ".", ".."):
        raise FormatError(f"{what} has an empty, '.' or '..' component")
    try:
        encoded = part.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid Unicode") from None
    if len(encoded) > MAX_COMPONENT_BYTES:
        raise FormatError(f"{what} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    for ch in part:
        if ch == "/" or ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise FormatError(f"{what} contains a forbidden character U+{ord(ch):04X}")


# ---------------------------------------------------------------- encode / decode


def encode_manifest(manifest: Manifest) -> bytes:
    """Canonical JSON bytes of a manifest (UTF-8, sorted keys, no NaN)."""
    return (json.dumps(manifest.to_json(), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def decode_manifest(data: bytes, *, key: str | None = None) -> Manifest:
    """Parse and validate manifest bytes. Raises FormatError on anything not in the spec."""
    where = f" ({key})" if key else ""
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes{where}")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError, OverflowError) as exc:
        raise FormatError(f"manifest is not valid JSON{where}: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"manifest is not a JSON object{where}")
    if doc.get("format") != FORMAT_NAME:
        raise FormatError(f"object is not a ckptsync manifest{where}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"manifest has no valid version{where}")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"manifest format version {version} is newer than this ckptsync understands ({FORMAT_VERSION}){where}",
            "upgrade ckptsync to read this remote",
        )
    try:
        return _decode_document(doc, version)
    except FormatError as exc:
        raise FormatError(f"invalid manifest{where}: {exc.message}", exc.hint) from None
    except (OverflowError, ValueError, TypeError) as exc:  # out-of-range times, numbers
        raise FormatError(f"invalid manifest{where}: {exc}") from None


#: Top-level members a manifest of version 1 to 4 may have; others are kept in ``extra``.
_KNOWN_MEMBERS = frozenset(
    {
        "format",
        "version",
        "name",
        "kind",
        "step",
        "metrics",
        "created",
        "host",
        "commit",
        "tool",
        "hash_algorithm",
        "files",
        "hosts",
        "group",
    }
)


def _decode_document(doc: dict[str, Any], version: int) -> Manifest:
    """A manifest of any version up to :data:`FORMAT_VERSION` from its parsed JSON (docs/FORMAT.md section 5)."""
    algorithm = doc.get("hash_algorithm", HASH_ALGORITHM)
    if not isinstance(algorithm, str) or algorithm not in HASH_SINCE:
        raise FormatError(f"unknown hash algorithm {str(algorithm)[:20]!r}")
    if HASH_SINCE[algorithm] > version:
        raise FormatError(f"hash algorithm {algorithm} needs format version {HASH_SINCE[algorithm]}, the manifest says {version}")
    name = check_name(field_of(doc, "name", str))
    kind = field_of(doc, "kind", str)
    if kind not in ("dir", "file"):
        raise FormatError(f"unknown kind {kind!r}")
    kind = cast(Kind, kind)
    step = doc.get("step")
    if step is not None and (not is_int(step) or step < 0):
        raise FormatError("step is not a non-negative integer")
    host = field_of(doc, "host", str)
    commit = field_of(doc, "commit", str)
    if not COMMIT_ID.match(commit):
        raise FormatError(f"commit id {commit[:80]!r} is malformed")
    files = tuple(_decode_file(f, version >= PIECES_SINCE, algorithm) for f in field_of(doc, "files", list))
    _check_versions(files, version)
    group = _decode_group(doc["group"], host) if version >= GROUP_SINCE and "group" in doc else None
    if group is not None and group.role == "seal":
        if files:
            raise FormatError("a seal lists no files")
    else:
        _check_file_set(name, kind, files)
    return Manifest(
        name=name,
        kind=kind,
        step=step,
        metrics=decode_metrics(field_of(doc, "metrics", dict)),
        created=parse_time(field_of(doc, "created", str)),
        host=host,
        commit=commit,
        files=files,
        tool=doc["tool"] if isinstance(doc.get("tool"), str) else "",
        extra={k: v for k, v in doc.items() if k not in _KNOWN_MEMBERS},
        hosts=_decode_hosts(doc, host) if version >= 2 and "hosts" in doc and group is None else (),
        group=group,
        hash_algorithm=algorithm,
    )


def _decode_group(doc: Any, host: str) -> Group:
    if not isinstance(doc, dict):
        raise FormatError("group is not an object")
    gid, count, lead, role = field_of(doc, "id", str), field_of(doc, "hosts", int), field_of(doc, "lead", str), field_of(doc, "role", str)
    if not HEX32.match(gid):
        raise FormatError("group id is not 32 lowercase hex digits")
    if not 2 <= count <= MAX_GROUP_HOSTS:
        raise FormatError(f"group hosts is not in 2..{MAX_GROUP_HOSTS}")
    if not 0 < len(lead) <= 255 or not 0 < len(host) <= 255:
        raise FormatError("group lead and host must be 1 to 255 characters")
    if role not in ("part", "seal"):
        raise FormatError(f"unknown group role {role[:20]!r}")
    return Group(gid, count, lead, cast(Role, role))


def decode_metrics(doc: dict[Any, Any]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for k, v in doc.items():
        if not isinstance(k, str) or not k or len(k) > 256:
            raise FormatError("metric name is not a short string")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise FormatError(f"metric {k!r} is not a number")
        metrics[k] = finite_float(v)
    return metrics


def _check_versions(files: tuple[FileEntry, ...], version: int) -> None:
    """Every codec and chunk part must be one the manifest's version has."""
    for f in files:
        for c in f.chunks:
            if CODECS_SINCE[c.codec] > version:
                raise FormatError(f"{f.path}: codec {c.codec} needs format version {CODECS_SINCE[c.codec]}, the manifest says {version}")
            if c.is_part and version < PARTS_SINCE:
                raise FormatError(f"{f.path}: a chunk part (offset/length) needs format version {PARTS_SINCE}, the manifest says {version}")


def _decode_hosts(doc: dict[str, Any], host: str) -> tuple[str, ...]:
    hosts = doc["hosts"]
    if not isinstance(hosts, list) or not hosts or len(hosts) > 4096:
        raise FormatError("hosts is not a non-empty list")
    if not all(isinstance(h, str) and 0 < len(h) <= 255 for h in hosts) or len(set(hosts)) != len(hosts):
        raise FormatError("hosts must be distinct non-empty strings")
    if host not in hosts:
        raise FormatError(f"host {host[:60]!r} is not in the manifest's hosts")
    return tuple(sorted(hosts))


def _decode_file(doc: Any, pieces: bool, algorithm: str) -> FileEntry:
    if not isinstance(doc, dict):
        raise FormatError("file entry is not an object")
    path = check_relpath(field_of(doc, "path", str))
    size = field_of(doc, "size", int)
    mode = field_of(doc, "mode", int)
    digest = field_of(doc, "hash", str)
    if size < 0:
        raise FormatError(f"{path}: negative size")
    if not 0 <= mode <= 0o7777:
        raise FormatError(f"{path}: mode out of range")
    if not _HEX64.match(digest):
        raise FormatError(f"{path}: hash is not 64 lowercase hex digits")
    chunks = []
    for c in field_of(doc, "chunks", list):
        if not isinstance(c, dict):
            raise FormatError(f"{path}: chunk entry is not an object")
        ref = ChunkRef(
            field_of(c, "hash", str), field_of(c, "size", int), field_of(c, "stored", int), field_of(c, "codec", str), algorithm=algorithm
        )
        if "offset" in c or "length" in c:
            offset = field_of(c, "offset", int) if "offset" in c else 0
            length = field_of(c, "length", int) if "length" in c else ref.size - offset
            if not (0 <= offset < ref.size and 0 < length <= ref.size - offset):
                raise FormatError(f"{path}: chunk part out of the chunk's range")
            ref = ref.part(offset, length)
        if not _HEX64.match(ref.hash):
            raise FormatError(f"{path}: chunk hash is not 64 lowercase hex digits")
        if ref.codec not in CODECS:
            raise FormatError(f"{path}: unknown chunk codec {ref.codec[:20]!r}")
        if not 0 < ref.size <= MAX_CHUNK_SIZE or not 0 < ref.stored <= MAX_CHUNK_SIZE + 1024:
            raise FormatError(f"{path}: chunk size out of range")
        if ref.codec == "raw" and ref.stored != ref.size:
            raise FormatError(f"{path}: raw chunk with stored size != size")
        chunks.append(ref)
    if sum(c.used for c in chunks) != size:
        raise FormatError(f"{path}: chunk sizes do not add up to the file size")
    entry = FileEntry(path, size, mode, digest, tuple(chunks), pieces, algorithm)
    # A piece digest over whole chunks is known from the entry alone: check it here. One with
    # parts (or a content hash) can be checked only against the bytes, when restoring.
    if pieces and not any(c.is_part for c in chunks) and digest != piece_digest([c.hash for c in chunks], algorithm):
        raise FormatError(f"{path}: hash is not the digest of its chunks' hashes")
    return entry


def _check_file_set(name: str, kind: str, files: tuple[FileEntry, ...]) -> None:
    if kind == "file":
        if len(files) != 1 or files[0].path != name:
            raise FormatError("a 'file' checkpoint must have exactly one file named like the checkpoint")
        return
    paths = set()
    for f in files:
        if f.path in paths:
            raise FormatError(f"duplicate file path {f.path!r}")
        paths.add(f.path)
    for f in files:
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                raise FormatError(f"path {f.path!r} lies under another file of the checkpoint")
