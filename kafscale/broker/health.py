"""Health: the object store's state (healthy / degraded / unavailable) and readiness.

**Object-store health** follows KafScale's states, judged from a sliding window of the
broker's own object-store requests (:class:`ObjectStoreHealth`, fed by
:class:`kafscale.broker.instrumented.InstrumentedObjectStore`): the share of requests that
failed (after the backend's own retries; a missing object is an answer, not a failure) and
their median latency, each against a *degraded* and an *unavailable* threshold (broker
settings ``object-store.*``). The window is kept as one bucket per second (counts and a
logarithmic latency histogram), so its memory does not grow with the request rate; the median
is the upper edge of the histogram bin that holds it (within a factor of two, which is all a
threshold of seconds needs).

Two rules keep the state honest at the edges:

- an idle broker has no evidence: readiness then probes the store first (one GET of a key
  that does not exist, :data:`PROBE_KEY`) when nothing was asked of it for
  :attr:`HealthThresholds.probe_idle_s`;
- recovery shows at once: when the error rate says unavailable but the last
  :data:`RECOVERY_STREAK` requests succeeded, the state is degraded (the failures still in
  the window keep it from looking healthy until they leave it).

**Readiness** (:class:`Readiness`): the broker is ready when it serves the Kafka port, its
metadata store answers a cheap read within :data:`PROBE_TIMEOUT_S`, it holds its lease, its
object store is not unavailable and it is not draining. Otherwise the first failing check is
the reason (``/readyz`` answers 503 with it).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kafscale.broker.config import BrokerConfig
from kafscale.storage import NotFound

if TYPE_CHECKING:
    from kafscale.broker.server import Broker

log = logging.getLogger("kafscale.health")

HEALTHY = "healthy"
DEGRADED = "degraded"
UNAVAILABLE = "unavailable"
STATES = (HEALTHY, DEGRADED, UNAVAILABLE)

RECOVERY_STREAK = 3
"""Successful requests in a row after which failures in the window mean degraded, not
unavailable: the store is answering again."""
PROBE_TIMEOUT_S = 2.0
"""How long a readiness probe (metadata store, object store) may take before it counts as
failed (a store that hangs must not hang the probe: Kubernetes' own timeout is 1 s by
default, so a slow probe is reported as a failure by us rather than as a timeout by it)."""
PROBE_KEY = "health-probe/absent"
"""Under the namespace: a key that never exists; GETting it costs one request (a 404)."""

# Latency histogram bins (upper edges, seconds): 1 ms .. 64 s doubling, then everything above.
_EDGES = tuple(0.001 * 2**i for i in range(17))


@dataclass(frozen=True)
class HealthThresholds:
    """When the object store counts as degraded or unavailable (broker settings)."""

    window_s: float = 60.0
    latency_degraded_s: float = 1.0
    latency_unavailable_s: float = 5.0
    error_rate_degraded: float = 0.01
    error_rate_unavailable: float = 0.05

    @staticmethod
    def from_config(config: BrokerConfig) -> HealthThresholds:
        return HealthThresholds(
            config.object_store_health_window_ms / 1000,
            config.object_store_latency_degraded_ms / 1000,
            config.object_store_latency_unavailable_ms / 1000,
            config.object_store_error_rate_degraded,
            config.object_store_error_rate_unavailable,
        )

    @property
    def probe_idle_s(self) -> float:
        """Readiness probes the store when it was not used for this long (a sixth of the
        window, between 1 and 10 s): often enough for the window to hold evidence."""
        return min(10.0, max(1.0, self.window_s / 6))


@dataclass(frozen=True)
class HealthSnapshot:
    """The object store's state and the figures it was judged from."""

    state: str
    requests: int
    """Requests in the window."""
    error_rate: float
    median_latency_s: float
    since: float
    """Clock time (``time.monotonic``) the state was entered."""
    reason: str
    """Why it is not healthy ("" when healthy)."""

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "requests": self.requests,
            "error_rate": round(self.error_rate, 4),
            "median_latency_s": self.median_latency_s,
            "state_seconds": round(now - self.since, 3),
            "reason": self.reason,
        }


@dataclass
class _Second:
    at: int
    requests: int = 0
    failures: int = 0
    bins: list[int] = field(default_factory=lambda: [0] * (len(_EDGES) + 1))


