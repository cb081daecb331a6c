"""Latest and best orders, and the retention rules (which checkpoints a prune keeps)."""

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


def test_retain_keeps_the_union_of_rules_and_always_the_newest_and_best():
    rs = [rec(f"c{i}", i, loss=loss) for i, loss in enumerate([0.9, 0.1, 0.8, 0.2, 0.7, 0.6, 0.5])]
    keep = policy.retain(rs, policy.Retention(keep_last=2, keep_best=2, metric="loss"))
    assert [r.manifest.name for r, k in zip(rs, keep, strict=True) if k] == ["c1", "c3", "c5", "c6"]
    keep = policy.retain(rs, policy.Retention(keep_last=1, metric="loss"))  # best is kept with a metric
    assert [r.manifest.name for r, k in zip(rs, keep, strict=True) if k] == ["c1", "c6"]
    keep = policy.retain(rs, policy.Retention(keep_every=3))
    assert [r.manifest.name for r, k in zip(rs, keep, strict=True) if k] == ["c0", "c3", "c6"]


def test_retain_without_rules_keeps_everything_and_bad_rules_are_usage_errors():
    rs = [rec("a", 1), rec("b", 2)]
    assert policy.retain(rs, policy.Retention()) == [True, True]
    with pytest.raises(UsageError):
        policy.retain(rs, policy.Retention(keep_best=1))
    with pytest.raises(UsageError):
        policy.retain(rs, policy.Retention(keep_last=0))


def test_nan_and_missing_metrics_are_never_kept_as_best_and_clock_skew_does_not_change_newest():
    rs = [rec("old-but-skewed", 1, created=7200, loss=None), rec("new", 2, created=-7200), rec("good", 0, loss=0.3)]
    keep = policy.retain(rs, policy.Retention(keep_last=1, keep_best=1, metric="loss"))
    assert [r.manifest.name for r, k in zip(rs, keep, strict=True) if k] == ["new", "good"]
