"""Idempotent-producer sequence rules (kafscale/broker/producers.py) at every edge, and the
broker applying them: retries answered with their original offset, gaps, stale epochs,
unknown producers, wraparound, state committed with the data (restarts, failover)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from generated.describe_producers_request import DescribeProducersRequest, TopicRequest
from generated.describe_producers_response import DescribeProducersResponse
from generated.errors import ErrorCode
from generated.init_producer_id_request import InitProducerIdRequest
from generated.init_producer_id_response import InitProducerIdResponse
from kafscale.broker.producers import (
    MAX_CACHED_BATCHES,
    MAX_SEQUENCE,
    Duplicate,
    ProducerBatch,
    ProducerEntry,
    SequenceError,
    check,
    commit,
    last_sequence,
)
from kafscale.protocol.records import build_batch
from tests.broker_harness import Client, run, values

PID = 7


def batch(first: int, records: int = 1, epoch: int = 0, pid: int = PID) -> ProducerBatch:
    return ProducerBatch(pid, epoch, first, last_sequence(first, records), records)


def state_after(*batches: tuple[ProducerBatch, int]) -> dict[int, ProducerEntry]:
    return commit({}, list(batches), now_ms=1000, expiration_ms=10_000)


def refused(committed: dict[int, ProducerEntry], candidate: ProducerBatch) -> int:
    with pytest.raises(SequenceError) as error:
        check(committed, [], candidate)
    return error.value.code


def test_first_batch_of_a_new_producer_must_start_at_zero() -> None:
    assert check({}, [], batch(0)) is None
    assert refused({}, batch(5)) == ErrorCode.UNKNOWN_PRODUCER_ID  # unknown: new, or state expired


def test_sequences_must_follow_and_a_gap_is_refused() -> None:
    committed = state_after((batch(0, 3), 0))
    assert check(committed, [], batch(3)) is None
    assert refused(committed, batch(4)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER  # gap
    assert (
        refused(committed, batch(1)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    )  # overlaps, not equal


def test_a_retry_gets_its_original_offset_and_old_duplicates_are_refused() -> None:
    written = [(batch(i * 2, 2), 100 + i * 2) for i in range(MAX_CACHED_BATCHES + 2)]
    committed = state_after(*written)
    assert len(committed[PID].batches) == MAX_CACHED_BATCHES
    last = written[-1]
    assert check(committed, [], last[0]) == Duplicate(last[1])
    oldest_cached = written[2]
    assert check(committed, [], oldest_cached[0]) == Duplicate(oldest_cached[1])
    too_old = written[1][0]  # older than the last 5: not recognised, so out of order
    assert refused(committed, too_old) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


def test_a_retry_of_a_batch_in_flight_waits_for_it() -> None:
    owner = object()
    first = ProducerBatch(PID, 0, 0, 1, 2, delta=3)
    duplicate = check({}, [(first, owner)], batch(0, 2))
    assert duplicate == Duplicate(None, owner, 3)
    assert check({}, [(first, owner)], batch(2)) is None  # follows the one in flight
    with pytest.raises(SequenceError):
        check({}, [(first, owner)], batch(3))  # a gap after the one in flight


def test_stale_epoch_and_epoch_bump() -> None:
    committed = state_after((batch(0, 1, epoch=3), 0))
    assert refused(committed, batch(1, epoch=2)) == ErrorCode.INVALID_PRODUCER_EPOCH
    assert check(committed, [], batch(0, epoch=4)) is None  # a bumped epoch restarts at 0
    assert refused(committed, batch(1, epoch=4)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    bumped = commit(committed, [(batch(0, epoch=4), 1)], now_ms=2000, expiration_ms=10_000)
    assert bumped[PID].epoch == 4 and len(bumped[PID].batches) == 1
    assert committed[PID].epoch == 3  # commit() returns a new state, the old one unchanged


def test_sequence_wraps_around_at_2_31() -> None:
    near_end = batch(MAX_SEQUENCE - 1, 2)
    assert near_end.last_seq == MAX_SEQUENCE
    committed = state_after((batch(0), 0))
    committed[PID].batches[-1].last_seq = MAX_SEQUENCE - 2
    assert check(committed, [], near_end) is None
    wrapped = commit(committed, [(near_end, 10)], 1000, 10_000)
    assert check(wrapped, [], batch(0)) is None  # 2^31-1 is followed by 0
    assert refused(wrapped, batch(1)) == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert batch(MAX_SEQUENCE, 3).last_seq == 1  # a batch spanning the wrap


def test_idle_producers_expire() -> None:
    committed = state_after((batch(0), 0))
    kept = commit(committed, [], now_ms=10_999, expiration_ms=10_000)
    assert PID in kept
    gone = commit(committed, [], now_ms=11_000, expiration_ms=10_000)
    assert PID not in gone
    assert refused(gone, batch(1)) == ErrorCode.UNKNOWN_PRODUCER_ID


# --- through the broker ---------------------------------------------------------------------


async def init_producer(c: Client, transactional_id: str | None = None) -> tuple[int, int, int]:
    resp: InitProducerIdResponse = await c.call(
        22,
        4,
        InitProducerIdRequest(transactional_id=transactional_id, transaction_timeout_ms=60000),
    )
    return resp.error_code, resp.producer_id, resp.producer_epoch


async def send(c: Client, pid: int, seq: int, *vals: bytes, epoch: int = 0) -> tuple[int, int]:
    data = build_batch(list(vals), producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    resp = await c.produce("t", data)
    return resp.error_code, resp.base_offset


def test_broker_deduplicates_retries_and_refuses_without_advancing(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        error, pid, epoch = await init_producer(c)
        assert (error, epoch) == (0, 0) and pid >= 0
        assert (await init_producer(c))[1] != pid  # every init: a new id
        assert await send(c, pid, 0, b"a", b"b") == (0, 0)
        assert await send(c, pid, 2, b"c") == (0, 2)
        assert await send(c, pid, 0, b"a", b"b") == (0, 0)  # a retry: its original offset
        assert await send(c, pid, 2, b"c") == (0, 2)
        assert (await send(c, pid, 5, b"gap"))[0] == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert await send(c, pid, 3, b"d") == (0, 3)  # the refused batch advanced nothing
        assert (await send(c, pid, 4, b"x", epoch=-1))[0] == ErrorCode.INVALID_PRODUCER_EPOCH
        assert (await send(c, 10**9, 3, b"who"))[0] == ErrorCode.UNKNOWN_PRODUCER_ID
        got = await c.fetch("t", 0)
        assert values(got.records) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]
        described: DescribeProducersResponse = await c.call(
            61, 0, DescribeProducersRequest(topics=[TopicRequest(name="t", partition_indexes=[0])])
        )
        [state] = described.topics[0].partitions[0].active_producers
        assert (state.producer_id, state.producer_epoch, state.last_sequence) == (pid, 0, 3)
        error, txn_pid, txn_epoch = await init_producer(c, "tx")  # a transactional id:
        assert (error, txn_epoch) == (0, 0) and txn_pid not in (-1, pid)  # its own producer

    run(tmp_path, scenario)


def test_concurrent_retry_of_a_batch_in_flight_gets_the_same_offset(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        _, pid, _ = await init_producer(c)
        first = asyncio.ensure_future(send(c, pid, 0, b"first"))
        await asyncio.sleep(0.01)
        await c.broker.logs.flush()  # the flusher's own interval is a minute away
        assert await first == (0, 0)
        original = asyncio.ensure_future(send(c, pid, 1, b"x", b"y"))
        await asyncio.sleep(0.01)
        retry = asyncio.ensure_future(send(c, pid, 1, b"x", b"y"))
        await asyncio.sleep(0.01)
        await c.broker.logs.flush()
        assert await original == await retry == (0, 1)
        got = await c.fetch("t", 0)
        assert values(got.records) == [(0, b"first"), (1, b"x"), (2, b"y")]

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_producer_state_is_committed_with_the_data(tmp_path: Path) -> None:
    """After a restart (a new owner loading the partition) a retry of the last batch is still
    recognised, and the next sequence still has to follow."""
    pid = []

    async def write(c: Client) -> None:
        await c.create("t")
        _, producer, _ = await init_producer(c)
        pid.append(producer)
        assert await send(c, producer, 0, b"a") == (0, 0)
        assert await send(c, producer, 1, b"b") == (0, 1)

    async def after_restart(c: Client) -> None:
        assert await send(c, pid[0], 1, b"b") == (0, 1)  # deduplicated by the reloaded state
        assert (await send(c, pid[0], 3, b"gap"))[0] == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert await send(c, pid[0], 2, b"c") == (0, 2)
        _, other, _ = await init_producer(c)
        assert other > pid[0]  # ids are never handed out twice, across restarts too

    run(tmp_path, write)
    run(tmp_path, after_restart)
