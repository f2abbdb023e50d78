"""Leader epochs driven with in-memory frames: batches stamped with the partition's epoch,
the epoch history (Kafka's leader-epoch checkpoint) in the committed partition state,
OffsetForLeaderEpoch 0-4, CurrentLeaderEpoch fencing on Fetch / ListOffsets /
OffsetForLeaderEpoch, Fetch's diverging epoch, partition states written before epochs, and a
restart."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from generated.delete_records_request import (
    DeleteRecordsPartition,
    DeleteRecordsRequest,
    DeleteRecordsTopic,
)
from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.fetch_response import FetchResponse
from generated.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from generated.list_offsets_response import ListOffsetsResponse
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.metadata_response import MetadataResponse
from generated.offset_for_leader_epoch_request import (
    OffsetForLeaderEpochRequest,
    OffsetForLeaderPartition,
    OffsetForLeaderTopic,
)
from generated.offset_for_leader_epoch_response import OffsetForLeaderEpochResponse
from generated.registry import BROKER_APIS
from kafscale.broker.log import FlushError
from kafscale.protocol.records import build_batch
from tests.broker_harness import Client, run, values

OFFSET_FOR_LEADER_EPOCH = 23
OFFSET_OUT_OF_RANGE, UNKNOWN_TOPIC_OR_PARTITION = 1, 3
FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH = 74, 75


def batch_epochs(records: Any) -> list[tuple[int, int]]:
    """(base offset, partitionLeaderEpoch) of every batch in a Fetch response's records, read
    from the raw bytes (the epoch is the int32 at byte 12 of a batch)."""
    data = bytes(records)
    out = []
    pos = 0
    while pos < len(data):
        base, length, epoch = struct.unpack_from(">qii", data, pos)
        out.append((base, epoch))
        pos += 12 + length
    assert pos == len(data)
    return out


async def produce(c: Client, topic: str, *values_: bytes) -> int:
    resp = await c.produce(topic, build_batch(list(values_)))
    assert resp.error_code == 0, resp
    return int(resp.base_offset)


async def fetch(
    c: Client,
    topic: str,
    offset: int,
    *,
    version: int = 12,
    current: int = -1,
    last_fetched: int = -1,
    wait_ms: int = 0,
) -> Any:
    """Partition 0's Fetch answer (by name, v4-12)."""
    part = FetchPartition(
        partition=0, fetch_offset=offset, partition_max_bytes=1 << 20, current_leader_epoch=current
    )
    if version >= 12:
        part.last_fetched_epoch = last_fetched
    body = FetchRequest(
        max_wait_ms=wait_ms,
        min_bytes=1,
        max_bytes=1 << 20,
        topics=[FetchTopic(topic=topic, partitions=[part])],
    )
    resp: FetchResponse = await c.call(1, version, body)
    return resp.responses[0].partitions[0]


async def list_offset(
    c: Client, topic: str, timestamp: int, *, version: int = 8, current: int = -1
) -> Any:
    part = ListOffsetsPartition(
        partition_index=0, timestamp=timestamp, current_leader_epoch=current
    )
    body = ListOffsetsRequest(topics=[ListOffsetsTopic(name=topic, partitions=[part])])
    resp: ListOffsetsResponse = await c.call(2, version, body)
    return resp.topics[0].partitions[0]


async def end_offsets(
    c: Client,
    topic: str,
    *epochs: int,
    version: int = 4,
    current: int = -1,
    partition: int = 0,
) -> list[tuple[int, int, int]]:
    """OffsetForLeaderEpoch of each requested epoch: (error, leader epoch, end offset)."""
    body = OffsetForLeaderEpochRequest(
        replica_id=-1,
        topics=[
            OffsetForLeaderTopic(
                topic=topic,
                partitions=[
                    OffsetForLeaderPartition(
                        partition=partition, current_leader_epoch=current, leader_epoch=e
                    )
                    for e in epochs
                ],
            )
        ],
    )
    resp: OffsetForLeaderEpochResponse = await c.call(OFFSET_FOR_LEADER_EPOCH, version, body)
    (result,) = resp.topics
    assert result.topic == topic
    return [(p.error_code, p.leader_epoch, p.end_offset) for p in result.partitions]


