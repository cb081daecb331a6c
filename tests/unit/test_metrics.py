"""Step and metrics extraction from markers, trainer state and names."""

import math

import pytest

from ckptsync import metrics


@pytest.mark.parametrize(
    "name, step",
    [
        ("checkpoint-500", 500),
        ("step_500", 500),
        ("step-42", 42),
        ("global_step500", 500),
        ("ckpt_7.pt", 7),
        ("1200", 1200),
        ("iter_0001000", 1000),
        ("model-final", None),
        ("last.ckpt", None),
    ],
)
def test_step_from_name(name, step):
    assert metrics.from_name(name).step == step


def test_lightning_name_gives_every_pair_as_metric_and_step():
    sc = metrics.from_name("epoch=3-step=1200-val_loss=0.213.ckpt")
    assert sc.step == 1200
    assert sc.metrics == {"epoch": 3.0, "val_loss": pytest.approx(0.213)}
    assert sc.source == "name"


def test_lightning_name_with_exponent_and_negative_values():
    sc = metrics.from_name("lr=1e-3-step=5-score=-0.5.ckpt")
    assert sc.step == 5
    assert sc.metrics["lr"] == pytest.approx(1e-3)
    assert sc.metrics["score"] == pytest.approx(-0.5)


def test_nan_metric_in_name_is_recorded_as_missing():
    sc = metrics.from_name("step=3-val_loss=nan.ckpt")
    assert sc.metrics["val_loss"] is None


def test_trainer_state_takes_global_step_and_metrics_logged_at_that_step():
    state = {
        "global_step": 500,
        "log_history": [
            {"step": 250, "loss": 2.0, "eval_loss": 1.9},
            {"step": 500, "loss": 1.0, "learning_rate": 1e-4, "epoch": 1.0},
            {"step": 500, "eval_loss": 0.8, "eval_runtime": 3.2},
        ],
    }
    sc = metrics.from_trainer_state(state)
    assert sc.step == 500
    assert sc.metrics["eval_loss"] == 0.8
    assert sc.metrics["loss"] == 1.0
    assert "step" not in sc.metrics


def test_marker_ignores_non_numeric_metrics_and_booleans():
    sc = metrics.from_marker({"step": 7, "metrics": {"a": 1, "b": "x", "c": True, "d": float("inf")}})
    assert sc.step == 7
    assert sc.metrics == {"a": 1.0, "d": None}


@pytest.mark.parametrize("doc", [None, [], "x", {"step": -1}, {"step": 1.5}, {"step": True}])
def test_bad_marker_step_is_none(doc):
    sc = metrics.from_marker(doc)
    assert sc is None or sc.step is None


def test_finite_check():
    assert metrics._finite(math.inf) is None
    assert metrics._finite(1.5) == 1.5
