"""Keep docs/FORMAT.md and docs/DESIGN.md from drifting away from the code (pure checks only).

- The example manifests (versions 1 and 4 in FORMAT.md, 2 and 3 in DESIGN.md) must be accepted by
  ``decode_manifest`` and re-encode to the same fields and values.
- The byte-grouped example object (FORMAT.md) must decode with ``ckptsync.codec.decode`` to the
  chunk its entry names, laid out as the document says; the example safetensors header (DESIGN.md)
  must cut into the example's chunks.
- Constants the documents state must match the code: manifest and chunk limits, the versions and
  codecs, the encoder's and the chunker's sizes, lock keys and bodies, the lock timings, temporary
  and staging names.
- What they say about multi-host checkpoints (grouping, completeness, the ``hosts`` rules), and
  about locks (generation bodies, pauses) must hold.
- FORMAT.md stays a short spec that names no code module, and the section numbers and rule names
  the documents refer to exist.

Checks that need ``ckptsync.push`` or a prune (thread pools) are in
tests/pipeline/test_format_doc_writers.py; those of examples/restore_by_hand.py in
tests/integration/test_restore_by_hand.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import os
import re
import socket
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import numpy as np
import pytest
import zstandard
from moto import mock_aws

from ckptsync import catalog, chunking, codec, download, fsutil, locks, options, policy
from ckptsync import format as fmt
from ckptsync.chunking import CHUNK_SIZE
from ckptsync.errors import FormatError, IntegrityError, NewerFormatError, UsageError
from ckptsync.fsutil import STAGING_PREFIX
from ckptsync.repository import ManifestRecord, Repository
from ckptsync.session import STALE_WRITES, RemoteSession
from ckptsync.store import ObjectInfo
from ckptsync.store.local import LocalStore
from ckptsync.store.s3 import S3Store
from tests import docs
from tests.docs import DESIGN, FORMAT

prune_mod = importlib.import_module("ckptsync.retention")

BUCKET = "ckpt-bucket"
PREFIX = "runs/exp1"


# ---------------------------------------------------------------- the documents as a whole


def test_the_spec_stays_short_and_names_no_code_module() -> None:
    """FORMAT.md is the normative spec only (at most 1,070 lines for seven versions); it must stand without the code."""
    text = docs.text(FORMAT)
    assert len(text.splitlines()) <= 1070, "move writer behaviour and rationale to DESIGN.md"
    assert set(re.findall(r"[\w/]+\.py\b", text)) <= {"examples/restore_by_hand.py"}
    assert "ckptsync/" not in text.replace("ckptsync/0.1.0", "")


def _headings(doc: Path) -> set[str]:
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", docs.text(doc), re.MULTILINE))


def test_section_numbers_and_rule_names_the_documents_refer_to_exist() -> None:
    fmt_sections, design_sections = _headings(FORMAT), _headings(DESIGN)
    fmt_text, design_text = docs.flat(FORMAT), docs.flat(DESIGN)
    script = docs.RESTORE_BY_HAND.read_text(encoding="utf-8")
    number = r"(\d+(?:\.\d+)?)"
    refs = {
        "FORMAT.md → DESIGN.md": (re.findall(r"DESIGN\.md, sections? " + number, fmt_text), design_sections),
        "DESIGN.md → FORMAT.md": (re.findall(r"FORMAT " + number, design_text), fmt_sections),
        "restore_by_hand.py → FORMAT.md": (re.findall(r"FORMAT " + number, script), fmt_sections),
        "FORMAT.md → itself": (re.findall(r"(?<!DESIGN\.md, )\bsections? " + number, fmt_text), fmt_sections),
        "DESIGN.md → itself": (re.findall(r"\bsections? " + number, design_text), design_sections),
    }
    for what, (found, known) in refs.items():
        assert found and set(found) <= known, f"{what}: no such section {sorted(set(found) - known)}"
    # the rules DESIGN.md names are those FORMAT.md states
    rules = set(re.findall(r"\*\*([WRDLC]\d)\.\*\*", fmt_text))
    assert {"W1", "R1", "D1", "L1", "C1"} <= rules
    assert set(re.findall(r"(?<![-\w])([WRDLC]\d)\b", design_text)) <= rules
    # the stale statement of version 3 for float weights (the code writes version 4) must not come back
    assert "usually version 4" in design_text and "usually version 3" not in design_text + fmt_text


# ---------------------------------------------------------------- the example manifest


def test_example_manifest_round_trips() -> None:
    text = docs.block(FORMAT, "example-manifest", "json")
    manifest = fmt.decode_manifest(text.encode("utf-8"), key="docs/FORMAT.md example")
    reencoded = json.loads(fmt.encode_manifest(manifest))
    original = json.loads(text)
    # sort_keys + exact number types: 2.0 and 2 must not compare equal here
    assert json.dumps(reencoded, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert original["version"] == 1  # a single-host manifest is written as version 1
    assert manifest.extra == {}


def test_example_manifest_key_and_tree_match_the_code() -> None:
    text = docs.text(FORMAT)
    doc = json.loads(docs.block(FORMAT, "example-manifest", "json"))
    key = fmt.manifest_key("", doc["name"], doc["commit"])
    assert f"`{key}`" in text
    assert fmt.parse_manifest_key(key) == (doc["name"], doc["commit"])
    # every chunk of the example appears in the layout tree under its fan-out folder
    for f in doc["files"]:
        for c in f["chunks"]:
            assert fmt.parse_chunk_key(fmt.chunk_key("", c["hash"], c["codec"])) == (c["hash"], c["codec"])
            assert f"│   ├── {c['hash'][:2]}/" in text or f"│   └── {c['hash'][:2]}/" in text
            assert f"{c['hash']}.{c['codec']}" in text
    # the empty file's hash is the hash of nothing
    empty = [f for f in doc["files"] if f["size"] == 0]
    assert empty and all(f["hash"] == hashlib.sha256(b"").hexdigest() and f["chunks"] == [] for f in empty)


def test_stated_constants_match_the_code() -> None:
    text, design = docs.text(FORMAT), docs.flat(DESIGN)
    assert f"^{fmt.COMMIT_ID.pattern.removesuffix(chr(92) + 'Z')}$" in text  # the commit id grammar
    assert fmt.FORMAT_NAME == "ckptsync.manifest" and f'"{fmt.FORMAT_NAME}"' in text
    assert fmt.HASH_ALGORITHM == "sha256"
    assert fmt.MAX_CHUNK_SIZE == 67108864 and "67108864" in text
    assert fmt.MAX_CHUNK_SIZE + 1024 == 67109888 and "67109888" in text
    assert fmt.MAX_MANIFEST_BYTES == 67108864
    assert (fmt.MAX_PATH_BYTES, fmt.MAX_COMPONENT_BYTES, fmt.MAX_NAME_BYTES) == (4096, 255, 255)
    assert STAGING_PREFIX == ".ckptsync-staging-" and f"`{STAGING_PREFIX}`" in text
    # the chunker's sizes (DESIGN.md, section 2)
    assert CHUNK_SIZE == 4194304 and "fixed-size chunks of 4 MiB (4194304 bytes)" in design
    assert chunking.PACK_TARGET == 4194304 and "larger than 4 MiB (4194304 bytes)" in design
    assert chunking.MAX_PIECE == 8388608 and "pieces of 8 MiB (8388608 bytes)" in design
    assert chunking.MAX_HEADER == 100 << 20 and "2 ≤ n ≤ min(100 MiB, file size − 8)" in design
    # the encoder's choice (DESIGN.md, section 3)
    assert codec.ZSTD_LEVEL == 1 and "zstd runs at level 1" in design
    assert codec.MIN_SAVING == 0.03 and "at most 97% of the size of what it replaces (at least 3% smaller)" in design
    assert codec.SAMPLE == 65536 and "first 64 KiB (65536 bytes)" in design
    assert "A chunk under 64 bytes is stored `raw`" in design
    assert "if n < 64:" in inspect.getsource(codec.encode)
    assert "for w in (2, 4):" in inspect.getsource(codec._probe)  # the probe never chooses bg8


def test_codec_table_matches_the_code() -> None:
    rows = docs.table(FORMAT, "codecs")
    assert [r[0] for r in rows] == [f"`{c}`" for c in fmt.CODECS]
    assert {r[0].strip("`"): int(r[1]) for r in rows} == fmt.CODECS_SINCE
    assert codec.GROUPED == {r[0].strip("`"): int(re.search(r"(\d)-byte", r[2]).group(1)) for r in rows[2:]}  # type: ignore[union-attr]
    assert all(since <= fmt.FORMAT_VERSION for since in fmt.CODECS_SINCE.values())


def _widths(sentence: str) -> dict[str, int]:
    """``{dtype: width}`` from phrases such as "8 for `F64`, 4 for `F32`, 2 for `F16` and `BF16`"."""
    stated = {}
    for width, dtypes in re.findall(r"(\d) for ((?:`\w+`(?: and |, )?)+)", sentence):
        for dtype in re.findall(r"`(\w+)`", dtypes):
            stated[dtype] = int(width)
    return stated


def test_safetensors_widths_match_the_code() -> None:
    m = re.search(r"<!-- safetensors-widths -->\s*\n(.*?)\n\n", docs.text(DESIGN), re.DOTALL)
    assert m
    assert _widths(" ".join(m.group(1).split())) == chunking.FLOAT_WIDTHS
    # the encoder's description (DESIGN.md, section 3, step 2) says the same
    m = re.search(r"2\. When the chunk comes with an element width \((.*?)\)", docs.flat(DESIGN))
    assert m and _widths(m.group(1)) == chunking.FLOAT_WIDTHS


# ---------------------------------------------------------------- versions and the version-2 example


def _v2_text() -> str:
    return docs.block(DESIGN, "example-manifest-v2", "json")


def _v3_text() -> str:
    return docs.block(DESIGN, "example-manifest-v3", "json")


def _v2() -> fmt.Manifest:
    return fmt.decode_manifest(_v2_text().encode("utf-8"), key="docs/DESIGN.md v2 example")


def _record(m: fmt.Manifest) -> ManifestRecord:
    return ManifestRecord(fmt.manifest_key("", m.name, m.commit), m)


def _part(m: fmt.Manifest, host: str, *, seconds: float = 1.0, **changes: object) -> fmt.Manifest:
    """Another manifest like ``m``: ``host``'s, committed ``seconds`` after it."""
    created = m.created + timedelta(seconds=seconds)
    return dataclasses.replace(m, host=host, created=created, commit=fmt.new_commit_id(created, host), **changes)  # type: ignore[arg-type]


