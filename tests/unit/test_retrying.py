"""The retry wrapper: what is retried, how often, and conditional-create recovery."""

import pytest

from ckptsync.errors import AlreadyExists, NotFound, StoreError
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
