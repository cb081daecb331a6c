"""Every option of ckptsync, and the one place its value is decided.

Precedence, highest first: a flag (or a keyword argument of the Python API),
a ``CKPTSYNC_<NAME>`` environment variable, the TOML config file (``--config``
or ``CKPTSYNC_CONFIG``), SageMaker's environment (``SM_*``), the default.
:func:`resolve` applies it once and returns a :class:`Resolved`: the typed
values, where each came from, and the typed objects the rest of the package
takes (:class:`Options`, :class:`WatchOptions`, :class:`~ckptsync.policy.Retention`).
The command line, the Python API, ``ckptsync.Syncer`` and ``ckptsync config``
all go through it.

The config file: top-level keys apply to every command, a table named after a
command (``[watch]``, ``[restore]``, ...) to that command only. Keys are option
names, with ``-`` or ``_``::

    remote = "s3://my-bucket/run-42"
    dir = "/opt/ml/checkpoints"

    [watch]
    settle = 15
    keep-last = 3

Pure but for reading the environment, the config file and the host name
(each a parameter where it matters for tests).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import sagemaker
from .errors import UsageError
from .hashes import DEFAULT_HASH, HASH_ALGORITHMS
from .policy import Retention
from .retention import DEFAULT_GRACE
from .store import RetryPolicy, S3Options

#: Where EC2 instance metadata answers (``--imds-endpoint``).
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
#: Where SageMaker's training containers keep checkpoints (``--dir``).
DEFAULT_DIR = "/opt/ml/checkpoints"


# ---------------------------------------------------------------- defaults that depend on the machine


def workers_for(cpus: int) -> int:
    """Worker threads for ``cpus`` processors: twice as many, between 4 and 16.

    Workers mostly wait on the network; compression and hashing release the GIL.
    """
    return max(4, min(16, 2 * cpus))


def machine_cpus() -> int:
    """The processors this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


def default_workers() -> int:
    """Workers for SageMaker's ``SM_NUM_CPUS``, else for this machine's processors."""
    return workers_for(sagemaker.num_cpus() or machine_cpus())


def this_host() -> str:
    """This host's name in manifests: SageMaker's ``SM_CURRENT_HOST``, else the machine's host name."""
    return sagemaker.current_host() or socket.gethostname() or "host"


# ---------------------------------------------------------------- the typed options


@dataclass(frozen=True)
class Options:
    """How to reach and use the remote (everything but the remote and the folder)."""

    s3: S3Options = field(default_factory=S3Options)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workers: int = field(default_factory=default_workers)
    max_memory: int = 32 << 20
    #: This host's name in manifests (None: :func:`this_host`).
    host: str | None = None
    #: Every host of a multi-host job (empty: this host alone).
    hosts: tuple[str, ...] = ()
    #: Bytes per second for all transfers together (None: unlimited).
    bwlimit: float | None = None
    #: Niceness added to ckptsync's own threads (never to a ``run`` child).
    nice: int = 0
    #: The hash that names the chunks of new checkpoints (``--hash``).
    hash_algorithm: str = DEFAULT_HASH

    def __post_init__(self) -> None:
        if self.hash_algorithm not in HASH_ALGORITHMS:
            raise UsageError(f"unknown hash {self.hash_algorithm!r}", f"use one of {', '.join(HASH_ALGORITHMS)}")


@dataclass(frozen=True)
class WatchOptions:
    """How the daemon decides and schedules (each maps to a ``watch`` flag, but for the timings below ``tick``)."""

    settle: float = 10.0
    drain_timeout: float = 100.0
    poll: bool = False
    poll_interval: float = 2.0
    require_marker: bool = False
    #: Follow links whose target leaves the watched folder (``--follow-symlinks``).
    follow_symlinks: bool = False
    spot_notice: bool = False
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    spot_interval: float = 5.0
    #: Serve Prometheus metrics here (``--metrics-addr``): ``HOST:PORT``, or ``PORT`` on loopback.
    metrics_addr: str | None = None
    retention: Retention = field(default_factory=Retention)
    grace: timedelta = DEFAULT_GRACE
    #: Timings with no flag (tests and ``Syncer`` may set them): the control loop's period,
    #: the status file's, the safety-net rescan's, and the backoff after a failed upload.
    tick: float = 1.0
    status_interval: float = 2.0
    rescan_interval: float = 60.0
    retry_initial: float = 10.0
    retry_max: float = 600.0


