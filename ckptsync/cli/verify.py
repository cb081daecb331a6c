"""``ckptsync verify``: check that every committed checkpoint's chunks exist (``--deep``: and are intact)."""

from __future__ import annotations

import json
import logging

import click

from .. import api
from ..errors import EXIT_ERROR
from ..logs import printable
from ..options import COMMON, REMOTE, Resolved
from .params import fail, run_command, settings

log = logging.getLogger("ckptsync")

#: Problems listed per damaged checkpoint; the rest are counted.
SHOWN = 20


@click.command("verify")
@settings(*REMOTE, "name", "deep", "json", *COMMON, help={"name": "Only this checkpoint.", "json": "Print a JSON array of reports."})
@run_command
def command(s: Resolved) -> None:
    """Check that every committed checkpoint's chunks exist (--deep: and are intact)."""
    reports = api.verify(s.remote(), name=s["name"], deep=s["deep"], options=s.options())
    bad = [r for r in reports if not r.ok]
    if s["json"]:
        doc = [{"name": r.record.name, "commit": r.record.manifest.commit, "ok": r.ok, "problems": r.problems} for r in reports]
        click.echo(json.dumps(doc, indent=1))
    else:
        for r in reports:
            if r.ok:
                click.echo(printable(f"ok       {r.record.name}"))
                continue
            click.echo(printable(f"DAMAGED  {r.record.name}: {len(r.problems)} problem(s)"))
            for p in r.problems[:SHOWN]:
                click.echo(printable(f"         {p}"))
            if len(r.problems) > SHOWN:
                click.echo(f"         ... and {len(r.problems) - SHOWN} more")
    log.info("verified %d checkpoint(s)%s: %d damaged", len(reports), " deeply" if s["deep"] else "", len(bad))
    if bad:
        fail(
            f"{len(bad)} of {len(reports)} checkpoint(s) are damaged",
            "restore falls back to intact checkpoints; push again from a host that still has the files",
            EXIT_ERROR,
        )
