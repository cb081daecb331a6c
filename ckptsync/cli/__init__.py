"""The command line: one module per command, each a thin translation into :mod:`ckptsync.api` calls.

Every option also reads a ``CKPTSYNC_<OPTION>`` environment variable and the
config file (see :mod:`ckptsync.options`); errors are one line and a hint,
never a traceback (see :mod:`ckptsync.cli.params`).
"""

from __future__ import annotations

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

__all__ = ["main"]