#: WatchOptions fields that are not settings: keyword arguments of ``Syncer`` only.
WATCH_TIMINGS = ("tick", "status_interval", "rescan_interval", "retry_initial", "retry_max")


# ---------------------------------------------------------------- parsing values


def parse_size(value: Any) -> int:
    """Bytes from ``256M``, ``1G``, ``1.5GiB`` or a number; must be positive."""
    text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    num, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        size = int(float(num) * units[unit])
    except ValueError:
        raise ValueError("is not a size (examples: 256M, 1G, 1048576)") from None
    if size <= 0:
        raise ValueError("must be positive")
    return size


def parse_duration(value: Any) -> timedelta:
    """A duration from ``90s``, ``30m``, ``2h``, ``1d``, a number of seconds or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        text = str(value).strip().lower()
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
        except (ValueError, KeyError):
            raise ValueError("is not a duration (examples: 0, 90s, 30m, 2h)") from None
    if seconds < 0:
        raise ValueError("must not be negative")
    return timedelta(seconds=seconds)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("is not a boolean (use true or false)")


def parse_hosts(value: Any) -> tuple[str, ...]:
    """Host names from ``a,b,c`` or a list, in the order given (the first is the lead), without repeats."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(dict.fromkeys(str(h).strip() for h in items if str(h).strip()))


def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            n = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
        except ValueError:
            raise ValueError("is not a whole number") from None
        if (low is not None and n < low) or (high is not None and n > high):
            raise ValueError(f"is not in the range {low if low is not None else ''}..{high if high is not None else ''}")
        return n

    return parse


def number(low: float = 0.0) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            x = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            raise ValueError("is not a number") from None
        if not x >= low:
            raise ValueError(f"must be at least {low:g}")
        return x

    return parse


