"""Kafka's internal topics as a client sees them (kafscale/broker/internal_topics.py), driven with
in-memory frames: ``__consumer_offsets`` appears, internal and empty, once a group is looked up
(or when asked for by name), the same in every Metadata form, and the requests that would change
it get Kafka's answers (codes from generated.errors, checked against the client libraries'
tables in tests/test_errors.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.create_topics_response import CreateTopicsResponse
from generated.delete_records_request import (
    DeleteRecordsPartition,
    DeleteRecordsRequest,
    DeleteRecordsTopic,
)
from generated.delete_records_response import DeleteRecordsResponse
from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState
from generated.delete_topics_response import DeleteTopicsResponse
from generated.errors import ErrorCode
from generated.find_coordinator_request import FindCoordinatorRequest
from generated.find_coordinator_response import FindCoordinatorResponse
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.metadata_response import MetadataResponse, MetadataResponseTopic
from kafscale.broker.internal_topics import OFFSETS_TOPIC_CONFIGS
from kafscale.protocol.records import build_batch
from tests.broker_harness import Client, run

OFFSETS = "__consumer_offsets"
GROUP, TRANSACTION = 0, 1


async def find_coordinator(c: Client, version: int, key_type: int = GROUP) -> int:
    if version >= 4:
        body = FindCoordinatorRequest(key_type=key_type, coordinator_keys=["g"])
        resp: FindCoordinatorResponse = await c.call(10, version, body)
        return int(resp.coordinators[0].error_code)
    resp = await c.call(10, version, FindCoordinatorRequest(key="g", key_type=key_type))
    return int(resp.error_code)


async def listed(c: Client, version: int = 12) -> dict[str, MetadataResponseTopic]:
    resp: MetadataResponse = await c.call(3, version, MetadataRequest(topics=None))
    return {t.name: t for t in resp.topics if t.name is not None}


async def by_name(c: Client, name: str, allow: bool = True) -> MetadataResponseTopic:
    body = MetadataRequest(
        topics=[MetadataRequestTopic(name=name)], allow_auto_topic_creation=allow
    )
    resp: MetadataResponse = await c.call(3, 12, body)
    (topic,) = resp.topics
    return topic


@pytest.mark.parametrize("version", [0, 3, 4, 6])
def test_consumer_offsets_appears_at_the_first_group_lookup(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("plain")
        assert set(await listed(c)) == {"plain"}
        assert await find_coordinator(c, max(version, 1), TRANSACTION) == 0
        assert set(await listed(c)) == {"plain"}  # a transactional lookup creates nothing
        assert await find_coordinator(c, version) == 0
        topics = await listed(c)
        assert set(topics) == {"plain", OFFSETS}
        internal = topics[OFFSETS]
        assert internal.is_internal and not topics["plain"].is_internal
        assert internal.error_code == 0
        assert [(p.partition_index, p.leader_id, p.replica_nodes) for p in internal.partitions] == [
            (0, 0, [0])
        ]
        assert c.broker.topics.get(OFFSETS).configs == OFFSETS_TOPIC_CONFIGS  # type: ignore[union-attr]
        # The same in every form: by name, by id, and at Metadata v1 (the first with IsInternal).
        named = await by_name(c, OFFSETS)
        assert (named.error_code, named.is_internal, named.topic_id) == (0, True, internal.topic_id)
        resp: MetadataResponse = await c.call(
            3,
            12,
            MetadataRequest(topics=[MetadataRequestTopic(name=None, topic_id=named.topic_id)]),
        )
        assert [(t.name, t.is_internal) for t in resp.topics] == [(OFFSETS, True)]
        assert (await listed(c, version=1))[OFFSETS].is_internal
        # Looked up again: the same topic.
        assert await find_coordinator(c, version) == 0
        assert (await listed(c))[OFFSETS].topic_id == internal.topic_id

    run(tmp_path, scenario)


def test_metadata_by_name_creates_only_consumer_offsets(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        refused = await by_name(c, OFFSETS, allow=False)
        assert (refused.error_code, refused.is_internal) == (
            ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
            True,
        )
        for name in ("__transaction_state", "__share_group_state"):
            unknown = await by_name(c, name)
            assert (unknown.error_code, unknown.is_internal) == (
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                True,
            )
        assert not (await by_name(c, "missing", allow=False)).is_internal
        created = await by_name(c, OFFSETS)
        assert (created.error_code, created.is_internal, len(created.partitions)) == (0, True, 1)
        assert set(await listed(c)) == {OFFSETS}

    run(tmp_path, scenario)


def test_consumer_offsets_reads_as_an_empty_topic_and_refuses_changes(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        assert await find_coordinator(c, 3) == 0
        topic_id = (await listed(c))[OFFSETS].topic_id
        # Reads: an empty log.
        fetched = await c.fetch(OFFSETS, 0)
        assert (fetched.error_code, fetched.high_watermark, fetched.log_start_offset) == (0, 0, 0)
        assert not fetched.records
        for timestamp in (-2, -1):
            part = await c.list_offset(OFFSETS, timestamp)
            assert (part.error_code, part.offset) == (0, 0)
        # Produce, at the lowest and highest version: refused as Kafka refuses a client.
        for version in (3, 11):
            part = await c.produce(OFFSETS, build_batch([b"x"]), version=version)
            assert (part.error_code, part.base_offset) == (ErrorCode.INVALID_TOPIC_EXCEPTION, -1)
        assert (await c.fetch(OFFSETS, 0)).high_watermark == 0
        # DeleteRecords.
        body = DeleteRecordsRequest(
            topics=[
                DeleteRecordsTopic(
                    name=OFFSETS, partitions=[DeleteRecordsPartition(partition_index=0, offset=-1)]
                )
            ],
            timeout_ms=1000,
        )
        deleted: DeleteRecordsResponse = await c.call(21, 2, body)
        assert deleted.topics[0].partitions[0].error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
        # DeleteTopics, by name and by id.
        for version, entry in [
            (1, None),
            (5, None),
            (6, DeleteTopicState(name=OFFSETS)),
            (6, DeleteTopicState(name=None, topic_id=topic_id)),
        ]:
            request = (
                DeleteTopicsRequest(topic_names=[OFFSETS], timeout_ms=1000)
                if entry is None
                else DeleteTopicsRequest(topics=[entry], timeout_ms=1000)
            )
            dropped: DeleteTopicsResponse = await c.call(20, version, request)
            (result,) = dropped.responses
            assert (result.name, result.error_code) == (OFFSETS, ErrorCode.INVALID_TOPIC_EXCEPTION)
            if version >= 5:
                assert result.error_message and "internal topic" in result.error_message
        # CreateTopics: it exists.
        made: CreateTopicsResponse = await c.call(
            19,
            7,
            CreateTopicsRequest(
                topics=[CreatableTopic(name=OFFSETS, num_partitions=3, replication_factor=-1)]
            ),
        )
        assert made.topics[0].error_code == ErrorCode.TOPIC_ALREADY_EXISTS
        topics = await listed(c)
        assert topics[OFFSETS].topic_id == topic_id and len(topics[OFFSETS].partitions) == 1

    run(tmp_path, scenario)


def test_a_topic_created_under_an_internal_name_is_internal(tmp_path: Path) -> None:
    """As in Kafka, internal is a property of the name: a __consumer_offsets a client created
    before any group is the internal topic (and the first group lookup keeps it)."""

    async def scenario(c: Client) -> None:
        await c.create(OFFSETS, partitions=2)
        assert await find_coordinator(c, 3) == 0
        topic: Any = (await listed(c))[OFFSETS]
        assert topic.is_internal and len(topic.partitions) == 2
        part = await c.produce(OFFSETS, build_batch([b"x"]), partition=1)
        assert part.error_code == ErrorCode.INVALID_TOPIC_EXCEPTION

    run(tmp_path, scenario)
