"""Durability: what the broker acknowledged survives a restart, a clean one or a SIGKILL.

acks=all means "committed": the record is in the object store and the new high watermark is in
the metadata store before the producer hears back. So after a SIGKILL every acknowledged record
must be found at the offset it was acknowledged at, nothing may be there twice, and nothing that
was never sent may appear. Records in flight at the kill may or may not be there.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conformance.clients import (
    ConfluentKafka,
    KafkaPython,
    Msg,
    check_partition,
    produce_and_check,
)
from tests.conformance.conftest import BrokerProcess

PARTITIONS = 2
ACKED_BEFORE_KILL = 500
"""The kill comes once this many records are acknowledged (and the producer is still going)."""


def test_clean_restart_keeps_everything(fresh_broker: BrokerProcess) -> None:
    client = KafkaPython(fresh_broker)
    client.create_topic("kept", PARTITIONS, {})
    before = [Msg(f"k{i}".encode(), f"v{i}".encode(), partition=i % 2) for i in range(40)]
    produce_and_check(client, "kept", before, "zstd")

    fresh_broker.restart()  # SIGTERM: must exit 0, then starts on the same data dir

    after = [Msg(b"late", f"after restart {p}".encode(), partition=p) for p in range(PARTITIONS)]
    assert client.produce("kept", after, "none") == [(p, 20) for p in range(PARTITIONS)]
    for p in range(PARTITIONS):
        expected = [m for m in before + after if m.partition == p]
        check_partition(client, "kept", p, expected)


class AckRecorder:
    """A producer thread sending unique values (acks=all, no retries) until told to stop."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 2,
                # No retries and no idempotence: a record reaches the broker at most once
                # from this producer, so a duplicate in the log can only be the broker's.
                "retries": 0,
                "enable.idempotence": False,
                "message.timeout.ms": 5000,
                "log_level": 0,  # the kill makes librdkafka complain loudly; not our concern
            }
        )
        self.sent: set[bytes] = set()
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ack-recorder", daemon=True)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked[msg.value()] = (msg.partition(), msg.offset())
        else:
            self.failed += 1

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            value = f"value-{i:07d}".encode()
            try:
                self.producer.produce(
                    self.topic, value, partition=i % PARTITIONS, on_delivery=self._delivered
                )
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.05)
                continue
            self.sent.add(value)
            i += 1
            self.producer.poll(0.001 if i % 20 == 0 else 0)

    def wait_for_acks(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            assert self.thread.is_alive(), "the producer thread died"
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks in {timeout}s"
            time.sleep(0.01)

    def finish(self) -> None:
        """Stop producing; what was not acknowledged by now is dropped, never resent."""
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.producer.purge()
        self.producer.flush(5)  # runs the callbacks of purged and failed records


def read_everything(bootstrap: str, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    """(offset, value) of every record in every partition, up to the end offset."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kafscale-restart",  # required by librdkafka; assign() only, no commits
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 100,
        }
    )
    out: dict[int, list[tuple[int, bytes]]] = {}
    try:
        ends = {}
        for p in range(PARTITIONS):
            _low, ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = []
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 20
        while any(len(out[p]) < ends[p] for p in out) and time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, f"consumer error: {m.error()}"
            out[m.partition()].append((m.offset(), m.value()))
        for p in out:
            assert len(out[p]) == ends[p], f"partition {p}: read {len(out[p])} of {ends[p]}"
    finally:
        consumer.close()
    return out


def test_sigkill_mid_produce_loses_no_acked_record(
    fresh_broker: BrokerProcess, report: Callable[[str], None]
) -> None:
    topic = "killed"
    ConfluentKafka(fresh_broker).create_topic(topic, PARTITIONS, {})
    recorder = AckRecorder(fresh_broker.bootstrap, topic)
    recorder.thread.start()
    try:
        recorder.wait_for_acks(ACKED_BEFORE_KILL, timeout=30)
        assert recorder.thread.is_alive(), "the kill must come while the producer is sending"
        fresh_broker.kill()
    finally:
        recorder.finish()
    acked = dict(recorder.acked)  # no callback runs after finish()

    fresh_broker.start()
    log = read_everything(fresh_broker.bootstrap, topic)

    read = [value for records in log.values() for _, value in records]
    where = {value: (p, off) for p, records in log.items() for off, value in records}
    report(
        f"sent {len(recorder.sent)}, acked {len(acked)}, failed/purged {recorder.failed}, "
        f"read back {len(read)} ({len(read) - len(acked)} unacked but committed)"
    )
    for p, records in log.items():
        assert [off for off, _ in records] == list(range(len(records))), f"gap in partition {p}"
    twice = [v for v, n in Counter(read).items() if n > 1]
    assert not twice, f"{len(twice)} values read more than once, e.g. {twice[:5]}"
    never_sent = [v for v in read if v not in recorder.sent]
    assert not never_sent, f"{len(never_sent)} values never sent, e.g. {never_sent[:5]}"
    missing = sorted(v for v in acked if v not in where)
    assert not missing, f"{len(missing)} acked values lost, e.g. {missing[:5]}"
    moved = {v: (acked[v], where[v]) for v in acked if where[v] != acked[v]}
    assert not moved, f"{len(moved)} values not at their acked (partition, offset): {moved}"

    # The restarted broker goes on from the recovered end of the log.
    client = ConfluentKafka(fresh_broker)
    ends = [len(log[p]) for p in range(PARTITIONS)]
    more = [Msg(None, f"after kill {p}".encode(), partition=p) for p in range(PARTITIONS)]
    assert client.produce(topic, more, "none") == [(p, ends[p]) for p in range(PARTITIONS)]
    for p in range(PARTITIONS):
        assert client.end_offset(topic, p) == ends[p] + 1
