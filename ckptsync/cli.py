"""The command line: one thin function per subcommand, calling :mod:`ckptsync.api`.

Every flag also reads a ``CKPTSYNC_<FLAG>`` environment variable. Errors are
printed as one line (and a hint line), never as a traceback, with the exit
code of the error's kind (1 failure, 2 usage, 3 nothing to restore).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, api, logs
from .errors import EXIT_ERROR, EXIT_NOTHING, CkptsyncError
from .format import format_time
from .options import Options, default_workers
from .progress import ProgressBar, human_bytes
from .store import RetryPolicy, S3Options

log = logging.getLogger("ckptsync")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DIR = "/opt/ml/checkpoints"


def _env(name: str) -> str:
    return "CKPTSYNC_" + name.upper().replace("-", "_")


def _opt(*decls: str, **kw: Any) -> Callable[[F], F]:
    """A click option that also reads CKPTSYNC_<NAME> from the environment."""
    long = next(d for d in decls if d.startswith("--")).split("/")[0]
    kw.setdefault("envvar", _env(long[2:]))
    kw.setdefault("show_envvar", True)
    return click.option(*decls, **kw)


def _size(text: str | int) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (examples: 256M, 1G, 1048576)") from None
    if value <= 0:
        raise click.BadParameter("must be positive")
    return value


def _load_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Eager: install the config file and SageMaker layers as defaults before other options parse."""
    from . import settings

    known = {p.name for c in main.commands.values() for p in c.params if p.name}
    layers: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (val, var) in settings.sagemaker_defaults().items():
        layers[name], sources[name] = val, f"SageMaker {var}"
    if value is not None:
        try:
            from_file = settings.read_config(Path(value), ctx.info_name or "", known)
        except CkptsyncError as exc:
            raise click.BadParameter(exc.message, ctx=ctx, param=param) from None
        for name, val in from_file.items():
            layers[name], sources[name] = val, f"config file {value}"
    ctx.default_map = {**(ctx.default_map or {}), **layers}
    ctx.meta["ckptsync.sources"] = sources


def common_options(f: F) -> F:
    """Logging and config-file options, on every command."""
    f = click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="CKPTSYNC_CONFIG",
        show_envvar=True,
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="TOML file of option values (below flags and CKPTSYNC_* variables).",
    )(f)
    f = _opt(
        "--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False), default="info", help="Log verbosity."
    )(f)
    f = _opt("--log-format", type=click.Choice(["text", "json"]), default="text", help="Readable lines or one JSON object per line.")(f)
    return f


