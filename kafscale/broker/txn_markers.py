"""Writing transaction markers: each broker appends the markers of the partitions it owns.

The coordinator (``transactions.py``) records its decision as one *marker request* per
partition under ``/{ns}/txn-markers/{tid}/{topic}/{p:05d}``. Every broker follows that prefix
(a watch), and for each request not yet done whose partition it owns, appends the marker (a
control batch, ``txn_index.marker_batch``) through the partition's log, the request's
"done" flag committed **in the same metadata transaction as the marker**, compared on the
request's revision: a marker is written exactly once, whoever owns the partition when, and
the coordinator learns it from the same watch. A broker taking a partition over finds the
requests still waiting and writes them (ownership changes re-scan them), so a marker
outstanding when its writer died is written by the next owner.

This replaces Kafka's WriteTxnMarkers broker-to-broker requests: the metadata store already
connects every broker, and it makes the decision and the markers' progress durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from kafscale.broker.cluster import Mirror
from kafscale.broker.log import FlushError, LogManager
from kafscale.broker.periodic import stop_tasks
from kafscale.broker.txn_index import marker_batch
from kafscale.metadata import Compare, KeyValue, MetadataStore, Put

log = logging.getLogger("kafscale.transactions")

RESCAN_S = 1.0
"""Requests are looked at again this often even without a change (a failed append retries)."""


class MarkerWriter:
    """Appends the transaction markers requested for the partitions this broker owns."""

    def __init__(self, meta: MetadataStore, namespace: str, logs: LogManager) -> None:
        self.meta = meta
        self.logs = logs
        self.mirror = Mirror(meta, f"/{namespace}/txn-markers/".encode(), self._changed)
        self.listeners: list[Callable[[], None]] = []
        """Called when a request changed (the coordinator waits on its requests)."""
        self._wake = asyncio.Event()
        self._writing: dict[bytes, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        """Markers this broker wrote (metrics, tests)."""

    async def start(self) -> None:
        await self.mirror.start()
        if self.logs.cluster is not None:
            self.logs.cluster.listeners.append(self._wake.set)  # ownership moved
        self._task = asyncio.create_task(self._run(), name="kafscale-txn-markers")

    async def close(self) -> None:
        await stop_tasks([self._task, *self._writing.values()])
        await self.mirror.close()

    def _changed(self) -> None:
        self._wake.set()
        for listener in self.listeners:
            listener()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RESCAN_S)
            self._wake.clear()
            try:
                self.scan()
            except Exception:
                log.warning("scanning marker requests failed", exc_info=True)

    def scan(self) -> None:
        """Start writing every waiting request of a partition we own."""
        for relative, kv in list(self.mirror.items.items()):
            self._start(relative, kv)

    def write_now(self, key: bytes, kv: KeyValue) -> None:
        """A request this broker's coordinator just wrote (``kv``, as committed): write its
        marker now if the partition is ours, without waiting for the watch to bring it."""
        self._start(key[len(self.mirror.prefix) :], kv)

    def _start(self, relative: bytes, kv: KeyValue) -> None:
        if relative in self._writing:
            return
        try:
            request = json.loads(kv.value)
            _, topic, partition = relative.decode().rsplit("/", 2)
        except ValueError:
            return
        if request.get("done") or not self._mine(topic, int(partition)):
            return
        self._writing[relative] = asyncio.create_task(
            self._write(relative, kv, topic, int(partition))
        )

    def _mine(self, topic: str, partition: int) -> bool:
        if self.logs.cluster is None:
            return True
        claim = self.logs.claims.get((topic, partition))
        return claim is not None and not claim.releasing

    async def _write(self, relative: bytes, current: KeyValue, topic: str, partition: int) -> None:
        """Write one marker. The request as the mirror has it is compared on its revision in
        the marker's commit: a request already done (a mirror lagging behind a write of ours
        is brought up to date by :meth:`Mirror.note` below) can never be written twice."""
        key = self.mirror.prefix + relative
        try:
            plog = await self.logs.get(topic, partition)
            request = json.loads(current.value)
            done = json.dumps({**request, "done": True}).encode()
            data = marker_batch(
                int(request["pid"]),
                int(request["epoch"]),
                bool(request["commit"]),
                int(request.get("coordinator_epoch", 0)),
            )
            await self.logs.append_marker(
                plog,
                data,
                int(request["pid"]),
                int(request["epoch"]),
                bool(request["commit"]),
                [Compare(key, "mod_revision", "==", current.mod_revision)],
                [Put(key, done)],
            )
            self.written += 1
            if plog.revision > current.mod_revision:  # committed at plog.revision
                self.mirror.note(
                    relative, KeyValue(key, done, plog.revision, current.version + 1, 0)
                )
        except FlushError as e:
            log.info("marker for %s-%d not written yet: %s", topic, partition, e)
        except Exception:
            log.warning("writing a marker to %s-%d failed", topic, partition, exc_info=True)
        finally:
            self._writing.pop(relative, None)
