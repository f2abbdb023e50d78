"""Compaction, retention and the janitor on the embedded stores (issue: a log that lives for
months). Pieces of many flushes become a few segments; readers see the same records before,
during and after; what nothing references any more is deleted only after the grace period,
through a durable record; retention and DeleteRecords drop whole entries."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from kafscale.broker.budget import ByteBudget
from kafscale.broker.compaction import Compactor
from kafscale.broker.janitor import INTENT_MS, SWEEP_MIN_AGE_MS, now_ms
from kafscale.broker.layout import Policy
from kafscale.protocol.records import build_batch
from tests.broker_harness import Client, run, values

LATER = SWEEP_MIN_AGE_MS + 1
"""Milliseconds after which the janitor judges the registry entries written now."""


async def produce_flushes(
    c: Client, n: int, topic: str = "t", size: int = 100, partition: int = 0
) -> None:
    """``n`` records, each in a flush of its own (a piece each)."""
    for i in range(n):
        batch = build_batch([b"%05d" % i + b"." * size], timestamp=now_ms())
        resp = await c.produce(topic, batch, partition=partition)
        assert resp.error_code == 0
        await c.broker.logs.flush()


async def all_values(c: Client, topic: str = "t", start: int = 0) -> list[tuple[int, bytes | None]]:
    out: list[tuple[int, bytes | None]] = []
    offset = start
    while True:
        got = await c.fetch(topic, offset, max_bytes=1 << 20)
        assert got.error_code == 0, got
        batch = values(got.records)
        if not batch:
            return out
        out += batch
        offset = batch[-1][0] + 1


def idle_compactor(logs: Any, segment_bytes: int = 1 << 20) -> Compactor:
    """A compactor that merges everything at once (every partition counts as idle)."""
    compactor = Compactor(logs)
    compactor.policy = lambda topic: Policy(segment_bytes, 1 << 40, idle_ms=0)  # type: ignore
    return compactor


async def keys(c: Client, prefix: str) -> list[bytes]:
    return [kv.key for kv in await c.broker.meta.range(prefix.encode())]


def test_pieces_are_compacted_into_one_segment_and_ingest_objects_deleted(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        await produce_flushes(c, 30)
        logs = c.broker.logs
        plog = await logs.get("t", 0)
        assert len(plog.segments) == 30 and all(s.piece for s in plog.segments)
        before = await all_values(c)
        compactor = idle_compactor(logs)
        assert await compactor.compact(plog)
        assert len(plog.segments) == 1 and not plog.segments[0].piece
        assert plog.pieces_from == 30
        assert await all_values(c) == before  # the same records at the same offsets
        # A broker loading the partition afresh finds the same log.
        logs.drop(plog, Exception("reload"))  # type: ignore[arg-type]
        assert await all_values(c) == before
        # The ingest objects: swept once old enough, deleted after the grace period.
        ingest = await c.broker.objects.list("kafscale/ingest/")
        assert len(ingest) == 30
        janitor = logs.janitor
        assert await janitor.sweep_ingest(now_ms()) == 0  # too young to judge
        assert await janitor.sweep_ingest(now_ms() + LATER) == 30
        assert await keys(c, "/kafscale/ingest/") == []
        assert await janitor.delete_due(now_ms()) == 0  # the grace period
        assert len(await c.broker.objects.list("kafscale/ingest/")) == 30
        deadline = now_ms() + logs.config.log_segment_delete_delay_ms + 1
        assert await janitor.delete_due(deadline) == 1  # one record names the swept objects
        assert await c.broker.objects.list("kafscale/ingest/") == []
        assert await keys(c, "/kafscale/gc/") == []
        assert await all_values(c) == before
        # What is left per partition: one segment and its index; one entry key.
        left = await c.broker.objects.list("kafscale/")
        assert len(left) == 2 and all("/topics/" in k for k in left), left
        assert len(await keys(c, "/kafscale/segments/t/00000/")) == 1

    run(tmp_path, scenario)


def test_an_ingest_object_waits_for_every_partition_in_it(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        produces = [  # one flush, both partitions: one object
            asyncio.ensure_future(c.produce("t", build_batch([b"p%d" % p]), partition=p))
            for p in (0, 1)
        ]
        await asyncio.sleep(0.01)
        await c.broker.logs.flush()
        assert [r.error_code for r in await asyncio.gather(*produces)] == [0, 0]
        (ingest,) = await c.broker.objects.list("kafscale/ingest/")
        logs = c.broker.logs
        compactor = idle_compactor(logs)
        assert await compactor.compact(await logs.get("t", 0))
        assert await logs.janitor.sweep_ingest(now_ms() + LATER) == 0  # partition 1 needs it
        assert await compactor.compact(await logs.get("t", 1))
        assert await logs.janitor.sweep_ingest(now_ms() + LATER) == 1
        assert await logs.janitor.delete_due(now_ms() + 10**9) == 1
        assert ingest not in await c.broker.objects.list("kafscale/")
        assert [v for _, v in await all_values(c)] == [b"p0"]

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_a_deposed_compaction_swap_changes_nothing_and_its_uploads_are_deleted(
    tmp_path: Path,
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce_flushes(c, 5)
        logs = c.broker.logs
        plog = await logs.get("t", 0)
        before = await all_values(c)
        plog.revision -= 1  # as if another writer had moved the state under us
        compactor = idle_compactor(logs)
        assert not await compactor.compact(plog)
        assert ("t", 0) not in logs.logs  # dropped: reloaded on next use
        plog = await logs.get("t", 0)
        assert len(plog.segments) == 5 and all(s.piece for s in plog.segments)
        assert await all_values(c) == before
        # The failed swap's uploads and their intent are gone at once.
        assert await c.broker.objects.list("kafscale/topics/") == []
        assert await keys(c, "/kafscale/gc/") == []

    run(tmp_path, scenario)


def test_segments_merge_geometrically_and_fully_once_idle(tmp_path: Path) -> None:
    """Compaction rounds of 4 pieces each: open segments merge with those about their size,
    so fewer than one segment per round stays; once idle every open segment joins."""

    async def scenario(c: Client) -> None:
        await c.create("t")
        logs = c.broker.logs
        compactor = Compactor(logs)
        busy = Policy(1 << 20, 1 << 40, max_pieces=4, idle_ms=1 << 40)
        compactor.policy = lambda topic: busy  # type: ignore
        plog = await logs.get("t", 0)
        for _ in range(16):
            await produce_flushes(c, 4)
            plog = await logs.get("t", 0)
            assert await compactor.compact(plog)
        assert all(not s.piece for s in plog.segments)
        assert len(plog.segments) <= 5, [s.size for s in plog.segments]
        idle = Policy(1 << 20, 1 << 40, idle_ms=0)
        compactor.policy = lambda topic: idle  # type: ignore
        assert await compactor.compact(plog)
        assert len(plog.segments) == 1
        assert [o for o, _ in await all_values(c)] == list(range(64))

    run(tmp_path, scenario)


def test_retention_by_time_and_size_drops_whole_segments(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 1, retention_bytes="500")
        await produce_flushes(c, 10)  # 10 pieces of about 170 bytes
        logs = c.broker.logs
        plog = await logs.get("t", 0)
        compactor = Compactor(logs)
        start = await compactor.retain(plog)
        # Kafka's rule: the oldest entries go while the log keeps retention.bytes without them.
        sizes = [e.size for e in plog.segments]
        assert sum(sizes) >= 500 > sum(sizes) - sizes[0], sizes
        assert 0 < start == plog.segments[0].base and plog.pieces_from == start
        assert await c.earliest("t") == start
        got = await c.fetch("t", 0)
        assert got.error_code == 1  # OFFSET_OUT_OF_RANGE: the consumer resets
        assert [o for o, _ in await all_values(c, start=start)] == list(range(start, 10))
        assert len(await keys(c, "/kafscale/segments/t/00000/")) == 10 - start

    run(tmp_path, scenario)


def test_retention_by_time(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 1, retention_ms="60000")
        old = int(time.time() * 1000) - 120_000
        for i in range(3):
            batch = build_batch([b"old%d" % i], timestamp=old)
            assert (await c.produce("t", batch)).error_code == 0
            await c.broker.logs.flush()
        await produce_flushes(c, 2)
        compactor = Compactor(c.broker.logs)
        assert await compactor.retain(await c.broker.logs.get("t", 0)) == 3
        assert [o for o, _ in await all_values(c, start=3)] == [3, 4]

    run(tmp_path, scenario)


def test_delete_records_drops_entries_and_records_their_objects(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce_flushes(c, 6)
        logs = c.broker.logs
        compactor = idle_compactor(logs)
        plog = await logs.get("t", 0)
        assert await compactor.compact(plog)
        (segment,) = plog.segments
        await produce_flushes(c, 2)  # pieces 6 and 7 after the segment
        assert await logs.delete_records(plog, 7) == 7
        assert [e.base for e in plog.segments] == [7]
        records = [
            json.loads(kv.value)["objects"] for kv in await c.broker.meta.range(b"/kafscale/gc/")
        ]
        assert sorted(name for names in records for name in names) == sorted(segment.objects)
        assert [o for o, _ in await all_values(c, start=7)] == [7]

    run(tmp_path, scenario)


def test_a_deleted_topic_leaves_no_object_and_no_key(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState

        await c.create("t", 2)
        await produce_flushes(c, 4)
        logs = c.broker.logs
        compactor = idle_compactor(logs)
        assert await compactor.compact(await logs.get("t", 0))
        await produce_flushes(c, 2)
        resp = await c.call(20, 6, DeleteTopicsRequest(topics=[DeleteTopicState(name="t")]))
        assert resp.responses[0].error_code == 0
        await c.create("t", 1)  # the same name again: its objects are not the old ones'
        await produce_flushes(c, 1)
        janitor = logs.janitor
        later = now_ms() + logs.config.log_segment_delete_delay_ms + LATER
        await janitor.run_once(later, slow=False)
        await janitor.run_once(later + logs.config.log_segment_delete_delay_ms, slow=False)
        left = await c.broker.objects.list("kafscale/")
        new = await logs.get("t", 0)
        assert set(left) == {new.segments[0].key}, left
        assert await keys(c, "/kafscale/deleted-topics/") == []
        assert [v for _, v in await all_values(c)] == [b"00000" + b"." * 100]

    run(tmp_path, scenario)


def test_the_broker_compacts_on_its_own(tmp_path: Path) -> None:
    """The background task: pieces become a segment once the partition is idle."""

    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce_flushes(c, 3)
        compactor = Compactor(c.broker.logs)
        compactor.policy = lambda topic: Policy(1 << 20, 1 << 40, idle_ms=100)  # type: ignore
        compactor.start()
        try:
            plog = await c.broker.logs.get("t", 0)
            for _ in range(100):
                if plog.segments and not plog.segments[0].piece:
                    break
                await asyncio.sleep(0.05)
            assert len(plog.segments) == 1 and not plog.segments[0].piece
        finally:
            await compactor.close()

    run(tmp_path, scenario)


def test_merges_bigger_than_the_budget_run_one_at_a_time_smaller_ones_overlap(
    tmp_path: Path,
) -> None:
    """Compaction's byte budget: a pass over 4 partitions whose merges each exceed the budget
    uploads one partition's segment at a time (background work must not pile onto the
    foreground); with room for all of them, their uploads overlap."""

    async def scenario(c: Client) -> None:
        await c.create("t", 4)
        for p in range(4):
            await produce_flushes(c, 5, size=250, partition=p)
        logs = c.broker.logs
        put = logs.objects.put
        uploading: set[str] = set()
        most = 0

        async def slow_put(key: str, data: Any) -> None:
            nonlocal most
            if "/topics/" not in key:  # not a compaction's output
                return await put(key, data)
            partition = key.split("/topics/", 1)[1].split("/")[1]
            uploading.add(partition)
            most = max(most, len(uploading))
            try:
                await asyncio.sleep(0.05)  # long enough for any other merge to overlap
                await put(key, data)
            finally:
                uploading.discard(partition)

        logs.objects.put = slow_put  # type: ignore[method-assign]
        before = await all_values(c)
        for capacity, expected in ((1000, 1), (1 << 20, 4)):
            compactor = idle_compactor(logs)
            compactor.budget = ByteBudget(capacity)  # 5 pieces of ~350 bytes: 1,750 each
            most = 0
            await compactor.run_once(retention=False)
            assert compactor.compactions == 4
            assert most == expected, (capacity, most)
            assert compactor.budget.used == 0
            for p in range(4):  # something to merge again
                await produce_flushes(c, 2, size=250, partition=p)
        assert (await all_values(c))[: len(before)] == before

    run(tmp_path, scenario)


def test_a_large_batch_after_small_ones_in_one_segment_is_read_whole(tmp_path: Path) -> None:
    """KIP-74 on a compacted segment read from the store: the 1 MiB batch shares its index
    span with the small batch before it, and comes whole to a Fetch of 1 MiB."""

    async def scenario(c: Client) -> None:
        await c.create("t", 1, max_message_bytes=str(2 << 20))
        big = bytes(i * 7 % 251 for i in range(1 << 20))
        for v in (b"small before", big, b"small after"):
            assert (await c.produce("t", build_batch([v], timestamp=now_ms()))).error_code == 0
        logs = c.broker.logs
        compactor = Compactor(logs)
        compactor.policy = lambda topic: Policy(1 << 26, 1 << 40, idle_ms=0)  # type: ignore
        assert await compactor.compact(await logs.get("t", 0))
        logs.cache.clear()
        got = await c.fetch("t", 1, max_bytes=1 << 20)
        assert values(got.records) == [(1, big)]
        assert [v for _, v in await all_values(c)] == [b"small before", big, b"small after"]

    run(tmp_path, scenario)


def test_an_intent_deletes_the_uploads_of_a_compaction_that_died_before_its_swap(
    tmp_path: Path,
) -> None:
    """A crash after the merged PUT (the process gone: no clean-up ran): the intent written
    before the upload deletes the new objects at its deadline; the log is untouched."""

    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce_flushes(c, 5)
        logs = c.broker.logs
        plog = await logs.get("t", 0)
        before = await all_values(c)
        compactor = idle_compactor(logs)

        class Died(BaseException):
            pass

        async def die(*_: object) -> bool:
            raise Died

        compactor._swap = die  # type: ignore[method-assign]
        try:
            await compactor.compact(plog)
        except Died:
            pass
        assert len(await c.broker.objects.list("kafscale/topics/")) == 2
        assert await all_values(c) == before
        janitor = logs.janitor
        assert await janitor.delete_due(now_ms() + logs.config.log_segment_delete_delay_ms) == 0
        assert await janitor.delete_due(now_ms() + INTENT_MS + 1) == 1
        assert await c.broker.objects.list("kafscale/topics/") == []

    run(tmp_path, scenario)


def test_a_merge_stays_within_one_transaction_of_etcd(tmp_path: Path) -> None:
    """64 pieces whose batches are each larger than segment.bytes: at most MAX_OUTPUTS
    segments (larger ones), so the swap fits etcd's 128 operations (it was refused there for
    good: the partition was never compacted)."""
    from kafscale.broker.compaction import MAX_OUTPUTS
    from kafscale.broker.log import MAX_TXN_OPS

    async def scenario(c: Client) -> None:
        await c.create("t", 1, segment_bytes="1024")
        await produce_flushes(c, 64, size=1500)
        logs = c.broker.logs
        sizes: list[int] = []
        txn = logs.meta.txn

        async def counted(compares: Any, ops: Any) -> Any:
            sizes.append(len(compares) + len(ops))
            return await txn(compares, ops)

        logs.meta.txn = counted  # type: ignore[method-assign]
        compactor = Compactor(logs)
        plog = await logs.get("t", 0)
        assert await compactor.compact(plog)
        assert max(sizes) <= MAX_TXN_OPS, sizes
        assert len(plog.segments) <= MAX_OUTPUTS and not any(s.piece for s in plog.segments)
        assert [o for o, _ in await all_values(c)] == list(range(64))

    run(tmp_path, scenario)


def test_the_janitor_on_duty_sweeps_from_its_watched_copy_of_the_registry(
    tmp_path: Path,
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce_flushes(c, 4)
        logs = c.broker.logs
        compactor = idle_compactor(logs)
        assert await compactor.compact(await logs.get("t", 0))
        janitor = logs.janitor
        await janitor._step()  # on duty (one broker): the copy is made, a pass runs
        try:
            assert janitor._registry is not None and len(janitor._registry.items) == 4
            assert await janitor.sweep_ingest(now_ms() + LATER) == 4
            assert janitor._registry.items == {}  # what it swept is gone from the copy at once
            assert await janitor.sweep_ingest(now_ms() + LATER) == 0
            assert await keys(c, "/kafscale/ingest/") == []
        finally:
            await janitor.close()

    run(tmp_path, scenario)


def test_a_partition_moved_under_maintenance_is_logged_without_a_traceback(
    tmp_path: Path, caplog: Any
) -> None:
    """Another writer moves a partition's state while its owner's maintenance commits: the
    guarded commit fails, the log is dropped, and the pass says so in one line (like an etcd
    outage's "put off"), not as an unexpected failure with a traceback."""
    import logging

    async def scenario(c: Client) -> None:
        await c.create("t", 1)
        await produce_flushes(c, 2)
        logs = c.broker.logs
        plog = await logs.get("t", 0)
        compactor = idle_compactor(logs)

        async def retain(p: Any) -> None:  # someone else writes the state, then we commit
            await logs.meta.put(logs.topics.partition_key("t", 0), json.dumps({"hw": 0}).encode())
            await logs.advance_log_start(p, p.log_start)

        compactor.retain = retain  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="kafscale.compaction"):
            await compactor.run_once(retention=True)
        assert logs.logs.get(("t", 0)) is not plog  # dropped
        records = [r for r in caplog.records if r.name == "kafscale.compaction"]
        assert [r.getMessage() for r in records] == [
            "t-0: maintenance stopped: partition state changed under us"
        ]
        assert records[0].exc_info is None

    run(tmp_path, scenario)
