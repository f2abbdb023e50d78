"""The flush path: one metadata transaction per flush cycle for all its partitions (in groups
that fit etcd's limits), a fenced partition failing alone, and flush cycles that overlap (the
next one uploads while the previous one commits) keeping every partition's commits in offset
order, with no gap when an earlier flush fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafscale.broker.config import BrokerConfig
from kafscale.broker.log import MAX_TXN_OPS, FlushError, LogManager
from kafscale.broker.server import Broker
from kafscale.broker.txn_index import marker_batch
from kafscale.metadata import Compare, Delete, MetadataUnavailable, Put, TxnResult
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client, run, values

NOT_LEADER_OR_FOLLOWER = 6
KAFKA_STORAGE_ERROR = 56


class Recording:
    """The log manager's metadata store, recording every transaction (and its outcome); an
    optional ``before`` hook runs ahead of each one and may raise instead of it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.txns: list[tuple[list[Compare], list[Put | Delete], bool | None]] = []
        self.before: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        entry: tuple[list[Compare], list[Put | Delete], bool | None] = (
            list(compares),
            list(success),
            None,
        )
        try:
            if self.before is not None:
                await self.before(list(compares), list(success))
            result: TxnResult = await self.store.txn(compares, success, failure)
        except BaseException:
            self.txns.append(entry)
            raise
        self.txns.append((entry[0], entry[1], result.succeeded))
        return result

    def states(self, txn: int) -> list[bytes]:
        """The partition-state keys the ``txn``-th transaction put."""
        return [p.key for p in self.txns[txn][1] if b"/partitions/" in p.key]


