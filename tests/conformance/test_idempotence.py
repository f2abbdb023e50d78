"""Idempotent producers with real clients (confluent-kafka, kafka-python, aiokafka) through
broker crashes at the two steps where an acknowledgement is lost after the data is committed:
``after_metadata_commit`` (the broker dies before answering) and ``mid_response`` (half the
answer is on the wire). The client resends the batch to the restarted broker, which finds the
producer's state committed with the data and answers with the original offset: every record
is in the log exactly once, at the offset it was acknowledged with."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import aiokafka
import confluent_kafka
import kafka
import pytest

from kafscale.broker.failpoints import EXIT_STATUS
from tests.conformance.clients import TIMEOUT, KafkaPython
from tests.conformance.conftest import BrokerProcess

RECORDS = 300
PARTITIONS = 2

Acked = dict[bytes, tuple[int, int]]  # value -> (partition, offset)


def confluent(bootstrap: str, topic: str, values: list[bytes], acked: Acked) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 60_000,
            "reconnect.backoff.max.ms": 200,
        }
    )

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            acked[msg.value()] = (msg.partition(), msg.offset())

    for value in values:
        producer.produce(topic, value=value, on_delivery=delivered)
        producer.poll(0)
        time.sleep(0.002)
    assert producer.flush(60) == 0


def kafka_python(bootstrap: str, topic: str, values: list[bytes], acked: Acked) -> None:
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=5_000,
        retry_backoff_ms=100,
        reconnect_backoff_max_ms=200,
    )
    try:
        futures = []
        for value in values:
            futures.append((value, producer.send(topic, value=value)))
            time.sleep(0.002)
        for value, future in futures:
            md = future.get(timeout=60)
            acked[value] = (md.partition, md.offset)
    finally:
        producer.close(timeout=TIMEOUT)


def aio(bootstrap: str, topic: str, values: list[bytes], acked: Acked) -> None:
    async def main() -> None:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=5_000,
            retry_backoff_ms=100,
        )
        await producer.start()
        try:
            futures = []
            for value in values:
                futures.append((value, await producer.send(topic, value=value)))
                await asyncio.sleep(0.002)
            for value, future in futures:
                md = await asyncio.wait_for(future, 60)
                acked[value] = (md.partition, md.offset)
        finally:
            await producer.stop()

    asyncio.run(main())


CLIENTS: dict[str, Callable[[str, str, list[bytes], Acked], None]] = {
    "confluent-kafka": confluent,
    "kafka-python": kafka_python,
    "aiokafka": aio,
}


@pytest.mark.parametrize("point", ["after_metadata_commit", "mid_response"])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_lost_acknowledgement_is_resent_and_deduplicated(
    fresh_broker: BrokerProcess, client: str, point: str, report: Callable[[str], None]
) -> None:
    topic = f"idempotent-{client}-{point}".replace("_", "-")
    admin = KafkaPython(fresh_broker)
    admin.create_topic(topic, PARTITIONS, {})
    fresh_broker.stop_cleanly()
    # Die at the 5th commit (or response): some records are in before the crash.
    fresh_broker.env = {"KAFSCALE_FAILPOINTS": f"{point}:exit@5"}
    fresh_broker.start()
    values = [f"{client}:{i}".encode() for i in range(RECORDS)]
    acked: Acked = {}
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            CLIENTS[client](fresh_broker.bootstrap, topic, values, acked)
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    assert fresh_broker.proc is not None
    assert fresh_broker.proc.wait(TIMEOUT * 3) == EXIT_STATUS  # the failpoint fired
    assert f"failpoint {point}: exiting" in fresh_broker.stderr()
    fresh_broker.env = {}
    fresh_broker.start()
    worker.join(120)
    assert not worker.is_alive(), "the producer did not finish"
    assert not errors, errors
    assert len(acked) == RECORDS
    stored: dict[bytes, list[tuple[int, int]]] = {}
    for partition in range(PARTITIONS):
        end = admin.end_offset(topic, partition)
        for record in admin.consume(topic, partition, end):
            stored.setdefault(record.value, []).append((partition, record.offset))
    duplicates = sum(len(places) - 1 for places in stored.values())
    lost = [v for v in values if v not in stored]
    inconsistent = [v for v, at in acked.items() if stored.get(v) != [at]]
    report(
        f"{client} through {point}: sent {RECORDS}, acked {len(acked)}, stored "
        f"{sum(len(p) for p in stored.values())}, duplicates {duplicates}, lost {len(lost)}, "
        f"inconsistent offsets {len(inconsistent)}"
    )
    assert (duplicates, len(lost), len(inconsistent)) == (0, 0, 0)
