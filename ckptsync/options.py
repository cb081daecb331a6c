"""Options shared by the commands and the Python API (frozen dataclasses)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from . import sagemaker
from .policy import Retention
from .retention import DEFAULT_GRACE
from .store import RetryPolicy, S3Options

#: Where EC2 instance metadata answers (``--imds-endpoint``).
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"


def workers_for(cpus: int) -> int:
    """Worker threads for ``cpus`` processors: twice as many, between 4 and 16.

    Workers mostly wait on the network; compression and hashing release the GIL.
    """
    return max(4, min(16, 2 * cpus))


def machine_cpus() -> int:
    """The processors this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


def default_workers() -> int:
    """Workers for SageMaker's ``SM_NUM_CPUS``, else for this machine's processors."""
    return workers_for(sagemaker.num_cpus() or machine_cpus())


def this_host() -> str:
    """This host's name in manifests: SageMaker's ``SM_CURRENT_HOST``, else the machine's host name."""
    return sagemaker.current_host() or socket.gethostname() or "host"


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


@dataclass(frozen=True)
class WatchOptions:
    """How the daemon decides and schedules (each maps to a ``watch`` flag)."""

    settle: float = 10.0
    drain_timeout: float = 100.0
    poll: bool = False
    poll_interval: float = 2.0
    rescan_interval: float = 60.0
    require_marker: bool = False
    spot_notice: bool = False
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    spot_interval: float = 5.0
    retry_initial: float = 10.0
    retry_max: float = 600.0
    tick: float = 1.0
    status_interval: float = 2.0
    retention: Retention = field(default_factory=Retention)
    grace: timedelta = DEFAULT_GRACE
