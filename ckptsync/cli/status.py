"""``ckptsync status``: what a running daemon is doing, read from its state folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import EXIT_NOTHING
from ..logs import printable
from ..options import COMMON, Resolved
from ..progress import human_bytes
from ..state import STATUS_FILE, default_state_dir, default_state_root, read_status
from ..status import Status
from .params import fail, run_command, settings


@click.command("status")
@settings(
    "dir",
    "remote",
    "state_dir",
    "json",
    *COMMON,
    help={
        "dir": "The watched folder.",
        "remote": "The daemon's remote (with --dir, finds its state folder).",
        "state_dir": "The daemon's state folder.",
        "json": "Print the status file as JSON.",
    },
)
@run_command
def command(s: Resolved) -> None:
    """Show what a running daemon is doing (from its state folder)."""
    status = _find(s["state_dir"] or (default_state_dir(Path(s["dir"]), s["remote"]) if s["remote"] else None))
    if status is None:
        fail("no daemon status found", "pass --state-dir, or --dir and --remote as given to 'ckptsync watch'", EXIT_NOTHING)
    running = _alive(status.pid) and status.state != "stopped"
    if s["json"]:
        click.echo(json.dumps({**status.to_json(), "running": running}, indent=1))
        return
    for line in render(status, running):
        click.echo(printable(line))


def _find(state_dir: Path | None) -> Status | None:
    """The status in ``state_dir``, or else the most recently written one under the default state root."""
    if state_dir is not None:
        return read_status(state_dir)
    folders = [d for d in default_state_root().glob("*") if (d / STATUS_FILE).is_file()]
    for d in sorted(folders, key=lambda d: (d / STATUS_FILE).stat().st_mtime, reverse=True):
        status = read_status(d)
        if status is not None:
            return status
    return None


def render(st: Status, running: bool) -> list[str]:
    """The status as lines of text."""
    lines = [
        f"state:       {st.state}{'' if running else ' (not running)'}  pid {st.pid}  updated {st.updated}",
        f"folder:      {st.folder} -> {st.remote} ({st.watcher})",
    ]
    if st.in_flight:
        fl = st.in_flight
        lines.append(f"uploading:   {fl.name} {human_bytes(fl.bytes_done)} of {human_bytes(fl.bytes_total)}")
    lines.append(f"queue:       {', '.join(st.queue) or '-'}")
    lines += [f"pending:     {name}: {reason}" for name, reason in st.pending.items()]
    lines.append(f"last commit: {st.last_commit.name + ' at ' + st.last_commit.time if st.last_commit else '-'}")
    lines.append(
        f"totals:      {st.committed} committed, {human_bytes(st.bytes_uploaded)} uploaded, {st.failures} failures, lag {st.lag_seconds}s"
    )
    lines += [f"error:       {err}" for err in st.errors]
    return lines


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