def test_documented_versions_match_the_code() -> None:
    text = docs.text(FORMAT)
    versions = [int(row[0]) for row in docs.table(FORMAT, "format-versions")]
    assert versions == list(range(1, len(versions) + 1))
    assert fmt.FORMAT_VERSION == max(versions), "the code reads a format version the document does not specify"
    assert text.startswith(f"# ckptsync on-storage format, versions {', '.join(map(str, versions[:-1]))} and {versions[-1]}\n")


def test_a_codec_or_part_newer_than_the_manifest_version_makes_it_invalid_not_newer() -> None:
    for version in range(1, 3):
        doc = json.loads(_v3_text())
        doc["version"] = version
        with pytest.raises(FormatError, match="needs format version 3") as e:
            fmt.decode_manifest(json.dumps(doc).encode())
        assert not isinstance(e.value, NewerFormatError)
    doc = json.loads(docs.block(FORMAT, "example-manifest-v4", "json"))
    doc["version"] = 3
    with pytest.raises(FormatError, match="needs format version 4") as e:
        fmt.decode_manifest(json.dumps(doc).encode())
    assert not isinstance(e.value, NewerFormatError)


def test_example_v2_manifest_round_trips_as_a_multi_host_part() -> None:
    text = _v2_text()
    original = json.loads(text)
    manifest = _v2()
    reencoded = json.loads(fmt.encode_manifest(manifest))
    assert json.dumps(reencoded, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert original["version"] == 2 and manifest.version == 2
    assert original["hosts"] == ["algo-1", "algo-2"] and manifest.hosts == ("algo-1", "algo-2")
    assert manifest.host == "algo-1" and manifest.host in manifest.hosts
    assert manifest.extra == {}
    # the key given in the text, and the other host's manifest beside it (in both documents)
    design = docs.text(DESIGN)
    key = fmt.manifest_key("", manifest.name, manifest.commit)
    assert f"`{key}`" in design
    siblings = re.findall(r"[0-9]{8}T[0-9]{12}Z-algo-2-[0-9a-f]{16}\.json", design)
    assert siblings and all(fmt.parse_manifest_key(f"manifests/{manifest.name}/{s}") for s in siblings)
    assert set(siblings) <= set(re.findall(r"[0-9]{8}T[0-9]{12}Z-algo-2-[0-9a-f]{16}\.json", docs.text(FORMAT)))
    assert f"{manifest.commit}.json" in docs.text(FORMAT)
    # the shared trainer_state.json chunk named in the text is one of the example's chunks
    shared = next(f for f in manifest.files if f.path == "trainer_state.json").chunks[0]
    assert f"`{fmt.chunk_key('', shared.hash, shared.codec)}`" in design


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"hosts": []}, FormatError),
        ({"hosts": ["algo-1", "algo-1"]}, FormatError),
        ({"hosts": ["algo-2", "algo-3"]}, FormatError),  # host not among them
        ({"hosts": ["algo-1", ""]}, FormatError),
        ({"hosts": ["algo-1", "h" * 256]}, FormatError),
        ({"hosts": ["algo-1"] + [f"h{i}" for i in range(4096)]}, FormatError),
        ({"hosts": "algo-1,algo-2"}, FormatError),
        ({"hosts": ["algo-1", 2]}, FormatError),
        ({"version": fmt.FORMAT_VERSION + 1}, NewerFormatError),
    ],
)
def test_hosts_rules_reject_what_the_document_rejects(change: dict[str, object], error: type[Exception]) -> None:
    doc = json.loads(_v2_text())
    doc.update(change)
    with pytest.raises(error):
        fmt.decode_manifest(json.dumps(doc).encode())


