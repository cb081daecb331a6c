"""``ckptsync export``: one checkpoint's files placed directly into a folder (SageMaker's model folder)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import click

from .. import api
from ..errors import EXIT_NOTHING, EXIT_USAGE
from ..options import COMMON, REMOTE, Resolved
from .params import fail, run_command, selection, settings

log = logging.getLogger("ckptsync")


@click.command("export")
@settings(*REMOTE)
@selection
@settings(
    "metric",
    "mode",
    "name",
    "to",
    "all_hosts",
    *COMMON,
    help={"metric": "Metric for --best.", "all_hosts": "For a multi-host checkpoint, every host's files."},
)
@run_command
def command(s: Resolved, how: str) -> None:
    """Place one checkpoint's files directly into --to (e.g. /opt/ml/model, SageMaker's model artefact).

    Unlike restore, the files land in --to itself, not in --to/<name>; existing
    files of the same names are replaced, others are left alone.
    """
    to: Path | None = s["to"]
    if to is None:
        fail("no destination", "pass --to DIR (or run where SM_MODEL_DIR is set)", EXIT_USAGE)
    remote = s.remote()
    to.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ckptsync-export-", dir=to) as tmp:
        result = api.restore(
            remote, tmp, how, s["metric"], s["mode"], name=s["name"], strict=False, all_hosts=s["all_hosts"], options=s.options()
        )
        if result is None:
            fail(f"nothing committed in {remote}", "nothing to export", EXIT_NOTHING)
        src = Path(tmp) / result.name
        moved = []
        for item in [src] if src.is_file() else sorted(src.iterdir()):
            dest = to / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
            moved.append(dest.name)
    log.info("exported %s (step %s) into %s: %s", result.name, result.manifest.step, to, ", ".join(moved))
    click.echo(str(to))
