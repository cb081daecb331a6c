"""Sections of docs/BENCHMARKS.md that other harnesses than ``bench/run.sh`` write.

A section lies between ``<!-- section: NAME -->`` and ``<!-- end: NAME -->``. The harness
that measures it replaces it (or appends it) with :func:`replace`; ``bench/runner.py``
carries every such section over when it rewrites the file (:func:`kept`).
"""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- section: ([\w-]+) -->\n.*?<!-- end: \1 -->\n", re.DOTALL)


def kept(path: Path) -> str:
    """Every section of ``path``, in order, as text to append to a rewritten file."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return "".join(m.group(0) for m in _SECTION.finditer(text))


def strip_sections(text: str) -> str:
    """``text`` without its sections: what the harness that rewrites the whole file wrote by hand."""
    return _SECTION.sub("", text)


def replace(path: Path, name: str, body: str) -> None:
    """Write section ``name`` of ``path`` with ``body`` (markdown), in place or at the end."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"<!-- section: {name} -->\n{body.rstrip()}\n<!-- end: {name} -->\n"
    pattern = re.compile(r"<!-- section: " + re.escape(name) + r" -->\n.*?<!-- end: " + re.escape(name) + r" -->\n", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")
