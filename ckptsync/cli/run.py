"""``ckptsync run -- CMD``: restore, run the training command while watching, drain when it exits."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from .. import api
from ..checkpoint import scan_entry
from ..errors import CkptsyncError
from ..options import COMMON, REMOTE, RETENTION, WATCH, Options, Resolved
from ..runner import StartError, Supervisor, flush_and_exit
from .params import fail, folder, run_command, settings
from .watch import DAEMON_HELP, summarize

log = logging.getLogger("ckptsync")

if TYPE_CHECKING:
    from ..daemon import Daemon


@click.command("run")
@settings(
    "restore",
    *RETENTION,
    *WATCH,
    *REMOTE,
    *COMMON,
    help={**DAEMON_HELP, "metric": "Metric for --restore best and --keep-best (the best checkpoint is never deleted)."},
)
@click.argument("cmd", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@run_command
def command(s: Resolved, cmd: tuple[str, ...]) -> None:
    """Restore, then run CMD while watching --dir; drain when CMD exits.

    The container ENTRYPOINT form. SIGTERM, SIGINT and SIGHUP are forwarded to
    CMD; when CMD exits, every complete checkpoint is committed (within
    --drain-timeout of the first signal) and run exits with CMD's status.
    A failing restore stops before CMD starts.
    """
    from ..daemon import Daemon  # here: it loads watchdog and the upload pipeline

    remote, opts, watch = s.remote(), s.options(), s.watch()
    target = folder(s)
    target.mkdir(parents=True, exist_ok=True)
    daemon = Daemon.open(target, remote, opts, watch, state_dir=s["state_dir"])
    if s["restore"] != "none":
        try:
            result = api.restore(remote, target, s["restore"], s["metric"], s["mode"], options=opts)
        except CkptsyncError as exc:
            raise exc.prefixed("restore failed, not starting the command") from None
        if result is None:
            log.info("nothing committed yet; starting from scratch")
        else:
            log.info("restored %s (step %s) into %s", result.name, result.manifest.step, result.path)
            if daemon.state is not None:  # committed already: the daemon must not upload it again
                daemon.state.record(scan_entry(result.path), result.manifest.commit)
    daemon.start()
    try:
        code, report = Supervisor(cmd, daemon, drain_timeout=watch.drain_timeout, env=sidecar_environment(daemon, remote, opts)).run()
    except StartError as exc:
        fail(str(exc), "check the command after --", 127)
    summarize(report)
    flush_and_exit(code)


def sidecar_environment(daemon: Daemon, remote: str, opts: Options) -> dict[str, str]:
    """What CMD needs to find this sidecar (``ckptsync wait``, the framework callbacks): the folder, the
    remote, the state folder, and the endpoint if one was given."""
    env = {"CKPTSYNC_DIR": str(daemon.folder), "CKPTSYNC_REMOTE": remote}
    if daemon.state is not None:
        env["CKPTSYNC_STATE_DIR"] = str(daemon.state.folder)
    if opts.s3.endpoint_url:
        env["CKPTSYNC_ENDPOINT_URL"] = opts.s3.endpoint_url
    return env
