"""The C heap during a restore (:mod:`ckptsync.heap`): freed chunk buffers are reused, not faulted in anew."""

from __future__ import annotations

import json
import platform

from tests.helpers import run_python

# A worker thread (its own glibc arena) takes four 4 MiB buffers, touches every page, frees them
# all, eight times over, as a restore's workers do with each chunk; the page faults of each round.
_ROUNDS = """
import json, resource, sys, threading
from ckptsync import heap
kept = heap.keep_buffers() if sys.argv[1] == "keep" else None
faults = []
def rounds():
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        bufs = []
        for _ in range(4):
            b = bytearray(4 << 20)
            b[::4096] = bytes(len(b) // 4096)
            bufs.append(b)
        del bufs, b
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start()
t.join()
heap.give_back()
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _rounds(mode: str) -> dict:
    return json.loads(run_python("-c", _ROUNDS, mode, check=True).stdout)


def test_freed_buffers_are_reused_without_new_page_faults() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert _rounds("keep")["kept"] is False  # nothing to set: the heap is left as it is
        return
    pages = (4 * (4 << 20)) // 4096
    default, kept = _rounds("default"), _rounds("keep")
    assert kept["kept"] is True
    # glibc's defaults give a thread's freed buffers back to the kernel: every round faults them in again
    assert all(n >= pages // 2 for n in default["faults"][1:]), default
    # kept: only the first round's buffers are new pages
    assert sum(kept["faults"][1:]) < pages // 4, kept


# Four threads, alive at once, each take a buffer; then glibc lists its arenas (malloc_stats, on stderr).
_ARENAS = """
import ctypes, sys, threading
from ckptsync import heap
one = heap.one_arena() if sys.argv[1] == "one" else None
together = threading.Barrier(4)
def work():
    b = bytearray(1 << 20)
    together.wait()
    del b
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(one)
sys.stdout.flush()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    p = run_python("-c", _ARENAS, mode, check=True, env=env)
    return p.stdout.strip(), p.stderr.count("Arena ")


def test_one_arena_serves_every_thread_from_one_heap() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert _arenas("one")[0] == "False"
        return
    assert _arenas("default")[1] == 5  # glibc's default: the main arena and one for each new thread
    assert _arenas("one") == ("True", 1)


def test_one_arena_leaves_the_users_choice_alone() -> None:
    if platform.libc_ver()[0] != "glibc":
        return
    assert _arenas("one", MALLOC_ARENA_MAX="3") == ("False", 3)
    assert _arenas("one", GLIBC_TUNABLES="glibc.malloc.arena_max=2") == ("False", 2)