def test_hosts_rules_accept_what_the_document_accepts() -> None:
    doc = json.loads(_v2_text())
    # order carries no meaning; 255 characters is the longest host name
    long_host = "é" * 255
    doc["hosts"] = [long_host, "algo-1"]
    assert fmt.decode_manifest(json.dumps(doc).encode()).hosts == tuple(sorted([long_host, "algo-1"]))
    # a version-1 manifest's hosts member is not read: single-host
    doc = json.loads(_v2_text())
    doc["version"] = 1
    assert fmt.decode_manifest(json.dumps(doc).encode()).hosts == ()
    # a version-2 manifest without hosts is single-host (and would be written as version 1)
    doc = json.loads(_v2_text())
    del doc["hosts"]
    m = fmt.decode_manifest(json.dumps(doc).encode())
    assert m.hosts == () and m.version == 1


def test_multi_host_grouping_and_completeness_follow_the_document() -> None:
    a1 = _v2()
    [alone] = catalog.group([_record(a1)])
    assert not alone.complete and alone.missing == ["algo-2"]

    a2 = _part(a1, "algo-2", seconds=2)
    older_a1 = _part(a1, "algo-1", seconds=-3600, files=a1.files[:1])  # superseded by a1
    single = dataclasses.replace(_part(a1, "algo-1", seconds=5), hosts=())  # same name, single-host
    trio = _part(a1, "algo-1", seconds=7, hosts=("algo-1", "algo-2", "algo-3"))  # same name, other host set
    groups = catalog.group([_record(m) for m in (older_a1, a1, a2, single, trio)])
    assert len(groups) == 3
    ck = next(g for g in groups if g.hosts == ("algo-1", "algo-2"))
    assert ck.complete and ck.members["algo-1"].manifest.commit == a1.commit  # each host's newest
    assert ck.manifest.commit == a2.commit  # step, metrics, created, commit: the newest member's
    assert not next(g for g in groups if len(g.hosts) == 3).complete

    # this host's part, or every host's files; another host's part is never substituted
    assert ck.for_host("algo-2").manifest.commit == a2.commit
    with pytest.raises(UsageError):
        ck.for_host("algo-9")
    # algo-2 holds the same trainer_state.json: restored once; a different one is a conflict
    assert sorted(f.path for f in ck.merged().manifest.files) == sorted({f.path for f in a1.files} | {f.path for f in a2.files})
    clash = dataclasses.replace(a1.files[0], hash="0" * 64)
    bad = catalog.group([_record(a1), _record(dataclasses.replace(a2, files=(clash,)))])
    with pytest.raises(UsageError, match="different contents"):
        bad[0].merged()

    # incomplete checkpoints are never candidates (restore filters them out before ranking)
    single_ck = next(g for g in groups if not g.hosts)
    assert policy.candidates([g for g in groups if g.complete], policy.Selector()) == [single_ck, ck]


