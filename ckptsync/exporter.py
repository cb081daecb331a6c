"""Prometheus metrics of a running daemon (``--metrics-addr``), with the well-kept ``prometheus_client``.

Every value is read from the daemon when Prometheus scrapes (its status and its
:class:`~ckptsync.status.Journal`), so nothing is counted twice and an idle daemon
does no work for its metrics. The names, all prefixed ``ckptsync_``, are listed in
the README ("Metrics").
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import UsageError
from .status import UPLOAD_BUCKETS

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger(__name__)

#: Outcomes and failure kinds always exported (as 0 until they happen), so that rates and alerts work from the start.
OUTCOMES = ("committed", "unchanged", "changed", "vanished", "cancelled")
FAILURE_KINDS = ("remote", "local", "internal")


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (then loopback: 127.0.0.1) -> (host, port)."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535 or not host:
        raise UsageError(f"--metrics-addr {value!r} is not HOST:PORT or PORT", "for example --metrics-addr 9464 or 0.0.0.0:9464")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"--metrics-addr {value!r}: {host!r} is not an IP address", "use 127.0.0.1, 0.0.0.0 or [::]") from None
    return host, number


class DaemonCollector:
    """A ``prometheus_client`` collector that reads one daemon at each scrape."""

    def __init__(self, daemon: Daemon, wall: Callable[[], float] = time.time) -> None:
        self.daemon = daemon
        self.wall = wall

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

        d = self.daemon
        st = d.status()
        with d._lock:  # the journal is written under the daemon's lock
            j = d.journal
            outcomes, kinds = dict(j.outcomes), dict(j.failure_kinds)
            buckets, total_seconds, drain = list(j.upload_buckets), j.upload_seconds, j.drain_unsynced
            commit_time = j.last_commit_time
        yield InfoMetricFamily("ckptsync", "ckptsync's version and what it syncs.", value={"version": __version__, "remote": st.remote})
        step = GaugeMetricFamily("ckptsync_last_committed_step", "Step of the checkpoint committed last (NaN: none, or no step).")
        step.add_metric([], float("nan") if st.last_commit is None or st.last_commit.step is None else st.last_commit.step)
        yield step
        when = GaugeMetricFamily("ckptsync_last_commit_timestamp_seconds", "Unix time of the last commit (0: none yet).")
        when.add_metric([], commit_time or 0.0)
        yield when
        age = GaugeMetricFamily(
            "ckptsync_newest_committed_age_seconds", "Seconds since this daemon's newest commit (NaN: none yet). Alert on this."
        )
        age.add_metric([], max(0.0, self.wall() - commit_time) if commit_time else float("nan"))
        yield age
        pending = GaugeMetricFamily("ckptsync_checkpoints_pending", "Checkpoints not committed yet, by state.", labels=["state"])
        pending.add_metric(["settling"], len(st.pending))
        pending.add_metric(["queued"], len(st.queue))
        pending.add_metric(["uploading"], 1 if st.in_flight else 0)
        yield pending
        lag = GaugeMetricFamily("ckptsync_lag_seconds", "How long the longest-waiting complete checkpoint has waited.")
        lag.add_metric([], st.lag_seconds)
        yield lag
        committed = CounterMetricFamily("ckptsync_checkpoints_committed", "Checkpoints committed by this daemon.")
        committed.add_metric([], st.committed)
        yield committed
        read = CounterMetricFamily("ckptsync_read_bytes", "Bytes of checkpoints read and committed (raw size).")
        read.add_metric([], st.bytes_raw)
        yield read
        sent = CounterMetricFamily("ckptsync_uploaded_bytes", "Bytes uploaded (after compression and dedup).")
        sent.add_metric([], st.bytes_uploaded)
        yield sent
        ends = CounterMetricFamily("ckptsync_uploads", "Uploads by how they ended.", labels=["outcome"])
        for name in sorted({*OUTCOMES, *outcomes}):
            ends.add_metric([name], outcomes.get(name, 0))
        yield ends
        failures = CounterMetricFamily("ckptsync_failures", "Uploads that failed, by kind (remote, local, internal).", labels=["kind"])
        for name in sorted({*FAILURE_KINDS, *kinds}):
            failures.add_metric([name], kinds.get(name, 0))
        yield failures
        hist = HistogramMetricFamily("ckptsync_upload_duration_seconds", "Seconds each upload took, from first read to its end.")
        hist.add_metric([], [(_bound(b), n) for b, n in zip(UPLOAD_BUCKETS, buckets, strict=True)], total_seconds)
        yield hist
        draining = GaugeMetricFamily("ckptsync_draining", "1 while the daemon drains (shutting down), else 0.")
        draining.add_metric([], 1 if st.state == "draining" else 0)
        yield draining
        last = GaugeMetricFamily(
            "ckptsync_last_drain_unsynced", "Checkpoints the last drain left not synced (0: all synced; NaN: no drain ended yet)."
        )
        last.add_metric([], float("nan") if drain is None else drain)
        yield last


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


def serve_metrics(daemon: Daemon, address: str | None) -> MetricsServer | NoMetrics:
    """``/metrics`` of ``daemon`` at ``address``; a stand-in that serves nothing without one."""
    return MetricsServer(daemon, address) if address else NoMetrics()


class NoMetrics:
    """No metrics server (no ``--metrics-addr``)."""

    def close(self) -> None:
        pass


class MetricsServer:
    """``/metrics`` over HTTP for one daemon; stopped with :meth:`close`."""

    def __init__(self, daemon: Daemon, address: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        host, port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))  # type: ignore[arg-type]
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {address}: {exc.strerror or exc}", "choose another --metrics-addr port") from None
        self.port = self._server.server_port
        log.info("metrics at http://%s:%d/metrics", host if ":" not in host else f"[{host}]", self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
