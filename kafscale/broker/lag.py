"""Consumer lag without a store scan per scrape: cached committed offsets and high watermarks.

Lag is high watermark minus committed offset, per group and partition. Each group's lag is
exported by the broker that coordinates it (no other broker has it in memory, and no series is
exported twice across a cluster):

- **committed offsets** of a coordinated group are read once (one range over that group's
  keys) and then kept current by the broker's own commits (the coordinator is the only broker
  that can commit for its group: every commit compares its coordinator key), through
  ``Offsets.listeners``; deletions re-read the group. Each is re-read after
  :data:`COMMITTED_MAX_AGE_S` all the same (whatever else removed offsets: retention run
  elsewhere), at most :data:`REFRESH_GROUPS` such re-reads per refresh;
- **high watermarks** come from memory for the partitions this broker owns, else from one
  range read of the topic's partition states, kept :data:`STATES_MAX_AGE_S`.

:meth:`ConsumerLag.refresh` runs (bounded in time) before a scrape is rendered; the collector
then reads only memory. A scrape thus costs at most :data:`REFRESH_GROUPS` small range reads
plus one per topic whose cached states are stale, whatever the number of groups, once each
group has been read (the first scrape after a broker takes groups over reads each of them once,
:data:`READ_CONCURRENCY` at a time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kafscale.broker.offsets import CommittedOffset, TopicPartition, live

if TYPE_CHECKING:
    from kafscale.broker.server import Broker

log = logging.getLogger("kafscale.metrics")

COMMITTED_MAX_AGE_S = 60.0
"""A coordinated group's committed offsets are re-read from the store after this long."""
STATES_MAX_AGE_S = 10.0
"""Partition states of partitions owned elsewhere are re-read after this long."""
REFRESH_GROUPS = 16
"""Groups whose cached committed offsets one refresh reads again at most (the stalest first)."""
READ_CONCURRENCY = 16
"""Groups' committed offsets read at once."""
REFRESH_TIMEOUT_S = 2.0
"""A refresh gives up after this long (the scrape then shows what is cached)."""


@dataclass(frozen=True)
class PartitionState:
    """A partition's committed state (as its owner has it, or as last read from the store)."""

    log_start: int
    hw: int
    epoch: int


class PartitionStates:
    """Partitions' log start, high watermark and leader epoch, for any broker to show."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._stored: dict[str, tuple[float, dict[int, PartitionState]]] = {}

    def local(self, topic: str, partition: int) -> PartitionState | None:
        """From memory, when this broker has the partition loaded (it owns it)."""
        plog = self.broker.logs.logs.get((topic, partition))
        if plog is None:
            return None
        return PartitionState(plog.log_start, plog.hw, plog.epoch)

    def cached(self, topic: str, partition: int) -> PartitionState | None:
        """From memory, else as last read from the store (None if never read)."""
        state = self.local(topic, partition)
        if state is not None:
            return state
        stored = self._stored.get(topic)
        return None if stored is None else stored[1].get(partition)

    async def topic(
        self, topic: str, max_age: float = STATES_MAX_AGE_S
    ) -> dict[int, PartitionState]:
        """Every partition of ``topic``: owned ones from memory, the others from the store
        (one range read, unless the last one is younger than ``max_age``)."""
        known = self.broker.topics.get(topic)
        count = known.partitions if known is not None else 0
        out: dict[int, PartitionState] = {}
        missing = False
        for p in range(count):
            state = self.local(topic, p)
            if state is None:
                missing = True
            else:
                out[p] = state
        if not missing:
            return out
        stored = self._stored.get(topic)
        if stored is None or time.monotonic() - stored[0] > max_age:
            stored = (time.monotonic(), await self._read(topic))
            self._stored[topic] = stored
        for p, state in stored[1].items():
            out.setdefault(p, state)
        return out

    async def _read(self, topic: str) -> dict[int, PartitionState]:
        topics = self.broker.topics
        prefix = topics.partitions_prefix(topic)
        out: dict[int, PartitionState] = {}
        for kv in await self.broker.meta.range(prefix):
            tail = kv.key[len(prefix) :]
            if not tail.isdigit():
                continue
            d = json.loads(kv.value)
            out[int(tail)] = PartitionState(
                int(d.get("log_start", 0)), int(d.get("hw", 0)), int(d.get("epoch", 0))
            )
        return out

    def forget(self, topic: str) -> None:
        self._stored.pop(topic, None)


class ConsumerLag:
    """Lag of the groups this broker coordinates, from cached offsets and watermarks."""

    def __init__(self, broker: Broker, states: PartitionStates) -> None:
        self.broker = broker
        self.states = states
        self._committed: dict[str, tuple[float, dict[TopicPartition, CommittedOffset]]] = {}
        self._refreshing: asyncio.Future[None] | None = None

    def coordinated(self) -> set[str]:
        """Groups this broker coordinates: those it holds the coordinator key of, and those
        its coordinator has in memory (a single broker standing alone holds no keys)."""
        return set(self.broker.cluster.held_groups) | set(self.broker.groups.groups)

    def offsets_changed(
        self, group: str | None, committed: Mapping[TopicPartition, CommittedOffset] | None
    ) -> None:
        """``Offsets`` listener: ``committed`` were stored for ``group``; None: anything of
        ``group`` (every group when ``group`` is None) may have changed: read it again."""
        if group is None:
            self._committed.clear()
            return
        cached = self._committed.get(group)
        if committed is None or cached is None:
            self._committed.pop(group, None)
            return
        cached[1].update(committed)

    async def refresh(self) -> None:
        """Bring the caches up to date (bounded: see the module docstring); one refresh at a
        time, callers arriving meanwhile wait for it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await asyncio.shield(self._refreshing)
        except TimeoutError:
            log.warning("consumer lag refresh took over %gs: shown as cached", REFRESH_TIMEOUT_S)
        except Exception as e:
            log.warning("consumer lag refresh failed: %r", e)

    async def _refresh(self) -> None:
        groups = self.coordinated()
        for gone in set(self._committed) - groups:
            del self._committed[gone]
        now = time.monotonic()
        unread = [g for g in groups if g not in self._committed]
        stale = sorted(
            (self._committed[g][0], g)
            for g in groups
            if g in self._committed and now - self._committed[g][0] > COMMITTED_MAX_AGE_S
        )[:REFRESH_GROUPS]
        offsets = self.broker.offsets
        room = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(group: str) -> None:
            async with room:
                started = time.monotonic()
                self._committed[group] = (started, await offsets.fetch(group))

        await asyncio.gather(*map(read, unread + [g for _, g in stale]))
        topics = {tp[0] for _, committed in self._committed.values() for tp in committed}
        for topic in sorted(topics):
            if self.broker.topics.get(topic) is not None:
                await self.states.topic(topic)

    def lags(self) -> Iterator[tuple[str, str, int, int]]:
        """(group, topic, partition, lag) for every cached commit of a live topic whose high
        watermark is known, by group."""
        topics = self.broker.topics
        logs = self.broker.logs.logs
        for group in sorted(self._committed):
            for tp, committed in self._committed[group][1].items():
                if not live(topics, tp, committed):
                    continue
                plog = logs.get(tp)  # owned here: the high watermark in memory (most often)
                if plog is not None:
                    hw = plog.hw
                else:
                    state = self.states.cached(*tp)
                    if state is None:
                        continue
                    hw = state.hw
                yield group, tp[0], tp[1], max(0, hw - committed.offset)
