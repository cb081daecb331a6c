"""The recipes of docs/INTEGRATIONS.md marked ``<!-- tested: NAME -->``, executed as written (for the job scripts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATIONS.md"


def load(name: str) -> dict[str, Any]:
    """Run the ```python block after ``<!-- tested: NAME -->``; return its namespace."""
    m = re.search(r"<!-- tested: " + re.escape(name) + r" -->\s*```python\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert m, f"no python block after <!-- tested: {name} --> in {DOC}"
    ns: dict[str, Any] = {"__name__": f"doc_{name.replace('-', '_')}"}
    exec(compile(m.group(1), f"{DOC.name}:{name}", "exec"), ns)
    return ns
