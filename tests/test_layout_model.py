"""A model test of a partition's entry list (issue: storage lifecycle).

Generated sequences of operations drive a real ``LogManager`` on the embedded stores
(``LocalObjectStore`` and ``SqliteMetadataStore`` under a temporary directory, a ``Broker``
built as ``tests/broker_harness.py`` builds it, without its background tasks): appends (one
flush cycle of a few produce requests), compactions (``Compactor.compact`` with small
segments, busy, idle or with every segment sealed, and small ``max_run``), retention
(``Compactor.retain`` after setting the topic's ``retention.ms`` / ``retention.bytes``),
DeleteRecords, takeovers (the log dropped and reloaded from the stores, a fresh broker on the
same directories, a leader epoch bump), janitor passes at a far-future time, and races: a
compaction with an append, a DeleteRecords, retention or a takeover; a DeleteRecords with an
append or retention; retention with an append. Partition 0 gets all of them; partition 1 is a
bystander that sometimes takes part in a flush cycle (so it shares ingest objects with
partition 0) and is sometimes compacted.

The reference: the list of every record's value (its offset is its index) and the log start.
After every operation, for both partitions:

- Fetch from the log start to the high watermark (in Fetches of :data:`FETCH_BYTES`) returns
  exactly the reference records (same offsets and values), through the segment cache and again
  with the cache emptied (so every byte comes from the object store); the answers carry the
  reference's log start and high watermark; below the log start is OFFSET_OUT_OF_RANGE;
- the entries tile ``[log start, high watermark)`` with no gap and no overlap, except for a
  prefix of entries wholly below the log start. ``LogManager.advance_log_start`` leaves such
  entries only between its transactions (of ``DROP_PER_TXN`` entries, under the partition's
  lock; this test sets it to 2 so that path runs) or, in the store, after one of its later
  transactions failed (not injected here); but a compaction that splits an entry holding the
  log start leaves them for good: see :func:`test_compaction_keeps_no_entry_below_the_log_start`;
- pieces come only after segments, and each has its base at or above ``pieces_from``;
- the entries stored under ``/{ns}/segments/t/{p}/`` are exactly the entries in memory, and
  the stored partition state has the same log start, high watermark and ``pieces_from``;
- every entry's objects exist (a segment and its index; a piece's ingest object, named by an
  ingest registry entry that lists the piece, which is what keeps the janitor off it);
- after janitor passes at a far-future time: every object is referenced by an entry or named
  by a pending garbage record, and after a second pass no garbage record is left and the
  objects are exactly those the entries reference.

The scenario ends with an idle compaction of both partitions and two janitor passes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from kafscale.broker.compaction import Compactor
from kafscale.broker.config import BrokerConfig
from kafscale.broker.janitor import now_ms
from kafscale.broker.layout import Policy, unreachable
from kafscale.broker.log import FlushError, LogManager, PartitionLog, SegmentMeta
from kafscale.broker.server import Broker
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client, values
from tests.test_layout import kafka_retention_start

NS = "kafscale"
TOPIC = "t"
DAY_MS = 86_400_000
FOREVER = 1 << 50
FAR_MS = 100 * DAY_MS
"""How far ahead the janitor's clock is put: past every grace period, intent and orphan age."""
FETCH_BYTES = 600
"""Small: a read takes several Fetches, which start inside entries and cross them, and a batch
larger than the limit comes whole (KIP-74; see
:func:`test_fetch_inside_an_entry_returns_the_batch_whatever_the_limit`)."""

Op = tuple[Any, ...]


def tally(what: str) -> None:
    """A hypothesis event (shown by ``--hypothesis-show-statistics``), when under hypothesis."""
    if currently_in_test_context():
        event(what)


class FixedCompactor(Compactor):
    """A compactor whose policy the test sets."""

    fixed = Policy(1 << 20, FOREVER)

    def policy(self, topic: str) -> Policy:
        return self.fixed


