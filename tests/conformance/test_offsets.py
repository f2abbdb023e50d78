"""Committed offsets through the clients' consumers, against a real broker process.

Consumers with a group.id that use assign() (no group membership: test_groups.py has that)
commit offsets and read them back with committed(); the commits survive a broker restart.
Only FindCoordinator, OffsetCommit and OffsetFetch are needed for that.
"""

from __future__ import annotations

import asyncio

import aiokafka
import aiokafka.structs
import confluent_kafka
import kafka
from kafka.structs import OffsetAndMetadata

from tests.conformance.clients import TIMEOUT, KafkaPython, new_topic
from tests.conformance.conftest import BrokerProcess


def confluent_consumer(broker: BrokerProcess, group: str) -> confluent_kafka.Consumer:
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )


def test_confluent_commit_and_committed_survive_a_restart(fresh_broker: BrokerProcess) -> None:
    topic = new_topic("confluent", "offsets")
    KafkaPython(fresh_broker).create_topic(topic, 3, {})
    wanted = [
        confluent_kafka.TopicPartition(topic, 0, 17, metadata="zero"),
        confluent_kafka.TopicPartition(topic, 2, 5),
    ]
    consumer = confluent_consumer(fresh_broker, "cg")
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p) for p in range(3)])
        for tp in consumer.commit(offsets=wanted, asynchronous=False) or []:
            assert tp.error is None, tp
        got = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in range(3)], timeout=TIMEOUT
        )
        assert [(tp.partition, tp.offset, tp.error) for tp in got] == [
            (0, 17, None),
            (1, confluent_kafka.OFFSET_INVALID, None),  # nothing committed
            (2, 5, None),
        ]
        assert got[0].metadata == "zero"
    finally:
        consumer.close()

    fresh_broker.restart()

    consumer = confluent_consumer(fresh_broker, "cg")
    try:
        got = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in range(3)], timeout=TIMEOUT
        )
        assert [(tp.partition, tp.offset) for tp in got] == [
            (0, 17),
            (1, confluent_kafka.OFFSET_INVALID),
            (2, 5),
        ]
        other = confluent_consumer(fresh_broker, "other-group")
        try:
            (tp,) = other.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=TIMEOUT)
            assert tp.offset == confluent_kafka.OFFSET_INVALID
        finally:
            other.close()
    finally:
        consumer.close()


def test_kafka_python_commit_and_committed(checked_broker: BrokerProcess) -> None:
    topic = new_topic("kafka-python", "offsets")
    KafkaPython(checked_broker).create_topic(topic, 2, {})
    tp0, tp1 = kafka.TopicPartition(topic, 0), kafka.TopicPartition(topic, 1)

    def consumer() -> kafka.KafkaConsumer:
        return kafka.KafkaConsumer(
            bootstrap_servers=checked_broker.bootstrap,
            group_id="kp-group",
            enable_auto_commit=False,
            request_timeout_ms=int(TIMEOUT * 1000),
        )

    first = consumer()
    try:
        first.assign([tp0, tp1])
        first.commit({tp0: OffsetAndMetadata(42, "meta", -1)})
        assert first.committed(tp0) == 42
        assert first.committed(tp1) is None  # nothing committed
    finally:
        first.close()
    second = consumer()
    try:
        second.assign([tp0])
        assert second.committed(tp0) == 42
        assert second.committed(tp0, metadata=True).metadata == "meta"
    finally:
        second.close()


def test_aiokafka_commit_and_committed(checked_broker: BrokerProcess) -> None:
    topic = new_topic("aiokafka", "offsets")
    KafkaPython(checked_broker).create_topic(topic, 1, {})
    tp = aiokafka.TopicPartition(topic, 0)

    async def scenario() -> None:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=checked_broker.bootstrap,
            group_id="aio-group",
            enable_auto_commit=False,
            request_timeout_ms=int(TIMEOUT * 1000),
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            assert await consumer.committed(tp) is None
            await consumer.commit({tp: aiokafka.structs.OffsetAndMetadata(9, "aio")})
            assert await consumer.committed(tp) == 9
        finally:
            await consumer.stop()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 3))
