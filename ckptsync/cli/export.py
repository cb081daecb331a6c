"""``ckptsync export``: one checkpoint's files placed directly into a folder (SageMaker's model folder)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import click

from .. import api
from ..errors import EXIT_NOTHING, EXIT_USAGE, LocalError, UsageError
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
    files and folders of the same names are replaced, others are left alone.
    """
    to: Path | None = s["to"]
    if to is None:
        fail("no destination", "pass --to DIR (or run where SM_MODEL_DIR is set)", EXIT_USAGE)
    remote = s.remote()
    make_destination(to)
    with tempfile.TemporaryDirectory(prefix=".ckptsync-export-", dir=to) as tmp:
        result = api.restore(
            remote, tmp, how, s["metric"], s["mode"], name=s["name"], strict=False, all_hosts=s["all_hosts"], options=s.options()
        )
        if result is None:
            fail(f"nothing committed in {remote}", "nothing to export", EXIT_NOTHING)
        src = Path(tmp) / result.name
        moved: list[str] = []
        for item in [src] if src.is_file() else sorted(src.iterdir()):
            try:
                replace(item, to / item.name)
            except OSError as exc:
                done = f"placed before it: {', '.join(moved)}" if moved else "nothing was placed"
                raise LocalError(
                    f"cannot place {to / item.name}: {exc.strerror or exc} ({done})", "check the permissions of --to"
                ) from None
            moved.append(item.name)
    log.info("exported %s (step %s) into %s: %s", result.name, result.manifest.step, to, ", ".join(moved))
    click.echo(str(to))


def make_destination(to: Path) -> None:
    """Create the folder --to; a one-line error, before anything is downloaded, where it cannot be one."""
    blocker = next((p for p in (to, *to.parents) if os.path.lexists(p) and not p.is_dir()), None)
    if blocker is not None:
        what = "a file" if blocker.is_file() else "a broken symbolic link" if blocker.is_symlink() else "a special file"
        raise UsageError(
            f"cannot export into {to}: {'it' if blocker == to else blocker} is {what}, not a folder",
            "remove it, or pass a folder with --to; nothing was changed",
        )
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalError(f"cannot create {to}: {exc.strerror or exc}", "check the permissions, or pass another folder with --to") from None


def replace(item: Path, dest: Path) -> None:
    """Move ``item`` to ``dest``, replacing what is there: a folder with what is in it, a file, a symbolic link (never followed)."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif item.is_dir() and os.path.lexists(dest):
        os.unlink(dest)  # rename(2) moves a folder over nothing but an empty folder
    os.replace(item, dest)
