"""Leader epochs with real consumers (KIP-320): a partition's leader epoch moves on while a
consumer reads it, and the consumer validates its position with OffsetForLeaderEpoch.

Both librdkafka (confluent-kafka) and kafka-python (3.x) validate a position when Metadata
shows a newer leader epoch for its partition: OffsetForLeaderEpoch with the epoch of the last
record consumed; an end offset below the position would be reported as log truncation (with
``auto.offset.reset`` = error / none: an error, not a silent reset). kafka-python also sends
LastFetchedEpoch in every Fetch (v12+), which the broker checks for divergence.

A broker taking a partition over starts a new leader epoch, and so does the same broker
restarted (a new incarnation takes the partition again), as a Kafka leader re-election does.
The consumer lives across the restart and must read every record, with no error and no
truncation reported, and must have sent OffsetForLeaderEpoch (seen in its own logs).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import confluent_kafka
import kafka
import pytest

from tests.conformance.clients import TIMEOUT, ConfluentKafka, Msg
from tests.conformance.conftest import BrokerProcess

BEFORE = 30
AFTER = 30


def restart_with_new_epoch(broker: BrokerProcess) -> None:
    broker.stop_cleanly()
    broker.start()


def messages(what: str, n: int) -> list[Msg]:
    return [Msg(None, f"{what} {i}".encode()) for i in range(n)]


class Lines(logging.Handler):
    """Keeps every formatted log line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_confluent_kafka_validates_its_position_across_an_epoch_change(
    fresh_broker: BrokerProcess,
) -> None:
    topic = "epochs-confluent"
    client = ConfluentKafka(fresh_broker)
    client.create_topic(topic, 1, {})
    client.produce(topic, messages("before", BEFORE), "none")

    lines = Lines()
    librdkafka_log = logging.getLogger("kafscale.test.librdkafka")
    librdkafka_log.addHandler(lines)
    librdkafka_log.setLevel(logging.DEBUG)
    errors: list[str] = []
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": fresh_broker.bootstrap,
            "group.id": "kafscale-epochs",  # required; assign() only, nothing committed
            "enable.auto.commit": False,
            "auto.offset.reset": "error",  # a detected truncation is an error, not a reset
            "fetch.wait.max.ms": 100,
            "topic.metadata.refresh.interval.ms": 500,
            "debug": "protocol",
            "logger": librdkafka_log,
            # The restart makes librdkafka report transport errors; they are not the test's.
            "error_cb": lambda err: errors.append(str(err)),
        }
    )
    got: list[tuple[int, bytes]] = []
    epochs: list[int] = []

    def read_until(n: int) -> None:
        deadline = time.monotonic() + 3 * TIMEOUT
        while len(got) < n and time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, f"consumer error: {m.error()}"
            got.append((m.offset(), m.value()))
            epochs.append(m.leader_epoch())

    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        read_until(BEFORE)
        assert len(got) == BEFORE
        restart_with_new_epoch(fresh_broker)
        acked = client.produce(topic, messages("after", AFTER), "none")
        assert acked == [(0, BEFORE + i) for i in range(AFTER)]
        read_until(BEFORE + AFTER)
    finally:
        consumer.close()
        librdkafka_log.removeHandler(lines)
    expected = [m.value for m in messages("before", BEFORE) + messages("after", AFTER)]
    assert got == list(enumerate(expected))
    assert epochs == [1] * BEFORE + [2] * AFTER  # taken at epoch 1, again at 2
    sent = [line for line in lines.lines if "OffsetForLeaderEpoch" in line]
    assert sent, "librdkafka never sent OffsetForLeaderEpoch"
    truncation = [line for line in lines.lines if "truncat" in line.lower()]
    assert not truncation, truncation


def test_kafka_python_validates_its_position_across_an_epoch_change(
    fresh_broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    topic = "epochs-kafka-python"
    client = ConfluentKafka(fresh_broker)
    client.create_topic(topic, 1, {})
    client.produce(topic, messages("before", BEFORE), "none")

    caplog.set_level(logging.DEBUG, logger="kafka.consumer")
    tp = kafka.TopicPartition(topic, 0)
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=fresh_broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",  # a detected truncation raises LogTruncationError
        fetch_max_wait_ms=100,
        request_timeout_ms=10000,
        metadata_max_age_ms=500,
    )
    got: list[Any] = []

    def read_until(n: int) -> None:
        deadline = time.monotonic() + 3 * TIMEOUT
        while len(got) < n and time.monotonic() < deadline:
            got.extend(consumer.poll(timeout_ms=200).get(tp, []))

    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        read_until(BEFORE)
        assert len(got) == BEFORE
        restart_with_new_epoch(fresh_broker)
        client.produce(topic, messages("after", AFTER), "none")
        read_until(BEFORE + AFTER)
    finally:
        consumer.close()
    expected = [m.value for m in messages("before", BEFORE) + messages("after", AFTER)]
    assert [(r.offset, r.value) for r in got] == list(enumerate(expected))
    assert [r.leader_epoch for r in got] == [1] * BEFORE + [2] * AFTER
    log = [r.getMessage() for r in caplog.records]
    assert any("Sending OffsetForLeaderEpochRequest" in line for line in log), (
        "kafka-python never sent OffsetForLeaderEpoch"
    )
    assert not [line for line in log if "Truncation detected" in line]