class Gated:
    """The log manager's object store; puts started while :attr:`hold` is set wait for it,
    and then fail if :attr:`fail` is set."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.hold: asyncio.Event | None = None
        self.fail = False
        self.waiting = 0
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def put(self, key: str, data: Any) -> None:
        hold = self.hold
        if hold is not None:
            self.waiting += 1
            await hold.wait()
            if self.fail:
                raise OSError("injected upload failure")
        await self.store.put(key, data)
        self.puts += 1


async def until(condition: Any, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def pending(logs: LogManager) -> int:
    return sum(len(p.pending) for p in logs.logs.values())


def produce(c: Client, partition: int, *vals: bytes) -> asyncio.Future[Any]:
    return asyncio.ensure_future(c.produce("t", build_batch(list(vals)), partition=partition))


async def fetched(c: Client, partition: int) -> list[tuple[int, bytes | None]]:
    part = await c.fetch("t", 0, partition=partition)
    assert part.error_code == 0
    return values(part.records)


def wrap(c: Client) -> tuple[LogManager, Recording, Gated]:
    logs = c.broker.logs
    meta, objects = Recording(logs.meta), Gated(logs.objects)
    logs.meta = meta  # type: ignore[assignment]
    logs.objects = objects  # type: ignore[assignment]
    return logs, meta, objects


# --- group commit ------------------------------------------------------------------------------


def test_a_flush_of_several_partitions_is_one_transaction(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 8)
        logs, meta, _ = wrap(c)
        produces = [produce(c, p, b"v%d" % p, b"w%d" % p) for p in range(8)]
        await until(lambda: pending(logs) == 8)
        await logs.flush()
        for r in await asyncio.gather(*produces):
            assert (r.error_code, r.base_offset) == (0, 0)
        assert len(meta.txns) == 1, meta.txns
        compares, puts, ok = meta.txns[0]
        assert ok
        assert len(compares) == 8  # every partition's guard
        assert len(puts) == 17  # every partition's state and piece entry, the ingest registry
        for p in range(8):
            assert await fetched(c, p) == [(0, b"v%d" % p), (1, b"w%d" % p)]
        # The next flush goes on from the new revisions and high watermarks.
        again = [produce(c, p, b"x") for p in range(8)]
        await until(lambda: pending(logs) == 8)
        await logs.flush()
        assert [r.base_offset for r in await asyncio.gather(*again)] == [2] * 8
        assert len(meta.txns) == 2

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_a_flush_of_many_partitions_is_split_into_transactions_within_etcds_limit(
    tmp_path: Path,
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 100)
        logs, meta, _ = wrap(c)
        # Two requests per partition, each bigger than segment.bytes: two segments each.
        produces = [produce(c, p, b"a" * 300) for p in range(100)]
        await until(lambda: pending(logs) == 100)
        produces += [produce(c, p, b"b" * 300) for p in range(100)]
        await until(lambda: pending(logs) == 200)
        await logs.flush()
        assert all(r.error_code == 0 for r in await asyncio.gather(*produces))
        assert all(ok for _, _, ok in meta.txns)
        sizes = [len(compares) + len(puts) for compares, puts, _ in meta.txns]
        assert all(n <= MAX_TXN_OPS for n in sizes), sizes
        assert len(meta.txns) == 4, sizes  # 4 ops per partition: 32 partitions a transaction
        assert sum(len(meta.states(i)) for i in range(len(meta.txns))) == 100
        for p in (0, 57, 99):
            assert [v for _, v in await fetched(c, p)] == [b"a" * 300, b"b" * 300]

    run(tmp_path, scenario, flush_interval_ms=60_000, segment_bytes=256)


def test_a_fenced_partition_in_a_combined_commit_fails_alone(tmp_path: Path) -> None:
    """Another broker takes partition 2's owner key just before the combined commit: that
    transaction's compares fail; each partition is then committed on its own, so only
    partition 2's produce fails (NOT_LEADER_OR_FOLLOWER, nothing of it committed) while the
    others are acknowledged and durable."""

    async def main() -> None:
        config = BrokerConfig(
            data_dir=tmp_path, listen_port=0, flush_interval_ms=60_000, lease_ttl_ms=30_000
        )
        store = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
        broker = Broker(config, LocalObjectStore(tmp_path / "objects"), store)
        await broker.start()
        logs = broker.logs
        assert logs._ownership is not None  # no ownership rounds: the test fences by hand
        logs._ownership.cancel()
        logs._ownership = None
        try:
            c = Client(broker)
            await c.create("t", 4)
            _, meta, _ = wrap(c)
            produces = [produce(c, p, b"v%d" % p) for p in range(4)]
            await until(lambda: pending(logs) == 4)
            fenced = logs.claims[("t", 2)].owner_key
            meta.txns.clear()  # the claims

            async def take_over(compares: list[Compare], puts: list[Put | Delete]) -> None:
                if len(meta.txns) == 0:  # the combined commit
                    await store.put(fenced, b'{"broker": 7, "epoch": 9}')

            meta.before = take_over
            await logs.flush()
            got = await asyncio.gather(*produces)
            assert [r.error_code for r in got] == [0, 0, NOT_LEADER_OR_FOLLOWER, 0]
            assert [r.base_offset for r in got if r.error_code == 0] == [0, 0, 0]
            # One combined transaction (refused), then one per partition.
            assert [ok for _, _, ok in meta.txns] == [False, True, True, False, True]
            assert len(meta.states(0)) == 4
            for p in range(4):
                state = await store.get(logs.topics.partition_key("t", p))
                assert state is not None
                assert (b'"hw": 1' in state.value) == (p != 2), (p, state.value)
                segments = await store.range(logs.topics.segments_prefix("t", p))
                assert len(segments) == (0 if p == 2 else 1)
            assert ("t", 2) not in logs.logs  # dropped: reloaded before any next flush
        finally:
            await asyncio.wait_for(broker.stop(), 15)

    asyncio.run(main())


def test_a_combined_commit_whose_outcome_is_unknown_fails_every_partition_of_it(
    tmp_path: Path,
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 3)
        logs, meta, _ = wrap(c)

        async def unavailable(compares: list[Compare], puts: list[Put | Delete]) -> None:
            raise MetadataUnavailable("injected")

        meta.before = unavailable
        produces = [produce(c, p, b"v") for p in range(3)]
        await until(lambda: pending(logs) == 3)
        await logs.flush()
        assert [r.error_code for r in await asyncio.gather(*produces)] == [KAFKA_STORAGE_ERROR] * 3
        assert not logs.logs  # every log reloads before its next flush
        meta.before = None
        again = [produce(c, p, b"w") for p in range(3)]
        await until(lambda: pending(logs) == 3)
        await logs.flush()
        assert [r.base_offset for r in await asyncio.gather(*again)] == [0, 0, 0]
        assert await fetched(c, 1) == [(0, b"w")]

    run(tmp_path, scenario, flush_interval_ms=60_000)


# --- overlapping flush cycles ------------------------------------------------------------------


def test_overlapping_flushes_commit_each_partition_in_offset_order(tmp_path: Path) -> None:
    """A second flush cycle is taken while the first is still uploading: its offsets follow
    the first one's, and although its uploads finish first it commits (and answers) only
    after the first cycle has committed."""

    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        logs, meta, objects = wrap(c)
        first = produce(c, 0, b"a1", b"a2")
        await until(lambda: pending(logs) == 1)
        gate = objects.hold = asyncio.Event()
        cycle1 = asyncio.ensure_future(logs.flush())
        await until(lambda: objects.waiting == 1)  # one ingest object  # segment and index, held
        objects.hold = None
        second, other = produce(c, 0, b"b"), produce(c, 1, b"c")
        await until(lambda: pending(logs) == 2)
        cycle2 = asyncio.ensure_future(logs.flush())
        await asyncio.sleep(0.1)  # its uploads are done; it waits for cycle 1
        assert not second.done() and not other.done() and not meta.txns
        gate.set()
        await asyncio.gather(cycle1, cycle2)
        assert (await first).base_offset == 0
        assert (await second).base_offset == 2
        assert (await other).base_offset == 0
        assert [len(meta.states(i)) for i in range(len(meta.txns))] == [1, 2]
        assert await fetched(c, 0) == [(0, b"a1"), (1, b"a2"), (2, b"b")]
        assert await fetched(c, 1) == [(0, b"c")]

    run(tmp_path, scenario, flush_interval_ms=60_000)


@dataclass
class TwoCycles:
    first: asyncio.Future[Any]
    """Partition 0's produce in the first cycle, whose uploads wait for :attr:`gate`."""
    second: asyncio.Future[Any]
    """Partition 0's produce in the second cycle (offsets after the first's)."""
    other: asyncio.Future[Any]
    """Partition 1's produce in the second cycle."""
    gate: asyncio.Event
    cycles: asyncio.Future[Any]
    """Both flushes."""

    async def partition_0_failed(self) -> None:
        """Both flushes end: partition 0's produces failed (retriable), partition 1's one
        committed."""
        await self.cycles
        assert (await self.first).error_code == KAFKA_STORAGE_ERROR
        assert (await self.second).error_code == KAFKA_STORAGE_ERROR
        assert (await self.other).base_offset == 0