def choice(*values: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        match = next((v for v in values if v.lower() == text.lower()), None)
        if match is None:
            raise ValueError(f"is not one of {', '.join(values)}")
        return match

    return parse


def text(value: Any) -> str:
    return str(value)


def path(value: Any) -> Path:
    return Path(os.path.expanduser(str(value)))


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Setting:
    """One option: its name, how a value is read, its default, and its help."""

    name: str
    parse: Callable[[Any], Any] = text
    #: The value when nothing else gives one (a zero-argument callable is called then).
    default: Any = None
    help: str = ""
    metavar: str | None = None
    #: For the command line: the choices (shown in help), and whether it is an on/off flag.
    choices: tuple[str, ...] = ()
    flag: bool = False
    #: A second flag that sets it off (``--virtual-style`` for ``--path-style``).
    off_flag: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "CKPTSYNC_" + self.name.upper()

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


def _settings(*items: Setting) -> dict[str, Setting]:
    return {s.name: s for s in items}


CHECKSUMS = ("auto", "when_supported", "when_required")

SETTINGS: dict[str, Setting] = _settings(
    # -- every command
    Setting("config", path, help="TOML file of option values (below flags and CKPTSYNC_* variables).", metavar="FILE"),
    Setting(
        "log_level", choice("debug", "info", "warning", "error"), "info", "Log verbosity.", choices=("debug", "info", "warning", "error")
    ),
    Setting("log_format", choice("text", "json"), "text", "Readable lines or one JSON object per line.", choices=("text", "json")),
    # -- where
    Setting("remote", text, help="s3://bucket/prefix or file:///abs/path (required).", metavar="URI"),
    Setting("dir", path, Path(DEFAULT_DIR), "The checkpoint folder.", metavar="DIR"),
    Setting(
        "follow_symlinks",
        parse_bool,
        False,
        "Follow symbolic links that lead out of --dir (entries of --dir and links inside checkpoints), storing what they "
        "point to; without it such a checkpoint is refused, and such an entry of --dir skipped with a warning.",
        flag=True,
    ),
    Setting("state_dir", path, help="State folder (default: ~/.local/state/ckptsync/<id>; XDG_STATE_HOME respected).", metavar="DIR"),
    # -- the remote's connection
    Setting("endpoint_url", text, help="S3-compatible endpoint (SeaweedFS, MinIO, rclone serve s3, ...).", metavar="URL"),
    Setting("region", text, help="AWS region (default: from the AWS config, else us-east-1)."),
    Setting("profile", text, help="AWS profile name."),
    Setting(
        "path_style",
        parse_bool,
        help="S3 addressing style (default: path-style with --endpoint-url).",
        flag=True,
        off_flag="--virtual-style",
    ),
    Setting("sse", choice("AES256", "aws:kms"), help="Server-side encryption of written objects.", choices=("AES256", "aws:kms")),
    Setting("sse_kms_key_id", text, help="KMS key for --sse aws:kms.", metavar="KEY"),
    Setting("expected_bucket_owner", text, help="Fail unless the bucket belongs to this account id.", metavar="ACCOUNT"),
    Setting(
        "checksum",
        choice(*CHECKSUMS),
        "auto",
        "CRC32 checks of object bodies. auto: a CRC32 with each upload over HTTPS only (over plain HTTP the "
        "request signature already covers the body's SHA-256), downloads checked against a stored CRC over "
        "plain HTTP only (chunks are checked against their hash anyway); when_supported: both on any "
        "transport (botocore's default, more CPU); when_required: none, for servers that reject them.",
        choices=CHECKSUMS,
    ),
    Setting(
        "hash",
        choice(*HASH_ALGORITHMS),
        DEFAULT_HASH,
        "The hash that names the chunks of checkpoints uploaded for the first time. blake3 (format version 7) "
        "costs about a quarter of sha256's CPU; sha256 keeps new manifests readable by ckptsync releases "
        "older than format version 7. A checkpoint already committed keeps its hash.",
        choices=HASH_ALGORITHMS,
    ),
    # -- how hard to work
    Setting("workers", integer(1, 256), lambda: workers_for(machine_cpus()), "Parallel transfers (default: 2 x CPUs, 4..16).", "N"),
    Setting("max_memory", parse_size, 32 << 20, "Bound on chunk bytes held in memory.", "SIZE"),
    Setting("bwlimit", parse_size, help="Limit transfers to this many bytes per second (e.g. 50M).", metavar="BYTES/S"),
    Setting("nice", integer(0, 19), 10, "Lower ckptsync's CPU priority by this much (never the training command's).", "N"),
    Setting("retries", integer(1, 100), 6, "Attempts per storage request on transient errors.", "N"),
    Setting(
        "retry_budget",
        number(1.0),
        90.0,
        "Seconds a storage request may wait, retries included, for a store that does not answer "
        "(then the other requests fail at once for as long).",
        "SECONDS",
    ),
    Setting(
        "host", text, lambda: socket.gethostname() or "host", "This host's name in manifests (default: SM_CURRENT_HOST or the hostname)."
    ),
    Setting(
        "hosts",
        parse_hosts,
        (),
        "Every host of a multi-host job (default: SM_HOSTS); each commits its own part. The first, the lead, must run rank 0.",
        "H1,H2,...",
    ),
    # -- choosing checkpoints
    Setting("metric", text, help="A metric recorded with the checkpoints, e.g. eval_loss."),
    Setting("mode", choice("min", "max"), help="Whether lower or higher --metric is better.", choices=("min", "max")),
    Setting("name", text, help="This checkpoint."),
    Setting("step", integer(0), help="The checkpoint at this step.", metavar="N"),
    Setting(
        "restore", choice("latest", "best", "none"), "latest", "What to restore before CMD starts.", choices=("latest", "best", "none")
    ),
    Setting("all_hosts", parse_bool, False, "For a multi-host checkpoint, every host's files, not only this host's.", flag=True),
    Setting("require", parse_bool, False, "Exit 3 if nothing is committed yet.", flag=True),
    Setting("strict", parse_bool, False, "Fail if the chosen checkpoint is damaged instead of falling back.", flag=True),
    Setting("to", path, help="Folder to place the files in (default: SM_MODEL_DIR).", metavar="DIR"),
    # -- retention
    Setting("keep_last", integer(1), help="Keep the N newest checkpoints.", metavar="N"),
    Setting("keep_best", integer(1), help="Keep the K best checkpoints by --metric.", metavar="K"),
    Setting("keep_every", integer(1), help="Keep checkpoints whose step is a multiple of STEPS.", metavar="STEPS"),
    Setting("grace", parse_duration, DEFAULT_GRACE, "Never delete chunks younger than this (uploads in progress).", "DURATION"),
    Setting("dry_run", parse_bool, False, "Show what would be deleted; delete nothing.", flag=True),
    # -- the daemon
    Setting(
        "settle",
        number(),
        10.0,
        "Seconds without changes before a checkpoint counts as complete "
        "(2 s at most when a completion signal such as trainer_state.json is present).",
        "SECONDS",
    ),
    Setting("drain_timeout", number(), 100.0, "On SIGTERM/SIGINT, seconds to finish uploading complete checkpoints.", "SECONDS"),
    Setting("poll", parse_bool, False, "Poll the folder instead of using inotify (network file systems).", flag=True),
    Setting("poll_interval", number(0.1), 2.0, "Seconds between polls with --poll.", "SECONDS"),
    Setting("require_marker", parse_bool, False, "Commit only checkpoints carrying a ckptsync.json marker.", flag=True),
    Setting("spot_notice", parse_bool, False, "Poll EC2 instance metadata for a spot interruption notice and sync at once.", flag=True),
    Setting("imds_endpoint", text, DEFAULT_IMDS_ENDPOINT, "Instance metadata endpoint for --spot-notice.", "URL"),
    Setting("spot_interval", number(0.1), 5.0, "Seconds between spot notice polls.", "SECONDS"),
    Setting(
        "metrics_addr",
        text,
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone listens on 127.0.0.1).",
        metavar="HOST:PORT",
    ),
    # -- output
    Setting("json", parse_bool, False, "Print JSON.", flag=True),
    Setting("timeout", number(0), help="Give up after this many seconds (exit 1); default: no limit.", metavar="SECONDS"),
    Setting("deep", parse_bool, False, "Download every chunk and check its hash.", flag=True),
    Setting("sort", text, "step", "Order: by step (newest first), commit time, or a metric (best first).", "step|created|METRIC"),
)

