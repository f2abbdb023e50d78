"""The owner's background maintenance of its partitions: compaction and retention.

Every :data:`CHECK_INTERVAL_S` the broker looks at each partition it owns:

- **Retention** (every ``log.retention.check.interval.ms``, the first time
  ``log.initial.task.delay.ms`` after the start, as Kafka): ``retention.ms`` /
  ``retention.bytes`` (the topic's, else the broker's; ``-1`` = unlimited) move the log start
  offset past whole expired entries (``kafscale/broker/layout.py``), in one fenced metadata
  transaction that also deletes their entries and records their objects as garbage.
- **Compaction**: a run of pieces (and small open segments) chosen by
  :func:`~kafscale.broker.layout.compaction_run` is rewritten into KAFS segments of up to
  ``segment.bytes`` with their sparse indexes, in four steps, each safe to die after:

  1. an *intent*: a garbage record naming the objects about to be written, due far ahead;
  2. the upload of the new segments and indexes (failpoint ``after_compaction_put``);
  3. the *swap*: one transaction guarded like every commit of the partition (its state's
     revision and our owner key: a deposed owner's swap fails) deletes the inputs' entries,
     puts the new ones and the state (``pieces_from`` past the merged pieces), deletes the
     intent and records the replaced segments' objects as garbage, due after the grace
     period (failpoint ``after_compaction_commit``);
  4. the in-memory entry list is replaced in one step, so a reader sees either the old
     entries or the new ones (whose bytes are the same batches), never a gap or a repeat.

  The replaced pieces' ingest objects are deleted by the janitor once every partition in
  them has moved past them. A swap whose outcome is unknown reloads the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from generated.errors import ErrorCode
from kafscale.broker import failpoints
from kafscale.broker.budget import ByteBudget
from kafscale.broker.layout import Policy, compaction_run, retention_start
from kafscale.broker.periodic import Periodic
from kafscale.broker.topic_configs import topic_value
from kafscale.broker.txn_index import assign as assign_aborted
from kafscale.metadata import Delete, MetadataUnavailable, Put, TxnOutcomeUnknown
from kafscale.protocol.records import BatchInfo, parse_batches
from kafscale.protocol.wire import Buffer
from kafscale.storage.segment import (
    FOOTER_SIZE,
    HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    build_segment,
    compacted_key,
    writer_tag,
)

if TYPE_CHECKING:
    from kafscale.broker.log import LogManager, PartitionLog, SegmentMeta
    from kafscale.broker.topics import Topic

log = logging.getLogger("kafscale.compaction")

CHECK_INTERVAL_S = 1.0
MAX_OUTPUTS = 48
"""Segments one merge writes at most: with the inputs (Policy.max_run) and the state, intent
and garbage record, one swap stays within etcd's 128 operations per transaction."""
PARALLEL = 8
"""Partitions maintained at once (their uploads and transactions overlap)."""
COMPACTION_BYTES = 1024 * 1024
"""Bytes of compaction input read, merged and uploaded at once (:class:`ByteBudget`): many
small merges overlap, while a merge of more takes the whole budget and runs alone. Merges
are background work competing with produce for one event loop, the GIL and the object
store: three merges of 2.3 MB at once (and their uploads) put paced producers' ack p99 at
132-230 ms (etcd, 2,000 records/s, six runs), one at a time at 85-145 ms (six runs
interleaved with those)."""