async def goes_on_from_0(c: Client, logs: LogManager) -> None:
    """Partition 0 has no gap: the next produce gets offset 0 and is all there is."""
    third = produce(c, 0, b"d")
    await until(lambda: pending(logs) == 1)
    await logs.flush()
    assert (await third).base_offset == 0
    assert await fetched(c, 0) == [(0, b"d")]


async def two_cycles_in_flight(c: Client, logs: LogManager, objects: Gated) -> TwoCycles:
    """Two flush cycles in flight on topic ``t`` (2 partitions): the first's uploads held at
    the gate, the second's taken after it."""
    first = produce(c, 0, b"a1", b"a2")
    await until(lambda: pending(logs) == 1)
    gate = objects.hold = asyncio.Event()
    cycle1 = asyncio.ensure_future(logs.flush())
    await until(lambda: objects.waiting == 1)  # one ingest object
    objects.hold = None
    second, other = produce(c, 0, b"b"), produce(c, 1, b"c")
    await until(lambda: pending(logs) == 2)
    cycle2 = asyncio.ensure_future(logs.flush())
    await asyncio.sleep(0.05)
    return TwoCycles(first, second, other, gate, asyncio.gather(cycle1, cycle2))


def test_a_failed_upload_fails_the_later_flushes_of_its_partition_in_flight(
    tmp_path: Path,
) -> None:
    """The first cycle's upload fails after a second cycle took more of the same partition
    (offsets after the first's): both fail, so nothing leaves a gap; the other partition of
    the second cycle commits; the partition goes on from its high watermark."""

    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        logs, meta, objects = wrap(c)
        f = await two_cycles_in_flight(c, logs, objects)
        objects.fail = True
        f.gate.set()
        await f.partition_0_failed()
        objects.fail = False
        assert [len(meta.states(i)) for i in range(len(meta.txns))] == [1]  # partition 1 only
        await goes_on_from_0(c, logs)

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_a_failed_commit_fails_the_later_flushes_of_its_partition_in_flight(
    tmp_path: Path,
) -> None:
    """The first cycle's commit fails (outcome unknown) while a second cycle of the same
    partition is uploaded and waiting to commit: the second fails too (never committed above
    a gap); its other partition commits; the partition reloads and goes on without a gap."""

    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        logs, meta, objects = wrap(c)
        f = await two_cycles_in_flight(c, logs, objects)

        async def unknown(compares: list[Compare], puts: list[Put | Delete]) -> None:
            if not meta.txns:
                raise MetadataUnavailable("injected: outcome unknown")

        meta.before = unknown
        f.gate.set()
        await f.partition_0_failed()
        assert [ok for _, _, ok in meta.txns] == [None, True]
        assert meta.states(1) == [logs.topics.partition_key("t", 1)]
        await goes_on_from_0(c, logs)

    run(tmp_path, scenario, flush_interval_ms=60_000)


