"""Prometheus metrics of one broker, in a registry of its own.

Each :class:`Broker` has its own :class:`BrokerMetrics` (a ``CollectorRegistry`` of its own, not
prometheus-client's global default: tests and tools run several brokers in one process). The
code records events at a few choke points only:

- request handling (``Broker._handle``: count and latency by API; the answer's error codes);
- the flusher (:class:`kafscale.broker.log.FlushCycle`, through ``LogManager.cycle_listeners``):
  duration, bytes, partitions, objects, and the bytes and records committed per topic;
- Fetch answers (bytes and records out per topic);
- the object-store and metadata-store wrappers (:mod:`kafscale.broker.instrumented`);
- group state transitions (``GroupCoordinator.transition_listeners``).

Everything that is a *state* (connections, bytes in flight, partitions owned, groups by state,
members, consumer lag, cache and compaction counters kept by their components) is read when
scraped by :class:`BrokerCollector`, so it costs nothing between scrapes.

Names follow Prometheus conventions: ``kafscale_`` prefix, base units (seconds, bytes),
``_total`` on counters. Label sets are bounded: API names and versions, Kafka error names,
topics, store operations, group states; never client ids or member ids. Consumer lag is the
one family that grows with use (a series per group and committed partition, for the groups
this broker coordinates), capped at :data:`MAX_LAG_SERIES` (past it, per-topic sums only).
The ``_created`` series prometheus-client adds to every counter and histogram are disabled:
they would double the series for a timestamp nobody charts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from generated.errors import error_name
from kafscale.protocol.message import Struct
from kafscale.protocol.wire import Buffer

if TYPE_CHECKING:
    from kafscale.broker.log import FlushCycle
    from kafscale.broker.server import Broker

log = logging.getLogger("kafscale.metrics")

disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Seconds: from a cached read (sub-millisecond) to a stalled object store."""
BYTES_BUCKETS = tuple(float(1024 * 4**i) for i in range(10))
"""1 KiB to 256 MiB, by fours (a flush cycle's data)."""
PARTITIONS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
MAX_LAG_SERIES = 10_000
"""Per-partition consumer-lag series one broker exports at most; past this only the per-topic
sums are exported (Prometheus copes with many more, but a scrape should stay cheap)."""
LAG_RENDER_S = 5.0
"""Consumer lag is computed and rendered at most this often (scrapes in between reuse it): with
1,000 partitions and 100 groups it is two thirds of a scrape's series, and it moves slowly."""
RATE_SECONDS = 300
"""Seconds of per-second samples kept for ``/api/rates`` (live charts)."""
FLUSH_SAMPLES = 4096
"""Flush durations kept between two rate ticks at most."""


def error_label(code: int) -> str:
    """The ``error`` label of an error code: Kafka's name (``NOT_LEADER_OR_FOLLOWER``), else the
    number (a code newer than our table)."""
    return error_name(code) or str(code)


# --- error codes in a response -----------------------------------------------------------------

# Per response (or struct) class: how to reach its error codes. Each entry is (field name,
# kind, plan of the element): kind "code" (an error_code field), "struct" or "array". Only
# fields that lead to an error code are kept, so a Fetch answer's records are never visited.
_Plan = tuple[tuple[str, str, Any], ...]
_PLANS: dict[type, _Plan] = {}


def _plan(cls: type[Struct]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    _PLANS[cls] = ()  # a recursive struct (none today) ends here
    steps: list[tuple[str, str, Any]] = []
    for f in cls._fields:
        if f.struct is not None:
            inner = _plan(f.struct)
            if inner:
                steps.append((f.name, "array" if f.is_array else "struct", inner))
        elif f.name == "error_code":
            steps.append((f.name, "code", None))
    plan = _PLANS[cls] = tuple(steps)
    return plan


def error_codes(message: Struct) -> Iterator[int]:
    """Every nonzero error code in ``message`` (a response), once per occurrence: a Produce
    answer with three failed partitions yields three codes."""
    yield from _walk(message, _plan(type(message)))


def _walk(obj: Any, plan: _Plan) -> Iterator[int]:
    for name, kind, inner in plan:
        value = getattr(obj, name, None)
        if value is None:
            continue
        if kind == "code":
            if value:
                yield value
        elif kind == "struct":
            yield from _walk(value, inner)
        else:
            for item in value:
                yield from _walk(item, inner)


def count_records(data: Buffer) -> int:
    """Records in whole v2 record batches (each batch's last offset delta + 1, read from its
    header; nothing is decompressed)."""
    view = memoryview(data)
    pos, count = 0, 0
    while pos + 27 <= len(view):
        size = int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True) + 12
        count += int.from_bytes(view[pos + 23 : pos + 27], "big", signed=True) + 1
        pos += max(size, 12)
    return count


