"""``ckptsync watch``: the daemon beside a training job."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from .. import sagemaker
from ..options import COMMON, REMOTE, RETENTION, WATCH, Resolved
from ..progress import human_bytes
from ..runner import flush_and_exit
from ..status import DaemonReport
from .params import folder, run_command, settings

log = logging.getLogger("ckptsync")

#: Help of the settings ``watch`` and ``run`` share, where it differs from the general one.
DAEMON_HELP = {
    "dir": "The checkpoint folder to watch.",
    "metric": "Metric for --keep-best (and the best checkpoint, which retention never deletes).",
}


@click.command("watch")
@settings(*WATCH, *RETENTION, *REMOTE, *COMMON, help=DAEMON_HELP)
@run_command
def command(s: Resolved) -> None:
    """Run beside a training job: upload every complete checkpoint as it appears.

    SIGTERM or SIGINT drains: complete checkpoints are committed, newest first,
    within --drain-timeout, then the daemon exits 0. A second signal exits at once.
    """
    from ..daemon import Daemon  # here: it loads watchdog and the upload pipeline

    daemon = Daemon.open(folder(s), s.remote(), s.options(), s.watch(), state_dir=s["state_dir"])
    seen: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if daemon.stopped or seen:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            flush_and_exit(128 + signum)
        seen.append(signum)
        daemon.drain(reason=signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    daemon.start()
    while not daemon.stopped:
        daemon.wait(0.5)
    summarize(daemon.report)
    flush_and_exit(0)


def summarize(report: DaemonReport) -> None:
    """Log what the daemon did, and write it as SageMaker's sync report where SageMaker keeps it."""
    try:
        sagemaker.write_report(report.to_json())
    except OSError as exc:
        log.warning("could not write the sync report into %s: %s", sagemaker.output_data_dir(), exc.strerror)
    log.info(
        "synced %d checkpoint(s), %s uploaded, %d failed attempt(s); %d not synced",
        len(report.committed),
        human_bytes(report.bytes_uploaded),
        report.failures,
        len(report.unsynced),
    )
