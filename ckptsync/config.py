"""Options shared by the commands and the Python API (frozen dataclasses)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from .store import RetryPolicy, S3Options


def default_workers() -> int:
    """Worker threads: twice the CPUs (``SM_NUM_CPUS`` on SageMaker), between 4 and 16.

    Workers mostly wait on the network; compression and hashing release the GIL.
    """
    cpus = 0
    try:
        cpus = int(os.environ.get("SM_NUM_CPUS", "0"))
    except ValueError:
        cpus = 0
    if cpus <= 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(4, min(16, 2 * cpus))


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux: per thread; inherited by threads it starts)."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass


@dataclass(frozen=True)
class Options:
    """Everything but the remote and the folder."""

    s3: S3Options = field(default_factory=S3Options)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workers: int = field(default_factory=default_workers)
    max_memory: int = 32 << 20
    host: str | None = None
    #: Every host of a multi-host job (empty: this host alone).
    hosts: tuple[str, ...] = ()
    #: Bytes per second for all transfers together (None: unlimited).
    bwlimit: float | None = None
    #: Niceness added to ckptsync's own threads (never to a ``run`` child).
    nice: int = 0


def sagemaker_hosts() -> tuple[str, ...]:
    """``SM_HOSTS`` (a JSON list) as a tuple; empty when unset or malformed."""
    import json

    try:
        hosts = json.loads(os.environ.get("SM_HOSTS", "[]"))
    except ValueError:
        return ()
    return tuple(sorted(h for h in hosts if isinstance(h, str) and h)) if isinstance(hosts, list) else ()


def default_host() -> str:
    """This host's name in manifests: SageMaker's SM_CURRENT_HOST, else the machine's host name."""
    return os.environ.get("SM_CURRENT_HOST") or socket.gethostname() or "host"