#: Groups of settings, as commands (and ``Syncer``) take them.
COMMON = ("config", "log_level", "log_format")
CONNECTION = (
    "endpoint_url",
    "region",
    "profile",
    "path_style",
    "sse",
    "sse_kms_key_id",
    "expected_bucket_owner",
    "checksum",
    "workers",
    "max_memory",
    "bwlimit",
    "nice",
    "retries",
    "retry_budget",
    "host",
    "hosts",
)
REMOTE = ("remote", *CONNECTION)
RETENTION = ("keep_last", "keep_best", "keep_every", "grace", "metric", "mode")
WATCH = (
    "dir",
    "hash",
    "follow_symlinks",
    "settle",
    "drain_timeout",
    "poll",
    "poll_interval",
    "require_marker",
    "spot_notice",
    "imds_endpoint",
    "spot_interval",
    "metrics_addr",
    "state_dir",
)
#: What ``ckptsync.Syncer`` accepts (those of ``ckptsync watch``).
DAEMON = (*WATCH, *RETENTION, *REMOTE)


# ---------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Resolved:
    """The value of each option asked for, and where it came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def remote(self) -> str:
        """The remote URI; UsageError when none was given."""
        remote = self.values.get("remote")
        if not remote:
            raise UsageError("no remote given", "pass --remote s3://bucket/prefix (or set CKPTSYNC_REMOTE, or remote in the config file)")
        return str(remote)

    def options(self) -> Options:
        v = self.values
        return Options(
            s3=S3Options(**self._fields(S3Options)),
            retry=RetryPolicy(attempts=v["retries"], max_seconds=v["retry_budget"]),
            workers=v["workers"],
            max_memory=v["max_memory"],
            host=v["host"],
            hosts=v["hosts"] if len(v["hosts"]) > 1 else (),
            bwlimit=v["bwlimit"],
            nice=v["nice"],
            hash_algorithm=v.get("hash", DEFAULT_HASH),
        )

    def retention(self) -> Retention:
        rules = Retention(**self._fields(Retention))
        if rules.active:
            rules.check()
        return rules

    def watch(self, **timings: float) -> WatchOptions:
        """The daemon's options; ``timings`` may set the :data:`WATCH_TIMINGS`."""
        return WatchOptions(retention=self.retention(), **self._fields(WatchOptions), **timings)  # type: ignore[arg-type]

    def _fields(self, cls: type) -> dict[str, Any]:
        """The values of the settings named like fields of the dataclass ``cls``."""
        return {f.name: self.values[f.name] for f in fields(cls) if f.name in SETTINGS}


