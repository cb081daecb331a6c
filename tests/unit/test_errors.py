"""Errors keep their kind and fields when context is added, and are told apart by type, not by text."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ckptsync import format as fmt
from ckptsync.errors import IntegrityError, ObjectTooLarge, StoreError
from ckptsync.repository import Repository
from ckptsync.store import ObjectInfo

REF = fmt.ChunkRef("a" * 64, 100, 50, "zstd")


def test_context_is_added_without_losing_the_kind_or_its_fields() -> None:
    exc = StoreError("get x failed", "check the network", transient=True, key="chunks/aa/x", code="SlowDown")
    wrapped = exc.prefixed("restore failed, not starting the command")
    assert type(wrapped) is StoreError and str(wrapped) == "restore failed, not starting the command: get x failed"
    assert (wrapped.hint, wrapped.transient, wrapped.key, wrapped.code, wrapped.exit_code) == (
        "check the network",
        True,
        "chunks/aa/x",
        "SlowDown",
        1,
    )
    damaged = IntegrityError("chunk bad", chunk="a" * 64, path="model.bin").prefixed("restore failed")
    assert isinstance(damaged, IntegrityError) and (damaged.chunk, damaged.path) == ("a" * 64, "model.bin")
    assert str(exc) == "get x failed", "the original is left as it was"


class OneObject:
    """A store whose get raises what it is given."""

    url = "mem://"
    conditional_writes = True

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get(self, key: str, *, max_size: int | None = None) -> bytes:
        raise self.error

    def list(self, prefix: str) -> list[ObjectInfo]:
        return []

    def cleanup(self, prefix: str, older_than: timedelta) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_chunk_larger_than_its_manifest_says_is_damage_whatever_the_store_calls_it() -> None:
    repo = Repository(OneObject(ObjectTooLarge("object chunks/aa/x is 9999 bytes, more than the 50 allowed")))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="larger than the manifest says") as e:
        repo.get_chunk(REF)
    assert e.value.chunk == REF.hash


def test_another_store_error_mentioning_larger_than_is_not_mistaken_for_damage() -> None:
    repo = Repository(OneObject(StoreError("access denied: policy larger than allowed")))  # type: ignore[arg-type]
    with pytest.raises(StoreError) as e:
        repo.get_chunk(REF)
    assert not isinstance(e.value, IntegrityError)
