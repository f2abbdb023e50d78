"""Transactions with real clients against a broker process (issue 17).

confluent-kafka (librdkafka) and aiokafka support transactions; kafka-python 3.0.12 has no
transactional producer (KafkaProducer has no ``transactional_id``), so it is used here only as
a read_committed / read_uncommitted consumer. Covered: commits visible to read_committed
consumers, aborts invisible to them and visible to read_uncommitted ones (markers skipped by
every client), consume-transform-produce with ``send_offsets_to_transaction`` (offsets
committed only with the transaction), zombie fencing (a second producer of the same
transactional id fences the first, whose transaction is aborted), a producer that dies
mid-transaction (aborted once its timeout passes, so the last stable offset moves on), and
the admin APIs (DescribeTransactions, ListTransactions, DescribeProducers).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import confluent_kafka
import kafka
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from kafscale.broker.failpoints import EXIT_STATUS
from tests.conformance.conftest import BrokerProcess, free_port, running_broker

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def txn_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker that aborts timed-out transactions within about a second."""
    with running_broker(
        tmp_path_factory.mktemp("txn"),
        "--transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "300",
    ) as b:
        yield b


def create(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(TIMEOUT)


def producer(bootstrap: str, tid: str, **extra: Any) -> confluent_kafka.Producer:
    p = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": tid,
            "linger.ms": 5,
            "transaction.timeout.ms": 10_000,
            **extra,
        }
    )
    p.init_transactions(TIMEOUT)
    return p


def consume_all(
    bootstrap: str, topic: str, isolation: str, expect: int, partitions: int = 3
) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record an assigned confluent consumer reads from
    the beginning with ``isolation``, until ``expect`` were read (or nothing new for 2 s)."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + TIMEOUT
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if len(out) >= expect and time.monotonic() - idle_since > 1.0:
                    break
                if time.monotonic() - idle_since > 4.0:
                    break
                continue
            if msg.error():
                continue
            idle_since = time.monotonic()
            out.append((msg.partition(), msg.offset(), msg.value()))
    finally:
        consumer.close()
    return out


def end_offsets(bootstrap: str, topic: str, isolation: str, partitions: int = 3) -> list[int]:
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "x", "isolation.level": isolation}
    )
    try:
        return [
            consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, p), TIMEOUT, cached=False
            )[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def test_commit_and_abort_read_committed(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-basic"
    create(bootstrap, topic)
    p = producer(bootstrap, "basic")
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=b"c1-%d" % i, partition=i % 3)
    p.commit_transaction(TIMEOUT)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=b"a-%d" % i, partition=i % 3)
    p.flush(TIMEOUT)
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=b"c2-%d" % i, partition=i % 3)
    p.commit_transaction(TIMEOUT)

    committed = consume_all(bootstrap, topic, "read_committed", 60)
    values = sorted(v for _, _, v in committed)
    assert values == sorted([b"c1-%d" % i for i in range(30)] + [b"c2-%d" % i for i in range(30)])
    uncommitted = consume_all(bootstrap, topic, "read_uncommitted", 90)
    assert sorted(v for _, _, v in uncommitted) == sorted(values + [b"a-%d" % i for i in range(30)])
    # Every transaction's data is followed by its marker: each partition holds 30 records and
    # 3 markers, and the last stable offset is the high watermark once all are decided.
    assert end_offsets(bootstrap, topic, "read_uncommitted") == [33, 33, 33]
    assert end_offsets(bootstrap, topic, "read_committed") == [33, 33, 33]

    # kafka-python reads the same (it skips markers and aborted batches itself).
    for isolation, expected in (("read_committed", 60), ("read_uncommitted", 90)):
        consumer = kafka.KafkaConsumer(
            bootstrap_servers=bootstrap,
            isolation_level=isolation,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=3000,
        )
        consumer.assign([kafka.TopicPartition(topic, i) for i in range(3)])
        got = [m.value for m in consumer]
        consumer.close()
        assert len(got) == expected, isolation
    p.flush(TIMEOUT)


