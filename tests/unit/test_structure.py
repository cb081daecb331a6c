"""The shape of the package: sizes, imports, and docs/ARCHITECTURE.md matching the code."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import ckptsync

ROOT = Path(ckptsync.__file__).parent
ARCHITECTURE = ROOT.parent / "docs" / "ARCHITECTURE.md"
MODULES = sorted(ROOT.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_classes_and_functions_stay_small(path: Path) -> None:
    """At most 600 lines a module, 300 a class, 100 a function: a larger one mixes concerns."""
    source = path.read_text()
    assert len(source.splitlines()) <= 600
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno < 300, f"class {node.name}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno < 100, f"function {node.name}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_imports_names_from_the_package_root(path: Path) -> None:
    """Modules import the modules they use, never the package's public names (import-order cycles)."""
    depth = len(path.relative_to(ROOT).parts)  # 1 for ckptsync/x.py, 2 for ckptsync/cli/x.py
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            assert not any(a.name == "ckptsync" for a in node.names), "import ckptsync"
        if isinstance(node, ast.ImportFrom):
            assert node.module != "ckptsync" and not (node.level == 0 and (node.module or "").startswith("ckptsync")), node.module
            if node.level == depth and node.module is None:
                for alias in node.names:
                    assert (ROOT / f"{alias.name}.py").exists() or (ROOT / alias.name).is_dir(), f"from package root: {alias.name}"


def _resolves(dotted: str) -> bool:
    """``session.RemoteSession.upload`` names something in ckptsync: a module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("ckptsync." + ".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_the_architecture_page_names_only_modules_and_symbols_that_exist_and_places_every_module() -> None:
    text = ARCHITECTURE.read_text()
    quoted = re.findall(r"`([^`\s]+)`", text)
    for token in quoted:
        if token.endswith((".py", "/")):
            base = ROOT.parent if token.startswith(("tests/", "examples/", "docs/")) else ROOT
            assert (base / token).exists(), f"docs/ARCHITECTURE.md names {token}, which does not exist"
        elif re.fullmatch(r"[a-z_]+(\.[A-Za-z_]+)+", token):
            assert _resolves(token), f"docs/ARCHITECTURE.md names {token}, which does not exist"
    top = {p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    missing = {m for m in top if f"`{m}`" not in text}
    assert not missing, f"docs/ARCHITECTURE.md does not place {sorted(missing)}"
    assert len(text.splitlines()) <= 100, "one page"