# --- rates for live charts ---------------------------------------------------------------------


@dataclass(frozen=True)
class RateSample:
    """One second of traffic (per-second rates) and the flush cycles that ended in it."""

    at: float
    """Wall-clock time (s) at the end of the second."""
    produce_bytes: float
    produce_records: float
    fetch_bytes: float
    fetch_records: float
    requests: float
    flushes: int
    flush_avg_s: float
    flush_max_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "t": round(self.at, 3),
            "produce_bytes": self.produce_bytes,
            "produce_records": self.produce_records,
            "fetch_bytes": self.fetch_bytes,
            "fetch_records": self.fetch_records,
            "requests": self.requests,
            "flushes": self.flushes,
            "flush_avg_s": round(self.flush_avg_s, 6),
            "flush_max_s": round(self.flush_max_s, 6),
        }


class RateRing:
    """The last :data:`RATE_SECONDS` seconds of traffic, one :class:`RateSample` per
    :meth:`tick` (the HTTP server ticks it every second)."""

    def __init__(self, metrics: BrokerMetrics, size: int = RATE_SECONDS) -> None:
        self.metrics = metrics
        self.samples: deque[RateSample] = deque(maxlen=size)
        self._last = self._totals()
        self._last_at = time.monotonic()

    def _totals(self) -> tuple[int, int, int, int, int]:
        m = self.metrics
        return (
            sum(v[0] for v in m.topic_in.values()),
            sum(v[1] for v in m.topic_in.values()),
            sum(v[0] for v in m.topic_out.values()),
            sum(v[1] for v in m.topic_out.values()),
            m.requests_seen,
        )

    def tick(self) -> RateSample:
        """Close the current second: rates since the previous tick, its flush durations."""
        now = time.monotonic()
        totals = self._totals()
        span = max(now - self._last_at, 1e-3)
        rates = [round((b - a) / span, 3) for a, b in zip(self._last, totals, strict=True)]
        self._last, self._last_at = totals, now
        flushes, self.metrics.flush_samples = self.metrics.flush_samples, []
        sample = RateSample(
            time.time(),
            rates[0],
            rates[1],
            rates[2],
            rates[3],
            rates[4],
            len(flushes),
            sum(flushes) / len(flushes) if flushes else 0.0,
            max(flushes, default=0.0),
        )
        self.samples.append(sample)
        return sample


# --- the metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreOperation:
    """The metric children of one store operation (bound once: no label lookup per call)."""

    requests: Any
    seconds: Any
    errors: Any


