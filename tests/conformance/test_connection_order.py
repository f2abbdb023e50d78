"""A real client's pipelined admin requests see each other's effects (compatibility sweep,
item 1): confluent-kafka's AdminClient sends a call as soon as it is made, on the broker's one
connection, without waiting for the answer to the previous call. These are the calls of
confluent-kafka's own integration tests (test_delete_records and friends): each issued
without waiting for the one before, then every result checked.
"""

from __future__ import annotations

from collections.abc import Iterator

import confluent_kafka
import confluent_kafka.admin
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

from tests.conformance.clients import TIMEOUT, new_topic
from tests.conformance.conftest import BrokerProcess


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[AdminClient]:
    yield AdminClient({"bootstrap.servers": broker.bootstrap})


def created(admin: AdminClient, what: str, partitions: int = 1) -> str:
    topic = new_topic("order", what)
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(TIMEOUT)
    return topic


def test_delete_records_then_list_offsets(broker: BrokerProcess, admin: AdminClient) -> None:
    topic = created(admin, "delete-records")
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(3):
        producer.produce(topic, b"m%d" % i, partition=0)
    assert producer.flush(TIMEOUT) == 0
    tp = TopicPartition(topic, 0)
    assert admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(TIMEOUT).offset == 0
    deleted = admin.delete_records([TopicPartition(topic, 0, 2)], request_timeout=TIMEOUT)
    listed = admin.list_offsets({tp: OffsetSpec.earliest()}, request_timeout=TIMEOUT)
    low = next(iter(deleted.values())).result(TIMEOUT).low_watermark
    assert low == 2
    assert listed[tp].result(TIMEOUT).offset == 2


def test_alter_configs_then_describe_configs(admin: AdminClient) -> None:
    topic = created(admin, "configs")
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "123456", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    altering = admin.incremental_alter_configs([resource], request_timeout=TIMEOUT)
    described = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic)], request_timeout=TIMEOUT
    )
    for future in altering.values():
        future.result(TIMEOUT)
    (configs,) = (f.result(TIMEOUT) for f in described.values())
    assert configs["retention.ms"].value == "123456"


def test_offset_commit_then_list_consumer_group_offsets(admin: AdminClient) -> None:
    topic = created(admin, "offsets")
    group = new_topic("order", "group")
    committing = admin.alter_consumer_group_offsets(
        [confluent_kafka.ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 7)])],
        request_timeout=TIMEOUT,
    )
    listing = admin.list_consumer_group_offsets(
        [confluent_kafka.ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])],
        request_timeout=TIMEOUT,
    )
    committing[group].result(TIMEOUT)
    (partition,) = listing[group].result(TIMEOUT).topic_partitions
    assert partition.offset == 7