def test_all_hosts_keeps_single_file_checkpoints_whole_and_refuses_conflicts() -> None:
    base = _v2()
    entry = dataclasses.replace(base.files[1], path="model.pt")
    a1 = dataclasses.replace(base, name="model.pt", kind="file", files=(entry,))
    a2 = _part(a1, "algo-2")
    [ck] = catalog.group([_record(a1), _record(a2)])
    merged = ck.merged().manifest
    assert merged.kind == "file" and merged.files == (entry,)
    different = dataclasses.replace(a2, files=(dataclasses.replace(entry, hash="0" * 64),))
    [bad] = catalog.group([_record(a1), _record(different)])
    with pytest.raises(UsageError, match="different contents"):
        bad.merged()
    # a path that is a file in one member and a folder in another
    as_file = dataclasses.replace(base, files=(dataclasses.replace(base.files[1], path="state"),))
    as_folder = dataclasses.replace(_part(base, "algo-2"), files=(dataclasses.replace(base.files[1], path="state/rank1.pt"),))
    [clash] = catalog.group([_record(as_file), _record(as_folder)])
    with pytest.raises(UsageError, match="file or a folder"):
        clash.merged()


# ---------------------------------------------------------------- byte grouping and tensor-aligned chunks


def test_writers_use_the_lowest_version_that_can_express_the_manifest() -> None:
    v1 = fmt.decode_manifest(docs.block(FORMAT, "example-manifest", "json").encode())
    v2 = fmt.decode_manifest(_v2_text().encode())
    v3 = fmt.decode_manifest(_v3_text().encode())
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    # byte grouping makes 3, with or without hosts; hosts alone make 2; else 1
    assert dataclasses.replace(v3, hosts=("algo-1", "algo-2")).version == 3
    f = v1.files[2]
    grouped = dataclasses.replace(f, chunks=(dataclasses.replace(f.chunks[0], codec="bg4"), *f.chunks[1:]))
    assert dataclasses.replace(v1, files=(*v1.files[:2], grouped, *v1.files[3:])).version == 3
    assert dataclasses.replace(v2, hosts=()).version == 1
    for name, since in fmt.CODECS_SINCE.items():
        chunk = dataclasses.replace(f.chunks[0], codec=name)
        only = dataclasses.replace(v1, files=(dataclasses.replace(f, chunks=(chunk, *f.chunks[1:])),) + v1.files[3:])
        assert only.version == since
        assert json.loads(fmt.encode_manifest(only))["version"] == since


