"""``ckptsync wait``: block until a local checkpoint is committed on the remote."""

from __future__ import annotations

import logging

import click

from .. import api
from ..errors import EXIT_ERROR
from ..logs import printable
from ..options import COMMON, REMOTE, Resolved
from .params import fail, folder, run_command, settings

log = logging.getLogger("ckptsync")


@click.command("wait")
@settings(
    "dir",
    "name",
    "timeout",
    "state_dir",
    *REMOTE,
    *COMMON,
    help={
        "name": "The checkpoint to wait for (default: the newest in --dir when the wait starts).",
        "state_dir": "The state folder of the daemon watching --dir, if it was given one (for why a checkpoint is pending).",
    },
)
@run_command
def command(s: Resolved) -> None:
    """Wait until a checkpoint in --dir is committed on the remote with the content on disk.

    Exit 0 once it is; 1 if --timeout passes first, with what is pending and why
    (not complete yet, queued, uploading, failing, no daemon running); 2 on usage
    errors. Works beside 'ckptsync watch' (another process) and without one.
    """
    remote, opts = s.remote(), s.options()
    result = api.wait(folder(s), remote, opts, name=s["name"], timeout=s["timeout"], state_dir=s["state_dir"])
    if not result.committed:
        what = printable(result.name) if result.name else "no checkpoint"
        fail(f"{what} is not committed after {result.seconds:.0f}s: {printable(result.reason)}", None, EXIT_ERROR)
    step = "" if result.step is None else f" (step {result.step})"
    click.echo(f"{printable(result.name or '')}{step} is committed: {result.commit}")
