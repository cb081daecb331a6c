"""The ``no_leaks`` fixture of tests/conftest.py, run in an inner pytest session: it fails a test that leaves a
thread or a child process running after its teardown, and passes one that ends what it started."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
from tests.conftest import no_leaks  # noqa: F401 (the autouse fixture under test)
"""

INNER_TESTS = """
import subprocess
import sys
import threading

STOP = threading.Event()


def test_leaks_a_thread():
    threading.Thread(target=STOP.wait, name="leaked-thread", daemon=True).start()


def test_leaks_a_child_process():
    # it reads stdin until EOF: it ends when this session's process does, never outliving it for long
    subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def test_ends_what_it_started():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="joined-thread")
    t.start()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stop.set()
    t.join(10)
    child.wait(10)
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the inner session imports tests.conftest
    monkeypatch.setenv("CKPTSYNC_TEST_LEAK_GRACE", "0.5")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=120)


def test_a_leaked_thread_or_child_process_fails_the_test_and_a_tidy_test_passes(inner: pytest.RunResult) -> None:
    # a failure in a fixture's teardown is an error of the test, which itself passed
    inner.assert_outcomes(passed=3, errors=2)
    inner.stdout.re_match_lines_random(
        [
            r"_+ ERROR at teardown of test_leaks_a_thread _+",
            r"E\s+" + re.escape("Failed: the test leaked 1 thread(s) ['leaked-thread'] and 0 child process(es) []"),
            r"_+ ERROR at teardown of test_leaks_a_child_process _+",
            r"E\s+" + re.escape("Failed: the test leaked 0 thread(s) [] and 1 child process(es) [") + r"\d+\]",
        ]
    )
    assert "ERROR at teardown of test_ends_what_it_started" not in inner.stdout.str()
