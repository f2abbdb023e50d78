"""The janitor: deletes what no log needs any more, crash-safe, and keeps etcd's history short.

Nothing is deleted without a durable record first. Whoever makes objects unreachable (a
compaction swap, retention, DeleteRecords) writes, in the same metadata transaction, a
*garbage record* ``/{ns}/gc/{deadline_ms:013d}-{nonce}`` naming them, with a deadline one grace
period (``log.segment.delete.delay.ms``) ahead: longer than any Fetch that may still read an
entry it looked up before the swap. A compaction also writes one *before* it uploads, naming
its new objects with a deadline far ahead (an intent), and deletes it in its swap: if it dies
or is deposed in between, the intent deletes its uploads later. The janitor (one broker: the
live broker with the lowest id, as Kafka's controller; every broker with the embedded store)
then, every few seconds:

1. deletes the objects of every record past its deadline, then the records (a crash in
   between deletes them again: deleting is idempotent);
2. sweeps the ingest registry ``/{ns}/ingest/{object}/{nonce}`` (written by each flush commit
   with the pieces it put in the object): an object none of whose pieces is part of a log
   any more (its partition's ``pieces_from`` passed it, or its topic is gone) gets a garbage
   record and loses its registry entries in one transaction;
3. deletes the objects of deleted topics (``/{ns}/deleted-topics/{topic id}``, written with
   the deletion) once their grace period is over, then the tombstone;
4. every :data:`ORPHAN_SCAN_S`, deletes the ingest objects that no registry entry or record
   names and whose commit can no longer happen: written under a lease no live broker holds
   (the writer crashed or lost its lease: every commit compares an owner key on that lease)
   and older than two lease TTLs (so a registration the janitor has not seen yet is not taken
   for a dead one), or older than :data:`ORPHAN_AGE_MS` whoever wrote them (a commit that
   failed while its broker lived on);
5. once a minute, compacts the metadata store's revision history to what it was a minute ago
   (etcd keeps every revision until compacted: without it the database grows with every
   commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from typing import Any

from kafscale.broker import failpoints
from kafscale.broker.cluster import Cluster, Mirror
from kafscale.broker.periodic import Periodic
from kafscale.broker.topics import Topic, Topics
from kafscale.metadata import Compare, Delete, MetadataStore, Put
from kafscale.storage import NotFound, ObjectStore
from kafscale.storage.segment import parse_ingest_key

log = logging.getLogger("kafscale.janitor")

INTERVAL_S = 2.0
"""How often the janitor looks for due work."""
INTENT_MS = 10 * 60_000
"""An intent's deadline: far past any compaction's upload and swap."""
SWEEP_MIN_AGE_MS = 15_000
"""Registry entries younger than this are not judged: a flush cycle commits its partitions in
several transactions in a row, and all of them must be in before its object is."""
ORPHAN_AGE_MS = 10 * 60_000
"""An ingest object no registry entry names is deleted once this old, whoever wrote it: a
commit is tried right after the upload, and needs its broker's lease."""
ORPHAN_SCAN_S = 10.0
"""How often the janitor lists the ingest objects to find orphans."""
SLOW_EVERY_S = 60.0
"""The orphan listing and the history compaction run this often."""
HISTORY_KEEP_S = 60.0
RECORDS_PER_TXN = 100
"""Operations of one of the janitor's transactions (below etcd's 128)."""
PARALLEL_DELETES = 16
"""Object deletions in flight at once."""
"""Metadata revisions kept: a watch that falls further behind re-reads its prefix."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Janitor:
    """Garbage records, the ingest sweep, deleted topics and history compaction."""

    def __init__(
        self,
        namespace: str,
        objects: ObjectStore,
        meta: MetadataStore,
        topics: Topics,
        cluster: Cluster | None,
        grace_ms: int,
        lease_ttl_ms: int = 9000,
    ) -> None:
        self.ns = namespace
        self.objects = objects
        self.meta = meta
        self.topics = topics
        self.cluster = cluster
        self.grace_ms = grace_ms
        self.lease_ttl_ms = lease_ttl_ms
        self._last_orphans = 0.0
        self._task = Periodic("kafscale-janitor", INTERVAL_S, self._step, log, "janitor pass")
        self._registry: Mirror | None = None
        """A watched copy of the ingest registry, kept while we are on duty."""
        self._parsed_cache: dict[bytes, tuple[int, Any]] = {}
        self._last_slow = 0.0
        self._revisions: deque[tuple[float, int]] = deque()
        self.deleted = 0
        """Objects deleted so far (for tests and logs)."""

    # --- records -----------------------------------------------------------------------------

    @property
    def gc_prefix(self) -> bytes:
        return f"/{self.ns}/gc/".encode()

    def record(self, objects: list[str], delay_ms: int | None = None) -> Put:
        """A garbage record for ``objects`` (deleted ``delay_ms`` from now, the grace period
        by default): put it in the transaction that makes them unreachable."""
        deadline = now_ms() + (self.grace_ms if delay_ms is None else delay_ms)
        key = self.gc_prefix + f"{deadline:013d}-{secrets.token_hex(6)}".encode()
        return Put(key, json.dumps({"objects": objects}).encode())

    async def intend(self, objects: list[str]) -> bytes:
        """Record ``objects`` as garbage far ahead, before they are uploaded; the upload's
        commit deletes the record (its key, returned) if it succeeds."""
        put = self.record(objects, INTENT_MS)
        await self.meta.put(put.key, put.value)
        return put.key

    def topic_deleted(self, topic_id: str, name: str) -> Put:
        """The tombstone that deletes a deleted topic's objects after the grace period."""
        value = {"name": name, "deadline": now_ms() + self.grace_ms}
        return Put(f"/{self.ns}/deleted-topics/{topic_id}".encode(), json.dumps(value).encode())

    # --- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task.start()

    async def close(self) -> None:
        await self._task.close()
        await self._off_duty()

    async def _off_duty(self) -> None:
        if self._registry is not None:
            await self._registry.close()
            self._registry = None
        self._parsed_cache.clear()

    def on_duty(self) -> bool:
        """Whether this broker is the janitor: the live broker with the lowest id."""
        cluster = self.cluster
        if cluster is None:
            return True
        return min(cluster.live(), default=cluster.me) == cluster.me

    async def _step(self) -> None:
        if not self.on_duty():
            await self._off_duty()
            return
        if self._registry is None:
            registry = Mirror(self.meta, self.topics.ingest_prefix)
            await registry.start()
            self._registry = registry
        await self.run_once()

    async def run_once(self, now: int | None = None, slow: bool | None = None) -> None:
        """One pass (``now`` in ms; ``slow``: also the orphan listing and history
        compaction, by default when their time has come)."""
        now = now_ms() if now is None else now
        await self.delete_due(now)
        await self.sweep_ingest(now)
        await self.finish_deleted_topics(now)
        clock = time.monotonic()
        if slow or (slow is None and clock - self._last_orphans >= ORPHAN_SCAN_S):
            self._last_orphans = clock
            await self.collect_orphans(now)
        if slow or (slow is None and clock - self._last_slow >= SLOW_EVERY_S):
            self._last_slow = clock
            await self.compact_history()

    # --- 1. due records ----------------------------------------------------------------------

    async def delete_due(self, now: int) -> int:
        """Delete the objects of every garbage record past its deadline (concurrently), then
        the records (a transaction per :data:`RECORDS_PER_TXN`); how many records."""
        due = []
        for kv in await self.meta.range(self.gc_prefix):
            deadline = int(kv.key[len(self.gc_prefix) :].split(b"-", 1)[0])
            if deadline <= now:
                due.append(kv)
        objects = [key for kv in due for key in json.loads(kv.value)["objects"]]
        if objects:
            await self._delete(objects[0])
            failpoints.hit("mid_delete")
            await self._delete_all(objects[1:])
        for i in range(0, len(due), RECORDS_PER_TXN):
            chunk = due[i : i + RECORDS_PER_TXN]
            await self.meta.txn(
                [Compare(kv.key, "mod_revision", "==", kv.mod_revision) for kv in chunk],
                [Delete(kv.key) for kv in chunk],
            )
        return len(due)

    async def _delete_all(self, keys: list[str]) -> None:
        room = asyncio.Semaphore(PARALLEL_DELETES)

        async def one(key: str) -> None:
            async with room:
                await self._delete(key)

        await asyncio.gather(*map(one, keys))

    async def _delete(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            await self.objects.delete(key)
        self.deleted += 1

    # --- 2. the ingest registry --------------------------------------------------------------

    async def sweep_ingest(self, now: int) -> int:
        """Turn every ingest object no log needs into garbage: its registry entries go and one
        record names it, in one transaction with other such objects (up to
        :data:`RECORDS_PER_TXN` operations; one by one if a batch's compares fail); how many.
        The registry is read from a watched copy while on duty (its entries are parsed once),
        else with one range."""
        prefix = self.topics.ingest_prefix
        kvs = (
            list(self._registry.items.values())
            if self._registry is not None
            else await self.meta.range(prefix)
        )
        by_object: dict[str, list[Any]] = {}
        for kv in kvs:
            name = kv.key.decode().rsplit("/", 1)[0].removeprefix(prefix.decode())
            by_object.setdefault(name, []).append(kv)
        states: dict[tuple[str, str], dict[int, int]] = {}
        unneeded: list[tuple[str, list[Any]]] = []
        for name, entries in by_object.items():
            parsed = [self._parsed(kv) for kv in entries]
            if any(now - created < SWEEP_MIN_AGE_MS for created, _ in parsed):
                continue
            if not await self._any_needed([p for _, pieces in parsed for p in pieces], states):
                unneeded.append((name, entries))
        batches: list[list[tuple[str, list[Any]]]] = [[]]
        ops = 1
        for item in unneeded:
            n = 2 * len(item[1])
            if batches[-1] and ops + n > RECORDS_PER_TXN:
                batches.append([])
                ops = 1
            batches[-1].append(item)
            ops += n
        swept = 0
        for batch in batches:
            if batch and await self._swept(batch):
                swept += len(batch)
            elif len(batch) > 1:
                for item in batch:
                    swept += await self._swept([item])
        for _, entries in unneeded:
            for kv in entries:
                self._parsed_cache.pop(kv.key, None)
        return swept

    def _parsed(self, kv: Any) -> tuple[int, list[tuple[str, str, list[list[int]]]]]:
        """(created, [(topic, topic id, [[partition, base], ...]), ...]) of a registry entry,
        parsed once per revision of it."""
        cached = self._parsed_cache.get(kv.key)
        if cached is not None and cached[0] == kv.mod_revision:
            hit: tuple[int, list[tuple[str, str, list[list[int]]]]] = cached[1]
            return hit
        value = json.loads(kv.value)
        if "topics" in value:
            pieces = [(t, e["id"], e["pieces"]) for t, e in value["topics"].items()]
        else:  # the first format: [topic, topic id, partition, base] per piece
            pieces = [(t, i, [[p, b]]) for t, i, p, b in value["pieces"]]
        out = (int(value["created"]), pieces)
        self._parsed_cache[kv.key] = (kv.mod_revision, out)
        return out

    async def _any_needed(
        self,
        pieces: list[tuple[str, str, list[list[int]]]],
        states: dict[tuple[str, str], dict[int, int]],
    ) -> bool:
        """Whether any of the pieces is still part of a log."""
        for name, topic_id, parts in pieces:
            floors = states.get((name, topic_id))
            if floors is None:
                floors = states[name, topic_id] = await self._floors(name, topic_id)
            if any(base >= floors.get(p, 1 << 63) for p, base in parts):
                return True
        return False

    async def _swept(self, batch: list[tuple[str, list[Any]]]) -> bool:
        entries = [kv for _, kvs in batch for kv in kvs]
        result = await self.meta.txn(
            [Compare(kv.key, "mod_revision", "==", kv.mod_revision) for kv in entries],
            [Delete(kv.key) for kv in entries] + [self.record([name for name, _ in batch])],
        )
        if result.succeeded and self._registry is not None:
            for kv in entries:  # gone now: the next pass must not see them before the watch
                self._registry.note(kv.key[len(self._registry.prefix) :], None)
        return result.succeeded

    async def _floors(self, name: str, topic_id: str) -> dict[int, int]:
        """``pieces_from`` of each partition of the topic ``name`` while it has the id
        ``topic_id`` (none when it is gone: read from the store, not from our copy of the
        topic table, which may lag)."""
        kv = await self.meta.get(self.topics.topic_key(name))
        if kv is None or str(Topic.from_json(name, kv.value).id) != topic_id:
            return {}
        head = self.topics.partitions_prefix(name)
        return {
            int(kv.key[len(head) :]): int(json.loads(kv.value).get("pieces_from", 0))
            for kv in await self.meta.range(head)
        }

    # --- 3. deleted topics -------------------------------------------------------------------

    async def finish_deleted_topics(self, now: int) -> int:
        """Delete the objects of deleted topics whose grace period is over."""
        prefix = f"/{self.ns}/deleted-topics/".encode()
        done = 0
        for kv in await self.meta.range(prefix):
            tomb = json.loads(kv.value)
            if int(tomb["deadline"]) > now:
                continue
            topic_id, name = kv.key[len(prefix) :].decode(), str(tomb["name"])
            doomed = await self.objects.list(f"{self.ns}/topics/{topic_id}/")
            if self.topics.get(name) is None:
                # Segments written before compaction existed are under the topic's name; a
                # topic of that name created since writes none there.
                doomed += await self.objects.list(f"{self.ns}/{name}/")
            for i, key in enumerate(doomed):
                await self._delete(key)
                if i == 0:
                    failpoints.hit("mid_delete")
            await self.meta.txn(
                [Compare(kv.key, "mod_revision", "==", kv.mod_revision)], [Delete(kv.key)]
            )
            log.info("deleted topic %s (%s): %d objects deleted", name, topic_id, len(doomed))
            done += 1
        return done

    # --- 4. orphans and history --------------------------------------------------------------

    def live_leases(self) -> set[int]:
        """The leases of the live brokers (registrations are kept on them)."""
        if self.cluster is None:
            return set()
        return {kv.lease for kv in self.cluster.brokers.items.values()}

    async def collect_orphans(self, now: int) -> int:
        """Delete the ingest objects that nothing names and whose commit can no longer
        happen (see the module's docstring, step 4)."""
        named: set[str] = set()
        prefix = self.topics.ingest_prefix
        for kv in await self.meta.range(prefix):
            named.add(kv.key[len(prefix) :].decode().rsplit("/", 1)[0])
        for kv in await self.meta.range(self.gc_prefix):
            named.update(json.loads(kv.value)["objects"])
        live = self.live_leases()
        orphans = 0
        for key in await self.objects.list(f"{self.ns}/ingest/"):
            name = parse_ingest_key(key)
            if name is None or key in named:
                continue
            age = now - name.written_ms
            dead = name.lease not in live and age >= 2 * self.lease_ttl_ms
            if not dead and age < ORPHAN_AGE_MS:
                continue
            await self._delete(key)
            orphans += 1
        if orphans:
            log.info("deleted %d ingest objects no commit referenced", orphans)
        return orphans

    async def compact_history(self) -> None:
        """Compact the store's revisions older than :data:`HISTORY_KEEP_S` (etcd; the
        embedded store bounds its own history)."""
        compact = getattr(self.meta, "compact", None)
        if compact is None:
            return
        clock = time.monotonic()
        self._revisions.append((clock, await self.meta.revision()))
        target = 0
        while self._revisions and clock - self._revisions[0][0] >= HISTORY_KEEP_S:
            target = self._revisions.popleft()[1]
        if target:
            await compact(target)