def test_open_transaction_holds_the_lso(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-lso"
    create(bootstrap, topic, 1)
    p = producer(bootstrap, "lso")
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=b"open-%d" % i, partition=0)
    p.flush(TIMEOUT)
    assert end_offsets(bootstrap, topic, "read_uncommitted", 1) == [5]
    assert end_offsets(bootstrap, topic, "read_committed", 1) == [0]
    assert consume_all(bootstrap, topic, "read_committed", 0, 1) == []
    p.commit_transaction(TIMEOUT)
    assert end_offsets(bootstrap, topic, "read_committed", 1) == [6]
    assert len(consume_all(bootstrap, topic, "read_committed", 5, 1)) == 5


def test_consume_transform_produce(txn_broker: BrokerProcess) -> None:
    """Read a topic in a group, write a transformed copy and commit the group's offsets in
    the same transaction: an aborted round leaves neither output nor offsets."""
    bootstrap = txn_broker.bootstrap
    source, sink, group = "ctp-in", "ctp-out", "ctp-group"
    create(bootstrap, source, 1)
    create(bootstrap, sink, 1)
    plain = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    for i in range(20):
        plain.produce(source, value=b"%d" % i, partition=0)
    plain.flush(TIMEOUT)

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([confluent_kafka.TopicPartition(source, 0)])
    p = producer(bootstrap, "ctp")
    rounds = 0
    seen = 0
    while seen < 20:
        msgs = consumer.consume(5, 5.0)
        msgs = [m for m in msgs if not m.error()]
        assert msgs, "the source ran dry"
        p.begin_transaction()
        for m in msgs:
            p.produce(sink, value=b"x" + m.value(), partition=0)
        positions = consumer.position(consumer.assignment())
        p.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), TIMEOUT)
        rounds += 1
        if rounds == 2:  # this round is aborted: its output and offsets vanish
            p.abort_transaction(TIMEOUT)
            committed = consumer.committed([confluent_kafka.TopicPartition(source, 0)], TIMEOUT)
            consumer.seek(confluent_kafka.TopicPartition(source, 0, committed[0].offset))
            continue
        p.commit_transaction(TIMEOUT)
        seen = positions[0].offset
    consumer.close()
    out = consume_all(bootstrap, sink, "read_committed", 20, 1)
    assert sorted(v for _, _, v in out) == sorted(b"x%d" % i for i in range(20))
    check = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    committed = check.committed([confluent_kafka.TopicPartition(source, 0)], TIMEOUT)
    check.close()
    assert committed[0].offset == 20