async def first_commit_held(
    c: Client,
) -> tuple[Recording, Gated, asyncio.Future[Any], asyncio.Future[Any], int, asyncio.Event]:
    """Topic ``t`` (1 partition): a first produce whose cycle's commit is held until the
    returned event is set, then a second produce. (store, objects, first, second, objects
    uploaded when the first commit began, the event)."""
    await c.create("t", 1)
    _, meta, objects = wrap(c)
    committing, proceed = asyncio.Event(), asyncio.Event()

    async def hold(compares: list[Compare], puts: list[Put | Delete]) -> None:
        if not committing.is_set():
            committing.set()
            await proceed.wait()

    meta.before = hold
    first = produce(c, 0, b"a")
    await committing.wait()  # the first cycle commits (held)
    uploaded = objects.puts
    return meta, objects, first, produce(c, 0, b"b"), uploaded, proceed


def test_the_flusher_uploads_the_next_cycle_while_the_previous_one_commits(
    tmp_path: Path,
) -> None:
    async def scenario(c: Client) -> None:
        meta, objects, first, second, uploaded, proceed = await first_commit_held(c)
        await until(lambda: objects.puts == uploaded + 1)  # the next cycle uploaded meanwhile
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()
        proceed.set()
        assert (await first).base_offset == 0
        assert (await second).base_offset == 1
        assert [ok for _, _, ok in meta.txns] == [True, True]
        assert await fetched(c, 0) == [(0, b"a"), (1, b"b")]

    # The flusher's own cycles, every 5 ms or once flush.bytes are pending (here at once).
    run(tmp_path, scenario, flush_bytes=1)


def test_with_little_pending_the_flusher_lets_a_cycle_commit_before_the_next(
    tmp_path: Path,
) -> None:
    """Less than flush.bytes pending: no overlap (with many partitions and little data each,
    it would only double the objects per byte); the next cycle starts after the commit."""

    async def scenario(c: Client) -> None:
        _, objects, first, second, uploaded, proceed = await first_commit_held(c)
        await asyncio.sleep(0.1)  # twenty flush intervals
        assert objects.puts == uploaded and not first.done() and not second.done()
        proceed.set()
        assert (await first).base_offset == 0
        assert (await second).base_offset == 1

    run(tmp_path, scenario)


