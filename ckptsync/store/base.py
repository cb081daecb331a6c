"""The storage interface every backend implements.

Keys are ``/``-separated strings chosen by ckptsync (docs/FORMAT.md); a store
never interprets them beyond mapping them to its own namespace. Contracts:

- ``put`` writes the whole object or nothing; readers never see a partial
  object. Putting the same key twice with the same bytes is harmless.
- ``put_if_absent`` creates the object only if the key is free and raises
  :class:`~ckptsync.errors.AlreadyExists` otherwise. A server that ignores
  conditional writes (``conditional_writes`` is False) may overwrite instead:
  callers must choose keys that cannot collide.
- ``get`` returns the whole object or raises :class:`~ckptsync.errors.NotFound`;
  with ``max_size``, an object larger than that raises
  :class:`~ckptsync.errors.ObjectTooLarge` without being read whole.
- ``list`` returns every object whose key starts with ``prefix``, in any order.
- ``delete`` is idempotent: deleting a missing key is not an error. A store may
  also offer ``delete_many(keys)`` (S3's DeleteObjects); :func:`delete_many`
  uses it where it exists.
- Every failure is a :class:`~ckptsync.errors.StoreError` whose ``transient``
  flag says whether the same call may succeed later; a store that did not
  answer in time raises :class:`~ckptsync.errors.NoAnswer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    modified: datetime | None = None


@runtime_checkable
class Store(Protocol):
    """A flat key/value object store."""

    #: A printable location, never containing credentials.
    url: str

    @property
    def conditional_writes(self) -> bool | None:
        """True if put_if_absent is enforced by the server, False if not, None if unknown."""
        ...

    def put(self, key: str, data: bytes | memoryview) -> None: ...

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None: ...

    def get(self, key: str, *, max_size: int | None = None) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def cleanup(self, prefix: str, older_than: timedelta) -> int:
        """Remove this tool's leftovers of writes killed midway (temp files,
        incomplete multipart uploads) under ``prefix``; returns how many."""
        ...

    def close(self) -> None: ...


def delete_many(store: Store, keys: Sequence[str]) -> None:
    """Delete ``keys`` (idempotently), in batches where the store can (``delete_many``), else one by one."""
    batch = getattr(store, "delete_many", None)
    if batch is not None:
        batch(list(keys))
        return
    for key in keys:
        store.delete(key)
