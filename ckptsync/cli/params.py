"""The command line's options, made from the settings of :mod:`ckptsync.options`, and how a command runs.

Click parses flags only: every option has no default of its own, so a value
counts as given exactly when it was on the command line. :func:`run_command`
then resolves every setting of the command once (flags > ``CKPTSYNC_*`` >
config file > SageMaker > defaults, see :func:`ckptsync.options.resolve`),
sets up logging, and calls the command with the :class:`~ckptsync.options.Resolved`
settings. Errors become one line (and a hint line) on stderr and the exit code
of their kind (1 failure, 2 usage, 3 nothing to restore), never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import click

from .. import logs
from ..errors import EXIT_ERROR, EXIT_USAGE, CkptsyncError
from ..options import SETTINGS, Resolved, resolve

log = logging.getLogger("ckptsync")
F = TypeVar("F", bound=Callable[..., Any])


def settings(*names: str, help: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Add one click option per setting (``help`` overrides a setting's help text for this command)."""

    def decorate(f: F) -> F:
        for name in reversed(names):
            f = _option(name, (help or {}).get(name))(f)
        return f

    return decorate


def selection(f: F) -> F:
    """``--latest`` (the default) or ``--best``: which checkpoint a restore or an export takes, passed as ``how``.

    Both at once are a usage error, not the last one winning.
    """

    @functools.wraps(f)
    def choose(*args: Any, latest: bool, best: bool, **kw: Any) -> Any:
        if latest and best:
            fail("--latest and --best cannot be combined", "pass one of them (--latest is the default)", EXIT_USAGE)
        return f(*args, how="best" if best else "latest", **kw)

    choose = click.option("--best", is_flag=True, help="The best by --metric.")(choose)
    return cast(F, click.option("--latest", is_flag=True, help="Highest step, then newest commit (default).")(choose))


def _option(name: str, help_text: str | None) -> Callable[[F], F]:
    s = SETTINGS[name]
    notes = [f"env var: {s.env}"]
    default = s.default_value() if not callable(s.default) else None
    if default not in (None, False, ()):
        notes.append(f"default: {display(default)}")
    text = f"{help_text or s.help} [{'; '.join(notes)}]"
    if s.flag:
        decl = f"{s.option}/{s.off_flag}" if s.off_flag else s.option
        return click.option(decl, name, is_flag=True, default=None, help=text)
    if s.choices:
        return click.option(s.option, name, type=click.Choice(s.choices, case_sensitive=False), default=None, help=text)
    return click.option(s.option, name, type=click.STRING, default=None, metavar=s.metavar or name.upper(), help=text)


def display(value: Any) -> str:
    """A setting's value as ``ckptsync config`` and the help show it, a URL's password masked."""
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "-"
    return logs.mask_passwords(str(value))


def run_command(f: Callable[..., None]) -> Callable[..., None]:
    """Resolve the command's settings, set up logging, run it; errors become one line and an exit code.

    The command is called with the resolved settings first, then every
    parameter that is not a setting (arguments, flags such as ``--latest``).
    """

    @functools.wraps(f)
    def wrapper(**kw: Any) -> None:
        ctx = click.get_current_context()
        names = [p.name for p in ctx.command.params if p.name in SETTINGS]
        given = {n: kw.pop(n) for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
        for n in names:
            kw.pop(n, None)
        try:
            resolved = resolve(names, given, command=ctx.info_name or "")
        except CkptsyncError as exc:
            fail(exc.message, exc.hint, exc.exit_code)
        logs.setup(resolved["log_level"], resolved["log_format"])
        try:
            f(resolved, **kw)
        except CkptsyncError as exc:
            fail(exc.message, exc.hint, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", None, 130)
        except Exception as exc:  # a bug: one line, the traceback only at debug level
            log.debug("internal error", exc_info=True)
            fail(f"internal error: {type(exc).__name__}: {exc}", "rerun with --log-level debug and report it", EXIT_ERROR)

    return wrapper


def fail(message: str, hint: str | None, code: int) -> NoReturn:
    """Print an error (and a hint) as one line each, credentials masked, and exit with ``code``."""
    error(message, hint)
    sys.exit(code)


def error(message: str, hint: str | None) -> None:
    """Print an error (and a hint) as one line each, credentials masked; the command goes on."""
    click.echo(f"ckptsync: error: {logs.redact(message)}", err=True)
    if hint:
        click.echo(f"ckptsync: hint: {hint}", err=True)


def folder(s: Resolved) -> Path:
    """``--dir``, absolute."""
    return Path(s["dir"]).absolute()
