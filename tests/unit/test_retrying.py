"""The retry wrapper: what is retried, how often, and conditional-create recovery."""

import logging

import pytest

from ckptsync.errors import AlreadyExists, NoAnswer, NotFound, StoreError
from ckptsync.store import LocalStore, RetryingStore, RetryPolicy


class Flaky:
    """Wraps a store; the next ``fail`` calls of ``op`` raise ``exc`` (after applying, if ``apply``)."""

    def __init__(self, inner, op, fail, exc, apply=False):
        self.inner, self.op, self.fail, self.exc, self.apply = inner, op, fail, exc, apply
        self.calls = 0
        self.url = inner.url
        self.conditional_writes = True

    def __getattr__(self, name):
        target = getattr(self.inner, name)
        if name != self.op:
            return target

        def call(*a, **kw):
            self.calls += 1
            if self.fail > 0:
                self.fail -= 1
                if self.apply:
                    target(*a, **kw)
                raise self.exc
            return target(*a, **kw)

        return call


def transient():
    return StoreError("503 SlowDown", transient=True)


@pytest.fixture
def local(tmp_path):
    return LocalStore(tmp_path)


def test_transient_errors_are_retried_with_backoff_and_result_is_byte_identical(local):
    sleeps = []
    flaky = Flaky(local, "put", 2, transient())
    store = RetryingStore(flaky, RetryPolicy(attempts=5), sleep=sleeps.append)
    store.put("a/b", b"payload")
    assert flaky.calls == 3
    assert len(sleeps) == 2 and all(s >= 0 for s in sleeps)
    assert local.get("a/b") == b"payload"


def test_attempts_are_bounded(local):
    sleeps = []
    flaky = Flaky(local, "get", 100, transient())
    store = RetryingStore(flaky, RetryPolicy(attempts=4), sleep=sleeps.append)
    with pytest.raises(StoreError):
        store.get("x")
    assert flaky.calls == 4


@pytest.mark.parametrize("exc", [StoreError("AccessDenied"), NotFound("gone"), StoreError("NoSuchBucket")])
def test_errors_that_cannot_heal_are_not_retried(local, exc):
    flaky = Flaky(local, "get", 100, exc)
    store = RetryingStore(flaky, RetryPolicy(attempts=6), sleep=lambda s: pytest.fail("slept"))
    with pytest.raises(type(exc)):
        store.get("x")
    assert flaky.calls == 1


def test_conditional_create_applied_but_response_lost_counts_as_success(local):
    flaky = Flaky(local, "put_if_absent", 1, transient(), apply=True)
    store = RetryingStore(flaky, RetryPolicy(attempts=3), sleep=lambda s: None)
    store.put_if_absent("m/1.json", b"manifest")
    assert local.get("m/1.json") == b"manifest"


def test_conditional_create_of_a_key_taken_by_someone_else_fails(local):
    local.put("m/1.json", b"theirs")
    store = RetryingStore(local, RetryPolicy(attempts=3), sleep=lambda s: None)
    with pytest.raises(AlreadyExists):
        store.put_if_absent("m/1.json", b"ours")
    assert local.get("m/1.json") == b"theirs"


def test_retry_after_lost_response_does_not_accept_different_content(local):
    flaky = Flaky(local, "put_if_absent", 1, transient())
    local.put("m/1.json", b"theirs")
    store = RetryingStore(flaky, RetryPolicy(attempts=3), sleep=lambda s: None)
    with pytest.raises(AlreadyExists):
        store.put_if_absent("m/1.json", b"ours")


def test_token_bucket_waits_for_the_bytes_over_the_rate():
    from ckptsync.store.throttled import TokenBucket

    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    bucket = TokenBucket(1000, clock=lambda: now[0], sleep=sleep)
    bucket.take(1000)  # the first second's burst
    bucket.take(500)
    bucket.take(500)
    assert waits == [0.5, 0.5]
    assert now[0] == 1.0


# --------------------------------------------------------------------------- the time budget and a silent store