class ObjectStoreHealth:
    """The object store's health from a sliding window of request outcomes and latencies."""

    def __init__(
        self, thresholds: HealthThresholds, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.thresholds = thresholds
        self.clock = clock
        self._seconds: deque[_Second] = deque()
        self._streak = 0
        """Successful requests since the last failure."""
        self.last_request = clock()
        """When a request last ended (the start counts as one: no probe right away)."""
        self._state = HEALTHY
        self._since = clock()

    def record(self, seconds: float, failed: bool) -> None:
        """One request ended after ``seconds``; ``failed``: it raised a store failure."""
        now = self.clock()
        self.last_request = now
        second = int(now)
        if not self._seconds or self._seconds[-1].at != second:
            self._seconds.append(_Second(second))
            self._trim(now)
        bucket = self._seconds[-1]
        bucket.requests += 1
        bucket.bins[bisect.bisect_left(_EDGES, seconds)] += 1
        if failed:
            bucket.failures += 1
            self._streak = 0
        else:
            self._streak += 1

    def _trim(self, now: float) -> None:
        oldest = now - self.thresholds.window_s
        while self._seconds and self._seconds[0].at + 1 <= oldest:
            self._seconds.popleft()

    @property
    def idle_s(self) -> float:
        """Seconds since the last request ended."""
        return self.clock() - self.last_request

    def snapshot(self) -> HealthSnapshot:
        """The current state (a change is logged)."""
        now = self.clock()
        self._trim(now)
        requests = sum(s.requests for s in self._seconds)
        failures = sum(s.failures for s in self._seconds)
        rate = failures / requests if requests else 0.0
        median = self._median(requests)
        t = self.thresholds
        state, reason = HEALTHY, ""
        if rate >= t.error_rate_unavailable and self._streak < RECOVERY_STREAK:
            state, reason = UNAVAILABLE, f"{failures} of {requests} requests failed"
        elif median >= t.latency_unavailable_s:
            state, reason = UNAVAILABLE, f"median latency {median:g}s"
        elif rate >= t.error_rate_degraded:
            state, reason = DEGRADED, f"{failures} of {requests} requests failed"
        elif median >= t.latency_degraded_s:
            state, reason = DEGRADED, f"median latency {median:g}s"
        if state != self._state:
            level = logging.INFO if state == HEALTHY else logging.WARNING
            log.log(level, "object store %s (was %s) %s", state, self._state, reason)
            self._state, self._since = state, now
        return HealthSnapshot(state, requests, rate, median, self._since, reason)

    def _median(self, requests: int) -> float:
        if not requests:
            return 0.0
        counts = [0] * (len(_EDGES) + 1)
        for s in self._seconds:
            for i, n in enumerate(s.bins):
                counts[i] += n
        half, seen = (requests + 1) // 2, 0
        for i, n in enumerate(counts):
            seen += n
            if seen >= half:
                return _EDGES[i] if i < len(_EDGES) else float("inf")
        return 0.0  # not reached


@dataclass(frozen=True)
class ReadinessReport:
    """Whether the broker is ready, the first reason it is not, and every check."""

    ready: bool
    reason: str
    checks: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "reason": self.reason, "checks": self.checks}


class Readiness:
    """The readiness checks of one broker (``/readyz``, ``kafscale_broker_ready``)."""

    def __init__(self, broker: Broker, health: ObjectStoreHealth) -> None:
        self.broker = broker
        self.health = health
        self._meta_probe: asyncio.Future[str] | None = None
        self._object_probe: asyncio.Future[None] | None = None
        self.last: ReadinessReport | None = None
        """The latest report (what the ``kafscale_broker_ready`` gauge shows)."""

    async def check(self) -> ReadinessReport:
        broker = self.broker
        checks: dict[str, Any] = {}
        reasons: list[str] = []
        checks["draining"] = broker.draining
        if broker.draining:
            reasons.append("draining: the broker is shutting down")
        server = broker.server
        checks["listening"] = server is not None and server.is_serving()
        if not checks["listening"]:
            reasons.append("not listening on the Kafka port (yet)")
        if not broker.draining:  # a draining broker closes its stores: no probes then
            meta_error = await self._shared("_meta_probe", self._probe_meta)
            checks["metadata_store"] = meta_error or "ok"
            if meta_error:
                reasons.append(f"metadata store: {meta_error}")
            if self.health.idle_s >= self.health.thresholds.probe_idle_s:
                await self._shared("_object_probe", self._probe_objects)
        held = broker.cluster.held
        checks["lease"] = held is not None and held.alive
        if not checks["lease"]:
            why = held.reason if held is not None and held.reason else "not registered"
            reasons.append(f"no lease in the metadata store ({why})")
        snapshot = self.health.snapshot()
        checks["object_store"] = snapshot.to_json(self.health.clock())
        if snapshot.state == UNAVAILABLE:
            reasons.append(f"object store unavailable: {snapshot.reason}")
        report = ReadinessReport(not reasons, reasons[0] if reasons else "", checks)
        self.last = report
        return report

    async def _shared(self, slot: str, probe: Callable[[], Any]) -> Any:
        """Run ``probe`` unless the same probe is already running: then wait for that one
        (scrapes and readiness polls arriving together cost one probe)."""
        running: asyncio.Future[Any] | None = getattr(self, slot)
        if running is None or running.done():
            running = asyncio.ensure_future(probe())
            setattr(self, slot, running)
        return await asyncio.shield(running)

    async def _probe_meta(self) -> str:
        """Why the metadata store did not answer a revision read in time ("" if it did)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.broker.meta.revision()
        except TimeoutError:
            return f"no answer within {PROBE_TIMEOUT_S:g}s"
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return ""

    async def _probe_objects(self) -> None:
        """One cheap request, so that an idle broker's object-store state is evidence, not
        the absence of it (the instrumented store records its outcome)."""
        key = f"{self.broker.config.namespace}/{PROBE_KEY}"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.broker.objects.get(key)
        except NotFound:
            pass
        except TimeoutError:
            # The request was cancelled before the store wrapper saw an outcome: record it.
            self.health.record(time.perf_counter() - started, True)
        except Exception:
            pass  # recorded by the instrumented store