class Compactor:
    """Compaction and retention of the partitions this broker owns (one background task)."""

    def __init__(self, logs: LogManager) -> None:
        self.logs = logs
        self._task = Periodic(
            "kafscale-compaction", CHECK_INTERVAL_S, self.run_once, log, "maintenance pass"
        )
        self._policies: dict[str, tuple[Topic | None, Policy]] = {}
        self.budget = ByteBudget(COMPACTION_BYTES)
        self._last_retention = 0.0
        """When retention was last applied (monotonic); the first time waits for
        ``log.initial.task.delay.ms`` after :meth:`start`."""
        self.compactions = 0
        """Swaps committed so far (for tests, logs and metrics)."""
        self.compacted_bytes = 0
        """Bytes of the segments those swaps wrote (metrics)."""
        self.retention_moves = 0
        """Times retention moved a partition's log start (metrics)."""

    def policy(self, topic: str) -> Policy:
        t = self.logs.topics.get(topic)
        cached = self._policies.get(topic)
        if cached is not None and cached[0] is t:  # a Topic is replaced when its configs change
            return cached[1]
        config = self.logs.config
        configs = t.configs if t is not None else {}
        policy = Policy(
            topic_value(configs, "segment.bytes", config),
            topic_value(configs, "segment.ms", config),
        )
        self._policies[topic] = (t, policy)
        return policy

    def start(self) -> None:
        config = self.logs.config
        delay = config.log_initial_task_delay_ms - config.log_retention_check_interval_ms
        self._last_retention = time.monotonic() + delay / 1000
        self._task.start()

    async def close(self) -> None:
        await self._task.close()

    async def run_once(self, retention: bool | None = None) -> None:
        """One pass over the partitions we own (``retention``: check it now, by default when
        its interval has passed)."""
        from kafscale.broker.log import FlushError

        clock = time.monotonic()
        interval = self.logs.config.log_retention_check_interval_ms / 1000
        if retention is None:
            retention = clock - self._last_retention >= interval
        if retention:
            self._last_retention = clock
        room = asyncio.Semaphore(PARALLEL)

        async def maintain(plog: PartitionLog) -> None:
            async with room:
                if self.logs.closing:
                    return
                try:
                    if retention:
                        await self.retain(plog)
                    await self.compact(plog)
                except MetadataUnavailable as e:  # an etcd outage: the next pass tries again
                    log.warning("%s-%d: maintenance put off: %s", plog.topic, plog.partition, e)
                except FlushError as e:  # the partition moved under us: its log was dropped
                    log.warning("%s-%d: maintenance stopped: %s", plog.topic, plog.partition, e)
                except Exception:
                    log.warning(
                        "%s-%d: maintenance failed", plog.topic, plog.partition, exc_info=True
                    )

        await asyncio.gather(*map(maintain, await self._owned()))

    async def _owned(self) -> list[PartitionLog]:
        """The partitions we own, loaded (retention applies to those nobody reads too)."""
        logs = self.logs
        out = []
        for topic in list(logs.topics.by_name.values()):
            for p in range(topic.partitions):
                key = (topic.name, p)
                claim = logs.claims.get(key)
                if logs.cluster is not None and claim is None:
                    continue
                plog = logs.logs.get(key)
                if plog is None and claim is not None and claim.empty:
                    continue  # never written: loading thousands of idle partitions buys nothing
                if plog is None:
                    try:
                        plog = await logs.get(topic.name, p)
                    except Exception:
                        continue
                out.append(plog)
        return out

    # --- retention ---------------------------------------------------------------------------

    async def retain(self, plog: PartitionLog) -> int:
        """Apply the partition's retention; the new log start offset."""
        config = self.logs.config
        topic = self.logs.topics.get(plog.topic)
        if topic is None:
            return plog.log_start
        retention_ms = topic_value(topic.configs, "retention.ms", config)
        retention_bytes = topic_value(topic.configs, "retention.bytes", config)
        if "delete" not in topic_value(topic.configs, "cleanup.policy", config):
            # Compact-only topics (and an empty policy, which Kafka 3.9 accepts) keep everything:
            # there is no key compaction, and retention applies only with "delete".
            return plog.log_start
        now = int(time.time() * 1000)
        start = retention_start(plog.segments, plog.log_start, now, retention_ms, retention_bytes)
        if start <= plog.log_start:
            return plog.log_start
        async with plog.lock:
            if start > plog.log_start and self.logs.logs.get((plog.topic, plog.partition)) is plog:
                await self.logs.advance_log_start(plog, min(start, plog.hw))
        self.retention_moves += 1
        log.info("%s-%d: retention moved the log start to %d", plog.topic, plog.partition, start)
        return plog.log_start

    # --- compaction --------------------------------------------------------------------------

    async def compact(self, plog: PartitionLog) -> bool:
        """Merge the run of entries that is due, if any; whether a swap was committed."""
        logs = self.logs
        topic = logs.topics.get(plog.topic)
        if topic is None:
            return False
        policy = self.policy(plog.topic)
        now = int(time.time() * 1000)
        run = compaction_run(plog.segments, now, policy)
        if run is None:
            return False
        inputs = plog.segments[run[0] : run[1]]
        size = sum(seg.size for seg in inputs)
        await self.budget.acquire(size)
        try:
            outputs = await self._build(plog, inputs, str(topic.id), policy.segment_bytes)
            if not outputs:
                return False  # all below the log start: DeleteRecords or retention drops them
            names = [name for meta, _, _ in outputs for name in meta.objects]
            intent = await logs.janitor.intend(names)
            await asyncio.gather(
                *(logs.objects.put(meta.key, body) for meta, body, _ in outputs),
                *(logs.objects.put(meta.objects[1], index) for meta, _, index in outputs),
            )
        finally:
            await self.budget.release(size)
        failpoints.hit("after_compaction_put")
        async with plog.lock:
            swapped = await self._swap(plog, inputs, outputs, intent)
        if swapped:
            failpoints.hit("after_compaction_commit")
            self.compactions += 1
            self.compacted_bytes += sum(meta.size for meta, _, _ in outputs)
        else:
            # Certainly not swapped (a swap of unknown outcome raised): nothing references
            # the uploads, so they and their intent go now rather than at its deadline.
            with contextlib.suppress(Exception):
                for name in names:
                    await logs.objects.delete(name)
                await logs.meta.txn([], [Delete(intent)])
        return swapped

    async def _build(
        self, plog: PartitionLog, inputs: list[SegmentMeta], topic_id: str, segment_bytes: int
    ) -> list[tuple[SegmentMeta, list[Buffer], bytes]]:
        """The new segments (meta, chunks, index) holding the batches of ``inputs``: their
        bodies fetched here, merged in a worker thread (:func:`_merge`). A merge walks every
        batch of seconds of data (thousands when producers send small batches): on the
        event loop that was a stall of up to ~100 ms every compaction, which every produce
        request in flight waited out (the paced p99); in a thread the loop keeps getting the
        GIL every switch interval (5 ms)."""
        logs = self.logs
        topic = logs.topics.get(plog.topic)
        index_interval = topic_value(
            topic.configs if topic is not None else {}, "index.interval.bytes", logs.config
        )
        bodies = await asyncio.gather(  # the inputs not cached: their GETs at once
            *(logs.read_entry(seg, HEADER_SIZE, seg.size - FOOTER_SIZE) for seg in inputs)
        )
        floor = plog.log_start  # batches wholly below it are deleted: not copied
        key_of = functools.partial(
            compacted_key,
            logs.config.namespace,
            topic_id,
            plog.partition,
            writer=writer_tag(plog.epoch, secrets.token_hex(4)),
        )
        out = await asyncio.to_thread(
            _merge, inputs, bodies, floor, segment_bytes, index_interval, key_of
        )
        if out and (out[0][0].base < inputs[0].base or out[-1][0].last != inputs[-1].last):
            raise RuntimeError(f"{plog.topic}-{plog.partition}: a merge must keep its offsets")
        return out

    async def _swap(
        self,
        plog: PartitionLog,
        inputs: list[SegmentMeta],
        outputs: list[tuple[SegmentMeta, list[Buffer], bytes]],
        intent: bytes,
    ) -> bool:
        """Step 3 and 4 (the caller holds the partition's lock)."""
        from kafscale.broker.log import FlushError, not_owner

        logs = self.logs
        key = (plog.topic, plog.partition)
        current = plog.segments
        at = next((i for i, s in enumerate(current) if s is inputs[0]), -1)
        run = current[at : at + len(inputs)] if at >= 0 else []
        if (
            logs.logs.get(key) is not plog
            or len(run) != len(inputs)
            or any(a is not b for a, b in zip(run, inputs, strict=True))
        ):
            return False  # dropped, or retention or DeleteRecords took some inputs meanwhile
        try:
            guard = logs.guard(plog)
        except FlushError:
            return False
        prefix = logs.topics.segments_prefix(plog.topic, plog.partition)
        # Outputs wholly below a log start that moved since they were built are not kept.
        below = [o for o in outputs if o[0].last < plog.log_start]
        outputs = [o for o in outputs if o[0].last >= plog.log_start]
        kept = {meta.base for meta, _, _ in outputs}
        pieces_from = max([plog.pieces_from] + [s.last + 1 for s in inputs if s.piece])
        replaced = [name for s in inputs for name in s.objects]
        replaced += [name for meta, _, _ in below for name in meta.objects]
        ops: list[Put | Delete] = [
            Delete(prefix + f"{s.base:020d}".encode()) for s in inputs if s.base not in kept
        ]
        ops += [
            Put(prefix + f"{meta.base:020d}".encode(), meta.to_json()) for meta, _, _ in outputs
        ]
        ops += [Put(plog.state_key, logs.state(plog, pieces_from=pieces_from)), Delete(intent)]
        if replaced:
            ops.append(logs.janitor.record(replaced))
        try:
            result = await logs.meta.txn(guard, ops)
        except TxnOutcomeUnknown as error:  # it may have applied: reload before going on
            logs.drop(
                plog,
                FlushError(ErrorCode.KAFKA_STORAGE_ERROR, f"compaction commit failed: {error}"),
            )
            raise
        except MetadataUnavailable as e:  # certainly not applied (the store is down)
            log.warning("%s-%d: compaction swap put off: %s", plog.topic, plog.partition, e)
            return False
        except ValueError:  # certainly not applied (refused)
            log.warning("%s-%d: compaction swap refused", plog.topic, plog.partition, exc_info=True)
            return False
        if not result.succeeded:
            logs.drop(plog, not_owner(plog.topic, plog.partition, " (state changed under us)"))
            return False
        plog.revision = result.revision
        plog.pieces_from = pieces_from
        plog.segments = (
            current[:at] + [meta for meta, _, _ in outputs] + current[at + len(inputs) :]
        )
        for meta, chunks, index in outputs:
            logs.cache.put(meta.key, b"".join(chunks))
            logs.remember_index(meta.key, index)
        log.debug(
            "%s-%d: compacted %d entries into %d segments",
            plog.topic,
            plog.partition,
            len(inputs),
            len(outputs),
        )
        return True