@dataclass
class Model:
    values: list[bytes] = field(default_factory=list)
    """Every record's value ever appended; its offset is its index."""
    log_start: int = 0
    written: int = 0
    """Values made so far (each is unique)."""

    @property
    def hw(self) -> int:
        return len(self.values)

    def records(self) -> list[tuple[int, bytes]]:
        return [(o, v) for o, v in enumerate(self.values) if o >= self.log_start]


class Harness:
    """A broker on ``root`` (no background tasks: flushes, compactions, retention and
    janitor passes happen when the test says), the reference, and the checks."""

    def __init__(self, root: Path, segment_bytes: int) -> None:
        self.root = root
        self.segment_bytes = segment_bytes
        self.model = Model()
        self.broker: Broker | None = None
        self.compactor: FixedCompactor | None = None
        self.client: Client | None = None
        self.floor = 0
        """The log start a racing DeleteRecords asked for."""
        self.other: list[bytes] = []
        """Partition 1's values (offsets from 0): a bystander that shares the ingest objects
        of the flush cycles it takes part in, compacted only when the test says."""

    # --- the broker ---------------------------------------------------------------------------

    async def open(self) -> None:
        config = BrokerConfig(
            data_dir=self.root,
            segment_bytes=self.segment_bytes,
            index_interval_bytes=64,  # several index entries per segment: positioned reads
            flush_interval_ms=60_000,
        )
        broker = Broker(
            config,
            LocalObjectStore(self.root / "objects"),
            SqliteMetadataStore(self.root / "metadata.sqlite3"),
        )
        await broker.topics.load()
        self.broker = broker
        self.compactor = FixedCompactor(broker.logs)
        self.client = Client(broker)

    async def close(self) -> None:
        broker = self.broker
        if broker is None:
            return
        self.broker = None
        await asyncio.wait_for(broker.logs.close(), 10)
        await broker.meta.close()
        await broker.objects.close()

    @property
    def logs(self) -> LogManager:
        assert self.broker is not None
        return self.broker.logs

    async def plog(self, partition: int = 0) -> PartitionLog:
        return await self.logs.get(TOPIC, partition)

    # --- operations ---------------------------------------------------------------------------

    async def append(self, requests: list[tuple[int, int, bool]], other: bool) -> None:
        """One flush cycle of produce requests: (records, padding, old timestamps); with
        ``other``, partition 1 gets a record in the same cycle (so in the same ingest
        object)."""
        plog = await self.plog()
        now = now_ms()
        expected, made, tasks = [], [], []
        if other:
            value = b"other%06d" % len(self.other)
            batch = build_batch([value], timestamp=now)
            bystander = asyncio.ensure_future(self.logs.append(await self.plog(1), batch, 1 << 20))
        offset = self.model.hw
        for count, pad, old in requests:
            batch_values = []
            for _ in range(count):
                batch_values.append(b"%06d" % self.model.written + b"." * pad)
                self.model.written += 1
            batch = build_batch(batch_values, timestamp=now - 10 * DAY_MS if old else now)
            tasks.append(asyncio.ensure_future(self.logs.append(plog, batch, 1 << 20)))
            expected.append(offset)
            offset += count
            made += batch_values
        await asyncio.sleep(0)  # every request waits in the partition's pending list
        await self.logs.flush()
        assert list(await asyncio.gather(*tasks)) == expected  # their base offsets
        self.model.values += made
        if other:
            assert await bystander == len(self.other)
            self.other.append(value)

    async def compact(
        self, mode: str, max_pieces: int, max_run: int, rounds: int, partition: int = 0
    ) -> None:
        assert self.compactor is not None
        self.compactor.fixed = Policy(
            self.segment_bytes,
            0 if mode == "sealed" else FOREVER,
            max_pieces=max_pieces,
            piece_age_ms=FOREVER,
            idle_ms=0 if mode == "idle" else FOREVER,
            max_run=max_run,
        )
        for _ in range(rounds):
            plog = await self.plog(partition)
            entries = len(plog.segments)
            if not await self.compactor.compact(plog):
                return
            tally(f"compaction: {entries} entries -> {len(plog.segments)}")

    async def retain(self, retention_ms: int, retention_bytes: int, exact: bool = True) -> None:
        assert self.broker is not None and self.compactor is not None
        configs = {"retention.ms": str(retention_ms), "retention.bytes": str(retention_bytes)}
        await self.broker.topics.set_configs(TOPIC, configs, False)
        plog = await self.plog()
        before, log_start, now = list(plog.segments), plog.log_start, now_ms()
        start = await self.compactor.retain(plog)
        if not exact:  # racing: the log start depends on the order
            assert log_start <= start <= plog.hw
            return
        tally(f"retention dropped {len(before) - len(plog.segments)} entries")
        assert start == plog.log_start
        # Our timestamps are 10 days old or fresh, retention.ms is one day: no clock skew
        # between this reference and the compactor's clock can change the answer.
        expected = kafka_retention_start(before, log_start, now, retention_ms, retention_bytes)
        assert start == min(expected, plog.hw), (start, expected)
        self.model.log_start = start

    async def delete_records(self, kind: str, selector: int, exact: bool = True) -> None:
        plog = await self.plog()
        hw, log_start = plog.hw, plog.log_start
        if kind == "beyond":
            try:
                await self.logs.delete_records(plog, hw + 1 + selector % 3)
            except FlushError as e:
                assert e.code == 1  # OFFSET_OUT_OF_RANGE
            else:
                raise AssertionError("DeleteRecords beyond the high watermark was accepted")
            return
        before = -1 if kind == "all" else selector % (hw + 1)
        expected = max(log_start, hw if before == -1 else before)
        low = await self.logs.delete_records(plog, before)
        if not exact:  # racing retention, which may have moved the log start further
            assert expected <= low <= plog.hw, (low, expected)
            self.floor = max(self.floor, expected)
            return
        assert low == expected, (low, expected)
        self.model.log_start = max(self.model.log_start, expected)

    async def takeover(self, kind: str) -> None:
        if kind == "drop":  # the log is forgotten and reloaded from the stores on next use
            plog = self.logs.logs.get((TOPIC, 0))
            if plog is not None:
                self.logs.drop(plog, FlushError(6, "taken over (test)"))
        elif kind == "restart":  # another broker takes over: nothing in memory carries over
            await self.close()
            await self.open()
        else:
            await self.logs.bump_leader_epoch(TOPIC, 0)

    async def janitor(self, passes: int) -> None:
        janitor = self.logs.janitor
        for _ in range(passes):
            deleted = janitor.deleted
            await janitor.run_once(now_ms() + FAR_MS, slow=True)
            tally(f"janitor deleted {min(janitor.deleted - deleted, 5)}+ objects")
        referenced = self.referenced(await self.plog()) | self.referenced(await self.plog(1))
        objects = set(await self.logs.objects.list(f"{NS}/"))
        pending = {
            name
            for kv in await self.logs.meta.range(f"/{NS}/gc/".encode())
            for name in json.loads(kv.value)["objects"]
        }
        assert objects <= referenced | pending, sorted(objects - referenced - pending)
        if passes >= 2:
            assert not pending, sorted(pending)
            assert objects == referenced, (sorted(objects - referenced), referenced - objects)

    async def race(self, first: Op, second: Op) -> None:
        """Two operations at once. What depends on their order is checked afterwards: the log
        start moved at least as far as a DeleteRecords asked, and at most to the high
        watermark; the reads then check that it is the reference's from there on."""
        assert self.compactor is not None
        log_start, self.floor = self.model.log_start, 0
        swaps = self.compactor.compactions
        await asyncio.gather(self.run(first, exact=False), self.run(second, exact=False))
        plog = await self.plog()
        assert max(log_start, self.floor) <= plog.log_start <= plog.hw
        self.model.log_start = plog.log_start
        if first[0] == "compact":
            swapped = self.compactor.compactions > swaps
            tally(f"race of a compaction and {second[0]}: swapped {swapped}")

    async def run(self, op: Op, exact: bool = True) -> None:
        name, *args = op
        if name == "append":
            await self.append(*args)
        elif name == "compact":
            await self.compact(*args)
        elif name == "retain":
            await self.retain(args[0], args[1], exact)
        elif name == "delete":
            await self.delete_records(args[0], args[1], exact)
        elif name == "takeover":
            await self.takeover(*args)
        elif name == "janitor":
            await self.janitor(*args)
        elif name == "race":
            await self.race(*args)
        else:
            raise AssertionError(op)

    # --- checks -------------------------------------------------------------------------------

    @staticmethod
    def referenced(plog: PartitionLog) -> set[str]:
        out: set[str] = set()
        for s in plog.segments:
            out.update([s.key] if s.piece else s.objects)
        return out

    async def check(self) -> None:
        model = self.model
        await self.check_partition(0, model.log_start, model.values)
        await self.check_partition(1, 0, self.other)

    async def check_partition(self, partition: int, log_start: int, values: list[bytes]) -> None:
        plog = await self.plog(partition)
        assert (plog.log_start, plog.hw) == (log_start, len(values))
        segs = plog.segments
        # The entries tile [log start, hw), but for entries wholly below the log start that a
        # compaction split off (see test_compaction_keeps_no_entry_below_the_log_start): a
        # prefix, contiguous with the rest.
        stray = unreachable(segs, plog.log_start)
        if stray:
            tally("compaction left entries wholly below the log start")
        live = segs[len(stray) :]
        if live:
            assert live[0].base <= plog.log_start <= live[0].last, (plog.log_start, live[0])
            assert segs[-1].last + 1 == plog.hw
            for a, b in itertools.pairwise(segs):
                assert b.base == a.last + 1, (a, b)
        else:
            assert plog.log_start == plog.hw
            assert not segs or segs[-1].last + 1 == plog.hw
        assert all(s.base <= s.last for s in segs)
        first_piece = next((i for i, s in enumerate(segs) if s.piece), len(segs))
        assert all(s.piece for s in segs[first_piece:])
        assert all(s.base >= plog.pieces_from for s in segs if s.piece)
        # The store holds the same entries and state.
        meta = self.logs.meta
        prefix = self.logs.topics.segments_prefix(TOPIC, partition)
        stored = [
            SegmentMeta.from_json(int(kv.key[len(prefix) :]), kv.value)
            for kv in await meta.range(prefix)
        ]
        assert sorted(stored, key=lambda s: s.base) == segs
        kv = await meta.get(plog.state_key)
        # Absent until the partition's first commit: an empty log from offset 0.
        state = json.loads(kv.value) if kv is not None else {"log_start": 0, "hw": 0}
        assert (state["log_start"], state["hw"], state.get("pieces_from", 0)) == (
            plog.log_start,
            plog.hw,
            plog.pieces_from,
        )
        # Every entry's objects exist; every piece is named by its object's registry entries.
        objects = set(await self.logs.objects.list(f"{NS}/"))
        missing = self.referenced(plog) - objects
        assert not missing, sorted(missing)
        registry: dict[str, list[Any]] = {}
        ingest = self.logs.topics.ingest_prefix
        for kv in await meta.range(ingest):
            name = kv.key[len(ingest) :].decode().rsplit("/", 1)[0]
            for topic_name, entry in json.loads(kv.value)["topics"].items():
                registry.setdefault(name, []).extend(
                    [topic_name, entry["id"], p, base] for p, base in entry["pieces"]
                )
        topic = self.logs.topics.get(TOPIC)
        assert topic is not None
        for s in segs:
            if s.piece:
                assert [TOPIC, str(topic.id), partition, s.base] in registry.get(s.key, []), s
        # Reads: through the cache, then with every byte from the object store.
        expected = [(o, v) for o, v in enumerate(values) if o >= log_start]
        assert await self.read_all(partition, log_start, len(values)) == expected
        logs = self.logs
        logs.cache.clear()
        logs.indexes.clear()
        assert await self.read_all(partition, log_start, len(values)) == expected
        if plog.log_start > 0:
            assert self.client is not None
            below = await self.client.fetch(TOPIC, plog.log_start - 1, partition)
            assert below.error_code == 1  # OFFSET_OUT_OF_RANGE

    async def read_all(self, partition: int, log_start: int, hw: int) -> list[tuple[int, bytes]]:
        client = self.client
        assert client is not None
        out: list[tuple[int, bytes]] = []
        offset = log_start
        while offset < hw:
            got = await client.fetch(TOPIC, offset, partition, max_bytes=FETCH_BYTES)
            assert got.error_code == 0, got
            assert (got.log_start_offset, got.high_watermark) == (log_start, hw)
            batch = [(o, v) for o, v in values(got.records) if o >= offset]
            assert batch, f"no records at {offset} below the high watermark {hw}"
            for o, v in batch:
                assert v is not None
                out.append((o, v))
            offset = batch[-1][0] + 1
        got = await client.fetch(TOPIC, hw, partition)
        assert got.error_code == 0 and not values(got.records)
        return out