def test_transactional_data_waits_for_the_cycle_committing_instead_of_overlapping_it(
    tmp_path: Path,
) -> None:
    """Transactional data wakes the flusher 1 ms after it arrives (``_wake_soon``), but while
    a cycle commits it waits for that commit and shares the next cycle: a cycle of its own
    beside it would cost another object and commit for the same bytes."""

    async def scenario(c: Client) -> None:
        _, objects, first, second, uploaded, proceed = await first_commit_held(c)
        logs = c.broker.logs
        third = produce(c, 0, b"c")
        await until(lambda: pending(logs) == 2)
        for _ in range(5):
            logs._wake_soon()  # what transactional data's timer calls
            await asyncio.sleep(0.02)
        assert objects.puts == uploaded and not first.done() and not second.done()
        proceed.set()
        assert (await first).base_offset == 0
        assert [(await second).base_offset, (await third).base_offset] == [1, 2]
        assert objects.puts == uploaded + 1  # the two shared one cycle

    run(tmp_path, scenario)


def test_a_flush_of_many_partitions_commits_on_etcd_within_its_limits(tmp_path: Path) -> None:
    """On a real etcd (which refuses a transaction of more than 128 operations), with owner
    keys in every guard: 100 partitions in one flush are 4 transactions of 128 operations."""
    from kafscale.metadata.etcd import EtcdMetadataStore
    from tests.etcdserver import require_etcd

    with require_etcd(1) as etcd:

        async def main() -> None:
            config = BrokerConfig(
                data_dir=tmp_path, listen_port=0, flush_interval_ms=60_000, lease_ttl_ms=30_000
            )
            store = EtcdMetadataStore(etcd.endpoints)
            broker = Broker(config, LocalObjectStore(tmp_path / "objects"), store)
            await broker.start()
            try:
                cluster = broker.logs.cluster
                assert cluster is not None
                await until(lambda: not cluster.settling())  # claims begin a moment after start
                c = Client(broker)
                await c.create("t", 100)
                logs, meta, _ = wrap(c)
                produces = [produce(c, p, b"v%d" % p) for p in range(100)]
                await until(lambda: pending(logs) == 100, timeout=60)
                meta.txns.clear()  # the claims
                await logs.flush()
                got = await asyncio.gather(*produces)
                assert [(r.error_code, r.base_offset) for r in got] == [(0, 0)] * 100
                sizes = [len(compares) + len(puts) for compares, puts, _ in meta.txns]
                # 31 partitions of 4 operations, and the ingest registry entry
                assert sizes == [125, 125, 125, 29], sizes
                assert all(ok for _, _, ok in meta.txns)
                assert await fetched(c, 99) == [(0, b"v99")]
            finally:
                await asyncio.wait_for(broker.stop(), 30)

        asyncio.run(main())


# --- cycles of transaction markers (LogManager.append_markers) ---------------------------------


def _markers(logs: LogManager, plogs: list[Any], pid: int, puts: list[Put | Delete]) -> Any:
    return asyncio.ensure_future(
        logs.append_markers(plogs, marker_batch(pid, 0, True, 0), pid, 0, True, [], puts)
    )


