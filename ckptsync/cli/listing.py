"""``ckptsync list``: the committed checkpoints of a remote, as a table or JSON."""

from __future__ import annotations

import json
from datetime import timezone
from typing import Any

import click

from .. import api, policy
from ..catalog import Checkpoint
from ..format import format_time
from ..logs import printable
from ..options import COMMON, REMOTE, Resolved
from ..progress import human_bytes
from .params import run_command, settings


@click.command("list")
@settings(
    *REMOTE,
    "json",
    "sort",
    "mode",
    *COMMON,
    help={"json": "Print a JSON array.", "mode": "With --sort METRIC: whether lower or higher is better."},
)
@run_command
def command(s: Resolved) -> None:
    """Show the committed checkpoints (newest first, or sorted by --sort)."""
    remote = s.remote()
    records = sort(api.list_checkpoints(remote, s.options(), read=False), s["sort"], s["mode"])
    if s["json"]:
        click.echo(json.dumps([row(r) for r in records], indent=1))
    elif not records:
        click.echo(f"no committed checkpoints in {remote}", err=True)
    else:
        for line in table(records):
            click.echo(line)


def sort(records: list[Checkpoint], by: str, mode: str | None) -> list[Checkpoint]:
    """Newest first (``step``), by commit time (``created``), or best first by a metric (then the rest)."""
    if by == "step":
        return records
    if by == "created":
        return sorted(records, key=lambda r: (r.manifest.created, r.manifest.commit), reverse=True)
    best = policy.by_best(records, by, policy.infer_mode(by, mode))
    return best + [r for r in records if r not in best]


def table(records: list[Checkpoint]) -> list[str]:
    """The table's lines: a header, then one row per checkpoint, columns padded."""
    columns = sorted({k for r in records for k in r.manifest.metrics})
    multi = any(r.hosts or r.sealed for r in records)
    rows = [["NAME", *(["HOSTS"] if multi else []), "STEP", *(c.upper() for c in columns), "CREATED", "FILES", "RAW", "STORED"]]
    for r in records:
        m = r.manifest
        rows.append(
            [
                m.name,
                *([host_state(r)] if multi else []),
                "-" if m.step is None else str(m.step),
                *(_num(m.metrics[c]) if c in m.metrics else "-" for c in columns),
                m.created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                *_totals(r),
            ]
        )
    rows = [[printable(c) for c in row] for row in rows]  # names from a remote: never terminal escapes
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _totals(ck: Checkpoint) -> list[str]:
    """FILES, RAW and STORED; ``-`` for a sealed multi-host checkpoint (its parts are not read)."""
    t = ck.totals()
    return ["-", "-", "-"] if t is None else [str(t[0]), human_bytes(t[1]), human_bytes(t[2])]


def host_state(ck: Checkpoint) -> str:
    """``2/3 (waiting for algo-3)`` for a multi-host checkpoint, ``-`` for a single-host one."""
    if ck.sealed:
        return f"{ck.host_count}/{ck.host_count}"
    if not ck.hosts:
        return "-"
    done = f"{len(ck.hosts) - len(ck.missing)}/{len(ck.hosts)}"
    return done if ck.complete else f"{done} (waiting for {','.join(ck.missing)})"


def row(ck: Checkpoint) -> dict[str, Any]:
    """One checkpoint as ``list --json`` prints it."""
    m = ck.manifest
    totals = ck.totals()
    return {
        "hosts": list(ck.hosts),
        "host_count": ck.host_count,
        "committed_hosts": sorted(ck.members) if ck.hosts else ([] if ck.sealed else [m.host]),
        "complete": ck.complete,
        "name": m.name,
        "step": m.step,
        "metrics": dict(m.metrics),
        "created": format_time(m.created),
        "host": m.host,
        "commit": m.commit,
        "files": totals[0] if totals else None,
        "raw_bytes": totals[1] if totals else None,
        "stored_bytes": totals[2] if totals else None,
    }


def _num(v: float | None) -> str:
    return "nan" if v is None else f"{v:.6g}"
