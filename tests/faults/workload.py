"""The fault tests' workload: real clients writing unique values and reading them back, every
operation recorded in a :class:`~tests.checker.History`.

- Producers ``p0..p3`` (confluent-kafka): acks=all, idempotence off (so retries may store a
  value twice: duplicates are counted, not failed), retries on, short timeouts; each writes
  ``p<i>:<seq>`` to a random partition at a steady rate. A delivery error is an *unknown*
  outcome: the client retried, and an earlier attempt may have been written (confluent-kafka
  does not expose librdkafka's persisted/not-persisted status). Only a value the client
  refused to queue is a definite failure.
- Producer ``r0``: raw Produce v9 requests (acks=all) on plain sockets, one at a time, one
  attempt each, mostly to the partition's owner (from Metadata, refreshed every second) and
  sometimes to another broker. librdkafka retries NOT_LEADER_OR_FOLLOWER whatever its
  ``retries`` say, so this is how the broker's own answers are checked: NOT_LEADER_OR_FOLLOWER
  is a definite failure (the broker never appended, or its commit's compare failed) and a
  broker that answers it for a write it did commit is caught by the checker
  (read_after_fail); a connection refused is a definite failure too (nothing was sent);
  every other answer, or none, is unknown (KAFKA_STORAGE_ERROR also answers a commit whose
  outcome is unknown).
- Producers ``i0..`` (confluent-kafka, only when asked for: ``idempotent=``): like ``p0..``
  but idempotent (one request in flight per connection, see :data:`IDEMPOTENT`), so that a
  value of theirs stored twice is a failure (the checker's ``exactly_once``), whatever
  crashed.
- Consumers ``c0`` (confluent-kafka) and ``c1`` (kafka-python): assign mode, every
  partition from offset 0, no group, no commits. A consumer restarted (see
  :meth:`Workload.caught_up`) starts a new session where the last one stopped.

:class:`Churn` is unchecked traffic beside the workload that makes garbage for the janitor: a
producer on a topic whose ``retention.bytes`` is small (retention drops its oldest entries
while the run goes on), and short-lived topics written one record per request (a piece per
request: enough for a compaction) and then deleted.

Every loop is bounded in time. :meth:`Workload.round_trip` (one value per partition written and
read back) is how readiness and recovery are measured; :meth:`Workload.final_read` is the
checker's final full read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import socket
import struct
import threading
import time
from collections import defaultdict
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.errors

from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.produce_response import ProduceResponse
from generated.registry import APIS
from kafscale.protocol.framing import encode_request
from kafscale.protocol.records import build_batch
from tests.checker import FINAL, History, Send

PRODUCER = {
    "acks": "all",
    "enable.idempotence": False,
    "linger.ms": 5,
    "message.timeout.ms": 10_000,
    "request.timeout.ms": 4_000,
    "socket.timeout.ms": 5_000,
    "socket.connection.setup.timeout.ms": 3_000,
    "retry.backoff.ms": 100,
    "retry.backoff.max.ms": 500,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
    "topic.metadata.refresh.interval.ms": 1_000,
    "metadata.max.age.ms": 5_000,
}
CONSUMER = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # A reset would show as a step back (checked), never as a silent jump.
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
    "socket.timeout.ms": 5_000,
    "socket.connection.setup.timeout.ms": 3_000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
    "topic.metadata.refresh.interval.ms": 1_000,
    "metadata.max.age.ms": 5_000,
}
IDEMPOTENT = {
    "enable.idempotence": True,
    # One request in flight per connection: with several, a batch refused with
    # NOT_LEADER_OR_FOLLOWER is followed by one answered OUT_OF_ORDER_SEQUENCE_NUMBER, and
    # librdkafka (2.16) then bumps the epoch and re-sequences a batch an earlier attempt may
    # have written: a duplicate no broker can tell from a new record (librdkafka issue 4953;
    # see tests/conformance/test_cluster_idempotence.py).
    "max.in.flight.requests.per.connection": 1,
}
DRAIN_TIMEOUT = 15.0
"""After the producers stop: longer than message.timeout.ms, so every send gets its outcome."""
CONSUMERS = ("c0", "c1")
RESTART_AFTER = 10.0
"""Seconds a consumer may stay behind while catching up before it is restarted."""
NOT_LEADER_OR_FOLLOWER = 6
RAW_TIMEOUT = 5.0
"""Seconds a raw produce waits for its answer (its request says 4 s)."""


def create_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    timeout: float = 30,
    config: dict[str, str] | None = None,
) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        futures = admin.create_topics(
            [confluent_kafka.admin.NewTopic(topic, partitions, 1, config=config or {})],
            request_timeout=10,
        )
        try:
            futures[topic].result(timeout=10)
            return
        except confluent_kafka.KafkaException as e:
            if e.args[0].code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if time.monotonic() > deadline:
                raise


class Workload:
    """Producers and consumers on ``topic`` (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        history: History,
        *,
        producers: int = 4,
        idempotent: int = 0,
        rate: float = 40.0,
        seed: int = 0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.producers = producers
        self.idempotent = [f"i{i}" for i in range(idempotent)]
        """The idempotent producers' names: their values must be stored once."""
        self.interval = 1 / rate
        self.seed = seed
        self._stop_producing = threading.Event()
        self._stop_consuming = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._producer_threads: list[threading.Thread] = []
        self.positions: dict[str, dict[int, int]] = defaultdict(dict)
        """Consumer -> partition -> next offset it will read."""
        self.errors: dict[str, int] = defaultdict(int)
        """Errors each client saw (delivery errors, consumer errors)."""
        self.failures: list[str] = []
        """A client thread that died: the test fails with it."""
        self._values = itertools.count()
        self._restart = {c: threading.Event() for c in CONSUMERS}
        self.restarts: list[str] = []
        """Consumers restarted while catching up (see :meth:`caught_up`)."""

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.producers):
            name = f"p{i}"
            self._producer_threads.append(self._spawn(name, self._produce, name))
        for name in self.idempotent:
            self._producer_threads.append(self._spawn(name, self._produce, name, IDEMPOTENT))
        self._producer_threads.append(self._spawn("r0", self._produce_raw, "r0"))
        self._spawn("c0", self._consume_confluent, "c0")
        self._spawn("c1", self._consume_kafka_python, "c1")
        assert tuple(CONSUMERS) == ("c0", "c1")

    def _spawn(self, name: str, target: Any, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as e:  # reported by check_threads
                self.failures.append(f"{name}: {type(e).__name__}: {e}")
                raise

        t = threading.Thread(target=run, name=f"workload-{name}", daemon=True)
        self._threads[name] = t
        t.start()
        return t

    def stop_producers(self) -> None:
        """Stop sending; wait until every send has its outcome (bounded)."""
        self._stop_producing.set()
        for t in self._producer_threads:
            t.join(DRAIN_TIMEOUT + 10)

    def stop_consumers(self) -> None:
        self._stop_consuming.set()
        for name, t in self._threads.items():
            t.join(20)
            if t.is_alive():
                self.failures.append(f"{name}: did not stop within 20 s")

    def stop(self) -> None:
        self.stop_producers()
        self.stop_consumers()

    # --- producers -------------------------------------------------------------------------

    def _producer(self, **extra: Any) -> Any:
        return confluent_kafka.Producer(
            {"bootstrap.servers": self.bootstrap, **PRODUCER, **extra},
            logger=logging.getLogger("kafscale.faults.librdkafka"),
        )

    def _produce(self, name: str, extra: dict[str, Any] | None = None) -> None:
        producer = self._producer(**(extra or {}))
        rng = random.Random(f"{self.seed}-{name}")
        seq = 0
        next_at = time.monotonic()
        while not self._stop_producing.is_set():
            self._send(producer, name, f"{name}:{seq}", rng.randrange(self.partitions))
            seq += 1
            next_at += self.interval
            producer.poll(max(0.0, next_at - time.monotonic()))
        left = producer.flush(DRAIN_TIMEOUT)
        if left:
            self.errors[name] += left  # their sends stay without outcome: unknown

    def _send(self, producer: Any, name: str, value: str, partition: int) -> Send:
        send = self.history.invoke(name, value, partition)

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.history.ok(send, msg.offset(), msg.partition())
            else:
                self.errors[name] += 1
                self.history.unknown(send, err.name())

        try:
            producer.produce(
                self.topic, value=value.encode(), partition=partition, on_delivery=delivered
            )
        except (BufferError, confluent_kafka.KafkaException) as e:
            self.history.fail(send, f"not queued: {e}")  # never handed to the client
        return send

    def _produce_raw(self, name: str) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        raw = RawProducer()
        admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": self.bootstrap})
        brokers: list[str] = self.bootstrap.split(",")
        owners: dict[int, str] = {}
        refreshed = 0.0
        seq = 0
        try:
            while not self._stop_producing.is_set():
                if time.monotonic() - refreshed > 1:
                    with contextlib.suppress(confluent_kafka.KafkaException):
                        owners = owners_of(admin, self.topic)
                    refreshed = time.monotonic()
                partition = rng.randrange(self.partitions)
                address = owners.get(partition)
                if address is None or rng.random() < 0.2:
                    address = rng.choice(brokers)
                value = f"{name}:{seq}"
                seq += 1
                send = self.history.invoke(name, value, partition)
                outcome, offset, detail = raw.produce(address, self.topic, partition, value)
                if outcome == "ok":
                    self.history.ok(send, offset)
                    time.sleep(self.interval)
                    continue
                self.errors[name] += 1
                if outcome == "fail":
                    self.history.fail(send, detail)
                else:
                    self.history.unknown(send, detail)
                refreshed = 0.0
                time.sleep(self.interval)
        finally:
            raw.close()

    # --- consumers -------------------------------------------------------------------------

    def _consume_confluent(self, name: str) -> None:
        session = -1
        while not self._stop_consuming.is_set():
            session += 1
            self._restart[name].clear()
            consumer = confluent_kafka.Consumer(
                {"bootstrap.servers": self.bootstrap, "group.id": f"faults-{name}", **CONSUMER},
                logger=logging.getLogger("kafscale.faults.librdkafka"),
            )
            try:
                starts = self._starts(name, session)
                consumer.assign(
                    [confluent_kafka.TopicPartition(self.topic, p, o) for p, o in starts.items()]
                )
                while not self._stop_consuming.is_set() and not self._restart[name].is_set():
                    for m in consumer.consume(num_messages=500, timeout=0.2):
                        if m.error() is not None:
                            self.errors[name] += 1
                            continue
                        p, o = m.partition(), m.offset()
                        self.history.read(name, session, p, o, m.value().decode())
                        self.positions[name][p] = o + 1
            finally:
                consumer.close()

    def _consume_kafka_python(self, name: str) -> None:
        session = -1
        while not self._stop_consuming.is_set():
            session += 1
            self._restart[name].clear()
            consumer = kafka.KafkaConsumer(
                bootstrap_servers=self.bootstrap.split(","),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=100,
                request_timeout_ms=5_000,
                metadata_max_age_ms=2_000,
                reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=500,
            )
            try:
                starts = self._starts(name, session)
                tps = {p: kafka.TopicPartition(self.topic, p) for p in starts}
                consumer.assign(list(tps.values()))
                for p, offset in starts.items():
                    consumer.seek(tps[p], offset)
                while not self._stop_consuming.is_set() and not self._restart[name].is_set():
                    try:
                        batches = consumer.poll(timeout_ms=200, max_records=500)
                    except kafka.errors.KafkaError:
                        self.errors[name] += 1
                        time.sleep(0.1)
                        continue
                    for tp, records in batches.items():
                        p = tp.partition
                        for r in records:
                            self.history.read(name, session, p, r.offset, r.value.decode())
                            self.positions[name][p] = r.offset + 1
            finally:
                consumer.close()

    def _starts(self, name: str, session: int) -> dict[int, int]:
        """Where a consumer session starts: where the last one stopped (0 at first)."""
        starts = {p: self.positions[name].get(p, 0) for p in range(self.partitions)}
        for p, offset in starts.items():
            self.history.assign(name, session, p, offset)
        return starts

    # --- measurements ----------------------------------------------------------------------

    def watermarks(self, timeout: float = 30) -> dict[int, int]:
        """Each partition's high watermark (retried until every partition answers)."""
        consumer = confluent_kafka.Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "faults-watermarks", **CONSUMER}
        )
        try:
            deadline = time.monotonic() + timeout
            out: dict[int, int] = {}
            while len(out) < self.partitions:
                for p in range(self.partitions):
                    if p in out:
                        continue
                    try:
                        _, high = consumer.get_watermark_offsets(
                            confluent_kafka.TopicPartition(self.topic, p), timeout=5
                        )
                        out[p] = int(high)
                    except confluent_kafka.KafkaException:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
            return out
        finally:
            consumer.close()

    def caught_up(self, watermarks: dict[int, int], timeout: float) -> float | None:
        """Seconds until both consumers have read up to the watermarks (None: not in time).

        A consumer still behind after ``RESTART_AFTER`` seconds is restarted once (a new
        session from its positions): librdkafka can stay stuck on a broker that is no longer
        the leader when leadership moves A -> B -> A within moments (librdkafka issue 4976,
        fix proposed in PR 5593), answering NOT_LEADER_OR_FOLLOWER on every fetch without
        telling the application. A fresh session shows whether the broker serves."""
        start = time.monotonic()
        restarted = False
        while time.monotonic() - start < timeout:
            behind = [
                c
                for c in CONSUMERS
                if any(self.positions[c].get(p, 0) < hw for p, hw in watermarks.items())
            ]
            if not behind:
                return time.monotonic() - start
            if not restarted and time.monotonic() - start > RESTART_AFTER:
                restarted = True
                for c in behind:
                    self.restarts.append(c)
                    self._restart[c].set()
            time.sleep(0.1)
        return None

    def final_read(self, watermarks: dict[int, int], timeout: float = 60) -> None:
        """A fresh consumer reads every partition from 0 to its watermark (recorded as the
        checker's final read, whether or not it got there in time)."""
        consumer = confluent_kafka.Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "faults-final", **CONSUMER}
        )
        try:
            consumer.assign(
                [confluent_kafka.TopicPartition(self.topic, p, 0) for p in range(self.partitions)]
            )
            for p in range(self.partitions):
                self.history.assign(FINAL, 0, p, 0)
            position = dict.fromkeys(watermarks, 0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(
                position[p] < hw for p, hw in watermarks.items()
            ):
                for m in consumer.consume(num_messages=1000, timeout=0.2):
                    if m.error() is None:
                        self.history.read(FINAL, 0, m.partition(), m.offset(), m.value().decode())
                        position[m.partition()] = m.offset() + 1
        finally:
            consumer.close()
            self.history.final(watermarks)

    def round_trip(self, label: str, timeout: float) -> float | None:
        """Seconds until one value written to every partition (acks=all) is read back at its
        acked offset by a fresh consumer; None if that did not happen within ``timeout``."""
        start = time.monotonic()
        deadline = start + timeout
        producer = self._producer(**{"message.timeout.ms": 5_000})
        pending = set(range(self.partitions))
        attempt = 0
        while pending and time.monotonic() < deadline:
            attempt += 1
            sends = {
                p: self._send(producer, label, f"{label}:{next(self._values)}", p) for p in pending
            }
            producer.flush(6)
            acked = {p: s for p, s in sends.items() if s.outcome == "ok"}
            for p, s in acked.items():
                assert s.offset is not None
                if self._read_back(label, attempt, p, s.offset, s.value, deadline):
                    pending.discard(p)
            if pending:
                time.sleep(0.2)
        producer.flush(6)
        return None if pending else time.monotonic() - start

    def _read_back(
        self, label: str, session: int, partition: int, offset: int, value: str, deadline: float
    ) -> bool:
        reader = f"{label}-read"
        consumer = confluent_kafka.Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "faults-rt", **CONSUMER}
        )
        try:
            consumer.assign([confluent_kafka.TopicPartition(self.topic, partition, offset)])
            self.history.assign(reader, session, partition, offset)
            until = min(deadline, time.monotonic() + 5)
            while time.monotonic() < until:
                m = consumer.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                got = m.value().decode()
                self.history.read(reader, session, partition, m.offset(), got)
                return bool(m.offset() == offset and got == value)
            return False
        finally:
            consumer.close()


