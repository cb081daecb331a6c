"""The package as a user imports it: what the command line loads at start-up, and the public names."""

from __future__ import annotations

from tests.helpers import run_python


def test_cli_import_loads_no_heavy_dependency() -> None:
    """``ckptsync --help`` and commands that need neither S3 nor the chunk codecs start without them."""
    code = (
        "import sys, ckptsync.cli\n"
        "print(sorted(m for m in ('botocore', 'boto3', 'numpy', 'zstandard', 'watchdog', 'tqdm') if m in sys.modules))"
    )
    out = run_python("-c", code, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_shares_a_name_with_a_public_function() -> None:
    """Every public name of the package is what ``__all__`` says, whatever submodules have loaded.

    No submodule is named like a public symbol (``restore``, ``verify``, ``prune``, ...): importing it
    would rebind the package attribute to the module.
    """
    import pkgutil

    import ckptsync

    modules = {m.name for m in pkgutil.iter_modules(ckptsync.__path__)}
    assert modules.isdisjoint(ckptsync.__all__), modules & set(ckptsync.__all__)
    code = (
        "import importlib, pkgutil, ckptsync\n"
        "for m in pkgutil.walk_packages(ckptsync.__path__, 'ckptsync.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "from ckptsync import RestoreResult, Syncer\n"
        "print(callable(ckptsync.restore), callable(ckptsync.verify), callable(ckptsync.prune), RestoreResult.__name__, Syncer.__name__)"
    )
    out = run_python("-c", code, check=True).stdout
    assert out.split() == ["True", "True", "True", "RestoreResult", "Syncer"]
