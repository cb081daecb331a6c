"""``ckptsync config``: the effective value of every option, and where it came from."""

from __future__ import annotations

import json
import os

import click

from ..options import COMMON, REMOTE, RETENTION, SETTINGS, WATCH, Resolved
from .params import display, run_command, settings

#: The options shown: everything a daemon, a restore and a prune can be given (not per-call flags).
SHOWN = (*WATCH, *RETENTION, "restore", *REMOTE, *COMMON)


@click.command("config")
@settings(
    *SHOWN,
    "json",
    help={"json": "Print a JSON object.", "restore": "As for 'run'.", "metric": "As for 'restore', 'prune', 'watch' and 'run'."},
)
@run_command
def command(s: Resolved) -> None:
    """Print the effective configuration and where each value comes from.

    Precedence: flags > CKPTSYNC_* environment > config file (--config or
    CKPTSYNC_CONFIG) > SageMaker environment (SM_*) > defaults.
    """
    rows = [(SETTINGS[n].option[2:], display(s[n]), s.sources[n]) for n in SHOWN if n != "config"]
    rows.append(("aws credentials", *credentials_summary()))
    if s["json"]:
        click.echo(json.dumps({n: {"value": v, "source": o} for n, v, o in rows}, indent=1))
        return
    width = max(len(r[0]) for r in rows)
    vwidth = min(50, max(len(r[1]) for r in rows))
    for n, v, o in rows:
        click.echo(f"{n.ljust(width)}  {v.ljust(vwidth)}  ({o})")


def credentials_summary() -> tuple[str, str]:
    """Which AWS credentials botocore would use, the key id masked; never the secret."""
    try:
        import botocore.session

        creds = botocore.session.Session(profile=os.environ.get("CKPTSYNC_PROFILE") or None).get_credentials()
    except Exception as exc:  # profile not found, malformed config: say so, don't fail
        return "-", f"unavailable: {type(exc).__name__}"
    if creds is None:
        return "-", "none found"
    key = creds.access_key or ""
    return (key[:4] + "****" if key else "****"), f"botocore {getattr(creds, 'method', 'chain')}"
