"""Prometheus metrics of a running proxy (``mirror run --metrics HOST:PORT``).

Off unless asked for. What is counted comes from each connection's finished capture record
(``connection_finished``, called where the record is handed to the store, so it works with
``--no-store`` too), from the upstream handshakes (``handshake``) and from the store process's
counters (polled once a second by a thread: ``store_stats``). Every name starts ``mirror_``:

- ``connections_total{mode, outcome}``: outcome ``ok`` or the stage that failed;
- ``upstream_errors_total{reason}``: the stage of an upstream failure (connect, TLS, relay...);
- ``field_fidelity_total{field, status}``: per mirrored field, exact / approximated / impossible,
  as the relay plan predicts it for BoringSSL (counted per plan, cheaply, at the connection's
  end; the stored record's verdicts are the measured ones);
- ``mismatching_connections_total`` and ``mismatching_shapes_total``: connections whose client
  asked for something that cannot be sent upstream (a field ``impossible``), and the distinct
  client shapes (relay plans) among them, counted the first time each is seen;
- ``upstream_handshake_seconds{outcome}`` and ``time_to_first_byte_seconds`` histograms
  (the second: from a connection's first request to the first byte of its response);
- ``store_queue_depth`` (records not committed yet), ``store_dropped_records_total``,
  ``store_committed_records_total``, ``store_failing`` (1 while commits fail);
- ``syn_rewrites_total{result}``: SYNs rewritten, or ``failed`` (the rewriter was on but did
  not see our SYN).

With ``--workers N`` the processes share one directory of metric files
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR`` set by ``mirror run``
before the workers start); the first process serves the sum of all of them on the one
address. ``mismatching_shapes_total`` is then counted per process (a shape seen by two
workers counts twice).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from mirror.record.deferred import Deferred
from mirror.record.measured_fidelity import measured_fidelity_of
from mirror.record.plan_views import plan_fidelity_of, plan_views
from mirror.record.values import fidelity_report

log = logging.getLogger("mirror.metrics")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
STORE_POLL_SECONDS = 1.0
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_MAX_CACHED_PLANS = 512


class ProxyMetrics:
    """The proxy's counters; ``serve`` starts the HTTP endpoint (one per proxy)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter("mirror_connections", "Connections by mode and outcome",
                                   ["mode", "outcome"], registry=r)
        self.upstream_errors = Counter("mirror_upstream_errors",
                                       "Upstream failures by reason (the stage that failed)",
                                       ["reason"], registry=r)
        self.fidelity = Counter("mirror_field_fidelity",
                                "Mirrored fields by field and status (exact, approximated, "
                                "impossible)", ["field", "status"], registry=r)
        self.mismatching = Counter("mirror_mismatching_connections",
                                   "Connections with a field that cannot be mirrored", registry=r)
        self.mismatching_shapes = Counter("mirror_mismatching_shapes",
                                          "Distinct client shapes (relay plans) with a field "
                                          "that cannot be mirrored", registry=r)
        self.handshakes = Histogram("mirror_upstream_handshake_seconds",
                                    "Upstream connect and TLS handshake time", ["outcome"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("mirror_time_to_first_byte_seconds",
                              "From a connection's first request to its response's first byte",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.syn_rewrites = Counter("mirror_syn_rewrites", "Upstream SYNs rewritten, or not "
                                    "(failed: the rewriter was on but did not see it)",
                                    ["result"], registry=r)
        self.store_depth = Gauge("mirror_store_queue_depth",
                                 "Capture records handed to the store, not committed yet",
                                 registry=r, multiprocess_mode="livesum")
        self.store_failing = Gauge("mirror_store_failing",
                                   "1 while the store's commits fail (records kept, retried)",
                                   registry=r, multiprocess_mode="livesum")
        self.store_dropped = Counter("mirror_store_dropped_records",
                                     "Capture records dropped: kept while the store failed, "
                                     "beyond the bound", registry=r)
        self.store_committed = Counter("mirror_store_committed_records",
                                       "Capture records committed by the store", registry=r)
        self._ok: dict[str, Any] = {}     # mode -> the connections{mode, ok} child
        self._plans: dict[int, tuple[bytes, list, bool]] = {}
        self._fields: dict[tuple[str, str], Any] = {}
        self._last_store = {"dropped": 0, "committed": 0}
        self._stop = threading.Event()
        self._server: Any = None

    # -- fed by the proxy ----------------------------------------------------------------------

    def connection_finished(self, record: dict, syn_rewriting: bool) -> None:
        """Count one finished connection from its capture record (never raises)."""
        try:
            self._count(record, syn_rewriting)
        except Exception:
            log.exception("a connection could not be counted in the metrics")

    def _count(self, record: dict, syn_rewriting: bool) -> None:
        mode = record.get("mode") or "unknown"
        error = record.get("error")
        if error:
            stage = error.get("stage") if isinstance(error, dict) else None
            self.connections.labels(mode, stage or "error").inc()
            upstream = record.get("upstream")
            if isinstance(upstream, dict) and upstream.get("error"):
                self.upstream_errors.labels(stage or "upstream").inc()
        else:
            child = self._ok.get(mode)
            if child is None:
                child = self._ok[mode] = self.connections.labels(mode, "ok")
            child.inc()
        emitted = record.get("emitted")
        if isinstance(emitted, dict):
            self._count_fidelity(emitted.get("fidelity"))
            tcp = emitted.get("tcp")
            if syn_rewriting and isinstance(tcp, dict):
                self.syn_rewrites.labels("rewritten" if tcp.get("syn") is not None
                                         else "failed").inc()
        http = record.get("http")
        if isinstance(http, dict):
            requests = http.get("requests")
            if requests:
                first = requests[0]
                response = first.get("response") if isinstance(first, dict) else None
                if isinstance(response, dict) and "time" in response and "time" in first:
                    self.ttfb.observe(max(0.0, response["time"] - first["time"]))

    def _count_fidelity(self, fidelity: Any) -> None:
        """Per field statuses, without making the record's full report: a plan's TLS verdicts
        are read once per plan, the TCP ones are ``(status, detail)`` pairs already."""
        tls: list = []
        tcp: dict = {}
        impossible = False
        new_shape = False
        if isinstance(fidelity, Deferred):
            if fidelity.function in (plan_fidelity_of, measured_fidelity_of):
                views, tcp = fidelity.args[:2]     # the plan's TLS verdicts, as predicted
                entry = self._plans.get(id(views))
                if entry is None or entry[0] is not views:
                    if len(self._plans) >= _MAX_CACHED_PLANS:
                        self._plans.clear()
                    report = plan_views(views)[1]
                    statuses = [(name, (v or {}).get("status") or "unknown")
                                for name, v in report.items()]
                    shape_impossible = any(s == "impossible" for _, s in statuses)
                    entry = self._plans[id(views)] = (
                        views, [self._field(n, s) for n, s in statuses], shape_impossible)
                    new_shape = shape_impossible
                tls, impossible = entry[1], entry[2]
            elif fidelity.function is fidelity_report:
                tcp = fidelity.args[1]
        elif isinstance(fidelity, dict):
            for name, verdict in fidelity.items():
                status = verdict.get("status") if isinstance(verdict, dict) else None
                impossible = impossible or status == "impossible"
                self._field(name, status or "unknown").inc()
        for child in tls:
            child.inc()
        for name, verdict in tcp.items():
            status = verdict[0] if isinstance(verdict, (tuple, list)) and verdict else "unknown"
            impossible = impossible or status == "impossible"
            self._field(f"tcp.{name}", status).inc()
        if impossible:
            self.mismatching.inc()
        if new_shape:
            self.mismatching_shapes.inc()

    def _field(self, name: str, status: str):
        child = self._fields.get((name, status))
        if child is None:
            child = self._fields[(name, status)] = self.fidelity.labels(name, status)
        return child

    def handshake(self, seconds: float, ok: bool) -> None:
        self.handshakes.labels("ok" if ok else "error").observe(max(0.0, seconds))

    def store_stats(self, stats: dict) -> None:
        """The store process's counters (``StoreProcess.stats``)."""
        self.store_depth.set(int(stats.get("pending", 0)) + int(stats.get("backlog", 0)))
        self.store_failing.set(1 if stats.get("error") else 0)
        for name, counter in (("dropped", self.store_dropped),
                              ("committed", self.store_committed)):
            value = int(stats.get(name, 0))
            if value > self._last_store[name]:
                counter.inc(value - self._last_store[name])
            self._last_store[name] = value

    # -- running -----------------------------------------------------------------------------

    def watch_store(self, store) -> None:
        """Poll ``store.stats()`` once a second on a daemon thread (until ``stop``)."""
        def poll() -> None:
            while not self._stop.wait(STORE_POLL_SECONDS):
                try:
                    self.store_stats(store.stats())
                except Exception as error:  # noqa: BLE001 - a store that is gone says so in its log
                    log.debug("store counters unavailable: %s", error)

        threading.Thread(target=poll, name="mirror-metrics-store", daemon=True).start()

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP endpoint (a daemon thread); returns the address it is bound to. In
        multiprocess mode it serves the sum over every process's metric files."""
        registry = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        try:
            self._server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as error:
            raise OSError(error.errno, f"--metrics {host}:{port}: {error.strerror or error}") \
                from None
        bound = self._server.server_address
        return bound[0], bound[1]

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