def test_example_v3_manifest_round_trips() -> None:
    text = _v3_text()
    original = json.loads(text)
    manifest = fmt.decode_manifest(text.encode("utf-8"), key="docs/DESIGN.md v3 example")
    reencoded = json.loads(fmt.encode_manifest(manifest))
    assert json.dumps(reencoded, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert original["version"] == 3 == manifest.version and "hosts" not in original
    assert {c.codec for f in manifest.files for c in f.chunks} & {"bg2", "bg4", "bg8"}
    assert f"`{fmt.manifest_key('', manifest.name, manifest.commit)}`" in docs.text(DESIGN)
    assert manifest.extra == {}


def test_example_safetensors_header_cuts_into_the_example_chunks() -> None:
    flat = docs.flat(DESIGN)
    header_doc = json.loads(docs.block(DESIGN, "example-safetensors-header", "json"))
    n = int(re.search(r"padded with spaces to n = (\d+) bytes", flat).group(1))  # type: ignore[union-attr]
    header = json.dumps(header_doc, separators=(",", ":")).encode().ljust(n)
    assert len(header) == n and n % 8 == 0
    [entry] = json.loads(_v3_text())["files"]
    chunks, size = entry["chunks"], entry["size"]
    assert entry["path"] == "model.safetensors" and f"`checkpoint-1300/model.safetensors`, {size} bytes" in flat
    assert chunking.safetensors_header_length(struct.pack("<Q", n), size) == n
    plan = chunking.safetensors_plan(header, size)
    assert plan is not None
    assert [s.length for s in plan] == [c["size"] for c in chunks]
    # the first chunk is the length and the header, byte for byte
    assert hashlib.sha256(struct.pack("<Q", n) + header).hexdigest() == chunks[0]["hash"]
    # the table says the same as the chunker and the manifest
    rows = docs.table(DESIGN, "example-plan")
    assert [int(r[0]) for r in rows] == list(range(1, len(plan) + 1))
    assert [int(r[1]) for r in rows] == [s.length for s in plan]
    assert [None if r[3] == "none" else int(r[3]) for r in rows] == [s.width for s in plan]
    assert [r[4].strip("`") for r in rows] == [c["codec"] for c in chunks]
    # a chunk that comes with a width is byte-grouped with it, or raw (DESIGN.md, section 3, step 2)
    assert all(c["codec"] in (f"bg{s.width}", "raw") for s, c in zip(plan, chunks, strict=True) if s.width)
    # the tensors as the text describes them
    for name, info in header_doc.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            assert f"`{name}` ({info['dtype']}" in flat and f"{end - start} bytes)" in flat


def test_example_bg4_object_decodes_to_its_chunk_with_the_documented_layout() -> None:
    obj, ref = docs.bg4_example(), docs.bg4_example_ref()
    flat = docs.flat(FORMAT)
    assert len(obj) == ref.stored
    raw = codec.decode("bg4", obj, ref.size, ref.hash)
    width = codec.GROUPED["bg4"]
    count, tail = divmod(ref.size, width)
    assert f"Its {ref.size} raw bytes give W = {width}, N = {count} and T = {tail}" in flat
    assert obj[0] == width
    pos = 1 + 5 * width
    rows = docs.table(FORMAT, "example-bg4-planes")
    assert len(rows) == width
    for i, row in enumerate(rows):
        kind, length = struct.unpack_from("<BI", obj, 1 + 5 * i)
        assert int(row[0]) == i and row[2].startswith(f"{kind},") and int(row[3]) == length
        first, last = (int(x, 16) for x in row[4].split("–"))
        assert (first, last) == (pos, pos + length - 1)
        body = obj[pos : pos + length]
        plane = body if kind == 0 else zstandard.ZstdDecompressor().decompress(body)
        if kind == 1:
            assert zstandard.frame_content_size(body) == count  # writers write the content size
        assert plane == raw[i : count * width : width]  # plane_i[k] = raw[k·W + i]
        pos += length
    assert obj[pos:] == raw[count * width :] and len(obj) - pos == tail
    # what the text says about the contents
    assert raw[3::4] == b"\x3f" * 64 + b"\x40"
    assert f"`{raw[:4].hex(' ')}` ({np.frombuffer(raw[:4], '<f4')[0]:.8g} as a little-endian fp32)" in flat
    assert f"({np.frombuffer(raw[-4:], '<f4')[0]:.5g})" in flat
    # the real encoder makes the same choices for these bytes
    again = bytes(codec._group_encode(raw, width, rotate=False))
    assert again == obj


@pytest.mark.parametrize("how", docs.CORRUPTIONS)
def test_byte_grouped_decoding_rejects_what_the_document_rejects(how: str) -> None:
    obj, ref = docs.bg4_example(), docs.bg4_example_ref()
    with pytest.raises(IntegrityError):
        codec.decode("bg4", docs.corrupt(obj, how), ref.size, ref.hash)


def test_encoder_choices_follow_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    # 1. under 64 bytes: raw
    assert codec.encode(b"\x3f" * 63)[0] == "raw"
    assert codec.encode(b"\x3f" * 63, 4)[0] == "raw"
    # 2. with a width: byte grouping with it, or raw; plain zstd is not tried
    text = b"the same words again and again " * 2000
    assert codec.encode(text)[0] == "zstd"
    assert codec.encode(text, 4)[0] in ("bgr4", "raw")
    assert codec.encode(rng.normal(0, 0.02, 50_000).tobytes(), 8)[0] == "bgr8"
    # 3. the probe never chooses bg8, even for fp64 data
    assert codec.encode(rng.normal(0, 0.02, 50_000).tobytes())[0] != "bg8"
    # 3. incompressible data: stored raw after a probe of the sample, without compressing the chunk
    seen: list[int] = []
    real = codec._compressor()

    class Spy:
        def compress(self, data: bytes) -> bytes:
            seen.append(len(data))
            return real.compress(data)

    monkeypatch.setattr(codec, "_compressor", lambda: Spy())
    assert codec.encode(os.urandom(4 << 20))[0] == "raw"
    assert seen and max(seen) <= codec.SAMPLE


# ---------------------------------------------------------------- locks/ and garbage collection


def _timing_table() -> dict[str, float]:
    """The protocol's timings (FORMAT.md) and ckptsync's own (DESIGN.md), by name, in seconds."""
    rows = {}
    for doc, marker in ((FORMAT, "lock-timing"), (DESIGN, "lock-timing-choices")):
        for cells in docs.table(doc, marker):
            name, value = re.fullmatch(r"`(\w+)`", cells[0]), re.fullmatch(r"(\d+) s", cells[1])
            assert name and value, cells
            rows[name.group(1)] = float(value.group(1))
    return rows


def test_lock_timings_match_the_code() -> None:
    stale = locks.STALE.total_seconds()
    assert _timing_table() == {
        "REFRESH": locks.REFRESH,
        "STALE": stale,
        "COLLECT_LIMIT": stale / 2,
        "RECHECK": stale * inspect.signature(locks.Lock.fresh).parameters["margin"].default,
        "WAIT": inspect.signature(locks.acquire_shared).parameters["wait"].default,
        # (and the same default where the re-check before commit waits)
        "GRACE": prune_mod.DEFAULT_GRACE.total_seconds(),
        "LEFTOVERS": STALE_WRITES.total_seconds(),
    }
    assert (locks.REFRESH, locks.STALE) == (60.0, timedelta(minutes=10))
    # the collector's deadline and the waiting poll are written inline
    assert "locks.STALE.total_seconds() / 2" in inspect.getsource(prune_mod._collect)
    assert "sleep(1.0)" in inspect.getsource(locks.wait_for_collection)
    assert (
        inspect.signature(locks.wait_for_collection).parameters["wait"].default
        == inspect.signature(locks.acquire_shared).parameters["wait"].default
    )
    assert "wait_for_collection(lock" in inspect.getsource(locks.acquire_shared)
    # the CLI's --grace default and the daemon's leftover age are the documented ones
    assert options.SETTINGS["grace"].default_value() == prune_mod.DEFAULT_GRACE
    # push and the daemon both clean leftovers through the session, with the one constant
    assert "STALE_WRITES" in inspect.getsource(RemoteSession.clean_stale_writes) and STALE_WRITES == timedelta(hours=24)


def test_lock_keys_bodies_and_generation_are_as_documented(tmp_path: Path) -> None:
    text = docs.text(FORMAT)
    assert locks.LOCKS_DIR == "locks" and "`locks/`" in text
    assert locks.GENERATION == "generation" and f"`{locks.LOCKS_DIR}/{locks.GENERATION}`" in text
    grammar = re.compile(docs.block(FORMAT, "lock-key-grammar", ""))
    example = json.loads(docs.block(FORMAT, "example-lock", "json"))
    # the lock shown in the layout tree follows the grammar
    tree_locks = re.findall(r"[├└]── (\S+\.(?:shared|exclusive)\.json)\n", text)
    assert tree_locks and all(grammar.match(k) for k in tree_locks)

    store = LocalStore(tmp_path)
    for kind in ("shared", "exclusive"):
        assert f"`.{kind}.json`" in text
        lock = locks.Lock(store, "", kind, host="algo-1")
        view = lock.write_and_look()
        assert view.mine.key == lock.key and lock.key.startswith(f"{locks.LOCKS_DIR}/")
        name = lock.key.split("/", 1)[1]
        assert grammar.match(name) and name.endswith(f".{kind}.json")
        body = json.loads((tmp_path / lock.key).read_bytes())
        assert set(body) == set(example)
        assert (body["kind"], body["host"], body["pid"]) == (kind, "algo-1", os.getpid())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["time"])
        lock.release()
        assert not (tmp_path / lock.key).exists()
    assert example["kind"] in ("shared", "exclusive") and isinstance(example["pid"], int)

    # the generation body: 16 lowercase hex digits, drawn anew by every collection
    bodies = set()
    for _ in range(3):
        locks.write_generation(store, "")
        body = (tmp_path / locks.LOCKS_DIR / locks.GENERATION).read_bytes()
        assert re.fullmatch(rb"[0-9a-f]{16}", body)
        bodies.add(body)
    assert len(bodies) == 3
    assert "secrets.token_hex(8)" in inspect.getsource(locks.write_generation)


