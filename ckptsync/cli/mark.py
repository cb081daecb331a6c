"""``ckptsync mark``: write a checkpoint's ``ckptsync.json`` completion marker."""

from __future__ import annotations

from pathlib import Path

import click

from ..marker import mark, parse_metric_args
from ..options import COMMON, Resolved
from .params import run_command, settings


@click.command("mark")
@click.argument("path", type=click.Path(exists=False, path_type=Path))
@click.option("--step", "step_arg", type=click.IntRange(0), metavar="N", help="The checkpoint's training step.")
@click.option("--metric", "metric_args", multiple=True, metavar="NAME=VALUE", help="A metric (repeatable), e.g. --metric eval_loss=0.21.")
@settings(*COMMON)
@run_command
def command(s: Resolved, path: Path, step_arg: int | None, metric_args: tuple[str, ...]) -> None:
    """Write the ckptsync.json completion marker of the checkpoint at PATH.

    Call it last, once the checkpoint is fully written: the daemon then commits
    it as soon as it settles, with this step and these metrics.
    """
    click.echo(str(mark(path, step=step_arg, metrics=parse_metric_args(list(metric_args)))))