def owners_of(admin: Any, topic: str) -> dict[int, str]:
    """Partition -> ``host:port`` of its owner, as Metadata says (partitions without one
    left out)."""
    metadata = admin.list_topics(topic, timeout=5)
    out = {}
    for p, info in metadata.topics[topic].partitions.items():
        broker = metadata.brokers.get(info.leader)
        if broker is not None:
            out[p] = f"{broker.host}:{broker.port}"
    return out


class RawProducer:
    """Produce v9 requests (acks=all, one record) on plain sockets, one connection per broker,
    one request at a time: the broker's own answer to a single attempt."""

    def __init__(self, timeout: float = RAW_TIMEOUT) -> None:
        self.timeout = timeout
        self._sockets: dict[str, socket.socket] = {}
        self._correlation = itertools.count(1)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _drop(self, address: str) -> None:
        sock = self._sockets.pop(address, None)
        if sock is not None:
            sock.close()

    def produce(self, address: str, topic: str, partition: int, value: str) -> tuple[str, int, str]:
        """(``"ok"``, base offset, "") / (``"fail"``, -1, why): certainly not written /
        (``"unknown"``, -1, why)."""
        sock = self._sockets.get(address)
        if sock is None:
            host, port = address.rsplit(":", 1)
            try:
                sock = socket.create_connection((host, int(port)), timeout=self.timeout)
            except OSError as e:
                return "fail", -1, f"not sent: {e}"
            self._sockets[address] = sock
        correlation = next(self._correlation)
        body = ProduceRequest(
            acks=-1,
            timeout_ms=int(self.timeout * 1000) - 1000,
            topic_data=[
                TopicProduceData(
                    name=topic,
                    partition_data=[
                        PartitionProduceData(
                            index=partition,
                            # Stamped now: build_batch's default (2023) is older than any
                            # retention.ms, which would let retention drop its entries.
                            records=build_batch([value.encode()], timestamp=_now_ms()),
                        )
                    ],
                )
            ],
        )
        frame = b"".join(encode_request(APIS[0], 9, correlation, "faults-raw", body))
        try:
            sock.sendall(frame)
            data = _read_frame(sock)
        except OSError as e:
            self._drop(address)
            return "unknown", -1, f"no answer: {type(e).__name__} {e}"
        if data is None:
            self._drop(address)
            return "unknown", -1, "connection closed before the answer"
        if struct.unpack(">i", data[:4])[0] != correlation:
            self._drop(address)
            return "unknown", -1, "answer to another request"
        answer = ProduceResponse.decode(data[5:], 9).responses[0].partition_responses[0]
        if answer.error_code == 0:
            return "ok", int(answer.base_offset), ""
        if answer.error_code == NOT_LEADER_OR_FOLLOWER:
            return "fail", -1, "NOT_LEADER_OR_FOLLOWER"
        return "unknown", -1, f"error {answer.error_code}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_frame(sock: socket.socket) -> bytes | None:
    """One size-prefixed frame's payload (None: the connection ended first)."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data[4:]


def delete_topic(bootstrap: str, topic: str, timeout: float = 15) -> None:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.delete_topics([topic], operation_timeout=10, request_timeout=10)
    futures[topic].result(timeout=timeout)


class Churn:
    """Unchecked traffic that makes garbage for the janitor (none of it is in the history):

    - a producer writing ``value_bytes`` values at ``rate`` per second to random partitions of
      ``retained``, a topic created with a small ``retention.bytes`` (and ``segment.bytes``):
      compaction merges its pieces into segments and retention drops the oldest ones, whose
      objects become garbage records;
    - with ``doomed``: topics ``{doomed}-{i}`` (one partition, created with ``doomed_config``)
      each written :data:`DOOMED_RECORDS` records one request at a time (a piece each: a
      compaction is due at once), left :data:`DOOMED_SETTLE` seconds to be compacted, then
      deleted (a tombstone: the janitor deletes their objects after the grace period), one
      after the other.

    Errors (a broker crashed, a partition moving) are counted and otherwise ignored."""

    DOOMED_RECORDS = 80
    """More than a compaction's ``max_pieces`` (64, kafscale/broker/layout.py)."""
    DOOMED_SETTLE = 2.0
    """Seconds a doomed topic lives after its last record (compaction checks every second)."""
    DOOMED_WRITE_S = 15.0
    """Seconds a doomed topic's records may take at most (a takeover on the way)."""

    def __init__(
        self,
        bootstrap: str,
        retained: str,
        partitions: int,
        *,
        doomed: str | None = None,
        doomed_config: dict[str, str] | None = None,
        rate: float = 40.0,
        value_bytes: int = 200,
        seed: int = 0,
    ) -> None:
        self.bootstrap = bootstrap
        self.retained = retained
        self.partitions = partitions
        self.doomed = doomed
        self.doomed_config = doomed_config or {}
        self.interval = 1 / rate
        self.value_bytes = value_bytes
        self.seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.acked = 0
        """Records of ``retained`` acknowledged."""
        self.errors = 0
        self.created = 0
        self.deleted = 0
        """Doomed topics created and deleted."""
        self.failures: list[str] = []

    def start(self) -> None:
        targets: list[Any] = [self._produce]
        if self.doomed is not None:
            targets.append(self._doom)
        for target in targets:
            t = threading.Thread(target=self._guard, args=(target,), daemon=True)
            t.name = f"churn-{target.__name__.strip('_')}"
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(DRAIN_TIMEOUT + 10)
            if t.is_alive():
                self.failures.append(f"{t.name}: did not stop")
        self._threads.clear()

    def line(self) -> str:
        return (
            f"churn_acked={self.acked} churn_errors={self.errors} "
            f"doomed_created={self.created} doomed_deleted={self.deleted}"
        )

    def _guard(self, target: Any) -> None:
        try:
            target()
        except BaseException as e:
            self.failures.append(f"{target.__name__}: {type(e).__name__}: {e}")
            raise

    def _produce(self) -> None:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                **PRODUCER,
                "message.timeout.ms": 5_000,
            },
            logger=logging.getLogger("kafscale.faults.librdkafka"),
        )
        rng = random.Random(f"{self.seed}-churn")
        value = b"x" * self.value_bytes

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.acked += 1
            else:
                self.errors += 1

        next_at = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(BufferError, confluent_kafka.KafkaException):
                producer.produce(
                    self.retained,
                    value=value,
                    partition=rng.randrange(self.partitions),
                    on_delivery=delivered,
                )
            next_at += self.interval
            producer.poll(max(0.0, next_at - time.monotonic()))
        producer.flush(6)

    def _doom(self) -> None:
        i = 0
        while not self._stop.is_set():
            name = f"{self.doomed}-{i}"
            i += 1
            try:
                create_topic(self.bootstrap, name, 1, timeout=10, config=self.doomed_config)
            except confluent_kafka.KafkaException:
                self.errors += 1
                continue
            self.created += 1
            self._write_pieces(name)
            self._stop.wait(self.DOOMED_SETTLE)
            try:
                delete_topic(self.bootstrap, name)
                self.deleted += 1
            except confluent_kafka.KafkaException:
                self.errors += 1
            self._stop.wait(0.5)

    def _write_pieces(self, topic: str) -> None:
        admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": self.bootstrap})
        raw = RawProducer(timeout=3)
        deadline = time.monotonic() + self.DOOMED_WRITE_S
        owner: str | None = None
        written = 0
        try:
            while (
                written < self.DOOMED_RECORDS
                and not self._stop.is_set()
                and time.monotonic() < deadline
            ):
                if owner is None:
                    with contextlib.suppress(confluent_kafka.KafkaException):
                        owner = owners_of(admin, topic).get(0)
                    if owner is None:
                        time.sleep(0.1)
                        continue
                outcome, _, _ = raw.produce(owner, topic, 0, f"{topic}:{written}")
                if outcome == "ok":
                    written += 1
                else:
                    self.errors += 1
                    owner = None
                    time.sleep(0.1)
        finally:
            raw.close()
