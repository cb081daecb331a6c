"""The package as a user imports it: what the command line loads at start-up, and the public names."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import run_python, start_python


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


def test_the_command_exits_with_its_code_and_all_its_output() -> None:
    """The executable skips the interpreter's teardown, never the output still buffered or the exit code."""
    code = (
        "import sys\n"
        "from ckptsync.cli import entry, main\n"
        "@main.command('bulk')\n"
        "def bulk():\n"
        "    for i in range(100000):\n"
        "        print(i)  # the last lines still in the buffer at exit\n"
        "    sys.exit(3)\n"
        "sys.argv = ['ckptsync', 'bulk']\n"
        "entry()\n"
    )
    done = run_python("-c", code, env={"PYTHONUNBUFFERED": ""})  # output buffered, as by default
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == [str(i) for i in range(100000)]


def test_the_command_waits_for_a_thread_it_left_running(tmp_path: Path) -> None:
    """A thread still running when the command returns is waited for, as by the ordinary exit."""
    out = tmp_path / "finished"
    code = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from ckptsync.cli import entry, main\n"
        "@main.command('leave')\n"
        "def leave():\n"
        "    def finish():\n"
        "        sys.stdin.read()  # until the test closes it\n"
        f"        Path({str(out)!r}).write_text('done')\n"
        "    threading.Thread(target=finish).start()\n"
        "    print('started', flush=True)\n"
        "sys.argv = ['ckptsync', 'leave']\n"
        "entry()\n"
    )
    child = start_python("-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "started\n"
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait()
    assert out.read_text() == "done"