def test_a_released_lock_is_never_written_again(tmp_path: Path) -> None:
    assert "MUST NOT write its lock object after it has started to delete it" in docs.flat(FORMAT)
    store = LocalStore(tmp_path)
    lock = locks.Lock(store, "", "shared")
    lock.write_and_look()
    lock.release()
    lock._write()  # a refresh that comes too late
    assert not (tmp_path / lock.key).exists()


def test_recheck_counts_every_gap_between_lock_writes_on_a_clock_that_counts_suspend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    design = docs.flat(DESIGN)
    assert "CLOCK_BOOTTIME" in inspect.getsource(locks.elapsed_clock) and "`CLOCK_BOOTTIME` on Linux" in design
    # gaps run from the start of the earlier write to the end of the later one
    assert "(from the start of the earlier write to the end of the later one)" in design
    assert "end - self._last_start" in inspect.getsource(locks.Lock._write)
    # the collector's deadline runs on the same clock, from before its lock write
    assert "measures `COLLECT_LIMIT` from just before it writes its exclusive lock, on the same clock as L5" in design
    collect = inspect.getsource(prune_mod._collect)
    assert collect.index("started = locks.elapsed_clock()") < collect.index("lock.write_and_look()")
    recheck = _timing_table()["RECHECK"]
    clock = [1000.0]
    monkeypatch.setattr(locks, "elapsed_clock", lambda: clock[0])
    store = LocalStore(tmp_path)

    lock = locks.Lock(store, "", "shared")
    lock.write_and_look()
    for _ in range(5):  # refreshed every REFRESH: fresh
        clock[0] += locks.REFRESH
        lock._write()
    assert lock.fresh()
    clock[0] += recheck  # no write for RECHECK: not fresh
    assert not lock.fresh()

    lock = locks.Lock(store, "", "shared")
    lock.write_and_look()
    clock[0] += recheck + 1  # a pause in the middle of the upload ...
    lock._write()  # ... after which the lock was rewritten
    clock[0] += 1
    assert not lock.fresh(), "a gap in the middle must trigger the check before commit"
    # the re-check before commit waits for a running collection, then measures afresh, and looks chunks up by hash and codec
    source = inspect.getsource(RemoteSession._still_stored)
    assert "locks.wait_for_collection(lock)" in source and "lock.max_gap = 0.0" in source
    assert "(c.hash, c.codec) in present" in source and "It looks the manifest's chunks up by hash and codec" in design


