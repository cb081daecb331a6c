"""Keys of format version 5: the parts of multi-host checkpoints and the catalog (docs/FORMAT.md 2.3, 5.10, 7.5).

Pure, like :mod:`ckptsync.format`, whose key and document rules these follow:
``parts/<quoted name>/<group id>/<quoted host>/<commit id>.json`` holds one
host's part, ``parts/<quoted name>/<group id>/coordinator.json`` says the
coordinator's files exist, and ``catalog/<quoted name>/<step>.<group>.<commit
id>.json`` names a committed manifest or seal with what ordering needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .errors import FormatError
from .format import (
    CATALOG_DIR,
    COMMIT_ID,
    COORDINATOR_FILE,
    HEX32,
    HINT_NAME,
    PARTS_DIR,
    Manifest,
    check_name,
    decode_metrics,
    field_of,
    format_time,
    is_int,
    join_key,
    json_number,
    parse_time,
    quote_name,
    reject_constant,
    unique_keys,
)

_HINT = re.compile(
    r"(?P<step>[0-9]{1,20}|n)\.(?P<group>[0-9a-f]{32}|single)\.(?P<commit>[0-9]{8}T[0-9]{12}Z-[A-Za-z0-9._-]{1,63}-[0-9a-f]{16})\.json\Z"
)


def part_key(prefix: str, name: str, group: str, host: str, commit: str) -> str:
    """Key of a host's part: ``<prefix>/parts/<quoted name>/<group id>/<quoted host>/<commit>.json``."""
    return join_key(group_prefix(prefix, name, group), quote_name(host), f"{commit}.json")


def group_prefix(prefix: str, name: str, group: str) -> str:
    """Where every part of one multi-host checkpoint lies (and its coordinator object)."""
    return join_key(prefix, PARTS_DIR, quote_name(name), group) + "/"


def host_prefix(prefix: str, name: str, group: str, host: str) -> str:
    """Where one host's parts of one multi-host checkpoint lie."""
    return group_prefix(prefix, name, group) + quote_name(host) + "/"


def coordinator_key(prefix: str, name: str, group: str) -> str:
    """The object a host writes once its part holds the coordinator's files (every rank has finished)."""
    return group_prefix(prefix, name, group) + COORDINATOR_FILE


def parse_part_key(key: str) -> tuple[str, str, str, str] | None:
    """``(name, group, host, commit)`` from a part key, or None if it is not one."""
    parts = key.split("/")
    if len(parts) < 5 or parts[-5] != PARTS_DIR or not parts[-1].endswith(".json"):
        return None
    commit = parts[-1][: -len(".json")]
    if not COMMIT_ID.match(commit) or not HEX32.match(parts[-3]):
        return None
    try:
        name = check_name(unquote(parts[-4], errors="strict"))
        host = unquote(parts[-2], errors="strict")
    except (FormatError, UnicodeDecodeError):
        return None
    if not 0 < len(host) <= 255:
        return None
    return name, parts[-3], host, commit


@dataclass(frozen=True)
class Hint:
    """A catalog entry: what a reader needs to order checkpoints, from a key alone (docs/FORMAT.md section 5.10)."""

    key: str
    name: str
    step: int | None
    group: str | None
    commit: str

    @property
    def manifest_key_name(self) -> tuple[str, str]:
        return self.name, self.commit


def hint_key(prefix: str, name: str, step: int | None, group: str | None, commit: str) -> str:
    """Key of a catalog entry: ``<prefix>/catalog/<quoted name>/<step|n>.<group id|single>.<commit>.json``."""
    return join_key(prefix, CATALOG_DIR, quote_name(name), f"{'n' if step is None else step}.{group or 'single'}.{commit}.json")


def parse_hint_key(key: str) -> Hint | None:
    parts = key.split("/")
    if len(parts) < 3 or parts[-3] != CATALOG_DIR:
        return None
    m = _HINT.match(parts[-1])
    if m is None:
        return None
    try:
        name = check_name(unquote(parts[-2], errors="strict"))
    except (FormatError, UnicodeDecodeError):
        return None
    step = None if m["step"] == "n" else int(m["step"])
    return Hint(key, name, step, None if m["group"] == "single" else m["group"], m["commit"])


def encode_hint(manifest: Manifest) -> bytes:
    """A catalog entry's body: the metrics (for ``--best``) and, for one host's checkpoint, its totals."""
    doc: dict[str, Any] = {
        "format": HINT_NAME,
        "metrics": {k: json_number(v) for k, v in sorted(manifest.metrics.items())},
        "created": format_time(manifest.created),
        "host": manifest.host,
    }
    if manifest.group is None:
        doc.update(files=len(manifest.files), raw_bytes=manifest.raw_bytes, stored_bytes=manifest.stored_bytes)
    else:
        doc["hosts"] = manifest.group.hosts
    return (json.dumps(doc, sort_keys=True, allow_nan=False) + "\n").encode()


#: A catalog entry's body is small; anything larger is not one.
MAX_HINT_BYTES = 1 << 20


def decode_hint(data: bytes) -> dict[str, Any]:
    """The body of a catalog entry: ``metrics``, and when present ``files``, ``raw_bytes``, ``stored_bytes``, ``hosts``."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError, OverflowError) as exc:
        raise FormatError(f"catalog entry is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != HINT_NAME:
        raise FormatError("object is not a ckptsync catalog entry")
    out: dict[str, Any] = {"metrics": decode_metrics(field_of(doc, "metrics", dict))}
    for k in ("files", "raw_bytes", "stored_bytes", "hosts"):
        if is_int(doc.get(k)) and doc[k] >= 0:
            out[k] = doc[k]
    if isinstance(doc.get("host"), str) and len(doc["host"]) <= 255:
        out["host"] = doc["host"]
    if isinstance(doc.get("created"), str):
        out["created"] = parse_time(doc["created"])
    return out