async def metadata_epochs(c: Client, topic: str) -> list[int]:
    resp: MetadataResponse = await c.call(
        3, 12, MetadataRequest(topics=[MetadataRequestTopic(name=topic)])
    )
    return [p.leader_epoch for p in resp.topics[0].partitions]


async def history(c: Client, topic: str) -> list[tuple[int, int]]:
    """The epoch history as committed in the metadata store."""
    import json

    plog = await c.broker.logs.get(topic, 0)
    kv = await c.broker.meta.get(plog.state_key)
    assert kv is not None
    state = json.loads(kv.value)
    assert state["epoch"] == plog.epoch
    assert [tuple(e) for e in state["epochs"]] == plog.epochs
    return plog.epochs


def test_offset_for_leader_epoch_is_served_0_to_4() -> None:
    assert BROKER_APIS[OFFSET_FOR_LEADER_EPOCH] == (0, 4)


def test_batches_are_stamped_with_the_epoch_they_were_written_under(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", partitions=2)
        assert await metadata_epochs(c, "t") == [0, 0]
        await produce(c, "t", b"a", b"b")
        await produce(c, "t", b"c")
        assert await c.broker.logs.bump_leader_epoch("t", 0) == 1
        assert await produce(c, "t", b"d") == 3
        assert await c.broker.logs.bump_leader_epoch("t", 0) == 2
        assert await produce(c, "t", b"e", b"f") == 4
        got = await fetch(c, "t", 0, current=2)
        assert got.error_code == 0
        assert batch_epochs(got.records) == [(0, 0), (2, 0), (3, 1), (4, 2)]
        assert [v for _, v in values(got.records)] == [b"a", b"b", b"c", b"d", b"e", b"f"]
        assert await history(c, "t") == [(0, 0), (1, 3), (2, 4)]
        assert await metadata_epochs(c, "t") == [2, 0]  # partition 1 never bumped

        # ListOffsets: latest -> the current epoch, earliest -> the first, a record -> its batch's.
        latest = await list_offset(c, "t", -1)
        assert (latest.offset, latest.leader_epoch) == (6, 2)
        earliest = await list_offset(c, "t", -2)
        assert (earliest.offset, earliest.leader_epoch) == (0, 0)
        by_time = await list_offset(c, "t", 0)
        assert (by_time.offset, by_time.leader_epoch) == (0, 0)
        newest = await list_offset(c, "t", -3)
        assert newest.leader_epoch == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 2}[newest.offset]
        nothing = await list_offset(c, "t", int(time.time() * 1000) + 3_600_000)
        assert (nothing.offset, nothing.timestamp, nothing.leader_epoch) == (-1, -1, -1)
        v3 = await list_offset(c, "t", -1, version=3)  # no LeaderEpoch before v4
        assert (v3.offset, v3.leader_epoch) == (6, -1)

    run(tmp_path, scenario)