def test_lock_liveness_is_judged_against_the_observers_own_lock() -> None:
    now = datetime(2026, 11, 26, 13, 0, tzinfo=timezone.utc)
    stale = locks.STALE

    def obj(name: str, modified: datetime | None) -> ObjectInfo:
        return ObjectInfo(f"{locks.LOCKS_DIR}/{name}", 100, modified)

    mine = obj("20261126T130000000000Z-0000000000000000.shared.json", now)
    listing = [
        mine,
        obj("20261126T125001000000Z-1111111111111111.shared.json", now - stale + timedelta(seconds=1)),  # live
        obj("20261126T124959000000Z-2222222222222222.shared.json", now - stale - timedelta(seconds=1)),  # stale
        obj("20261126T120000000000Z-3333333333333333.exclusive.json", now - stale),  # exactly STALE: live
        obj("20260101T000000000000Z-4444444444444444.exclusive.json", None),  # age unknown: live
        obj(locks.GENERATION, now - timedelta(days=3)),
        obj("README.txt", now),  # neither: ignored
    ]

    class Listing:
        body = b"0123456789abcdef"

        def list(self, prefix: str) -> list[ObjectInfo]:
            assert prefix == f"{locks.LOCKS_DIR}/"
            return listing

        def get(self, key: str, *, max_size: int | None = None) -> bytes:
            assert key == f"{locks.LOCKS_DIR}/{locks.GENERATION}"
            return self.body

    store = Listing()
    view = locks.look(store, "", mine.key)  # type: ignore[arg-type]
    assert [o.key for o in view.shared] == [listing[1].key]
    assert [o.key for o in view.exclusive] == [listing[3].key, listing[4].key]
    # generations are told apart by their bodies, not by the listed time and size
    assert view.generation == "0123456789abcdef"
    store.body = b"fedcba9876543210"  # another collection, within the same second: same time, same size
    assert locks.look(store, "", mine.key).generation == "fedcba9876543210"  # type: ignore[arg-type]


