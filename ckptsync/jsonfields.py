"""JSON fields and times of the on-storage documents: typed fields, strict numbers, RFC 3339 times."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .errors import FormatError


def field_of(doc: Mapping[str, Any], key: str, typ: type) -> Any:
    value = doc.get(key)
    if typ is int:
        ok = is_int(value)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise FormatError(f"field {key!r} is missing or not a {typ.__name__}")
    return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def finite_float(v: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and integers too large for a float."""
    if v is None:
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def json_number(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


# ---------------------------------------------------------------- time


def format_time(t: datetime) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-26T13:02:22.123456Z."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> datetime:
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"time {s[:40]!r} is not RFC 3339") from None
    if t.tzinfo is None:
        raise FormatError(f"time {s[:40]!r} has no time zone")
    try:
        return t.astimezone(timezone.utc)
    except OverflowError:
        raise FormatError(f"time {s[:40]!r} is out of range") from None
