"""Kafka 3.9's topic configs through a real client (confluent-kafka's AdminClient, producer
and consumer) against a broker process: a topic created with every one of them set describes
them back (as overrides, with Kafka's documentation and synonyms), a bad value is refused with
INVALID_CONFIG and Kafka's message, and the honoured ones act (LogAppendTime seen by the
consumer, the batches stored in the topic's compression.type)."""

from __future__ import annotations

import time

import confluent_kafka
import confluent_kafka.admin
import pytest

from generated.topic_configs import TOPIC_CONFIGS
from tests.conformance.clients import CODEC_IDS, TIMEOUT, batch_codecs, new_topic
from tests.conformance.conftest import BrokerProcess

INVALID_CONFIG = 40

EVERY_CONFIG = {
    "segment.bytes": "10485760",
    "segment.ms": "3600000",
    "segment.jitter.ms": "1000",
    "segment.index.bytes": "4096",
    "flush.messages": "1000",
    "flush.ms": "1000",
    "retention.bytes": "1073741824",
    "retention.ms": "86400000",
    "max.message.bytes": "2097152",
    "index.interval.bytes": "8192",
    "delete.retention.ms": "3600000",
    "min.compaction.lag.ms": "1000",
    "max.compaction.lag.ms": "604800000",
    "file.delete.delay.ms": "30000",
    "min.cleanable.dirty.ratio": "0.25",
    "cleanup.policy": "compact,delete",
    "unclean.leader.election.enable": "true",
    "min.insync.replicas": "1",
    "compression.type": "zstd",
    "compression.gzip.level": "5",
    "compression.lz4.level": "10",
    "compression.zstd.level": "7",
    "preallocate": "true",
    "message.format.version": "3.0",
    "message.timestamp.type": "LogAppendTime",
    "message.timestamp.difference.max.ms": "86400000",
    "message.timestamp.before.max.ms": "86400000",
    "message.timestamp.after.max.ms": "3600000",
    "leader.replication.throttled.replicas": "0:0",
    "follower.replication.throttled.replicas": "*",
    "message.downconversion.enable": "false",
    "remote.storage.enable": "false",
    "local.retention.ms": "-2",
    "local.retention.bytes": "-2",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
}
"""Every Kafka 3.9 topic config, most of them set to something else than their default."""


def _admin(broker: BrokerProcess) -> confluent_kafka.admin.AdminClient:
    return confluent_kafka.admin.AdminClient({"bootstrap.servers": broker.bootstrap})


def _create(admin: confluent_kafka.admin.AdminClient, topic: str, configs: dict[str, str]) -> None:
    new = confluent_kafka.admin.NewTopic(
        topic, num_partitions=1, replication_factor=1, config=configs
    )
    admin.create_topics([new], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)


def _describe(
    admin: confluent_kafka.admin.AdminClient, topic: str
) -> dict[str, confluent_kafka.admin.ConfigEntry]:
    resource = confluent_kafka.admin.ConfigResource(confluent_kafka.admin.ResourceType.TOPIC, topic)
    futures = admin.describe_configs([resource], request_timeout=TIMEOUT)
    [future] = futures.values()
    entries: dict[str, confluent_kafka.admin.ConfigEntry] = future.result(timeout=TIMEOUT)
    return entries


def test_every_topic_config_is_accepted_and_described(checked_broker: BrokerProcess) -> None:
    assert sorted(EVERY_CONFIG) == sorted(TOPIC_CONFIGS)
    admin = _admin(checked_broker)
    topic = new_topic("confluent-kafka", "everyconfig")
    _create(admin, topic, EVERY_CONFIG)
    entries = _describe(admin, topic)
    assert sorted(entries) == sorted(TOPIC_CONFIGS)
    dynamic = confluent_kafka.admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    described = {name: (e.value, e.source) for name, e in entries.items()}
    assert described == {name: (value, dynamic) for name, value in EVERY_CONFIG.items()}
    synonyms = entries["retention.ms"].synonyms
    assert list(synonyms)[:2] == ["retention.ms", "log.retention.ms"]

    # The honoured ones act: the consumer sees the broker's LogAppendTime, the batch is stored
    # in zstd (the producer sent gzip).
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": checked_broker.bootstrap, "compression.type": "gzip"}
    )
    before = int(time.time() * 1000)
    for i in range(3):
        producer.produce(topic, value=b"value %d" % i, timestamp=1_000_000)
    assert producer.flush(TIMEOUT) == 0
    after = int(time.time() * 1000)
    assert batch_codecs(checked_broker, topic, 0) == [CODEC_IDS["zstd"]]
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": checked_broker.bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while len(seen) < 3 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append((msg.value(), *msg.timestamp()))
    finally:
        consumer.close()
    assert [value for value, _, _ in seen] == [b"value 0", b"value 1", b"value 2"]
    assert {kind for _, kind, _ in seen} == {confluent_kafka.TIMESTAMP_LOG_APPEND_TIME}
    assert all(before <= ts <= after for _, _, ts in seen)


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        (
            {"retention.ms": "-5"},
            "Invalid value -5 for configuration retention.ms: Value must be at least -1",
        ),
        ({"no.such.config": "1"}, "Unknown topic config name: no.such.config"),
    ],
)
def test_bad_configs_are_refused_with_kafkas_message(
    checked_broker: BrokerProcess, configs: dict[str, str], message: str
) -> None:
    admin = _admin(checked_broker)
    topic = new_topic("confluent-kafka", "badconfig")
    with pytest.raises(confluent_kafka.KafkaException) as info:
        _create(admin, topic, configs)
    error = info.value.args[0]
    assert error.code() == INVALID_CONFIG
    assert message in error.str()