class FakeTime:
    """A clock that only sleeps move (and the store's calls, by what they would wait)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Silent:
    """A store that accepts every call and answers none: each call takes ``timeout`` seconds of ``time``, then
    raises NoAnswer; ``then`` (if set) runs during the next call, before it fails or, with ``answer``, returns."""

    url = "fake://silent"
    conditional_writes = True

    def __init__(self, time: FakeTime, timeout: float) -> None:
        self.time, self.timeout = time, timeout
        self.calls = 0
        self.then = None
        self.answer = False

    def _call(self, *args, **kwargs):
        self.calls += 1
        self.time.now += self.timeout
        then, self.then = self.then, None
        if then is not None:
            then()
        if self.answer:
            return []
        raise NoAnswer("no answer within 20 s", "check the server", key="k")

    put = get = list = delete = exists = _call


def silent_store(attempts: int = 6, budget: float = 90.0, timeout: float = 25.0):
    time = FakeTime()
    inner = Silent(time, timeout)
    store = RetryingStore(
        inner, RetryPolicy(attempts=attempts, max_seconds=budget), attempt_timeout=timeout, sleep=time.sleep, clock=time.clock
    )
    return time, inner, store


def test_an_operation_that_gets_no_answer_ends_within_its_budget():
    """No attempt starts unless it ends within the budget even without an answer; the error says how long it tried."""
    time, inner, store = silent_store()
    with pytest.raises(NoAnswer) as e:
        store.get("x")
    assert inner.calls == 3  # at 0, ~25 and ~50 s; a fourth could end at ~101 s
    assert 75 <= time.now <= 90
    assert e.value.message.startswith("no answer within 20 s; gave up after 3 attempts in ")
    assert e.value.message.endswith(" s (retry budget 90 s)") and e.value.hint == "check the server" and e.value.transient


def test_the_wait_before_a_retry_is_shortened_to_fit_the_budget():
    time = FakeTime()
    inner = Silent(time, 10.0)
    policy = RetryPolicy(attempts=3, max_seconds=30.0, initial_wait=100.0, max_wait=100.0)
    store = RetryingStore(inner, policy, attempt_timeout=10.0, sleep=time.sleep, clock=time.clock)
    with pytest.raises(NoAnswer):
        store.list("p/")
    assert inner.calls == 2 and len(time.sleeps) == 1
    assert 0 <= time.sleeps[0] <= 10.0  # the latest start is 20 s: 10 s after the first attempt ended
    assert time.now <= 30.0


def test_after_an_operation_got_no_answer_the_next_ones_fail_at_once_for_one_budget():
    time, inner, store = silent_store()
    with pytest.raises(NoAnswer) as first:
        store.list("p/")
    calls, now = inner.calls, time.now
    for op in (lambda: store.put("k", b"x"), lambda: store.delete("k"), lambda: store.get("k")):
        with pytest.raises(NoAnswer) as later:
            op()
        assert later.value.message == first.value.message and later.value.hint == first.value.hint
    assert (inner.calls, time.now) == (calls, now)  # nothing was tried, nothing waited for
    time.now += 90.0
    with pytest.raises(NoAnswer):
        store.get("k")
    assert inner.calls > calls  # one budget later the store is tried again


def test_an_operation_retrying_when_the_store_turns_silent_stops():
    time, inner, store = silent_store()
    inner.then = lambda: pytest.raises(NoAnswer, store.list, "p/")  # another operation gives up meanwhile
    with pytest.raises(NoAnswer) as e:
        store.get("k")
    assert "gave up after 1 attempt in " in e.value.message


def test_any_answer_ends_the_silence():
    time, inner, store = silent_store()

    def another_gives_up() -> None:
        with pytest.raises(NoAnswer):
            store.list("p/")
        assert store.silence() is not None
        inner.answer = True

    inner.then = another_gives_up
    assert store.list("q/") == []  # started before the silence, answered while another operation gave up
    assert store.silence() is None
    calls = inner.calls
    assert store.get("k") == []
    assert inner.calls == calls + 1


def test_the_first_retry_is_logged_at_info_and_later_ones_at_debug(local, caplog):
    flaky = Flaky(local, "get", 3, transient())
    store = RetryingStore(flaky, RetryPolicy(attempts=5), sleep=lambda s: None)
    local.put("x", b"data")
    with caplog.at_level(logging.DEBUG, logger="ckptsync.store.retrying"):
        assert store.get("x") == b"data"
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    assert levels[0][1].startswith("get x failed (attempt 1 of at most 5: 503 SlowDown); retrying in ")
    assert levels[0][1].endswith(" s of the 90 s retry budget left")


def test_s3_timeouts_are_capped_to_let_two_attempts_fit_in_the_budget():
    from ckptsync.store import S3Options

    assert S3Options().within(90) == S3Options() and S3Options().attempt_timeout == 25
    small = S3Options().within(8)
    assert (small.connect_timeout, small.read_timeout, small.attempt_timeout) == (2, 2, 4)
