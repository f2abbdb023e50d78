"""Internal topics and the replica / log-dir admin APIs through the clients' own APIs, against a
real broker process.

- ``__consumer_offsets`` appears once a group is looked up, internal, in confluent-kafka's and
  kafka-python's listings; aiokafka's ``exclude_internal_topics`` leaves it out of a pattern
  subscription (or not); producing to it and deleting it are refused with Kafka's error.
- kafka-python's describe_log_dirs (sizes of what was produced, the object store's dir),
  elect_leaders (and confluent-kafka's), list/alter_partition_reassignments and
  alter_replica_log_dirs get what a broker with one replica per partition answers.

The tests share one broker and run in file order: the first one sees it before any group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiokafka
import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.admin
import kafka.errors
import pytest
from kafka.structs import TopicPartitionReplica

from tests.conformance.clients import TIMEOUT, new_topic
from tests.conformance.conftest import BrokerProcess

OFFSETS = "__consumer_offsets"
ELECTION_NOT_NEEDED = 84


@pytest.fixture
def admin(checked_broker: BrokerProcess) -> Iterator[kafka.admin.KafkaAdminClient]:
    client = kafka.admin.KafkaAdminClient(
        bootstrap_servers=checked_broker.bootstrap, request_timeout_ms=int(TIMEOUT * 1000)
    )
    try:
        yield client
    finally:
        client.close()


def produce(broker: BrokerProcess, topic: str, partition: int, values: list[bytes]) -> list[object]:
    """confluent-kafka's delivery errors (None for each record delivered)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    errors: list[object] = []
    for value in values:
        producer.produce(
            topic, value, partition=partition, on_delivery=lambda e, m: errors.append(e)
        )
    assert producer.flush(TIMEOUT) == 0
    return errors


def test_consumer_offsets_is_listed_as_internal_once_a_group_exists(
    checked_broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient
) -> None:
    topic = new_topic("kafka-python", "internal")
    admin.create_topics([kafka.admin.NewTopic(topic, 1, 1)])
    assert OFFSETS not in admin.list_topics()
    assert admin.list_group_offsets("internal-topics") == {"internal-topics": {}}  # a lookup
    assert {topic, OFFSETS} <= set(admin.list_topics())
    (described,) = admin.describe_topics([OFFSETS])
    assert described["is_internal"] and len(described["partitions"]) == 1
    assert not admin.describe_topics([topic])[0]["is_internal"]
    confluent = confluent_kafka.admin.AdminClient({"bootstrap.servers": checked_broker.bootstrap})
    assert {topic, OFFSETS} <= set(confluent.list_topics(timeout=TIMEOUT).topics)

    # aiokafka's own integration test: a pattern subscription leaves internal topics out unless
    # exclude_internal_topics=False.
    async def subscribed(exclude: bool) -> frozenset[str]:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=checked_broker.bootstrap,
            group_id=f"internal-{exclude}",
            metadata_max_age_ms=200,
            exclude_internal_topics=exclude,
        )
        consumer.subscribe(pattern=".*")
        await consumer.start()
        try:
            for _ in range(100):
                if topic in consumer.subscription():
                    break
                await asyncio.sleep(0.05)
            return frozenset(consumer.subscription())
        finally:
            await consumer.stop()

    with_internal = asyncio.run(subscribed(False))
    assert {topic, OFFSETS} <= with_internal
    without = asyncio.run(subscribed(True))
    assert topic in without and OFFSETS not in without

    # Written to or deleted by a client: Kafka's INVALID_TOPIC_EXCEPTION.
    (error,) = produce(checked_broker, OFFSETS, 0, [b"x"])
    assert isinstance(error, confluent_kafka.KafkaError)
    assert error.code() == confluent_kafka.KafkaError.TOPIC_EXCEPTION
    with pytest.raises(kafka.errors.InvalidTopicError):
        admin.delete_topics([OFFSETS])
    assert OFFSETS in admin.list_topics()