def test_zombie_is_fenced(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-zombie"
    create(bootstrap, topic, 1)
    first = producer(bootstrap, "zombie")
    first.begin_transaction()
    first.produce(topic, value=b"zombie", partition=0)
    first.flush(TIMEOUT)
    second = producer(bootstrap, "zombie")  # fences the first and aborts its transaction
    second.begin_transaction()
    second.produce(topic, value=b"live", partition=0)
    second.commit_transaction(TIMEOUT)
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        first.produce(topic, value=b"late", partition=0)
        first.commit_transaction(TIMEOUT)
    assert raised.value.args[0].fatal(), raised.value
    values = [v for _, _, v in consume_all(bootstrap, topic, "read_committed", 1, 1)]
    assert values == [b"live"]


def test_timeout_aborts_a_dead_producers_transaction(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-timeout"
    create(bootstrap, topic, 1)
    p = producer(bootstrap, "doomed", **{"transaction.timeout.ms": 1500})
    p.begin_transaction()
    p.produce(topic, value=b"never", partition=0)
    p.flush(TIMEOUT)
    del p  # the producer is gone without ending its transaction
    deadline = time.monotonic() + 15
    while end_offsets(bootstrap, topic, "read_committed", 1) != [2]:
        assert time.monotonic() < deadline, "the timed-out transaction was not aborted"
        time.sleep(0.2)
    assert consume_all(bootstrap, topic, "read_committed", 0, 1) == []
    assert len(consume_all(bootstrap, topic, "read_uncommitted", 1, 1)) == 1


def test_one_step_ending_is_all_or_nothing(tmp_path: Path) -> None:
    """A broker owning every partition of a transaction ends it in one commit (markers,
    state, offsets): crashed between uploading the markers and that commit, it leaves no
    marker anywhere; after the restart the transaction is still open, and its timeout
    aborts it in every partition."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    broker = BrokerProcess(
        "127.0.0.1",
        free_port(),
        data_dir,
        tmp_path,
        args=["--transaction.abort.timed.out.transaction.cleanup.interval.ms", "300"],
        env={"KAFSCALE_FAILPOINTS": "before_txn_markers_commit:exit@3"},
    )
    broker.start()
    topic = "txn-one-step"
    try:
        create(broker.bootstrap, topic)
        p = producer(broker.bootstrap, "one-step", **{"transaction.timeout.ms": 2000})
        for n in range(3):  # the third ending crashes the broker before its commit
            p.begin_transaction()
            for i in range(30):
                p.produce(topic, value=b"t%d-%d" % (n, i), partition=i % 3)
            if n < 2:
                p.commit_transaction(TIMEOUT)
        p.flush(TIMEOUT)
        with pytest.raises(confluent_kafka.KafkaException):
            p.commit_transaction(5)
        assert broker.proc is not None and broker.proc.wait(TIMEOUT) == EXIT_STATUS
        del p  # gone: nothing retries the EndTxn
        log = broker.logs[-1].read_text()
        assert "failpoint before_txn_markers_commit: exiting" in log
        assert log.count("(one step)") == 2, "the first two did not end in one step"
        broker.env = {}
        broker.start()
        # The open transaction holds every partition's last stable offset until its timeout
        # aborts it: then markers follow the 10 records of each of the three transactions.
        deadline = time.monotonic() + 20
        while end_offsets(broker.bootstrap, topic, "read_committed") != [33, 33, 33]:
            assert time.monotonic() < deadline, "the open transaction was not aborted"
            time.sleep(0.2)
        committed = consume_all(broker.bootstrap, topic, "read_committed", 60)
        assert sorted(v for _, _, v in committed) == sorted(
            b"t%d-%d" % (n, i) for n in range(2) for i in range(30)
        )
        uncommitted = consume_all(broker.bootstrap, topic, "read_uncommitted", 90)
        assert len(uncommitted) == 90
        broker.stop_cleanly()
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def test_aiokafka_transactions(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-aio"
    create(bootstrap, topic, 2)

    async def main() -> None:
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="aio")
        await p.start()
        try:
            async with p.transaction():
                for i in range(10):
                    await p.send(topic, b"ok-%d" % i, partition=i % 2)
            await p.begin_transaction()
            for i in range(10):
                await p.send(topic, b"no-%d" % i, partition=i % 2)
            await p.abort_transaction()
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await c.start()
        try:
            c.assign([aiokafka.TopicPartition(topic, i) for i in range(2)])
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(got) < 10 and time.monotonic() < deadline:
                for batch in (await c.getmany(timeout_ms=500)).values():
                    got += [m.value for m in batch if m.value is not None]
            await asyncio.sleep(0.5)
            for batch in (await c.getmany(timeout_ms=500)).values():
                got += [m.value for m in batch if m.value is not None]
            assert sorted(got) == sorted(b"ok-%d" % i for i in range(10))
        finally:
            await c.stop()

    asyncio.run(main())


def test_admin_describes_transactions(txn_broker: BrokerProcess, tmp_path: Path) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-admin"
    create(bootstrap, topic, 1)
    p = producer(bootstrap, "described")
    p.begin_transaction()
    p.produce(topic, value=b"v", partition=0)
    p.flush(TIMEOUT)
    from tests.conformance.txn_admin import describe_transaction, list_transactions

    state = describe_transaction(txn_broker.host, txn_broker.port, "described")
    assert state.transaction_state == "Ongoing"
    assert [(t.topic, t.partitions) for t in state.topics] == [(topic, [0])]
    listed = {t.transactional_id: t.transaction_state for t in list_transactions(*_hp(txn_broker))}
    assert listed.get("described") == "Ongoing"
    p.commit_transaction(TIMEOUT)
    state = describe_transaction(txn_broker.host, txn_broker.port, "described")
    assert state.transaction_state == "CompleteCommit"


def _hp(b: BrokerProcess) -> tuple[str, int]:
    return b.host, b.port
