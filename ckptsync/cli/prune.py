"""``ckptsync prune``: retention on the remote, then collection of unused chunks."""

from __future__ import annotations

import json
import logging

import click

from .. import api
from ..logs import printable
from ..options import COMMON, REMOTE, RETENTION, Resolved
from ..progress import human_bytes
from .params import run_command, settings

log = logging.getLogger("ckptsync")


@click.command("prune")
@settings(
    *REMOTE,
    *RETENTION,
    "dry_run",
    "json",
    *COMMON,
    help={"metric": "Metric for --keep-best (the best checkpoint by it is never deleted).", "json": "Print the report as JSON."},
)
@run_command
def command(s: Resolved) -> None:
    """Delete committed checkpoints the retention rules do not keep, then unused chunks.

    The newest checkpoint, and the best one by --metric, are always kept. Chunks
    still referenced by a kept checkpoint, or younger than --grace, stay.
    """
    rules = s.retention()
    dry_run = s["dry_run"]
    report = api.prune(s.remote(), rules, grace=s["grace"], dry_run=dry_run, options=s.options())
    if s["json"]:
        click.echo(json.dumps(report.__dict__, indent=1))
        return
    verb = "would delete" if dry_run else "deleted"
    for name in report.deleted:
        click.echo(printable(f"{verb}  {name}"))
    for name in report.kept:
        click.echo(printable(f"would keep  {name}" if dry_run else f"kept        {name}"))
    log.info(
        "%s %d manifest(s), %d chunk(s) (%s); %d unused chunk(s) kept within the grace period%s",
        verb,
        report.manifests_deleted,
        report.chunks_deleted,
        human_bytes(report.bytes_freed),
        report.chunks_in_grace,
        f"; chunk collection deferred: {report.collection_deferred}" if report.collection_deferred else "",
    )
