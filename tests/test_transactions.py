"""Transactions in one broker process, driven through the coordinator and the log directly
(issue 17): the producer state's ongoing transaction, the last stable offset, markers, the
aborted-transaction index (on the log entries, through compaction and a reload), Fetch
read_committed and ListOffsets read_committed, TxnOffsetCommit's staged offsets, a
verification refusing a batch outside any transaction, and the sans-io rules of
``producers.py`` and ``txn_index.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from generated.errors import ErrorCode
from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kafscale.broker.log import FlushError
from kafscale.broker.offsets import CommittedOffset
from kafscale.broker.producers import ABORT, COMMIT, ProducerBatch, ProducerEntry, commit
from kafscale.broker.transactions import TxnError
from kafscale.broker.txn_index import aborted_between, last_stable_offset, marker_type
from kafscale.protocol.records import build_batch, iter_records, parse_batches
from tests.broker_harness import Client, run
from tests.test_compaction import idle_compactor


def test_producer_state_tracks_the_ongoing_transaction() -> None:
    state: dict[int, ProducerEntry] = {}
    aborted: list[tuple[int, int, int]] = []
    data = ProducerBatch(7, 0, 0, 1, 2, transactional=True)
    state = commit(state, [(data, 10)], 1000, 60_000, aborted)
    assert state[7].txn_first == 10 and last_stable_offset(state, 20) == 10
    more = ProducerBatch(7, 0, 2, 2, 1, transactional=True)
    state = commit(state, [(more, 12)], 1000, 60_000, aborted)
    assert state[7].txn_first == 10  # the transaction started at its first batch
    marker = ProducerBatch(7, 0, -1, -1, 1, 0, True, ABORT)
    state = commit(state, [(marker, 13)], 1000, 60_000, aborted)
    assert state[7].txn_first is None and aborted == [(7, 10, 13)]
    assert last_stable_offset(state, 20) == 20
    # A producer with a transaction ongoing never expires; a fenced epoch restarts sequences.
    state = commit(state, [(data, 20)], 1000, 60_000, aborted)
    assert 7 in commit(state, [], 10**9, 60_000)
    fence = ProducerBatch(7, 1, -1, -1, 1, 0, True, COMMIT)
    state = commit(state, [(fence, 25)], 1000, 60_000, aborted)
    assert (state[7].epoch, state[7].batches, state[7].txn_first) == (1, [], None)
    assert aborted == [(7, 10, 13)]


def test_aborted_between_answers_what_overlaps() -> None:
    class E:
        def __init__(self, base: int, last: int, aborted: list[tuple[int, int, int]]) -> None:
            self.base, self.last, self.aborted = base, last, aborted

    entries = [E(0, 9, [(1, 0, 5)]), E(10, 19, [(2, 3, 12), (3, 15, 18)]), E(20, 29, [])]
    assert aborted_between(entries, 0, 0, 30) == [(1, 0), (2, 3), (3, 15)]
    assert aborted_between(entries, 0, 6, 14) == [(2, 3)]
    assert aborted_between(entries, 1, 13, 15) == []


async def _txn(c: Client, tid: str, values: list[bytes], seq: int, commit_it: bool) -> int:
    """One transaction of ``values`` to t-0, committed or aborted; the next sequence."""
    broker = c.broker
    tc = broker.transactions
    meta, _ = await tc.load(tid)
    assert meta is not None
    await tc.add_partitions(tid, meta.producer_id, meta.epoch, [("t", 0)])
    data = build_batch(
        values,
        producer_id=meta.producer_id,
        producer_epoch=meta.epoch,
        base_sequence=seq,
        transactional=True,
    )
    plog = await broker.logs.get("t", 0)
    await broker.logs.append(plog, data, 1 << 20, tid)
    assert plog.lso < plog.hw  # undecided: read_committed stops before it
    await tc.end_txn(tid, meta.producer_id, meta.epoch, commit_it)
    return seq + len(values)


async def _fetch(c: Client, offset: int, committed: bool) -> Any:
    part = FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=1 << 20)
    body = FetchRequest(
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=1 if committed else 0,
        topics=[FetchTopic(topic="t", partitions=[part])],
    )
    return (await c.call(1, 12, body)).responses[0].partitions[0]


async def _latest(c: Client, committed: bool) -> int:
    part = ListOffsetsPartition(partition_index=0, timestamp=-1)
    body = ListOffsetsRequest(
        isolation_level=1 if committed else 0,
        topics=[ListOffsetsTopic(name="t", partitions=[part])],
    )
    return int((await c.call(2, 8, body)).topics[0].partitions[0].offset)


def test_markers_lso_and_the_aborted_index_through_compaction(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        broker = c.broker
        await broker.markers.start()
        await broker.transactions.start()
        try:
            await c.create("t")
            pid, epoch = await broker.transactions.init_producer_id("tx", 60_000, -1, -1)
            seq = await _txn(c, "tx", [b"a1", b"a2"], 0, False)  # offsets 0-1, marker 2
            await _txn(c, "tx", [b"c1"], seq, True)  # offset 3, marker 4
            plog = await broker.logs.get("t", 0)
            assert (plog.hw, plog.lso) == (5, 5)
            assert [a for s in plog.segments for a in s.aborted] == [(pid, 0, 2)]
            assert await _latest(c, True) == await _latest(c, False) == 5
            got = await _fetch(c, 0, True)
            assert (got.high_watermark, got.last_stable_offset) == (5, 5)
            assert [(a.producer_id, a.first_offset) for a in got.aborted_transactions] == [(pid, 0)]
            kinds = [
                (
                    b.base_offset,
                    b.is_control,
                    marker_type(next(iter_records(got.records[b.position : b.end])).key),
                )
                for b in parse_batches(got.records, len(got.records))
                if b.is_control
            ]
            assert kinds == [(2, True, ABORT), (4, True, COMMIT)]
            assert (await _fetch(c, 3, True)).aborted_transactions == []
            # Compaction merges the pieces: the index goes with the abort marker.
            assert await idle_compactor(broker.logs).compact(plog)
            assert len(plog.segments) == 1 and plog.segments[0].aborted == [(pid, 0, 2)]
            stored = await broker.logs._load("t", 0)  # what a new owner would load
            assert [s.aborted for s in stored.segments] == [[(pid, 0, 2)]]
            assert stored.producers[pid].txn_first is None
            got = await _fetch(c, 0, True)
            assert [(a.producer_id, a.first_offset) for a in got.aborted_transactions] == [(pid, 0)]
            state = await broker.transactions.describe("tx")
            assert (state.state, state.epoch) == ("CompleteCommit", epoch)
        finally:
            await broker.transactions.close()
            await broker.markers.close()

    run(tmp_path, scenario)


def test_staged_offsets_and_verification(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        broker = c.broker
        tc = broker.transactions
        await broker.markers.start()
        await tc.start()
        try:
            await c.create("t")
            pid, epoch = await tc.init_producer_id("ctp", 60_000, -1, -1)
            # A transactional batch outside any transaction: refused, nothing written.
            plog = await broker.logs.get("t", 0)
            stray = build_batch(
                [b"x"], producer_id=pid, producer_epoch=epoch, base_sequence=0, transactional=True
            )
            with pytest.raises(FlushError) as refused:
                await broker.logs.append(plog, stray, 1 << 20, "ctp")
            assert refused.value.code == ErrorCode.INVALID_TXN_STATE and plog.hw == 0
            offsets = {("t", 0): CommittedOffset(42)}
            with pytest.raises(TxnError) as not_added:
                await tc.stage_offsets("ctp", "g", pid, epoch, offsets, [])
            assert not_added.value.code == ErrorCode.INVALID_TXN_STATE
            await tc.add_offsets("ctp", pid, epoch, "g")
            await tc.stage_offsets("ctp", "g", pid, epoch, offsets, [])
            assert await tc.pending_groups("g") == {("t", 0)}
            assert (await broker.offsets.fetch("g", None)) == {}  # invisible until committed
            with pytest.raises(TxnError) as fenced:
                await tc.stage_offsets("ctp", "g", pid, epoch - 1, offsets, [])
            assert fenced.value.code == ErrorCode.PRODUCER_FENCED
            await tc.end_txn("ctp", pid, epoch, True)
            assert await tc.pending_groups("g") == set()
            assert (await broker.offsets.fetch("g", None))[("t", 0)].offset == 42
            # A new producer of the id fences the old one.
            _, new_epoch = await tc.init_producer_id("ctp", 60_000, -1, -1)
            assert new_epoch == epoch + 1
            with pytest.raises(TxnError) as zombie:
                await tc.add_partitions("ctp", pid, epoch, [("t", 0)])
            assert zombie.value.code == ErrorCode.PRODUCER_FENCED
        finally:
            await tc.close()
            await broker.markers.close()

    run(tmp_path, scenario)