def test_temporary_and_staging_names_are_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "`.ckptsync-tmp-<last key component>.<12 hexadecimal digits>`" in docs.flat(DESIGN)
    assert "whose name starts with `.ckptsync-tmp-`" in docs.flat(FORMAT) and "Readers MUST ignore such files" in docs.flat(FORMAT)
    assert f"`{STAGING_PREFIX}<pid>-<host>-<12 hexadecimal digits>`" in docs.flat(FORMAT)

    renamed: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renamed.append(Path(src).name)
        real_replace(src, dst)

    (tmp_path / "remote").mkdir()
    monkeypatch.setattr(os, "replace", spy)
    LocalStore(tmp_path / "remote").put("chunks/ab/abc.raw", b"x")
    monkeypatch.undo()
    assert len(renamed) == 1 and re.fullmatch(r"\.ckptsync-tmp-abc\.raw\.[0-9a-f]{12}", renamed[0])

    staged: list[str] = []

    def stop(repo: object, m: object, built: Path, *args: object) -> None:
        staged.append(built.parent.name)
        raise RuntimeError("stop before fetching")

    monkeypatch.setattr(download, "_build", stop)
    manifest = fmt.decode_manifest(docs.block(FORMAT, "example-manifest", "json").encode("utf-8"))
    with pytest.raises(RuntimeError, match="stop before fetching"):
        download.restore_checkpoint(Repository(LocalStore(tmp_path / "remote")), _record(manifest), tmp_path / "target")
    slug = fsutil.staging_slug()
    assert len(staged) == 1 and re.fullmatch(rf"{re.escape(STAGING_PREFIX)}{os.getpid()}-{re.escape(slug)}-[0-9a-f]{{12}}", staged[0])


@pytest.mark.parametrize(
    ("hostname", "slug"),
    [
        ("algo-1", "algo_1"),
        ("ip-10-0-0-1.ec2.internal", "ip_10_0_0_1.ec2.internal"),
        ("modèle 1", "mod_le_1"),
        ("", "host"),
        ("h" * 80, "h" * 63),
    ],
)
def test_the_host_slug_of_staging_folders_is_as_documented(monkeypatch: pytest.MonkeyPatch, hostname: str, slug: str) -> None:
    assert (
        "with every character that is neither an ASCII letter, a digit, `.` nor `_` replaced by `_` (so it contains no `-`), cut to 63 characters, or `host` if empty"
        in docs.flat(FORMAT)
    )
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert fsutil.staging_slug() == slug


def test_dead_staging_folders_are_removed_only_when_made_on_this_host(tmp_path: Path) -> None:
    assert "It leaves alone those whose name carries the host slug of another machine" in docs.flat(DESIGN)
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # above the kernel's largest pid: never a process
    alive, me = os.getppid(), fsutil.staging_slug()
    other = "not_" + me[:50]
    names = {
        f"{STAGING_PREFIX}{dead}-{me}-aaaaaaaaaaaa": False,  # this host, process gone: removed
        f"{STAGING_PREFIX}{alive}-{me}-bbbbbbbbbbbb": True,  # this host, process running: kept
        f"{STAGING_PREFIX}{dead}-{other}-cccccccccccc": True,  # another machine's: never judged
        f"{STAGING_PREFIX}{dead}-dddddddddddd": False,  # older form without a host: judged by its pid
        f"{STAGING_PREFIX}{alive}-eeeeeeeeeeee": True,
        f"{STAGING_PREFIX}nopid": False,  # no process id: removed
    }
    for name in names:
        (tmp_path / name).mkdir()
    fsutil.remove_dead_staging(tmp_path, logging.getLogger("test"))
    assert {n: (tmp_path / n).exists() for n in names} == names


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def test_multipart_cleanup_touches_only_ckptsync_key_families(aws_env: None) -> None:
    assert "(`<prefix>/chunks/`, `<prefix>/manifests/`, `<prefix>/locks/`, `<prefix>/parts/`, `<prefix>/catalog/`)" in docs.flat(DESIGN)
    ours = [f"{PREFIX}/chunks/ab/x.raw", f"{PREFIX}/manifests/n/y.json", f"{PREFIX}/locks/z.shared.json"]
    ours += [f"{PREFIX}/parts/n/{'0' * 32}/h/y.json", f"{PREFIX}/catalog/n/1.single.y.json"]
    others = [f"{PREFIX}/other/w.bin", f"{PREFIX}/chunksmith.bin", "chunks/at-the-root.raw"]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for key in ours + others:
            s3.create_multipart_upload(Bucket=BUCKET, Key=key)
        store = S3Store(BUCKET)
        assert store.cleanup(PREFIX + "/", timedelta(0)) == len(ours)
        left = {u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])}
        assert left == set(others)