class BrokerMetrics:
    """One broker's metrics and the functions its code calls when something happens."""

    def __init__(self, *, process: bool = True) -> None:
        """``process``: also export the process's CPU, memory and file descriptors (and
        Python's version): one set per process, so tools running several brokers in one
        process still get one each (each registry is scraped on its own)."""
        r = self.registry = CollectorRegistry()
        self.lag_registry = CollectorRegistry()
        """Consumer lag (:class:`LagCollector`): rendered apart, see :meth:`exposition`."""
        self._lag_rendered: dict[str, bytes] = {}
        self._lag_at = float("-inf")
        self.requests = Counter(
            "kafscale_requests",
            "Requests handled, by API and version.",
            ["api", "version"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kafscale_request_duration_seconds",
            "Time from reading a request to its answer being ready (ordering waits, long polls "
            "and flushes included), by API.",
            ["api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.response_errors = Counter(
            "kafscale_response_errors",
            "Error codes answered, by API and Kafka error name (once per occurrence: a "
            "partition's error counts once).",
            ["api", "error"],
            registry=r,
        )
        self.flush_seconds = Histogram(
            "kafscale_flush_duration_seconds",
            "Flush cycles: from taking the pending data to its commit (upload included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_bytes = Histogram(
            "kafscale_flush_bytes",
            "Record bytes per flush cycle.",
            buckets=BYTES_BUCKETS,
            registry=r,
        )
        self.flush_partitions = Histogram(
            "kafscale_flush_partitions",
            "Partitions per flush cycle.",
            buckets=PARTITIONS_BUCKETS,
            registry=r,
        )
        self.flush_objects = Counter(
            "kafscale_flush_objects", "Ingest objects written by flush cycles.", registry=r
        )
        self.flush_failures = Counter(
            "kafscale_flush_partition_failures",
            "Partition flushes that failed (their produce requests got a retriable error).",
            registry=r,
        )
        self._object = _store_family(r, "object_store", "object-store")
        self.object_bytes = Counter(
            "kafscale_object_store_bytes",
            "Bytes written (put, create) and read (get, get_range).",
            ["operation"],
            registry=r,
        )
        self._meta = _store_family(r, "metadata", "metadata-store")
        self.metadata_conflicts = Counter(
            "kafscale_metadata_txn_conflicts",
            "Metadata transactions whose compares failed (another writer moved first).",
            registry=r,
        )
        self.group_rebalances = Counter(
            "kafscale_group_rebalances",
            "Rebalances started by groups this broker coordinates.",
            registry=r,
        )
        self.scrape_seconds = Histogram(
            "kafscale_scrape_duration_seconds",
            "Time to answer /metrics (lag refresh and readiness checks included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.topic_in: dict[str, list[int]] = {}
        """Topic -> [bytes, records] committed by produce requests (exported on scrape)."""
        self.topic_out: dict[str, list[int]] = {}
        """Topic -> [bytes, records] answered to Fetch requests."""
        self.requests_seen = 0
        self.flush_samples: list[float] = []
        """Flush durations since the last rate tick (``/api/rates``)."""
        self.rates = RateRing(self)
        self._request_children: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._error_children: dict[tuple[str, int], Any] = {}
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # --- recording -----------------------------------------------------------------------------

    def request(self, api_key: int, api: str, version: int, seconds: float) -> None:
        """A request was handled (answered or not) after ``seconds``."""
        children = self._request_children.get((api_key, version))
        if children is None:
            children = (
                self.requests.labels(api, str(version)),
                self.request_seconds.labels(api),
            )
            self._request_children[(api_key, version)] = children
        children[0].inc()
        children[1].observe(seconds)
        self.requests_seen += 1

    def response(self, api: str, response: Struct) -> None:
        """Count the error codes of an answer."""
        for code in error_codes(response):
            self.error(api, code)

    def error(self, api: str, code: int) -> None:
        child = self._error_children.get((api, code))
        if child is None:
            child = self._error_children[(api, code)] = self.response_errors.labels(
                api, error_label(code)
            )
        child.inc()

    def flush_cycle(self, cycle: FlushCycle) -> None:
        """A flush cycle ended (committed, or failed in part or whole)."""
        self.flush_seconds.observe(cycle.seconds)
        self.flush_bytes.observe(cycle.bytes)
        self.flush_partitions.observe(cycle.partitions)
        self.flush_objects.inc(cycle.objects)
        if cycle.failed:
            self.flush_failures.inc(cycle.failed)
        for topic, (size, records) in cycle.committed.items():
            totals = self.topic_in.setdefault(topic, [0, 0])
            totals[0] += size
            totals[1] += records
        if len(self.flush_samples) < FLUSH_SAMPLES:
            self.flush_samples.append(cycle.seconds)

    def fetched(self, topic: str, size: int, records: int) -> None:
        """A Fetch answer carried ``size`` bytes (``records`` records) of ``topic``."""
        totals = self.topic_out.setdefault(topic, [0, 0])
        totals[0] += size
        totals[1] += records

    def forget_topic(self, topic: str) -> None:
        """A deleted topic's series go (a topic created again starts from zero)."""
        self.topic_in.pop(topic, None)
        self.topic_out.pop(topic, None)

    def object_store(self, operation: str) -> StoreOperation:
        return self._object(operation)

    def metadata_store(self, operation: str) -> StoreOperation:
        return self._meta(operation)

    def group_transition(self, group: str, old: str, new: str) -> None:
        """A group this broker coordinates changed state."""
        if new == "PreparingRebalance":
            self.group_rebalances.inc()

    def register(self, collector: Any) -> None:
        """Export a collector's metrics with these (``collect()`` runs on every scrape)."""
        self.registry.register(collector)

    def register_lag(self, collector: Any) -> None:
        """Export the consumer-lag collector (rendered at most every :data:`LAG_RENDER_S`)."""
        self.lag_registry.register(collector)

    def lag_due(self) -> bool:
        """Whether the next scrape renders consumer lag again (its caches should be fresh)."""
        return time.monotonic() - self._lag_at >= LAG_RENDER_S

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The answer to a scrape with this ``Accept`` header, and its content type: the
        text format, or OpenMetrics when asked for (prometheus-client's encoders). Consumer
        lag is rendered again only once :data:`LAG_RENDER_S` have passed."""
        encoder, content_type = choose_encoder(accept)
        now = time.monotonic()
        if now - self._lag_at >= LAG_RENDER_S:
            self._lag_rendered.clear()
            self._lag_at = now
        lag = self._lag_rendered.get(content_type)
        if lag is None:
            lag = self._lag_rendered[content_type] = encoder(self.lag_registry)
        body = encoder(self.registry)
        eof = b"# EOF\n"
        if body.endswith(eof):  # OpenMetrics: one end marker, at the very end
            return body[: -len(eof)] + lag.removesuffix(eof) + eof, content_type
        return body + lag, content_type


def _store_family(
    registry: CollectorRegistry, name: str, what: str
) -> Callable[[str], StoreOperation]:
    requests = Counter(
        f"kafscale_{name}_requests",
        f"Requests to the {what}, by operation.",
        ["operation"],
        registry=registry,
    )
    seconds = Histogram(
        f"kafscale_{name}_request_duration_seconds",
        f"Latency of {what} requests (the backend's retries included), by operation.",
        ["operation"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    errors = Counter(
        f"kafscale_{name}_request_errors",
        f"{what.capitalize()} requests that failed (after the backend's retries), by operation.",
        ["operation"],
        registry=registry,
    )
    bound: dict[str, StoreOperation] = {}

    def child(operation: str) -> StoreOperation:
        op = bound.get(operation)
        if op is None:
            op = bound[operation] = StoreOperation(
                requests.labels(operation), seconds.labels(operation), errors.labels(operation)
            )
        return op

    return child


# --- state read on scrape ----------------------------------------------------------------------


class BrokerCollector:
    """The broker's state as metrics, read when scraped (nothing is kept between scrapes)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterable[Metric]:
        b = self.broker
        m = b.metrics
        from kafscale import __version__

        info = GaugeMetricFamily(
            "kafscale_broker_info",
            "This broker (value 1): its id, cluster id and version.",
            labels=["broker_id", "cluster_id", "version"],
        )
        info.add_metric([str(b.config.broker_id), b.config.cluster_id, __version__], 1)
        yield info
        report = b.readiness.last if b.readiness is not None else None
        yield _gauge(
            "kafscale_broker_ready",
            "1 when the broker is ready (what /readyz answers 200 for), as of this scrape.",
            1 if report is not None and report.ready else 0,
        )
        yield _gauge(
            "kafscale_broker_draining", "1 while the broker drains (shuts down).", b.draining
        )
        yield _gauge("kafscale_connections", "Open client connections.", len(b._connections))
        yield _gauge(
            "kafscale_in_flight_request_bytes",
            "Bytes of requests being processed (the broker-wide budget in use).",
            b.budget.used,
        )
        yield _gauge(
            "kafscale_in_flight_request_bytes_limit",
            "The broker-wide budget of request bytes being processed (in-flight-bytes).",
            b.budget.capacity,
        )
        yield _gauge(
            "kafscale_pending_produce_bytes",
            "Produced bytes waiting for the next flush cycle.",
            b.logs.pending_bytes,
        )
        owned = len(b.logs.claims) if b.logs.cluster is not None else len(b.logs.logs)
        yield _gauge("kafscale_partitions_owned", "Partitions this broker owns.", owned)
        yield _counter(
            "kafscale_leader_epoch_changes",
            "Leader epochs this broker started (partitions it took over, epochs it bumped).",
            b.logs.epochs_started,
        )
        live = b.cluster.live() if b.cluster.held is not None else {}
        yield _gauge("kafscale_cluster_brokers", "Live brokers this broker sees.", len(live))
        yield from self._topics(m)
        yield from self._groups()
        yield from self._cache_and_maintenance()
        yield from self._object_store_health()

    def _topics(self, m: BrokerMetrics) -> Iterator[Metric]:
        for direction, totals in (("in", m.topic_in), ("out", m.topic_out)):
            verb = "committed by produce requests" if direction == "in" else "answered to Fetch"
            size = CounterMetricFamily(
                f"kafscale_topic_bytes_{direction}", f"Record bytes {verb}.", labels=["topic"]
            )
            records = CounterMetricFamily(
                f"kafscale_topic_records_{direction}", f"Records {verb}.", labels=["topic"]
            )
            for topic, (n_bytes, n_records) in sorted(totals.items()):
                size.add_metric([topic], n_bytes)
                records.add_metric([topic], n_records)
            yield size
            yield records

    def _groups(self) -> Iterator[Metric]:
        b = self.broker
        by_state = GaugeMetricFamily(
            "kafscale_groups",
            "Groups this broker coordinates (in memory), by state.",
            labels=["state"],
        )
        counts = dict.fromkeys(
            ("Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"), 0
        )
        members = 0
        for group in b.groups.groups.values():
            counts[group.state] = counts.get(group.state, 0) + 1
            members += len(group.members)
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        yield _gauge(
            "kafscale_group_members", "Members of the groups this broker coordinates.", members
        )

    def _cache_and_maintenance(self) -> Iterator[Metric]:
        b = self.broker
        cache = b.logs.cache
        yield _counter(
            "kafscale_segment_cache_hits",
            "Segment reads served from the in-memory cache (or joining a read in progress).",
            cache.hits,
        )
        yield _counter(
            "kafscale_segment_cache_misses",
            "Segment reads that started an object-store read.",
            cache.misses,
        )
        yield _gauge(
            "kafscale_segment_cache_bytes",
            "Bytes of memory the segment cache holds (buffers its entries share counted once).",
            cache.used,
        )
        yield _gauge(
            "kafscale_segment_cache_capacity_bytes",
            "Capacity of the segment cache (segment-cache-bytes).",
            cache.capacity,
        )
        yield _counter(
            "kafscale_compactions",
            "Compaction swaps committed (pieces merged into segments).",
            b.compactor.compactions,
        )
        yield _counter(
            "kafscale_compaction_bytes",
            "Bytes written by committed compaction swaps.",
            b.compactor.compacted_bytes,
        )
        yield _counter(
            "kafscale_retention_log_start_moves",
            "Times retention moved a partition's log start offset.",
            b.compactor.retention_moves,
        )

    def _object_store_health(self) -> Iterator[Metric]:
        from kafscale.broker.health import STATES

        health = self.broker.health
        snap = health.snapshot()
        state = GaugeMetricFamily(
            "kafscale_object_store_health_state",
            "1 for the object store's current health state (healthy, degraded, unavailable).",
            labels=["state"],
        )
        for name in STATES:
            state.add_metric([name], 1 if snap.state == name else 0)
        yield state
        yield _gauge(
            "kafscale_object_store_health_state_seconds",
            "Seconds the object store has been in its current health state.",
            health.clock() - snap.since,
        )
        yield _gauge(
            "kafscale_object_store_error_ratio",
            "Share of object-store requests in the health window that failed.",
            snap.error_rate,
        )
        yield _gauge(
            "kafscale_object_store_median_latency_seconds",
            "Median object-store request latency in the health window (bin upper edge).",
            snap.median_latency_s,
        )


class LagCollector:
    """Consumer lag of the groups this broker coordinates (its own registry: a scrape renders
    it at most every :data:`LAG_RENDER_S`, see :meth:`BrokerMetrics.exposition`)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "kafscale_consumer_group_lag",
            "High watermark minus committed offset, per group and partition (groups this "
            "broker coordinates).",
            labels=["group", "topic", "partition"],
        )
        lag_sum = GaugeMetricFamily(
            "kafscale_consumer_group_lag_sum",
            "Consumer lag summed over a topic's partitions, per group.",
            labels=["group", "topic"],
        )
        sums: dict[tuple[str, str], int] = {}
        series = 0
        for group_id, topic, partition, value in self.broker.lag.lags():
            key = (group_id, topic)
            sums[key] = sums.get(key, 0) + value
            if series < MAX_LAG_SERIES:
                lag.add_metric([group_id, topic, str(partition)], value)
                series += 1
        for (group_id, topic), value in sorted(sums.items()):
            lag_sum.add_metric([group_id, topic], value)
        yield lag
        yield lag_sum


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))
