"""Scenario 14: clock skew, equal steps, NaN or missing metrics: the right checkpoint is chosen and kept."""

from __future__ import annotations

import math
import random

from ckptsync import policy
from tests.faults.scenarios import full_size, record
from tests.unit.test_policy import rec


def test_choice_and_retention_under_skew_ties_and_bad_metrics():
    rng = random.Random(14)
    cases = 500 if full_size() else 100
    wrong = 0
    for _ in range(cases):
        n = rng.randint(1, 12)
        recs = []
        for i in range(n):
            step = rng.choice([None, rng.randint(0, 5) * 100])  # equal steps are common
            skew = rng.choice([-3600, 0, 3600])  # a host whose clock is an hour off
            loss = rng.choice([None, math.nan, math.inf, round(rng.random(), 3)])
            recs.append(
                rec(f"c{i}", step, created=i * 10 + skew, commit=f"{i:04d}", loss=None if loss is None or not math.isfinite(loss) else loss)
            )
        latest = policy.by_latest(recs)[0]
        with_step = [r for r in recs if r.manifest.step is not None]
        if with_step:  # the highest step wins whatever the clocks say
            wrong += latest.manifest.step != max(r.manifest.step for r in with_step)
        finite = [r for r in recs if r.manifest.metrics.get("loss") is not None]
        best = policy.by_best(recs, "loss", "min")
        if finite:
            wrong += best[0].manifest.metrics["loss"] != min(r.manifest.metrics["loss"] for r in finite)
        else:
            wrong += best != []
        keep = policy.retain(recs, policy.Retention(keep_last=1, metric="loss"))
        kept = {id(r) for r, k in zip(recs, keep, strict=True) if k}
        wrong += id(latest) not in kept  # never delete the newest
        if best:
            wrong += id(best[0]) not in kept  # nor the best
    assert wrong == 0
    record(14, "clock skew (±1 h), equal steps, NaN or missing metrics", cases, f"wrong choices or deletions: {wrong}", wrong == 0)
