"""The bounded executor's budget: what a reservation holds, and that it is given back exactly once.

The executor's threads are exercised by tests/pipeline (the upload and restore pipelines); here, the
accounting alone, without starting any.
"""

from __future__ import annotations

import pytest

from ckptsync.executor import Budget, Reservation


def reserve(budget: Budget, units: int) -> Reservation:
    """What BoundedExecutor.reserve does, without the pool."""
    budget.take(units)
    return Reservation(budget, units)


def test_a_reservation_gives_its_units_back_once_when_its_block_ends() -> None:
    budget = Budget(100)
    with reserve(budget, 60) as r:
        assert budget.used == 60
    assert budget.used == 0 and r.units == 0
    r.release()
    assert budget.used == 0, "releasing twice gives nothing back twice"


def test_an_error_inside_the_block_still_gives_the_units_back() -> None:
    budget = Budget(100)
    with pytest.raises(OSError), reserve(budget, 30):
        raise OSError("disk read failed")
    assert budget.used == 0


def test_units_moved_on_stay_held_until_their_new_holder_releases_them() -> None:
    budget = Budget(100)
    pack = reserve(budget, 10)
    with reserve(budget, 20) as file:
        pack.absorb(file)
    assert budget.used == 30 and pack.units == 30
    task = pack.transfer()
    pack.release()
    assert budget.used == 30, "the transferred units belong to the task now"
    task.release()
    assert budget.used == 0


def test_the_budget_lets_one_oversized_request_through_when_nothing_else_is_held() -> None:
    budget = Budget(10)
    budget.take(25)  # would block forever if it had to fit
    assert budget.used == 25 and budget.peak == 25
    budget.give(25)
    budget.take(4)
    budget.take(6)
    assert budget.used == 10 and budget.peak == 25
