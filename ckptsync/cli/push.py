"""``ckptsync push``: upload every checkpoint of a folder that is not committed yet."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import click

from .. import api
from ..checkpoint import LocalCheckpoint
from ..errors import EXIT_ERROR
from ..executor import lower_priority
from ..options import COMMON, REMOTE, Resolved
from ..progress import ProgressBar, human_bytes
from .params import error, fail, folder, run_command, settings

log = logging.getLogger("ckptsync")


@click.command("push")
@settings("dir", "follow_symlinks", "hash", *REMOTE, *COMMON)
@run_command
def command(s: Resolved) -> None:
    """Upload every checkpoint in --dir that is not committed yet.

    Each top-level entry of the folder (sub-folder or file) is one checkpoint;
    temporary names (hidden, tmp-*, *.tmp, *.partial, *.orbax-checkpoint-tmp-*)
    are skipped. A checkpoint whose files change during its upload is not
    committed, nor one holding an entry that cannot be stored or read (each is
    named); the others still go, and the exit status is 1. Links leading out of
    --dir are not followed without --follow-symlinks.
    """
    remote, opts = s.remote(), s.options()
    lower_priority(opts.nice)  # this process is ckptsync alone: its main thread reads and hashes
    bars: list[ProgressBar] = []

    def progress(ckpt: LocalCheckpoint) -> Callable[[int], None]:
        if bars:
            bars.pop().close()
        bar = ProgressBar(ckpt.size, ckpt.name)
        bars.append(bar)
        return bar.update

    try:
        report = api.push(folder(s), remote, opts, progress=progress, follow_symlinks=s["follow_symlinks"])
    finally:
        for b in bars:
            b.close()
    log.info(
        "push done: %d committed, %d already committed, %d changed, %d deleted during upload, %d failed; %s uploaded",
        report.count("committed"),
        report.count("unchanged"),
        report.count("changed"),
        report.count("vanished"),
        len(report.failed),
        human_bytes(sum(r.stats.uploaded_bytes for r in report.results)),
    )
    for failure in report.failed:  # one error line each (and its hint)
        error(failure.message, failure.hint)
    if report.count("changed"):
        fail(
            f"{report.count('changed')} checkpoint(s) changed during upload and were not committed",
            "push again once the trainer has finished writing them",
            EXIT_ERROR,
        )
    if report.failed:
        sys.exit(EXIT_ERROR)