def remote_options(f: F) -> F:
    """The remote and how to reach it."""
    opts = [
        _opt("--remote", metavar="URI", help="s3://bucket/prefix or file:///abs/path (required)."),
        _opt("--endpoint-url", metavar="URL", help="S3-compatible endpoint (SeaweedFS, MinIO, rclone serve s3, ...)."),
        _opt("--region", help="AWS region (default: from the AWS config, else us-east-1)."),
        _opt("--profile", help="AWS profile name."),
        _opt("--path-style/--virtual-style", default=None, help="S3 addressing style (default: path-style with --endpoint-url)."),
        _opt("--sse", type=click.Choice(["AES256", "aws:kms"]), help="Server-side encryption of written objects."),
        _opt("--sse-kms-key-id", metavar="KEY", help="KMS key for --sse aws:kms."),
        _opt("--expected-bucket-owner", metavar="ACCOUNT", help="Fail unless the bucket belongs to this account id."),
        _opt(
            "--checksum",
            type=click.Choice(["auto", "when_supported", "when_required"]),
            default="auto",
            show_default=True,
            help=(
                "CRC32 checks of object bodies. auto: a CRC32 with each upload over HTTPS only (over plain HTTP the "
                "request signature already covers the body's SHA-256), downloads checked against a stored CRC over "
                "plain HTTP only (chunks are checked against their SHA-256 anyway); when_supported: both on any "
                "transport (botocore's default, more CPU); when_required: none, for servers that reject them."
            ),
        ),
        _opt(
            "--workers",
            type=click.IntRange(1, 256),
            default=None,
            help=f"Parallel transfers (default: 2 x CPUs, 4..16; here {default_workers()}).",
        ),
        _opt("--max-memory", type=_size, default="32M", help="Bound on chunk bytes held in memory."),
        _opt("--bwlimit", type=_size, default=None, metavar="BYTES/S", help="Limit transfers to this many bytes per second (e.g. 50M)."),
        _opt(
            "--nice",
            type=click.IntRange(0, 19),
            default=10,
            show_default=True,
            help="Lower ckptsync's CPU priority by this much (never the training command's).",
        ),
        _opt("--retries", type=click.IntRange(1, 100), default=6, help="Attempts per storage request on transient errors."),
        _opt("--host", help="This host's name in manifests (default: SM_CURRENT_HOST or the hostname)."),
        _opt("--hosts", metavar="H1,H2,...", help="Every host of a multi-host job (default: SM_HOSTS); each commits its own part."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _options(kw: dict[str, Any]) -> Options:
    if not kw.get("remote"):
        from .errors import UsageError

        raise UsageError("no remote given", "pass --remote s3://bucket/prefix (or set CKPTSYNC_REMOTE, or remote in the config file)")
    s3 = S3Options(
        endpoint_url=kw.pop("endpoint_url"),
        region=kw.pop("region"),
        profile=kw.pop("profile"),
        path_style=kw.pop("path_style"),
        sse=kw.pop("sse"),
        sse_kms_key_id=kw.pop("sse_kms_key_id"),
        expected_bucket_owner=kw.pop("expected_bucket_owner"),
        checksum=kw.pop("checksum"),
    )
    workers = kw.pop("workers") or default_workers()
    return Options(
        s3=s3,
        retry=RetryPolicy(attempts=kw.pop("retries")),
        workers=workers,
        max_memory=kw.pop("max_memory"),
        host=kw.pop("host"),
        hosts=_hosts(kw.pop("hosts")),
        bwlimit=kw.pop("bwlimit"),
        nice=kw.pop("nice"),
    )


def _hosts(text: str | None) -> tuple[str, ...]:
    from . import sagemaker

    if text is None:
        return sagemaker.hosts()
    return tuple(sorted({h.strip() for h in text.split(",") if h.strip()}))


def _duration(text: str | float | timedelta) -> timedelta:
    if isinstance(text, timedelta):
        return text
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a duration (examples: 0, 90s, 30m, 2h)") from None
    if value < 0:
        raise click.BadParameter("must not be negative")
    return timedelta(seconds=value)


def retention_options(f: F) -> F:
    """Retention rules, shared by ``prune``, ``watch`` and ``run``."""
    opts = [
        _opt("--keep-last", type=click.IntRange(1), help="Keep the N newest checkpoints."),
        _opt("--keep-best", type=click.IntRange(1), help="Keep the K best checkpoints by --metric."),
        _opt("--keep-every", type=click.IntRange(1), metavar="STEPS", help="Keep checkpoints whose step is a multiple of STEPS."),
        _opt(
            "--grace", type=_duration, default="2h", show_default=True, help="Never delete chunks younger than this (uploads in progress)."
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _retention(kw: dict[str, Any], metric: str | None, mode: str | None) -> Any:
    from .policy import Retention

    rules = Retention(
        keep_last=kw.pop("keep_last"), keep_best=kw.pop("keep_best"), metric=metric, mode=mode, keep_every=kw.pop("keep_every")
    )
    if rules.active:
        rules.check()
    return rules


def handle_errors(f: F) -> F:
    """Run a command: set up logging, turn errors into one line and an exit code."""

    @functools.wraps(f)
    def wrapper(**kw: Any) -> Any:
        logs.setup(kw.pop("log_level", "info"), kw.pop("log_format", "text"))
        try:
            return f(**kw)
        except CkptsyncError as exc:
            _fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", None, 130)
        except Exception as exc:  # a bug: one line, the traceback only at debug level
            log.debug("internal error", exc_info=True)
            _fail(f"internal error: {type(exc).__name__}: {exc}", "rerun with --log-level debug and report it", EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _fail(message: str, hint: str | None, code: int) -> None:
    click.echo(f"ckptsync: error: {logs.redact(message)}", err=True)
    if hint:
        click.echo(f"ckptsync: hint: {hint}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ckptsync")
def main() -> None:
    """Keep training checkpoints safe on object storage and bring them back on restart."""


# ---------------------------------------------------------------- push


@main.command()
@_opt(
    "--dir", "dir_", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False, path_type=Path), help="The checkpoint folder."
)
@remote_options
@common_options
@handle_errors
def push(dir_: Path, **kw: Any) -> None:
    """Upload every checkpoint in --dir that is not committed yet.

    Each top-level entry of the folder (sub-folder or file) is one checkpoint;
    temporary names (hidden, tmp-*, *.tmp, *.partial, *.orbax-checkpoint-tmp-*)
    are skipped. A checkpoint whose files change during its upload is not
    committed, and the exit status is 1.
    """
    opts = _options(kw)
    from .executor import lower_priority

    lower_priority(opts.nice)
    bars: list[ProgressBar] = []

    def progress(ckpt: Any) -> Callable[[int], None]:
        if bars:
            bars.pop().close()
        bar = ProgressBar(ckpt.size, ckpt.name)
        bars.append(bar)
        return bar.update

    try:
        report = api.push(dir_, kw["remote"], opts, progress=progress)
    finally:
        for b in bars:
            b.close()
    new = sum(r.stats.uploaded_bytes for r in report.results)
    log.info(
        "push done: %d committed, %d already committed, %d changed, %d deleted during upload; %s uploaded",
        report.count("committed"),
        report.count("unchanged"),
        report.count("changed"),
        report.count("vanished"),
        human_bytes(new),
    )
    if not report.ok:
        _fail(
            f"{report.count('changed')} checkpoint(s) changed during upload and were not committed",
            "push again once the trainer has finished writing them",
            EXIT_ERROR,
        )


# ---------------------------------------------------------------- list


@main.command("list")
@remote_options
@_opt("--json", "as_json", is_flag=True, help="Print a JSON array.")
@_opt(
    "--sort",
    "sort_by",
    default="step",
    show_default=True,
    metavar="step|created|METRIC",
    help="Order: by step (newest first), commit time, or a metric (best first).",
)
@_opt("--mode", type=click.Choice(["min", "max"]), help="With --sort METRIC: whether lower or higher is better.")
@common_options
@handle_errors
def list_(as_json: bool, sort_by: str, mode: str | None, **kw: Any) -> None:
    """Show the committed checkpoints (newest first, or sorted by --sort)."""
    from . import policy

    opts = _options(kw)
    records = api.list_checkpoints(kw["remote"], opts)
    if sort_by == "created":
        records = sorted(records, key=lambda r: (r.manifest.created, r.manifest.commit), reverse=True)
    elif sort_by != "step":
        best = policy.by_best(records, sort_by, policy.infer_mode(sort_by, mode))
        records = best + [r for r in records if r not in best]
    if as_json:
        click.echo(json.dumps([_row(r) for r in records], indent=1))
        return
    if not records:
        click.echo(f"no committed checkpoints in {kw['remote']}", err=True)
        return
    columns = sorted({k for r in records for k in r.manifest.metrics})
    multi = any(r.hosts for r in records)
    table = [["NAME", *(["HOSTS"] if multi else []), "STEP", *(c.upper() for c in columns), "CREATED", "FILES", "RAW", "STORED"]]
    for r in records:
        m = r.manifest
        table.append(
            [
                m.name,
                *([_host_state(r)] if multi else []),
                "-" if m.step is None else str(m.step),
                *(_num(m.metrics[c]) if c in m.metrics else "-" for c in columns),
                m.created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                str(len(m.files)),
                human_bytes(m.raw_bytes),
                human_bytes(m.stored_bytes),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def _host_state(ck: Any) -> str:
    if not ck.hosts:
        return "-"
    done = f"{len(ck.hosts) - len(ck.missing)}/{len(ck.hosts)}"
    return done if ck.complete else f"{done} (waiting for {','.join(ck.missing)})"


def _row(ck: Any) -> dict[str, Any]:
    m = ck.manifest
    return {
        "hosts": list(ck.hosts),
        "committed_hosts": sorted(ck.members) if ck.hosts else [m.host],
        "complete": ck.complete,
        "name": m.name,
        "step": m.step,
        "metrics": dict(m.metrics),
        "created": format_time(m.created),
        "host": m.host,
        "commit": m.commit,
        "files": len(m.files),
        "raw_bytes": m.raw_bytes,
        "stored_bytes": m.stored_bytes,
    }


def _num(v: float | None) -> str:
    return "nan" if v is None else f"{v:.6g}"


# ---------------------------------------------------------------- restore


@main.command()
@_opt(
    "--dir",
    "dir_",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder to restore into (the checkpoint lands in DIR/<name>).",
)
@remote_options
@click.option("--latest", "how", flag_value="latest", default=True, help="Highest step, then newest commit (default).")
@click.option("--best", "how", flag_value="best", help="Best by --metric.")
@_opt("--metric", help="Metric for --best, e.g. eval_loss.")
@_opt(
    "--mode", type=click.Choice(["min", "max"]), help="Whether lower or higher --metric is better (default: min for loss/error/perplexity)."
)
@_opt("--name", help="Restore this checkpoint.")
@_opt("--step", type=click.IntRange(0), help="Restore the checkpoint at this step.")
@_opt("--json", "as_json", is_flag=True, help="Print one JSON object instead of the path.")
@_opt("--require", is_flag=True, help="Exit 3 if nothing is committed yet.")
@_opt("--strict", is_flag=True, help="Fail if the chosen checkpoint is damaged instead of falling back.")
@_opt("--all-hosts", is_flag=True, help="For a multi-host checkpoint, restore every host's files, not only this host's.")
@common_options
@handle_errors
def restore(
    dir_: Path,
    how: str,
    metric: str | None,
    mode: str | None,
    name: str | None,
    step: int | None,
    as_json: bool,
    require: bool,
    strict: bool,
    all_hosts: bool,
    **kw: Any,
) -> None:
    """Download, verify and atomically place a committed checkpoint.

    The last line on stdout is the restored path (empty when nothing is
    committed yet). A damaged checkpoint is reported and the next one by the
    same order is restored instead, unless --strict.
    """
    if name is not None and step is not None:
        _fail("--name and --step cannot be combined", "pass one of them", 2)

    opts = _options(kw)
    bars: list[ProgressBar] = []

    def progress(rec: Any) -> Callable[[int], None]:
        bar = ProgressBar(rec.manifest.raw_bytes, f"restore {rec.name}")
        bars.append(bar)
        return bar.update

    try:
        result = api.restore(
            kw["remote"], dir_, how, metric, mode, name=name, step=step, strict=strict, all_hosts=all_hosts, options=opts, progress=progress
        )
    finally:
        for b in bars:
            b.close()
    if result is None:
        msg = f"nothing committed yet in {kw['remote']}; starting from scratch"
        if require:
            if as_json:
                click.echo(json.dumps({"path": None, "name": None}))
            _fail(msg.split(";")[0], "the remote is empty (or has no intact checkpoint); drop --require to start fresh", EXIT_NOTHING)
        log.info("%s", msg)
        click.echo(json.dumps({"path": None, "name": None}) if as_json else "")
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
    click.echo(json.dumps(result.to_json()) if as_json else str(result.path))


# ---------------------------------------------------------------- verify


@main.command()
@remote_options
@_opt("--name", help="Only this checkpoint.")
@_opt("--deep", is_flag=True, help="Download every chunk and check its hash.")
@_opt("--json", "as_json", is_flag=True, help="Print a JSON array of reports.")
@common_options
@handle_errors
def verify(name: str | None, deep: bool, as_json: bool, **kw: Any) -> None:
    """Check that every committed checkpoint's chunks exist (--deep: and are intact)."""
    opts = _options(kw)
    reports = api.verify(kw["remote"], name=name, deep=deep, options=opts)
    bad = [r for r in reports if not r.ok]
    if as_json:
        click.echo(
            json.dumps(
                [{"name": r.record.name, "commit": r.record.manifest.commit, "ok": r.ok, "problems": r.problems} for r in reports], indent=1
            )
        )
    else:
        for r in reports:
            if r.ok:
                click.echo(f"ok       {r.record.name}")
            else:
                click.echo(f"DAMAGED  {r.record.name}: {len(r.problems)} problem(s)")
                for p in r.problems[:20]:
                    click.echo(f"         {p}")
                if len(r.problems) > 20:
                    click.echo(f"         ... and {len(r.problems) - 20} more")
    log.info("verified %d checkpoint(s)%s: %d damaged", len(reports), " deeply" if deep else "", len(bad))
    if bad:
        _fail(
            f"{len(bad)} of {len(reports)} checkpoint(s) are damaged",
            "restore falls back to intact checkpoints; push again from a host that still has the files",
            EXIT_ERROR,
        )


# ---------------------------------------------------------------- prune


@main.command()
@remote_options
@retention_options
@_opt("--metric", help="Metric for --keep-best (the best checkpoint by it is never deleted).")
@_opt("--mode", type=click.Choice(["min", "max"]), help="Whether lower or higher --metric is better.")
@_opt("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@_opt("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@common_options
@handle_errors
def prune(metric: str | None, mode: str | None, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Delete committed checkpoints the retention rules do not keep, then unused chunks.

    The newest checkpoint, and the best one by --metric, are always kept. Chunks
    still referenced by a kept checkpoint, or younger than --grace, stay.
    """
    grace = kw.pop("grace")
    rules = _retention(kw, metric, mode)
    opts = _options(kw)
    report = api.prune(kw["remote"], rules, grace=grace, dry_run=dry_run, options=opts)
    if as_json:
        click.echo(json.dumps(report.__dict__, indent=1))
        return
    verb = "would delete" if dry_run else "deleted"
    for name in report.deleted:
        click.echo(f"{verb}  {name}")
    for name in report.kept:
        click.echo(f"kept        {name}" if not dry_run else f"would keep  {name}")
    log.info(
        "%s %d manifest(s), %d chunk(s) (%s); %d unused chunk(s) kept within the grace period%s",
        verb,
        report.manifests_deleted,
        report.chunks_deleted,
        human_bytes(report.bytes_freed),
        report.chunks_in_grace,
        f"; chunk collection deferred: {report.collection_deferred}" if report.collection_deferred else "",
    )


# ---------------------------------------------------------------- mark


@main.command()
@click.argument("path", type=click.Path(exists=False, path_type=Path))
@click.option("--step", type=click.IntRange(0), help="The checkpoint's training step.")
@click.option("--metric", "metric_args", multiple=True, metavar="NAME=VALUE", help="A metric (repeatable), e.g. --metric eval_loss=0.21.")
@common_options
@handle_errors
def mark(path: Path, step: int | None, metric_args: tuple[str, ...]) -> None:
    """Write the ckptsync.json completion marker of the checkpoint at PATH.

    Call it last, once the checkpoint is fully written: the daemon then commits
    it as soon as it settles, with this step and these metrics.
    """
    from .marker import mark as write_marker
    from .marker import parse_metric_args

    target = write_marker(path, step=step, metrics=parse_metric_args(list(metric_args)))
    click.echo(str(target))


# ---------------------------------------------------------------- watch / run / status


def watch_options(f: F) -> F:
    """Options of the daemon, shared by ``watch`` and ``run``."""
    opts = [
        _opt(
            "--dir",
            "dir_",
            default=DEFAULT_DIR,
            show_default=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="The checkpoint folder to watch.",
        ),
        _opt(
            "--settle",
            type=click.FloatRange(0),
            default=10.0,
            show_default=True,
            help="Seconds without changes before a checkpoint counts as complete (2 s at most when a completion signal such as trainer_state.json is present).",
        ),
        _opt(
            "--drain-timeout",
            type=click.FloatRange(0),
            default=100.0,
            show_default=True,
            help="On SIGTERM/SIGINT, seconds to finish uploading complete checkpoints.",
        ),
        _opt("--poll", is_flag=True, help="Poll the folder instead of using inotify (network file systems)."),
        _opt("--poll-interval", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Seconds between polls with --poll."),
        _opt("--require-marker", is_flag=True, help="Commit only checkpoints carrying a ckptsync.json marker."),
        _opt("--spot-notice", is_flag=True, help="Poll EC2 instance metadata for a spot interruption notice and sync at once."),
        _opt("--imds-endpoint", default="http://169.254.169.254", show_default=True, help="Instance metadata endpoint for --spot-notice."),
        _opt("--spot-interval", type=click.FloatRange(0.1), default=5.0, show_default=True, help="Seconds between spot notice polls."),
        _opt(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="State folder (default: ~/.local/state/ckptsync/<id>; XDG_STATE_HOME respected).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _watch_options(kw: dict[str, Any], metric: str | None = None, mode: str | None = None) -> Any:
    from .options import WatchOptions

    return WatchOptions(
        retention=_retention(kw, metric, mode),
        grace=kw.pop("grace"),
        settle=kw.pop("settle"),
        drain_timeout=kw.pop("drain_timeout"),
        poll=kw.pop("poll"),
        poll_interval=kw.pop("poll_interval"),
        require_marker=kw.pop("require_marker"),
        spot_notice=kw.pop("spot_notice"),
        imds_endpoint=kw.pop("imds_endpoint"),
        spot_interval=kw.pop("spot_interval"),
    )


def _state_for(dir_: Path, remote: str, state_dir: Path | None) -> Any:
    from .state import State, default_state_dir

    return State(state_dir or default_state_dir(dir_, remote))


def _summarize(report: Any) -> None:
    """Log the daemon's report, and write it into SM_OUTPUT_DATA_DIR (SageMaker keeps that folder)."""
    out = os.environ.get("SM_OUTPUT_DATA_DIR")
    if out:
        from .state import write_json_atomic

        doc = {
            "checkpoints_committed": report.committed,
            "bytes_uploaded": report.bytes_uploaded,
            "bytes_raw": report.bytes_raw,
            "seconds": round(report.seconds, 3),
            "failures": report.failures,
            "not_synced": [{"name": n, "reason": r} for n, r in report.unsynced],
        }
        try:
            write_json_atomic(Path(out) / "ckptsync-report.json", doc)
        except OSError as exc:
            log.warning("could not write the sync report into %s: %s", out, exc.strerror)
    log.info(
        "synced %d checkpoint(s), %s uploaded, %d failed attempt(s); %d not synced",
        len(report.committed),
        human_bytes(report.bytes_uploaded),
        report.failures,
        len(report.unsynced),
    )


@main.command()
@watch_options
@retention_options
@_opt("--metric", help="Metric for --keep-best (and the best checkpoint, which retention never deletes).")
@_opt("--mode", type=click.Choice(["min", "max"]), help="Whether lower or higher --metric is better.")
@remote_options
@common_options
@handle_errors
def watch(dir_: Path, state_dir: Path | None, metric: str | None, mode: str | None, **kw: Any) -> None:
    """Run beside a training job: upload every complete checkpoint as it appears.

    SIGTERM or SIGINT drains: complete checkpoints are committed, newest first,
    within --drain-timeout, then the daemon exits 0. A second signal exits at once.
    """
    from .daemon import Daemon

    opts, wopts = _options(kw), _watch_options(kw, metric, mode)
    repo = api.open_repository(kw["remote"], opts)
    daemon = Daemon(dir_, repo, opts, wopts, state=_state_for(dir_, kw["remote"], state_dir))

    def on_signal(signum: int, frame: Any) -> None:
        if daemon.stopped or getattr(on_signal, "seen", False):
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            from .runner import flush_and_exit

            flush_and_exit(128 + signum)
        on_signal.seen = True  # type: ignore[attr-defined]
        daemon.drain(reason=signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    daemon.start()
    while not daemon.stopped:
        daemon.wait(0.5)
    _summarize(daemon.report)
    from .runner import flush_and_exit

    flush_and_exit(0)


@main.command(context_settings={"ignore_unknown_options": False})
@_opt(
    "--restore",
    "restore_",
    type=click.Choice(["latest", "best", "none"]),
    default="latest",
    show_default=True,
    help="What to restore before CMD starts.",
)
@_opt("--metric", help="Metric for --restore best.")
@_opt("--mode", type=click.Choice(["min", "max"]), help="Whether lower or higher --metric is better.")
@watch_options
@retention_options
@remote_options
@common_options
@click.argument("cmd", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@handle_errors
def run(cmd: tuple[str, ...], restore_: str, metric: str | None, mode: str | None, dir_: Path, state_dir: Path | None, **kw: Any) -> None:
    """Restore, then run CMD while watching --dir; drain when CMD exits.

    The container ENTRYPOINT form. SIGTERM, SIGINT and SIGHUP are forwarded to
    CMD; when CMD exits, every complete checkpoint is committed (within
    --drain-timeout of the first signal) and run exits with CMD's status.
    A failing restore stops before CMD starts.
    """
    from .checkpoint import scan_entry
    from .daemon import Daemon
    from .recovery import Selector
    from .recovery import restore as do_restore
    from .runner import StartError, Supervisor, flush_and_exit

    opts, wopts = _options(kw), _watch_options(kw, metric, mode)
    dir_.mkdir(parents=True, exist_ok=True)
    repo = api.open_repository(kw["remote"], opts)
    state = _state_for(dir_, kw["remote"], state_dir)
    if restore_ != "none":
        sel = Selector(how=restore_, metric=metric, mode=mode)
        try:
            result = do_restore(repo, dir_.absolute(), sel, workers=opts.workers)
        except CkptsyncError as exc:
            raise type(exc)(f"restore failed, not starting the command: {exc.message}", exc.hint) from None
        if result is None:
            log.info("nothing committed yet; starting from scratch")
        else:
            log.info("restored %s (step %s) into %s", result.name, result.manifest.step, result.path)
            state.record(scan_entry(result.path), result.manifest.commit)
    daemon = Daemon(dir_, repo, opts, wopts, state=state)
    daemon.start()
    try:
        code, report = Supervisor(cmd, daemon, drain_timeout=wopts.drain_timeout).run()
    except StartError as exc:
        _fail(str(exc), "check the command after --", 127)
        return
    _summarize(report)
    flush_and_exit(code)


@main.command()
@_opt("--dir", "dir_", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False, path_type=Path), help="The watched folder.")
@_opt("--remote", metavar="URI", help="The daemon's remote (with --dir, finds its state folder).")
@_opt("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="The daemon's state folder.")
@_opt("--json", "as_json", is_flag=True, help="Print the status file as JSON.")
@common_options
@handle_errors
def status(dir_: Path, remote: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Show what a running daemon is doing (from its state folder)."""
    from .state import STATUS_FILE, default_state_dir, default_state_root, read_json

    if state_dir is None and remote:
        state_dir = default_state_dir(dir_, remote)
    candidates = (
        [state_dir]
        if state_dir
        else sorted(default_state_root().glob("*"), key=lambda p: -(p / STATUS_FILE).stat().st_mtime if (p / STATUS_FILE).exists() else 0)
    )
    doc = next((d for d in (read_json(Path(c) / STATUS_FILE) for c in candidates) if isinstance(d, dict)), None)
    if doc is None:
        _fail("no daemon status found", "pass --state-dir, or --dir and --remote as given to 'ckptsync watch'", EXIT_NOTHING)
        return
    alive = _alive(doc.get("pid"))
    doc["running"] = alive and doc.get("state") != "stopped"
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(
        f"state:       {doc.get('state')}{'' if doc['running'] else ' (not running)'}  pid {doc.get('pid')}  updated {doc.get('updated')}"
    )
    click.echo(f"folder:      {doc.get('folder')} -> {doc.get('remote')} ({doc.get('watcher')})")
    fl = doc.get("in_flight")
    if fl:
        click.echo(f"uploading:   {fl['name']} {human_bytes(fl['bytes_done'])} of {human_bytes(fl['bytes_total'])}")
    click.echo(f"queue:       {', '.join(doc.get('queue') or []) or '-'}")
    for name, reason in (doc.get("pending") or {}).items():
        click.echo(f"pending:     {name}: {reason}")
    lc = doc.get("last_commit")
    click.echo(f"last commit: {lc['name'] + ' at ' + lc['time'] if lc else '-'}")
    click.echo(
        f"totals:      {doc.get('committed')} committed, {human_bytes(doc.get('bytes_uploaded') or 0)} uploaded, {doc.get('failures')} failures, lag {doc.get('lag_seconds')}s"
    )
    for err in doc.get("errors") or []:
        click.echo(f"error:       {err}")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---------------------------------------------------------------- config / export


@main.command("config")
@watch_options
@retention_options
@_opt("--restore", "restore_", type=click.Choice(["latest", "best", "none"]), default="latest", help="As for 'run'.")
@_opt("--metric", help="As for 'restore', 'prune', 'watch' and 'run'.")
@_opt("--mode", type=click.Choice(["min", "max"]), help="As for --metric.")
@remote_options
@_opt("--json", "as_json", is_flag=True, help="Print a JSON object.")
@common_options
@handle_errors
def config_(as_json: bool, **kw: Any) -> None:
    """Print the effective configuration and where each value comes from.

    Precedence: flags > CKPTSYNC_* environment > config file (--config or
    CKPTSYNC_CONFIG) > SageMaker environment (SM_*) > defaults.
    """
    ctx = click.get_current_context()
    sources = ctx.meta.get("ckptsync.sources", {})
    rows = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in ("as_json", "config"):
            continue
        src = ctx.get_parameter_source(name)
        value = ctx.params.get(name, kw.get(name))
        if src == click.core.ParameterSource.COMMANDLINE:
            origin = "flag"
        elif src == click.core.ParameterSource.ENVIRONMENT:
            origin = f"env {getattr(param, 'envvar', '') or ''}".strip()
        elif src == click.core.ParameterSource.DEFAULT_MAP:
            origin = sources.get(name, "config")
        else:
            origin = "default"
        if name == "workers" and value is None:
            value = default_workers()
        rows.append((_display_name(param), _display_value(value), origin))
    rows.append(("aws credentials", *_credentials_summary()))
    if as_json:
        click.echo(json.dumps({n: {"value": v, "source": o} for n, v, o in rows}, indent=1, default=str))
        return
    width = max(len(r[0]) for r in rows)
    vwidth = min(50, max(len(r[1]) for r in rows))
    for n, v, o in rows:
        click.echo(f"{n.ljust(width)}  {v.ljust(vwidth)}  ({o})")


def _display_name(param: click.Parameter) -> str:
    opts = getattr(param, "opts", None) or [param.name or ""]
    return max(opts, key=len).lstrip("-")


def _display_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    return str(value)


def _credentials_summary() -> tuple[str, str]:
    """Which AWS credentials boto3 would use, the key id masked; never the secret."""
    try:
        import boto3

        creds = boto3.session.Session(profile_name=os.environ.get("CKPTSYNC_PROFILE") or None).get_credentials()
    except Exception as exc:  # profile not found, malformed config: say so, don't fail
        return "-", f"unavailable: {type(exc).__name__}"
    if creds is None:
        return "-", "none found"
    key = creds.access_key or ""
    return (key[:4] + "****" if key else "****"), f"boto3 {getattr(creds, 'method', 'chain')}"


@main.command()
@remote_options
@click.option("--latest", "how", flag_value="latest", default=True, help="The highest step (default).")
@click.option("--best", "how", flag_value="best", help="The best by --metric.")
@_opt("--metric", help="Metric for --best.")
@_opt("--mode", type=click.Choice(["min", "max"]), help="Whether lower or higher --metric is better.")
@_opt("--name", help="This checkpoint.")
@_opt(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("SM_MODEL_DIR"),
    help="Folder to place the files in (default: SM_MODEL_DIR).",
)
@_opt("--all-hosts", is_flag=True, help="For a multi-host checkpoint, every host's files.")
@common_options
@handle_errors
def export(how: str, metric: str | None, mode: str | None, name: str | None, to: Path | None, all_hosts: bool, **kw: Any) -> None:
    """Place one checkpoint's files directly into --to (e.g. /opt/ml/model, SageMaker's model artefact).

    Unlike restore, the files land in --to itself, not in --to/<name>; existing
    files of the same names are replaced, others are left alone.
    """
    import shutil
    import tempfile

    if to is None:
        _fail("no destination", "pass --to DIR (or run where SM_MODEL_DIR is set)", 2)
        return
    opts = _options(kw)
    to.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ckptsync-export-", dir=to) as tmp:
        result = api.restore(kw["remote"], tmp, how, metric, mode, name=name, strict=False, all_hosts=all_hosts, options=opts)
        if result is None:
            _fail(f"nothing committed in {kw['remote']}", "nothing to export", EXIT_NOTHING)
            return
        src = Path(tmp) / result.name
        moved = []
        items = [src] if src.is_file() else sorted(src.iterdir())
        for item in items:
            dest = to / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
            moved.append(dest.name)
    log.info("exported %s (step %s) into %s: %s", result.name, result.manifest.step, to, ", ".join(moved))
    click.echo(str(to))


if __name__ == "__main__":  # pragma: no cover
    main()
