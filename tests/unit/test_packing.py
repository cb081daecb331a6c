"""Format version 4 chunk parts, decoded alone: the documented example, parts outside their chunk or not adding up,
and which version a manifest with or without parts needs.

Pushing and restoring packed small files is in tests/pipeline/test_packing.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from ckptsync import format as fmt
from ckptsync.errors import FormatError
from tests import docs
from tests.docs import FORMAT


def _v4_text() -> str:
    return docs.block(FORMAT, "example-manifest-v4", "json")


def test_the_documented_v4_example_is_a_pack_of_four_files() -> None:
    m = fmt.decode_manifest(_v4_text().encode())
    assert m.version == 4
    refs = [f.chunks[0] for f in m.files]
    assert len({r.hash for r in refs}) == 1 and all(r.is_part for r in refs)
    # the parts tile the chunk in file order, and the file sizes are their lengths
    assert [r.offset for r in refs] == [sum(r.used for r in refs[:i]) for i in range(len(refs))]
    assert sum(r.used for r in refs) == refs[0].size and all(f.size == f.chunks[0].used for f in m.files)
    assert json.loads(fmt.encode_manifest(m)) == json.loads(_v4_text())


def _with_part(**chunk: object) -> bytes:
    doc = json.loads(_v4_text())
    doc["files"][0]["chunks"][0].update(chunk)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "change",
    [
        {"offset": -1},
        {"offset": 15767},
        {"length": 0},
        {"offset": 15700, "length": 100},
        {"offset": "0"},
        {"length": True},
        {"length": 44},  # no longer adds up to the file's size
    ],
)
def test_a_part_outside_its_chunk_or_not_adding_up_is_rejected(change: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        fmt.decode_manifest(_with_part(**change))


def test_a_part_in_a_manifest_older_than_version_4_is_invalid_not_newer() -> None:
    doc = json.loads(_v4_text())
    doc["version"] = 3
    with pytest.raises(FormatError, match="needs format version 4") as e:
        fmt.decode_manifest(json.dumps(doc).encode())
    assert type(e.value) is FormatError


def test_a_manifest_without_parts_is_still_written_below_version_4() -> None:
    m = fmt.decode_manifest(_v4_text().encode())
    whole = dataclasses.replace(
        m,
        files=(dataclasses.replace(m.files[0], size=m.files[0].chunks[0].size, chunks=(m.files[0].chunks[0].whole(),)),),
    )
    assert whole.version == 1
