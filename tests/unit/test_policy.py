"""Latest and best orders."""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from ckptsync import policy
from ckptsync.errors import UsageError
from ckptsync.format import Manifest

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Rec:
    manifest: Manifest


def rec(name, step=None, created=0, commit="c", **metrics):
    m = Manifest(name, "dir", step, metrics, T0 + timedelta(seconds=created), "h", commit, ())
    return Rec(m)


def names(rs):
    return [r.manifest.name for r in rs]


def test_latest_is_highest_step_then_newest_commit():
    rs = [rec("a", 100, created=50), rec("b", 200, created=0), rec("c", 200, created=10), rec("d", None, created=99)]
    assert names(policy.by_latest(rs)) == ["c", "b", "a", "d"]


def test_clock_skew_does_not_beat_a_higher_step():
    rs = [rec("old", 100, created=3600), rec("new", 200, created=-3600)]
    assert names(policy.by_latest(rs))[0] == "new"


def test_best_min_and_max_and_nan_is_never_best():
    rs = [rec("a", 1, loss=0.5), rec("b", 2, loss=None), rec("c", 3, loss=0.2), rec("d", 4)]
    assert names(policy.by_best(rs, "loss", "min")) == ["c", "a"]
    assert names(policy.by_best(rs, "loss", "max")) == ["a", "c"]


def test_equal_metric_ties_go_to_the_latest():
    rs = [rec("a", 1, loss=0.5), rec("b", 2, loss=0.5)]
    assert names(policy.by_best(rs, "loss", "min")) == ["b", "a"]


@pytest.mark.parametrize("metric", ["eval_loss", "val_error", "perplexity", "eval_ppl", "LOSS"])
def test_mode_defaults_to_min_for_loss_like_names(metric):
    assert policy.infer_mode(metric, None) == "min"


def test_mode_must_be_given_for_other_names():
    with pytest.raises(UsageError) as e:
        policy.infer_mode("accuracy", None)
    assert "--mode" in e.value.hint
    assert policy.infer_mode("accuracy", "max") == "max"
