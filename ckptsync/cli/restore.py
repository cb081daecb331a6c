"""``ckptsync restore``: download, verify and atomically place a committed checkpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import click

from .. import api
from ..errors import EXIT_NOTHING, EXIT_USAGE
from ..options import COMMON, REMOTE, Resolved
from ..progress import ProgressBar, human_bytes
from ..repository import ManifestRecord
from .params import fail, folder, run_command, selection, settings

log = logging.getLogger("ckptsync")

SELECTION = ("metric", "mode", "name", "step")


@click.command("restore")
@settings("dir", *REMOTE, help={"dir": "Folder to restore into (the checkpoint lands in DIR/<name>)."})
@selection
@settings(
    *SELECTION,
    "json",
    "require",
    "strict",
    "all_hosts",
    *COMMON,
    help={
        "metric": "Metric for --best, e.g. eval_loss.",
        "mode": "Whether lower or higher --metric is better (default: min for loss/error/perplexity).",
        "name": "Restore this checkpoint.",
        "step": "Restore the checkpoint at this step.",
        "json": "Print one JSON object instead of the path.",
    },
)
@run_command
def command(s: Resolved, how: str) -> None:
    """Download, verify and atomically place a committed checkpoint.

    The last line on stdout is the restored path (empty when nothing is
    committed yet). A damaged checkpoint is reported and the next one by the
    same order is restored instead, unless --strict.
    """
    if s["name"] is not None and s["step"] is not None:
        fail("--name and --step cannot be combined", "pass one of them", EXIT_USAGE)
    remote = s.remote()
    bars: list[ProgressBar] = []

    def progress(rec: ManifestRecord) -> Callable[[int], None]:
        bar = ProgressBar(rec.manifest.raw_bytes, f"restore {rec.name}")
        bars.append(bar)
        return bar.update

    try:
        result = api.restore(
            remote,
            folder(s),
            how,
            s["metric"],
            s["mode"],
            name=s["name"],
            step=s["step"],
            strict=s["strict"],
            all_hosts=s["all_hosts"],
            options=s.options(),
            progress=progress,
        )
    finally:
        for b in bars:
            b.close()
    if result is None:
        if s["json"]:
            click.echo(json.dumps({"path": None, "name": None}))
        if s["require"]:
            fail(
                f"nothing committed yet in {remote}",
                "the remote is empty, or none of its manifests is usable (see the warning above); drop --require to start fresh",
                EXIT_NOTHING,
            )
        log.info("nothing committed yet in %s; starting from scratch", remote)
        if not s["json"]:
            click.echo("")
        return
    if result.already_present:
        log.info("%s is already present and intact at %s", result.name, result.path)
    else:
        log.info(
            "restored %s (step %s): %d files, %s, %s downloaded, %d files reused, %.1fs",
            result.name,
            result.manifest.step,
            result.files,
            human_bytes(result.bytes_written),
            human_bytes(result.bytes_downloaded),
            result.files_reused,
            result.seconds,
        )
    if result.skipped:
        log.warning("skipped damaged checkpoint(s): %s", ", ".join(result.skipped))
    click.echo(json.dumps(result.to_json()) if s["json"] else str(result.path))