def test_offset_for_leader_epoch_answers_from_the_history(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", partitions=2)
        # Empty log: the current epoch ends at the high watermark 0.
        assert await end_offsets(c, "t", 0, 1) == [(0, 0, 0), (0, -1, -1)]
        await produce(c, "t", b"0", b"1", b"2")  # epoch 0: offsets 0-2
        await c.broker.logs.bump_leader_epoch("t", 0)  # epoch 1 from 3
        await produce(c, "t", b"3", b"4")
        await c.broker.logs.bump_leader_epoch("t", 0)  # epoch 2 from 5 ...
        await c.broker.logs.bump_leader_epoch("t", 0)  # ... wrote nothing: epoch 3 from 5
        await produce(c, "t", b"5")
        assert await history(c, "t") == [(0, 0), (1, 3), (3, 5)]

        got = await end_offsets(c, "t", 3, 2, 1, 0, 4, -1, current=3)
        assert got == [
            (0, 3, 6),  # current epoch: the high watermark
            (0, 1, 5),  # epoch 2 wrote nothing: the largest epoch below it, ended at 5
            (0, 1, 5),
            (0, 0, 3),
            (0, -1, -1),  # an epoch we never had
            (0, -1, -1),
        ]
        for version in (1, 2, 3):
            assert await end_offsets(c, "t", 0, 3, version=version) == [(0, 0, 3), (0, 3, 6)]
        # v0 has no LeaderEpoch in the response (it decodes as the default, -1).
        assert await end_offsets(c, "t", 0, 3, version=0) == [(0, -1, 3), (0, -1, 6)]
        assert await c.broker.logs.end_offset_for_epoch("t", 0, 1) == (1, 5)
        assert await end_offsets(c, "t", 0, partition=1) == [(0, 0, 0)]
        assert await end_offsets(c, "t", 0, partition=2) == [(UNKNOWN_TOPIC_OR_PARTITION, -1, -1)]
        assert await end_offsets(c, "nope", 0) == [(UNKNOWN_TOPIC_OR_PARTITION, -1, -1)]

    run(tmp_path, scenario)


def test_deleted_records_truncate_the_history_from_the_start(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce(c, "t", b"0", b"1", b"2")
        await c.broker.logs.bump_leader_epoch("t", 0)
        await produce(c, "t", b"3", b"4")
        await c.broker.logs.bump_leader_epoch("t", 0)
        await produce(c, "t", b"5")
        body = DeleteRecordsRequest(
            topics=[
                DeleteRecordsTopic(
                    name="t", partitions=[DeleteRecordsPartition(partition_index=0, offset=4)]
                )
            ],
            timeout_ms=1000,
        )
        resp = await c.call(21, 2, body)
        assert resp.topics[0].partitions[0].low_watermark == 4
        # As Kafka's truncateFromStart: epoch 1 now starts at the log start.
        assert await history(c, "t") == [(1, 4), (2, 5)]
        # Epoch 0 is below every known epoch: itself, ending where the first known starts.
        assert await end_offsets(c, "t", 0, 1, 2) == [(0, 0, 4), (0, 1, 5), (0, 2, 6)]
        earliest = await list_offset(c, "t", -2)
        assert (earliest.offset, earliest.leader_epoch) == (4, 1)
        # A bump when everything is deleted: the new epoch starts at the end.
        body.topics[0].partitions[0].offset = -1
        assert (await c.call(21, 2, body)).topics[0].partitions[0].low_watermark == 6
        assert await history(c, "t") == [(2, 6)]
        await c.broker.logs.bump_leader_epoch("t", 0)
        assert await history(c, "t") == [(3, 6)]
        assert await end_offsets(c, "t", 2, 3) == [(0, 2, 6), (0, 3, 6)]

    run(tmp_path, scenario)


def test_current_leader_epoch_is_checked(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce(c, "t", b"a")
        await c.broker.logs.bump_leader_epoch("t", 0)
        await c.broker.logs.bump_leader_epoch("t", 0)  # current epoch 2
        await produce(c, "t", b"b")
        cases = {-1: 0, 0: FENCED_LEADER_EPOCH, 1: FENCED_LEADER_EPOCH, 2: 0}
        cases[3] = UNKNOWN_LEADER_EPOCH
        for current, code in cases.items():
            got = await fetch(c, "t", 0, current=current)
            assert got.error_code == code, current
            if code:
                assert (got.high_watermark, got.log_start_offset, bytes(got.records)) == (
                    -1,
                    -1,
                    b"",
                )
            else:
                assert len(values(got.records)) == 2
            for version in (4, 8):
                lo = await list_offset(c, "t", -1, version=version, current=current)
                assert lo.error_code == code
                assert (lo.offset, lo.leader_epoch) == ((-1, -1) if code else (2, 2))
            for version in (2, 3, 4):
                [(error, epoch, end)] = await end_offsets(
                    c, "t", 2, version=version, current=current
                )
                assert (error, epoch, end) == ((code, -1, -1) if code else (0, 2, 2))
        # Versions without CurrentLeaderEpoch never fence: Fetch v8, ListOffsets v3,
        # OffsetForLeaderEpoch v1 (the field is ignorable: not sent).
        assert (await fetch(c, "t", 0, version=8, current=-1)).error_code == 0
        assert (await list_offset(c, "t", -1, version=3)).error_code == 0
        assert await end_offsets(c, "t", 2, version=1, current=0) == [(0, 2, 2)]
        # Fetch treats any negative epoch as absent; ListOffsets and OffsetForLeaderEpoch only
        # -1 (Kafka's conversions), so -2 is "older".
        assert (await fetch(c, "t", 0, current=-2)).error_code == 0
        assert (await list_offset(c, "t", -1, current=-2)).error_code == FENCED_LEADER_EPOCH
        assert (await end_offsets(c, "t", 2, current=-2))[0][0] == FENCED_LEADER_EPOCH

    run(tmp_path, scenario)


def test_fetch_reports_a_diverging_epoch(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce(c, "t", b"0", b"1", b"2")  # epoch 0: 0-2
        await c.broker.logs.bump_leader_epoch("t", 0)
        await produce(c, "t", b"3", b"4")  # epoch 1: 3-4
        await c.broker.logs.bump_leader_epoch("t", 0)
        await produce(c, "t", b"5")  # epoch 2: 5

        async def diverging(offset: int, last_fetched: int) -> tuple[int, int, int, list[int]]:
            got = await fetch(c, "t", offset, current=2, last_fetched=last_fetched)
            offsets = [o for o, _ in values(got.records)]
            de = got.diverging_epoch
            return got.error_code, de.epoch, de.end_offset, offsets

        # A consumer whose position is consistent with our log: records, no divergence.
        assert await diverging(3, 0) == (0, -1, -1, [3, 4, 5])
        assert await diverging(5, 1) == (0, -1, -1, [5])
        assert await diverging(6, 2) == (0, -1, -1, [])
        # It claims epoch 0 went on past offset 3: it diverges at (0, 3), no records.
        assert await diverging(4, 0) == (0, 0, 3, [])
        await c.broker.logs.bump_leader_epoch("t", 0)
        await c.broker.logs.bump_leader_epoch("t", 0)  # epoch 3 wrote nothing; epoch 4 now
        assert await history(c, "t") == [(0, 0), (1, 3), (2, 5), (4, 6)]
        # It claims an epoch we never had (between ours): the largest below it and its end.
        got = await fetch(c, "t", 6, current=4, last_fetched=3)
        assert (got.diverging_epoch.epoch, got.diverging_epoch.end_offset) == (2, 6)
        # An epoch above every known one: out of range.
        got = await fetch(c, "t", 6, current=4, last_fetched=5)
        assert got.error_code == OFFSET_OUT_OF_RANGE
        # A divergence answers a long poll at once (as Kafka's DelayedFetch does).
        started = time.monotonic()
        got = await fetch(c, "t", 6, current=4, last_fetched=1, wait_ms=5000)
        assert (got.diverging_epoch.epoch, got.diverging_epoch.end_offset) == (1, 5)
        assert time.monotonic() - started < 2
        # Fetch v11 has no LastFetchedEpoch: nothing to diverge from.
        got = await fetch(c, "t", 4, version=11, current=4)
        assert [o for o, _ in values(got.records)] == [3, 4, 5]  # whole batches

    run(tmp_path, scenario)


def test_partition_states_written_before_epochs_still_load(tmp_path: Path) -> None:
    async def write(c: Client) -> None:
        await c.create("t", partitions=2)
        await produce(c, "t", b"a", b"b")
        plog = await c.broker.logs.get("t", 0)
        # The state as the broker wrote it before leader epochs (and topics.py still does).
        await c.broker.meta.put(plog.state_key, b'{"log_start": 0, "hw": 2}')

    async def read(c: Client) -> None:
        assert await metadata_epochs(c, "t") == [0, 0]  # read from the stored states
        assert await end_offsets(c, "t", 0, 1) == [(0, 0, 2), (0, -1, -1)]
        plog = await c.broker.logs.get("t", 0)
        assert (plog.epoch, plog.epochs, plog.hw) == (0, [(0, 0)], 2)
        assert await c.broker.logs.bump_leader_epoch("t", 0) == 1
        assert await produce(c, "t", b"c") == 2
        got = await fetch(c, "t", 0, current=1)
        assert batch_epochs(got.records) == [(0, 0), (2, 1)]
        assert await history(c, "t") == [(0, 0), (1, 2)]

    run(tmp_path, write)
    run(tmp_path, read)


def test_epochs_survive_a_restart(tmp_path: Path) -> None:
    async def write(c: Client) -> None:
        await c.create("t")
        await produce(c, "t", b"a")
        await c.broker.logs.bump_leader_epoch("t", 0)
        await produce(c, "t", b"b")
        await c.broker.logs.bump_leader_epoch("t", 0)

    async def read(c: Client) -> None:
        assert "t" not in {topic for topic, _ in c.broker.logs.logs}
        assert await metadata_epochs(c, "t") == [2]  # without loading the partition log
        assert await end_offsets(c, "t", 0, 1, 2, current=2) == [(0, 0, 1), (0, 1, 2), (0, 2, 2)]
        assert await produce(c, "t", b"c") == 2
        got = await fetch(c, "t", 0, current=2, last_fetched=1)
        assert batch_epochs(got.records) == [(0, 0), (1, 1), (2, 2)]
        assert await history(c, "t") == [(0, 0), (1, 1), (2, 2)]

    run(tmp_path, write)
    run(tmp_path, read)


def test_a_bump_is_fenced_by_a_foreign_write(tmp_path: Path) -> None:
    """Another broker moved the partition state: our bump's compare-and-swap fails with a
    retriable error, and the reloaded log goes on from the foreign state."""

    async def scenario(c: Client) -> None:
        await c.create("t")
        await produce(c, "t", b"a")
        plog = await c.broker.logs.get("t", 0)
        foreign = b'{"log_start": 0, "hw": 1, "epoch": 5, "epochs": [[0, 0], [5, 1]]}'
        await c.broker.meta.put(plog.state_key, foreign)
        with pytest.raises(FlushError) as error:
            await c.broker.logs.bump_leader_epoch("t", 0)
        assert error.value.code == 6  # NOT_LEADER_OR_FOLLOWER
        assert await c.broker.logs.bump_leader_epoch("t", 0) == 6
        # Epoch 5 wrote nothing: Kafka's assign drops it.
        assert await history(c, "t") == [(0, 0), (6, 1)]
        assert await produce(c, "t", b"b") == 1

    run(tmp_path, scenario)


def test_a_fenced_delete_records_fails_the_pending_produces_too(tmp_path: Path) -> None:
    """DeleteRecords whose compare-and-swap fails drops the stale log; produce requests
    waiting in it get a retriable error instead of waiting forever."""

    async def scenario(c: Client) -> None:
        await c.create("t")
        first = asyncio.ensure_future(produce(c, "t", b"a", b"b"))
        await asyncio.sleep(0.05)
        await c.broker.logs.flush()  # the flusher's own interval is a minute away
        assert await first == 0
        plog = await c.broker.logs.get("t", 0)
        waiting = asyncio.ensure_future(c.broker.logs.append(plog, build_batch([b"c"]), 1 << 20))
        await asyncio.sleep(0)
        foreign = b'{"log_start": 0, "hw": 2, "epoch": 3, "epochs": [[0, 0], [3, 2]]}'
        await c.broker.meta.put(plog.state_key, foreign)
        with pytest.raises(FlushError) as error:
            await c.broker.logs.delete_records(plog, 1)
        assert error.value.code == 6  # NOT_LEADER_OR_FOLLOWER
        with pytest.raises(FlushError) as failed:
            await asyncio.wait_for(waiting, 5)
        assert failed.value.code == 6
        assert c.broker.logs.pending_bytes == 0
        again = asyncio.ensure_future(produce(c, "t", b"c"))
        await asyncio.sleep(0.05)
        await c.broker.logs.flush()
        assert await again == 2  # the reloaded log goes on

    run(tmp_path, scenario, flush_interval_ms=60_000)


def test_the_epoch_error_codes_are_kafkas() -> None:
    """The broker's codes, checked against a client's table (KafScale answered 76,
    UNSUPPORTED_COMPRESSION_TYPE, for UNKNOWN_LEADER_EPOCH: librdkafka then never refreshed
    its metadata and a partition stayed unread)."""
    import kafka.errors

    from kafscale.broker.log import PartitionLog

    plog = PartitionLog("t", 0, b"k", epoch=5)
    assert plog.epoch_error(5) == 0
    fenced, unknown = plog.epoch_error(4), plog.epoch_error(6)
    assert kafka.errors.for_code(fenced) is kafka.errors.FencedLeaderEpochError
    assert kafka.errors.for_code(unknown) is kafka.errors.UnknownLeaderEpochError
