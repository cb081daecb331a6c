"""The command line: one module per command, each a thin translation into :mod:`ckptsync.api` calls.

Every option also reads a ``CKPTSYNC_<OPTION>`` environment variable and the
config file (see :mod:`ckptsync.options`); errors are one line and a hint,
never a traceback (see :mod:`ckptsync.cli.params`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import NoReturn

import click

from .._version import __version__
from ..executor import quiet_blas

quiet_blas()  # before any command imports numpy

from . import config, export, listing, mark, prune, push, restore, run, status, verify, wait, watch  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ckptsync")
def main() -> None:
    """Keep training checkpoints safe on object storage and bring them back on restart."""


for _module in (push, listing, restore, verify, prune, mark, watch, wait, run, status, config, export):
    main.add_command(_module.command)


def entry() -> NoReturn:
    """The ``ckptsync`` executable: :func:`main`, then an exit that skips tearing the interpreter down.

    Tearing down an interpreter that has loaded botocore and numpy takes about 0.1 s
    (0.08 CPU-s) on a small host, for every command. By the time :func:`main` returns,
    the command's work is done: logging is shut down and the output flushed here, then
    the process exits with the command's code. If any other thread still runs (one a
    command left behind), or the output cannot be flushed, the exit is the ordinary one,
    which waits for the thread or reports the error as Python always does.
    """
    try:
        main()  # click's standalone mode: always ends in SystemExit
        code: object = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    if not isinstance(code, int) or _others_running():
        raise SystemExit(code)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    os._exit(code)


def _others_running() -> bool:
    """True if a thread other than this one that the interpreter would wait for at exit is alive."""
    me = threading.current_thread()
    return any(t is not me and t.is_alive() and not t.daemon for t in threading.enumerate())


__all__ = ["entry", "main"]
