"""Which files of a torch.distributed.checkpoint folder every rank reads, from its ``.metadata``, without torch.

``.metadata`` is a pickle of ``torch.distributed.checkpoint.metadata.Metadata``:
``state_dict_metadata`` (each entry's tensor chunks, or bytes) and
``storage_data`` (each chunk's file, offset and length). A shard of a sharded
tensor is read back by the rank that wrote it, from its own file. A *whole*
entry (a replicated tensor saved as one chunk, or a non-tensor value such as a
step counter) is written by one rank only, chosen by the save planner's
de-duplication, yet read by every rank: the files holding whole entries are
needed on every node.

The pickle comes from a remote: it is read by an unpickler that builds inert
records for torch's classes and refuses every other global, so that nothing
in it is ever called or imported.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

#: Larger ``.metadata`` files are not parsed (the caller restores every part instead).
MAX_METADATA_BYTES = 256 << 20

_ALLOWED_MODULES = ("torch", "collections", "pathlib")


class _Record:
    """An inert stand-in for any class of the pickle: keeps its arguments and state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __reduce__(self) -> Any:  # pragma: no cover - never pickled again
        raise TypeError("inert record")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._records: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return dict
        if module.split(".")[0] not in _ALLOWED_MODULES:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in .metadata")
        if (module, name) not in self._records:
            self._records[(module, name)] = type(name[:100], (_Record,), {})
        return self._records[(module, name)]


class MetadataError(ValueError):
    """``.metadata`` is not a torch.distributed.checkpoint metadata pickle this module understands."""


def shared_files(data: bytes) -> set[str]:
    """The files (relative to the checkpoint folder) that hold entries every rank reads."""
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError(f".metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        meta = _Unpickler(data).load()
        entries: dict[str, Any] = dict(meta.state_dict_metadata)
        storage: dict[Any, Any] = dict(meta.storage_data)
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, EOFError, IndexError, KeyError, RecursionError) as exc:
        raise MetadataError(f"cannot read .metadata: {exc}") from None
    whole = {fqn for fqn, entry in entries.items() if _whole(entry)}
    out = set()
    for index, info in storage.items():
        fqn, path = getattr(index, "fqn", None), getattr(info, "relative_path", None)
        if not isinstance(fqn, str) or not isinstance(path, str):
            raise MetadataError("unexpected storage entry in .metadata")
        if fqn in whole:
            out.add(path)
    return out


def _whole(entry: Any) -> bool:
    """A non-tensor entry, or a tensor stored as one chunk covering all of it."""
    chunks = getattr(entry, "chunks", None)
    if chunks is None:
        return True  # BytesStorageMetadata
    size = _dims(getattr(entry, "size", ()))
    if len(chunks) != 1:
        return False
    chunk = chunks[0]
    return all(o == 0 for o in _dims(chunk.offsets)) and _dims(chunk.sizes) == size


def _dims(value: Any) -> tuple[int, ...]:
    """torch.Size (a record holding a tuple) or a plain sequence, as a tuple of ints."""
    if isinstance(value, _Record):
        value = value.args[0] if value.args else ()
    return tuple(int(v) for v in value)
