"""Choosing checkpoints: latest and best orders, restore selection, retention rules (pure).

"Latest" is the highest step, then the newest commit time, then the commit id;
a checkpoint without a step ranks below every checkpoint with one. "Best"
ranks by one metric (``min`` or ``max``); checkpoints without a finite value of
that metric are never "best"; ties fall back to the latest order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from .errors import UsageError
from .format import Manifest

_MIN_WORDS = ("loss", "error", "perplexity", "ppl")


class HasManifest(Protocol):
    @property
    def manifest(self) -> Manifest: ...


T = TypeVar("T", bound=HasManifest)


def latest_key(m: Manifest) -> tuple[int, int, float, str]:
    return (1 if m.step is not None else 0, m.step if m.step is not None else -1, m.created.timestamp(), m.commit)


def by_latest(records: Sequence[T]) -> list[T]:
    """Newest first."""
    return sorted(records, key=lambda r: latest_key(r.manifest), reverse=True)


def infer_mode(metric: str, mode: str | None) -> str:
    """The given mode, or ``min`` for loss-like metric names; UsageError otherwise."""
    if mode is not None:
        if mode not in ("min", "max"):
            raise UsageError(f"--mode must be min or max, not {mode!r}")
        return mode
    if any(w in metric.lower() for w in _MIN_WORDS):
        return "min"
    raise UsageError(
        f"cannot tell whether a higher or lower {metric!r} is better",
        "pass --mode min or --mode max",
    )


def metric_value(m: Manifest, metric: str) -> float | None:
    v = m.metrics.get(metric)
    return v if v is not None and math.isfinite(v) else None


def by_best(records: Sequence[T], metric: str, mode: str) -> list[T]:
    """Best first; records without a finite value of ``metric`` are left out."""
    scored = [r for r in records if metric_value(r.manifest, metric) is not None]
    latest = by_latest(scored)
    rank = {id(r): i for i, r in enumerate(latest)}
    sign = 1.0 if mode == "min" else -1.0
    return sorted(scored, key=lambda r: (sign * (metric_value(r.manifest, metric) or 0.0), rank[id(r)]))


def metric_names(records: Sequence[HasManifest]) -> list[str]:
    return sorted({k for r in records for k, v in r.manifest.metrics.items() if v is not None})


#: How a restore chooses among committed checkpoints.
Selection = Literal["latest", "best"]


@dataclass(frozen=True)
class Selector:
    """Which checkpoint to restore: ``latest``, ``best`` (by ``metric``/``mode``), a ``name`` or a ``step``."""

    how: Selection = "latest"
    metric: str | None = None
    mode: str | None = None
    name: str | None = None
    step: int | None = None

    def describe(self) -> str:
        """The request in words, for messages."""
        if self.name is not None:
            return f"named {self.name!r}"
        if self.step is not None:
            return f"at step {self.step}"
        return f"best by {self.metric}" if self.how == "best" else "latest"


def candidates(records: Sequence[T], sel: Selector) -> list[T]:
    """The checkpoints ``sel`` asks for, in the order to try them."""
    if sel.name is not None:
        return by_latest([r for r in records if r.manifest.name == sel.name])
    if sel.step is not None:
        return by_latest([r for r in records if r.manifest.step == sel.step])
    if sel.how == "best":
        if not sel.metric:
            raise UsageError("--best needs a metric", "pass --metric NAME (for example --metric eval_loss)")
        ranked = by_best(records, sel.metric, infer_mode(sel.metric, sel.mode))
        if records and not ranked:
            present = ", ".join(metric_names(records)) or "none"
            raise UsageError(f"no committed checkpoint has the metric {sel.metric!r}", f"metrics present: {present}")
        return ranked
    if sel.how != "latest":
        raise UsageError(f"unknown selection {sel.how!r}", "use --latest, --best, --name or --step")
    return by_latest(records)


@dataclass(frozen=True)
class Retention:
    """Which committed checkpoints to keep: the union of every rule given.

    The newest checkpoint, and the best one when a metric is configured, are
    always kept, whatever the rules say.
    """

    keep_last: int | None = None
    keep_best: int | None = None
    metric: str | None = None
    mode: str | None = None
    keep_every: int | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.keep_last, self.keep_best, self.keep_every))

    def check(self) -> None:
        for name, v in (("--keep-last", self.keep_last), ("--keep-best", self.keep_best), ("--keep-every", self.keep_every)):
            if v is not None and v < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.keep_best is not None and not self.metric:
            raise UsageError("--keep-best needs --metric", "for example --keep-best 2 --metric eval_loss")
        if self.metric:
            infer_mode(self.metric, self.mode)


def retain(records: Sequence[T], rules: Retention) -> list[bool]:
    """For each record, whether the rules keep it (pure). Without any rule, everything is kept."""
    if not rules.active:
        return [True] * len(records)
    rules.check()
    keep: set[int] = set()
    order = by_latest(records)
    index = {id(r): i for i, r in enumerate(records)}
    if order:
        keep.add(index[id(order[0])])  # the newest is never deleted
    if rules.keep_last:
        keep.update(index[id(r)] for r in order[: rules.keep_last])
    if rules.metric:
        best = by_best(records, rules.metric, infer_mode(rules.metric, rules.mode))
        keep.update(index[id(r)] for r in best[: max(1, rules.keep_best or 0)])
    if rules.keep_every:
        keep.update(i for i, r in enumerate(records) if r.manifest.step is not None and r.manifest.step % rules.keep_every == 0)
    return [i in keep for i in range(len(records))]
