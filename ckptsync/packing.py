"""Packing small files into shared chunks (writer behaviour, format version 4 parts).

A checkpoint's configuration, tokenizer, RNG and scheduler files are small
and many: stored one object each they would cost one request each. Files of
at most :data:`SMALL_FILE` bytes are instead concatenated, in path order, into
packs of up to :data:`PACK_TARGET` bytes; each file refers to its range of the
pack (a chunk *part*). Packing is deterministic, so a push killed before its
manifest packs the same files into the same chunk when it runs again and
sends nothing twice. An unchanged small file refers to its range of the pack
it was first stored in (:class:`PartIndex`), so only changed files go into a
new pack.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future

from . import format as fmt
from .chunking import CHUNK_SIZE
from .executor import Reservation

#: Files up to this size are packed together.
SMALL_FILE = 1 << 20
#: The largest pack.
PACK_TARGET = CHUNK_SIZE
#: How many packed files :class:`PartIndex` remembers (the oldest are forgotten first).
MAX_PARTS = 100_000


class Cancelled(Exception):
    """The upload stopped before the pack holding a file was stored."""


class PendingPart:
    """A small file's range of a pack that is being stored; resolves to a part reference."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length
        self._fut: Future[fmt.ChunkRef] | None = None

    def resolve(self, fut: Future[fmt.ChunkRef]) -> None:
        self._fut = fut

    def exception(self) -> BaseException | None:
        return None if self._fut is None else self._fut.exception()

    def result(self) -> fmt.ChunkRef:
        if self._fut is None:
            raise Cancelled()  # the pack was never stored: the upload stopped first
        return self._fut.result().part(self.offset, self.length)


class Pack:
    """The small files waiting to be stored together as one chunk, and the budget their bytes hold."""

    def __init__(self) -> None:
        self.members: list[bytes] = []
        self.parts: list[PendingPart] = []
        self.size = 0
        self.hold: Reservation | None = None
        self._by_hash: dict[str, PendingPart] = {}

    def __contains__(self, digest: object) -> bool:
        return digest in self._by_hash

    def add(self, data: bytes, digest: str, hold: Reservation) -> PendingPart:
        """Add a file's bytes; their reservation joins the pack's. The same content twice is stored once."""
        same = self._by_hash.get(digest)
        if same is not None:
            return same
        if self.hold is None:
            self.hold = hold.transfer()
        else:
            self.hold.absorb(hold)
        part = PendingPart(self.size, len(data))
        self.members.append(data)
        self.parts.append(part)
        self._by_hash[digest] = part
        self.size += len(data)
        return part

    def drop(self) -> None:
        """Forget files never stored (the upload stopped), giving back the budget their bytes held."""
        if self.hold is not None:
            self.hold.release()


class PartIndex:
    """Where small files sit inside packs already committed: (hash algorithm, file hash) -> part reference."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], fmt.ChunkRef] = {}

    def learn(self, manifests: Iterable[fmt.Manifest]) -> None:
        """Remember the packed files of ``manifests``, so an unchanged one refers to its old part."""
        for m in manifests:
            for f in m.files:
                if len(f.chunks) == 1 and f.chunks[0].is_part:
                    self._parts[f.algorithm, f.hash] = f.chunks[0]
        if len(self._parts) > MAX_PARTS:
            for key in list(self._parts)[: len(self._parts) - MAX_PARTS]:
                del self._parts[key]

    def get(self, digest: str, size: int, algorithm: str) -> fmt.ChunkRef | None:
        """The part holding a file of this hash (under ``algorithm``) and size, if one was committed."""
        part = self._parts.get((algorithm, digest))
        return part if part is not None and part.used == size else None
