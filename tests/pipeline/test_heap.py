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