def resolve(
    names: Iterable[str],
    given: Mapping[str, Any] | None = None,
    *,
    command: str = "",
    env: Mapping[str, str] = os.environ,
    given_as: str = "flag",
) -> Resolved:
    """Decide the value of each setting in ``names``.

    ``given`` holds the values of flags (or keyword arguments, ``given_as``
    names that source); ``command`` selects the config file's table (``config``:
    every table). Raises UsageError for a malformed value, naming where it came
    from, and for a config file that is missing, malformed or names an unknown option.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    names = list(dict.fromkeys(names))
    unknown = set(given) - set(SETTINGS)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    config = _config_path(given, env)
    layers: list[tuple[Mapping[str, Any], Callable[[str], str]]] = [
        (given, lambda n: given_as),
        ({n: env[SETTINGS[n].env] for n in SETTINGS if SETTINGS[n].env in env}, lambda n: f"env {SETTINGS[n].env}"),
    ]
    if config is not None:
        layers.append((read_config(config, command), lambda n: f"config file {config}"))
    sm = _sagemaker_layer(env)
    layers.append(({n: v for n, (v, _) in sm.items()}, lambda n: f"SageMaker {sm[n][1]}"))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in names:
        setting = SETTINGS[name]
        for layer, source in layers:
            if name in layer:
                values[name], sources[name] = _parse(setting, layer[name], source(name)), source(name)
                break
        else:
            values[name], sources[name] = setting.default_value(), "default"
    return Resolved(values, sources)


def _parse(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(value)
    except ValueError as exc:
        where = "" if source in ("flag", "argument") else f" (from {source})"
        raise UsageError(
            f"invalid value for {setting.option}{where}: {value!r} {exc}", f"see 'ckptsync COMMAND --help' for {setting.option}"
        ) from None


def _config_path(given: Mapping[str, Any], env: Mapping[str, str]) -> Path | None:
    value = given.get("config") or env.get(SETTINGS["config"].env)
    return path(value) if value else None


def _sagemaker_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Defaults SageMaker's environment implies: ``{name: (value, variable)}``."""
    out: dict[str, tuple[Any, str]] = {}
    host, hosts, cpus, level, model = (
        sagemaker.current_host(env),
        sagemaker.hosts(env),
        sagemaker.num_cpus(env),
        sagemaker.log_level(env),
        sagemaker.model_dir(env),
    )
    if host:
        out["host"] = (host, "SM_CURRENT_HOST")
    if hosts:
        out["hosts"] = (hosts, "SM_HOSTS")
    if cpus:
        out["workers"] = (workers_for(cpus), "SM_NUM_CPUS")
    if level:
        out["log_level"] = (level, "SM_LOG_LEVEL")
    if model:
        out["to"] = (model, "SM_MODEL_DIR")
    return out


def read_config(file: Path, command: str) -> dict[str, Any]:
    """The raw values a config file gives ``command``; UsageError on a bad file or an unknown key."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(file, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {file} does not exist", "fix --config or CKPTSYNC_CONFIG") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {file} is not valid TOML: {exc}", "fix the file, or point --config elsewhere") from None
    # ``ckptsync config`` shows what any command would get: every table applies.
    tables = [v for v in doc.values() if isinstance(v, dict)] if command == "config" else [doc.get(command, {})]
    out: dict[str, Any] = {}
    for scope in (doc, *tables):
        for key, value in scope.items():
            if isinstance(value, dict):
                continue
            name = key.strip().replace("-", "_")
            if name not in SETTINGS or name == "config":
                raise UsageError(f"config file {file}: unknown option {key!r}", "use the long option names of 'ckptsync --help' commands")
            out[name] = value
    return out