def test_markers_waiting_together_share_one_atomic_commit(tmp_path: Path) -> None:
    """Markers of one ending commit in one metadata transaction with the puts they carry; the
    endings that arrive while a cycle of markers is in flight share the next one (one upload,
    one commit); a partition's pending data goes before the markers taken with it."""

    async def scenario(c: Client) -> None:
        await c.create("t", 3)
        logs, meta, objects = wrap(c)
        plogs = [await logs.get("t", p) for p in range(3)]
        objects.hold = asyncio.Event()
        first = _markers(logs, plogs[:2], 1, [Put(b"/test/a", b"1")])
        await until(lambda: objects.waiting == 1)  # its cycle uploads (held)
        data = produce(c, 2, b"d")
        await until(lambda: pending(logs) == 1)
        second = _markers(logs, plogs, 2, [Put(b"/test/b", b"2")])
        third = _markers(logs, plogs[2:], 3, [Put(b"/test/c", b"3")])
        await asyncio.sleep(0.05)
        assert objects.waiting == 1  # both wait for the cycle in flight
        meta.txns.clear()
        objects.hold.set()
        objects.hold = None
        a, b, c3 = await asyncio.gather(first, second, third)
        assert b == c3 and a < b  # the second and third in one commit, after the first
        assert [ok for _, _, ok in meta.txns] == [True, True]
        keys = [[p.key for p in puts] for _, puts, _ in meta.txns]
        assert b"/test/a" in keys[0] and {b"/test/b", b"/test/c"} <= set(keys[1])
        assert (await data).base_offset == 0  # before the markers
        assert [plog.hw for plog in plogs] == [2, 2, 3]
        assert objects.puts == 2

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_endings_wait_for_the_cycle_of_markers_committing(tmp_path: Path) -> None:
    """A cycle of markers starts once the last one has committed, not uploaded: endings that
    arrive while one commits share the next cycle (with 8 transactional producers, starting
    on the upload made nearly a cycle of markers per ending)."""

    async def scenario(c: Client) -> None:
        await c.create("t", 3)
        logs, meta, objects = wrap(c)
        plogs = [await logs.get("t", p) for p in range(3)]
        committing, proceed = asyncio.Event(), asyncio.Event()

        async def hold(compares: list[Compare], puts: list[Put | Delete]) -> None:
            if any(p.key == b"/test/a" for p in puts):
                committing.set()
                await proceed.wait()

        meta.before = hold
        first = _markers(logs, plogs[:2], 1, [Put(b"/test/a", b"1")])
        await committing.wait()  # uploaded, committing (held)
        uploaded = objects.puts
        second = _markers(logs, plogs, 2, [Put(b"/test/b", b"2")])
        third = _markers(logs, plogs[1:], 3, [Put(b"/test/c", b"3")])
        await asyncio.sleep(0.05)
        assert objects.puts == uploaded and not second.done()  # no cycle beside it
        proceed.set()
        a, b, c3 = await asyncio.gather(first, second, third)
        assert a < b == c3  # the two later endings in one commit
        assert objects.puts == uploaded + 1

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_markers_commit_all_or_none(tmp_path: Path) -> None:
    """One partition of a cycle of markers moves just before its commit: no partition
    gets its marker (no retry partition by partition), and the ending fails."""

    async def scenario(c: Client) -> None:
        await c.create("t", 3)
        logs, meta, _ = wrap(c)
        plogs = [await logs.get("t", p) for p in range(3)]
        fenced = logs.topics.partition_key("t", 1)

        async def take_over(compares: list[Compare], puts: list[Put | Delete]) -> None:
            if any(p.key == b"/test/x" for p in puts):  # someone else writes its state
                await logs.meta.store.put(fenced, json.dumps({"log_start": 0, "hw": 0}).encode())

        meta.before = take_over
        ending = _markers(logs, plogs, 1, [Put(b"/test/x", b"1")])
        try:
            await ending
        except FlushError as e:
            assert e.code == NOT_LEADER_OR_FOLLOWER
        else:
            raise AssertionError("a fenced cycle of markers committed")
        assert [ok for _, _, ok in meta.txns][-1:] == [False]  # and nothing after it
        assert await logs.meta.store.get(b"/test/x") is None
        for p in range(3):
            state = await logs.meta.store.get(logs.topics.partition_key("t", p))
            assert state is None or b'"hw": 0' in state.value, state

    run(tmp_path, scenario, flush_interval_ms=60_000)
