"""Where option values come from: flags > CKPTSYNC_* environment > config file > SageMaker > defaults.

The config file is TOML: top-level keys apply to every command, a table named
after a command (``[watch]``, ``[restore]``, ...) to that command only. Keys
are option names, with ``-`` or ``_``::

    remote = "s3://my-bucket/run-42"
    dir = "/opt/ml/checkpoints"
    endpoint-url = "http://127.0.0.1:8333"

    [watch]
    settle = 15
    keep-last = 3

Flags and ``CKPTSYNC_*`` variables are applied by the CLI parser; this module
supplies the two lower layers as one mapping of defaults, and remembers which
layer each value came from so ``ckptsync config`` can say it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: CLI parameter names that differ from the option's spelling.
_PARAM_NAMES = {"dir": "dir_", "restore": "restore_", "json": "as_json"}


def param_name(key: str) -> str:
    k = key.strip().replace("-", "_")
    return _PARAM_NAMES.get(k, k)


def read_config(path: Path, command: str, known: set[str]) -> dict[str, Any]:
    """The values a config file gives ``command``; UsageError on a bad file or unknown key."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist", "fix --config or CKPTSYNC_CONFIG") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    # ``ckptsync config`` shows what any command would get: every table applies.
    tables = [v for v in doc.values() if isinstance(v, dict)] if command == "config" else [doc.get(command, {})]
    out: dict[str, Any] = {}
    for scope in (doc, *tables):
        for key, value in scope.items():
            if isinstance(value, dict):
                continue
            name = param_name(key)
            if name not in known:
                raise UsageError(f"config file {path}: unknown option {key!r}", "use the long option names of 'ckptsync --help' commands")
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            out[name] = value
    return out


def sagemaker_defaults(env: Mapping[str, str] = os.environ) -> dict[str, tuple[Any, str]]:
    """Defaults SageMaker's environment implies: ``{param: (value, variable)}``."""
    from . import sagemaker
    from .options import workers_for

    out: dict[str, tuple[Any, str]] = {}
    host, hosts, cpus, level = sagemaker.current_host(env), sagemaker.hosts(env), sagemaker.num_cpus(env), sagemaker.log_level(env)
    if host:
        out["host"] = (host, "SM_CURRENT_HOST")
    if hosts:
        out["hosts"] = (",".join(hosts), "SM_HOSTS")
    if cpus:
        out["workers"] = (workers_for(cpus), "SM_NUM_CPUS")
    if level:
        out["log_level"] = (level, "SM_LOG_LEVEL")
    return out
