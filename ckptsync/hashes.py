"""The hashes that name chunks and files (docs/FORMAT.md, ``hash_algorithm``).

SHA-256 names everything below format version 7; BLAKE3 (version 7) costs about a
quarter of its CPU per byte (0.16 against 0.56 CPU-s per GB on one x86-64 core with
SHA extensions). Both give 256-bit digests written as 64 lowercase hex digits.
hashlib and blake3 release the GIL on large buffers.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Protocol, cast

from .errors import FormatError

#: The hash of a manifest without ``hash_algorithm``, and of every manifest below version 7.
HASH_ALGORITHM = "sha256"
#: The hash that names the chunks of new checkpoints unless ``--hash`` says otherwise.
DEFAULT_HASH = "blake3"
#: The hashes a manifest may name its chunks and files by, and the format version each needs.
HASH_SINCE = {"sha256": 1, "blake3": 7}
HASH_ALGORITHMS = (DEFAULT_HASH, *sorted(set(HASH_SINCE) - {DEFAULT_HASH}))


class Hasher(Protocol):
    """What hashes chunks and files: ``hashlib.sha256()`` or ``blake3.blake3()``."""

    def update(self, data: bytes | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str) -> Hasher:
    """An empty hash object of ``algorithm`` (one of :data:`HASH_ALGORITHMS`)."""
    if algorithm == "blake3":
        from blake3 import blake3  # here: listing and reading manifests never hash

        return cast(Hasher, blake3())
    if algorithm == "sha256":
        return hashlib.sha256()
    raise FormatError(f"unknown hash algorithm {algorithm[:20]!r}")


def hash_hex(algorithm: str, data: bytes | memoryview) -> str:
    """The lowercase hex digest of ``data`` under ``algorithm``."""
    h = new_hasher(algorithm)
    h.update(data)
    return h.hexdigest()


@functools.cache
def empty_hash(algorithm: str) -> str:
    """The hash of no bytes: an empty file's."""
    return hash_hex(algorithm, b"")
