"""One connection's requests see each other's effects, as in Kafka (compatibility sweep, item 1).

Requests are pipelined in one write on a real socket; the metadata store answers every
transaction 30 ms late, so a request that ran before the one sent ahead of it had taken effect
would read the old state (confluent's test_delete_records: DeleteRecords then ListOffsets
earliest answered 0). Produce requests still overlap: pipelined ones share a flush cycle.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from generated.alter_configs_request import (
    AlterableConfig,
    AlterConfigsRequest,
    AlterConfigsResource,
)
from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.delete_records_request import (
    DeleteRecordsPartition,
    DeleteRecordsRequest,
    DeleteRecordsTopic,
)
from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState
from generated.describe_configs_request import DescribeConfigsRequest, DescribeConfigsResource
from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from generated.offset_fetch_request import OffsetFetchRequest, OffsetFetchRequestTopic
from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.registry import APIS
from kafscale.broker.config import BrokerConfig
from kafscale.broker.server import Broker
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Message
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import values

TOPIC_RESOURCE = 2
STORE_DELAY_S = 0.03


class SlowMetadataStore(SqliteMetadataStore):
    """Every transaction applies (and answers) a little late: effects take time."""

    txns = 0

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        SlowMetadataStore.txns += 1
        await asyncio.sleep(STORE_DELAY_S)
        return await super().txn(*args, **kwargs)


Call = tuple[int, int, Message]
"""(API key, version, request body)."""


def with_connection(
    tmp_path: Path,
    scenario: Callable[[Callable[[list[Call]], Awaitable[list[Any]]]], Awaitable[None]],
) -> None:
    """Run ``scenario`` with a function that pipelines calls on one socket (one write) and
    returns their decoded answers, against a broker on a slow metadata store."""

    async def main() -> None:
        config = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
        meta = SlowMetadataStore(tmp_path / "metadata.sqlite3")
        broker = Broker(config, LocalObjectStore(tmp_path / "objects"), meta)
        await broker.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        correlation = 0

        async def pipeline(calls: list[Call]) -> list[Any]:
            nonlocal correlation
            first = correlation + 1
            frames = []
            for key, version, body in calls:
                correlation += 1
                frames += encode_request(APIS[key], version, correlation, "order", body)
            writer.writelines(frames)
            await writer.drain()
            out = []
            for i, (key, version, _) in enumerate(calls):
                size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), 10))[0]
                data = await reader.readexactly(size)
                assert struct.unpack_from(">i", data)[0] == first + i
                header = 4 if APIS[key].response_header_version(version) == 0 else 5
                out.append(APIS[key].response_type().decode(data[header:], version))
            return out

        try:
            await scenario(pipeline)
        finally:
            writer.close()
            await asyncio.wait_for(broker.stop(), 15)

    asyncio.run(main())


def create(name: str, partitions: int = 1) -> Call:
    topic = CreatableTopic(name=name, num_partitions=partitions, replication_factor=1)
    return 19, 7, CreateTopicsRequest(topics=[topic], timeout_ms=5000)


def produce(topic: str, *values: bytes) -> Call:
    part = PartitionProduceData(index=0, records=build_batch(list(values)))
    data = [TopicProduceData(name=topic, partition_data=[part])]
    return 0, 9, ProduceRequest(acks=-1, timeout_ms=10_000, topic_data=data)


def earliest(topic: str) -> Call:
    part = ListOffsetsPartition(partition_index=0, timestamp=-2)
    return 2, 8, ListOffsetsRequest(topics=[ListOffsetsTopic(name=topic, partitions=[part])])


def metadata(topic: str) -> Call:
    wanted = [MetadataRequestTopic(name=topic)]
    return 3, 12, MetadataRequest(topics=wanted, allow_auto_topic_creation=False)


def topic_config(topic: str) -> Call:
    resource = DescribeConfigsResource(
        resource_type=TOPIC_RESOURCE, resource_name=topic, configuration_keys=["retention.ms"]
    )
    return 32, 4, DescribeConfigsRequest(resources=[resource])


def test_delete_records_then_list_offsets_sees_the_new_low_watermark(tmp_path: Path) -> None:
    async def scenario(pipeline: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        await pipeline([create("t")])
        parts = [DeleteRecordsPartition(partition_index=0, offset=2)]
        delete = (
            21,
            2,
            DeleteRecordsRequest(
                topics=[DeleteRecordsTopic(name="t", partitions=parts)], timeout_ms=5000
            ),
        )
        before, produced, deleted, after = await pipeline(
            [earliest("t"), produce("t", b"a", b"b", b"c"), delete, earliest("t")]
        )
        assert before.topics[0].partitions[0].offset == 0  # sent before: not its effect
        assert produced.responses[0].partition_responses[0].error_code == 0
        assert deleted.topics[0].partitions[0].low_watermark == 2
        assert after.topics[0].partitions[0].offset == 2

    with_connection(tmp_path, scenario)


def test_produce_then_fetch_sees_the_records(tmp_path: Path) -> None:
    async def scenario(pipeline: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        await pipeline([create("t")])
        part = FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20)
        fetch = (
            1,
            12,
            FetchRequest(
                max_wait_ms=0,
                min_bytes=1,
                max_bytes=1 << 20,
                topics=[FetchTopic(topic="t", partitions=[part])],
            ),
        )
        _, _, fetched = await pipeline([produce("t", b"x"), produce("t", b"y"), fetch])
        got = fetched.responses[0].partitions[0]
        assert got.high_watermark == 2
        assert values(got.records) == [(0, b"x"), (1, b"y")]

    with_connection(tmp_path, scenario)


def test_create_and_delete_topics_then_metadata_see_them(tmp_path: Path) -> None:
    async def scenario(pipeline: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        delete = 20, 6, DeleteTopicsRequest(topics=[DeleteTopicState(name="t")], timeout_ms=5000)
        created, seen, deleted, gone = await pipeline(
            [create("t", 3), metadata("t"), delete, metadata("t")]
        )
        assert created.topics[0].error_code == 0
        assert seen.topics[0].error_code == 0 and len(seen.topics[0].partitions) == 3
        assert deleted.responses[0].error_code == 0
        assert gone.topics[0].error_code == 3  # UNKNOWN_TOPIC_OR_PARTITION

    with_connection(tmp_path, scenario)


def test_offset_commit_then_offset_fetch_sees_the_commit(tmp_path: Path) -> None:
    async def scenario(pipeline: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        await pipeline([create("t")])

        def commit(offset: int) -> Call:
            part = OffsetCommitRequestPartition(partition_index=0, committed_offset=offset)
            return (
                8,
                8,
                OffsetCommitRequest(
                    group_id="g",
                    generation_id_or_member_epoch=-1,
                    member_id="",
                    topics=[OffsetCommitRequestTopic(name="t", partitions=[part])],
                ),
            )

        topics = [OffsetFetchRequestTopic(name="t", partition_indexes=[0])]
        fetch = 9, 7, OffsetFetchRequest(group_id="g", topics=topics)
        answers = await pipeline([commit(5), fetch, commit(9), fetch])
        first, second = answers[1], answers[3]
        assert first.topics[0].partitions[0].committed_offset == 5
        assert second.topics[0].partitions[0].committed_offset == 9

    with_connection(tmp_path, scenario)


def test_alter_configs_then_describe_configs_sees_the_value(tmp_path: Path) -> None:
    async def scenario(pipeline: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        await pipeline([create("t")])
        resource = AlterConfigsResource(
            resource_type=TOPIC_RESOURCE,
            resource_name="t",
            configs=[AlterableConfig(name="retention.ms", value="60000")],
        )
        alter = 33, 2, AlterConfigsRequest(resources=[resource])
        before, altered, after = await pipeline([topic_config("t"), alter, topic_config("t")])
        assert altered.responses[0].error_code == 0
        assert before.results[0].configs[0].value != "60000"
        assert after.results[0].configs[0].value == "60000"

    with_connection(tmp_path, scenario)


def test_pipelined_produces_still_share_a_flush(tmp_path: Path) -> None:
    """Ordering must not serialize produces: ten pipelined ones share flush cycles (one
    after the other, each would take a flush cycle and a commit of its own)."""

    async def scenario(pipeline: Callable[[list[Call]], Awaitable[list[Any]]]) -> None:
        await pipeline([create("t")])
        await pipeline([produce("t", b"first")])  # the partition is loaded
        before = SlowMetadataStore.txns
        answers = await pipeline([produce("t", b"%d" % i) for i in range(10)])
        offsets = [a.responses[0].partition_responses[0].base_offset for a in answers]
        assert offsets == list(range(1, 11))
        assert SlowMetadataStore.txns - before <= 3

    with_connection(tmp_path, scenario)