# --- operations -------------------------------------------------------------------------------

appends = st.tuples(
    st.just("append"),
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(0, 160), st.booleans()), min_size=1, max_size=3
    ),
    st.booleans(),  # partition 1 too
)
compactions = st.tuples(
    st.just("compact"),
    st.sampled_from(["busy", "idle", "sealed"]),
    st.integers(1, 5),  # max_pieces
    st.integers(1, 6),  # max_run
    st.integers(1, 3),  # rounds
    st.sampled_from([0, 0, 0, 1]),  # partition
)
retentions = st.tuples(
    st.just("retain"),
    st.sampled_from([-1, DAY_MS]),
    st.sampled_from([-1, 0, 300, 1000, 3000]),
)
deletes = st.tuples(
    st.just("delete"), st.sampled_from(["in", "in", "all", "beyond"]), st.integers(0, 10**6)
)
takeovers = st.tuples(st.just("takeover"), st.sampled_from(["drop", "restart", "bump"]))
janitors = st.tuples(st.just("janitor"), st.integers(1, 2))
races = st.one_of(
    st.tuples(
        st.just("race"),
        compactions,
        st.one_of(
            appends,
            deletes,
            retentions,
            st.tuples(st.just("takeover"), st.sampled_from(["drop", "bump"])),
        ),
    ),
    st.tuples(st.just("race"), deletes, st.one_of(appends, retentions)),
    st.tuples(st.just("race"), retentions, appends),
)