def test_describe_log_dirs(
    checked_broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient
) -> None:
    topic = new_topic("kafka-python", "logdirs")
    admin.create_topics([kafka.admin.NewTopic(topic, 2, 1)])
    assert produce(checked_broker, topic, 0, [b"a" * 1000, b"b" * 1000]) == [None, None]
    (answer,) = admin.describe_log_dirs({topic: [0, 1]})
    assert answer["broker"] == 0
    (log_dir,) = answer["log_dirs"]
    assert log_dir["error_code"] == 0
    assert log_dir["log_dir"] == str(checked_broker.data_dir.absolute() / "objects" / "kafscale")
    assert (log_dir["total_bytes"], log_dir["usable_bytes"]) == (-1, -1)
    (listed,) = log_dir["topics"]
    sizes = {p["partition_index"]: p["partition_size"] for p in listed["partitions"]}
    assert sizes[0] > 2000 and sizes[1] == 0
    # Every partition (None): this topic's are among them, the same.
    (everything,) = admin.describe_log_dirs()
    all_topics = {t["name"]: t for t in everything["log_dirs"][0]["topics"]}
    assert {p["partition_index"]: p["partition_size"] for p in all_topics[topic]["partitions"]} == (
        sizes
    )


def test_elect_leaders(checked_broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient) -> None:
    topic = new_topic("kafka-python", "elect")
    admin.create_topics([kafka.admin.NewTopic(topic, 2, 1)])
    for election in (0, 1):
        resp = admin.elect_leaders(election, {topic: [0, 1]}, raise_errors=False)
        assert resp.error_code == 0
        ((name, results),) = [(r.topic, r.partition_result) for r in resp.replica_election_results]
        assert name == topic
        assert sorted((r.partition_id, r.error_code) for r in results) == [
            (0, ELECTION_NOT_NEEDED),
            (1, ELECTION_NOT_NEEDED),
        ]
    confluent = confluent_kafka.admin.AdminClient({"bootstrap.servers": checked_broker.bootstrap})
    wanted = [confluent_kafka.TopicPartition(topic, p) for p in (0, 1)]
    results = confluent.elect_leaders(confluent_kafka.ElectionType.PREFERRED, wanted).result(
        TIMEOUT
    )
    assert sorted(tp.partition for tp in results) == [0, 1]
    assert {e.code() for e in results.values()} == {confluent_kafka.KafkaError.ELECTION_NOT_NEEDED}
    # Every partition: none needs an election, so none is listed.
    everything = confluent.elect_leaders(confluent_kafka.ElectionType.UNCLEAN, None)
    assert everything.result(TIMEOUT) == {}


def test_reassignments_and_replica_log_dirs(
    checked_broker: BrokerProcess, admin: kafka.admin.KafkaAdminClient
) -> None:
    topic = new_topic("kafka-python", "reassign")
    admin.create_topics([kafka.admin.NewTopic(topic, 1, 1)])
    tp = kafka.TopicPartition(topic, 0)
    assert admin.list_partition_reassignments() == {}
    assert admin.list_partition_reassignments({topic: [0]}) == {}
    assert admin.alter_partition_reassignments({tp: [0]}) == {tp: None}
    assert admin.alter_partition_reassignments({tp: [0, 1]}) == {
        tp: kafka.errors.InvalidReplicationAssignmentError
    }
    assert admin.alter_partition_reassignments({tp: None}) == {
        tp: kafka.errors.NoReassignmentInProgressError
    }
    assert admin.list_partition_reassignments() == {}
    replica = TopicPartitionReplica(topic, 0, 0)
    assert admin.alter_replica_log_dirs({replica: "/var/lib/kafka/data"}) == {
        replica: kafka.errors.LogDirNotFoundError
    }
    ours = str(checked_broker.data_dir.absolute() / "objects" / "kafscale")
    assert admin.alter_replica_log_dirs({replica: ours}) == {replica: kafka.errors.NoError}