def _merge(
    inputs: list[SegmentMeta],
    bodies: Sequence[Buffer],
    floor: int,
    segment_bytes: int,
    index_interval: int,
    key_of: Callable[[int], str],
) -> list[tuple[SegmentMeta, list[Buffer], bytes]]:
    """The merge of ``inputs`` (whose batch bytes are ``bodies``) into new segments, the
    batches wholly below ``floor`` dropped: pure computation on what it is given (it runs in
    a worker thread). ``key_of(first offset)`` names an output's object."""
    from kafscale.broker.log import SegmentMeta

    batches: list[tuple[memoryview, BatchInfo]] = []
    for data in bodies:
        body = memoryview(data)
        parsed = parse_batches(body, MAX_SEGMENT_SIZE, verify_records=False)
        batches += [(body, b) for b in parsed if b.base_offset + b.last_offset_delta >= floor]
    if not batches:
        return []
    created = min((s.created for s in inputs if s.created), default=int(time.time() * 1000))
    # At most MAX_OUTPUTS segments (one swap transaction deletes the inputs and puts the
    # outputs within etcd's 128 operations): past that, segments exceed segment.bytes, as
    # Kafka's do when a batch is larger.
    # (Any two groups in a row hold more than ``limit``: fewer than 2 * total / limit + 1.)
    total = sum(b.size for _, b in batches)
    limit = max(segment_bytes - HEADER_SIZE - FOOTER_SIZE, -(-2 * total // (MAX_OUTPUTS - 1)))
    groups: list[list[tuple[memoryview, BatchInfo]]] = [[]]
    size = 0
    for item in batches:
        if groups[-1] and size + item[1].size > limit:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item[1].size
    out = []
    for group in groups:
        first = group[0][1].base_offset
        chunks = [body[b.position : b.end] for body, b in group]
        segment = build_segment(first, chunks, [b for _, b in group], created, index_interval)
        meta = SegmentMeta(
            first,
            segment.last_offset,
            segment.size,
            segment.max_timestamp,
            key_of(first),
            0,
            False,
            created,
        )
        out.append((meta, segment.chunks, segment.index))
    # The aborted-transaction index goes with the markers: each aborted transaction to
    # the output holding its abort marker (one below the log start went with its data).
    assign_aborted(
        [txn for seg in inputs for txn in seg.aborted if txn[2] >= floor],
        [meta for meta, _, _ in out],
    )
    return out