operations = st.lists(
    st.one_of(
        appends, appends, compactions, compactions, retentions, deletes, takeovers, janitors, races
    ),
    min_size=8,
    max_size=40,
)


async def scenario(root: Path, segment_bytes: int, ops: list[Op]) -> None:
    h = Harness(root, segment_bytes)
    await h.open()
    try:
        assert h.client is not None
        await h.client.create(TOPIC, 2)
        await h.check()
        for op in ops:
            note(repr(op))
            await h.run(op)
            await h.check()
        for partition in (0, 1):  # the end state: compacted, collected
            await h.compact("idle", 1, 100, 100, partition)
        await h.check()
        await h.janitor(2)
        await h.check()
    finally:
        await h.close()


@settings(deadline=None)
@given(st.integers(250, 2500), operations)
def test_the_entry_list_follows_the_reference(segment_bytes: int, ops: list[Op]) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, patch("kafscale.broker.log.DROP_PER_TXN", 2):
        asyncio.run(scenario(Path(tmp), segment_bytes, ops))
    note(f"{len(ops)} operations in {time.monotonic() - started:.2f} s")


# --- bugs the model found --------------------------------------------------------------------


@pytest.mark.parametrize("compacted", [False, True], ids=["piece", "segment"])
def test_fetch_inside_an_entry_returns_the_batch_whatever_the_limit(
    tmp_path: Path, compacted: bool
) -> None:
    """KIP-74: the first batch at the fetch offset comes whole, whatever the byte limit. One
    entry of two one-record batches (flushed together: a piece; or compacted into a segment
    with the default index interval); Fetch at offset 1 with a limit of 100 bytes.

    Found by the model test at 246fae2: ``LogManager._read_segment`` counted the limit from
    the entry's read position (a piece's first batch, or the index entry before the offset),
    so the batches before the offset used it up, and its KIP-74 fallback took the length of
    the chunk's first batch, one of those: Fetch answered no records and no error below the
    high watermark, and the consumer asked again forever (for a piece, until compaction).
    The working tree's ``_read_segment`` walks the batch headers to the offset instead."""

    async def main() -> None:
        config = BrokerConfig(data_dir=tmp_path)
        broker = Broker(
            config,
            LocalObjectStore(tmp_path / "objects"),
            SqliteMetadataStore(tmp_path / "metadata.sqlite3"),
        )
        await broker.topics.load()
        client = Client(broker)
        try:
            await client.create(TOPIC)
            plog = await broker.logs.get(TOPIC, 0)
            appends = [
                asyncio.ensure_future(broker.logs.append(plog, build_batch([v]), 1 << 20))
                for v in (b"first", b"second")
            ]
            await asyncio.sleep(0)
            await broker.logs.flush()
            assert await asyncio.gather(*appends) == [0, 1]
            if compacted:
                compactor = FixedCompactor(broker.logs)
                compactor.fixed = Policy(1 << 20, FOREVER, idle_ms=0)
                assert await compactor.compact(plog)
            assert [s.piece for s in plog.segments] == [not compacted]
            whole = await client.fetch(TOPIC, 1, max_bytes=1 << 20)
            assert values(whole.records) == [(1, b"second")]
            small = await client.fetch(TOPIC, 1, max_bytes=100)  # the batch is about 70 bytes
            assert small.error_code == 0 and small.high_watermark == 2
            assert values(small.records) == [(1, b"second")]  # at 246fae2: no records
        finally:
            await broker.logs.close()
            await broker.meta.close()

    asyncio.run(main())


def test_compaction_keeps_no_entry_below_the_log_start(tmp_path: Path) -> None:
    """One piece of two batches (one flush) holds offsets 0 and 1; DeleteRecords
    moves the log start to 1 (the piece stays: it holds offset 1); compaction with
    segment.bytes 500 writes each batch into a segment of its own."""

    async def main() -> None:
        h = Harness(tmp_path, 1 << 20)  # the flush: one piece
        await h.open()
        try:
            assert h.client is not None
            await h.client.create(TOPIC)
            await h.append([(1, 300, False), (1, 300, False)], False)
            plog = await h.plog()
            assert [(s.base, s.last, s.piece) for s in plog.segments] == [(0, 1, True)]
            assert await h.logs.delete_records(plog, 1) == 1
            h.segment_bytes = 500  # the compaction: a segment per batch
            await h.compact("idle", 1, 100, 1)
            assert plog.pieces_from == 2 and not any(s.piece for s in plog.segments)
            below = [(s.base, s.last) for s in plog.segments if s.last < plog.log_start]
            assert below == [], below  # was [(0, 0)]: a segment wholly below the log start
        finally:
            await h.close()

    asyncio.run(main())
