"""Retention and deletion through real clients, against a broker process with short intervals.

- **Retention** (``retention.ms`` with records carrying old timestamps, and ``retention.bytes``):
  the partition's owner moves the log start past whole entries. confluent-kafka's and
  kafka-python's consumers positioned at offset 0 then get OFFSET_OUT_OF_RANGE: with no reset
  policy they report it, with ``earliest`` they read exactly the retained records from the new
  log start, with ``latest`` only the records produced after the reset.
- **DeleteRecords** (both admin clients): once the janitor has run, no object in the store
  holds the deleted records (neither the compacted segment wholly below the new low
  watermark nor the shared ingest object of the piece below it), while the records kept are
  still there and still read.
- **DeleteTopics** (both admin clients): once the janitor has run, no object holds the topic's
  records (its compacted segments under ``{ns}/topics/{topic id}/``, its flush data in the
  shared ingest objects under ``{ns}/ingest/``), and the topic created again under the same
  name (at once, before the janitor ran) starts empty and keeps its own records.

How an assertion about objects is made: we read every file under the broker's object-store
directory (``{data dir}/objects``: ``LocalObjectStore`` keeps exactly S3's keys there) and look
for the records' values, which are unique, uncompressed byte strings. That can fail (a value
left in any object, however the broker names or places it, is found) and it does not depend on
the layout the broker chose, nor on compaction rewriting the kept records meanwhile: compaction
copies batches as they are, so it moves kept values from ingest objects into segments, where
the search still finds them. (Comparing against the metadata store is not possible from
outside: the broker holds its sqlite database locked.) It is not
flaky because each deleted value is placed (by separate flushes, each acked before the next is
sent) only in entries wholly below the new log start, and DeleteRecords is sent long before a
compaction could merge those entries with kept ones (pieces are merged only after the
partition was idle for 5 s). Every check that something is gone is paired with a check that
the same search finds what must stay (and found the deleted values before they were deleted).

Timing: an ingest object is judged by the janitor only once its registry entry is 15 s old
(``SWEEP_MIN_AGE_MS``, not configurable), then deleted after ``log.segment.delete.delay.ms``
(1 s here) by a pass every 2 s. So the deletions of both admin clients and both tests are set up
together by module fixtures (the first phase before the retention tests run), and the first
test to wait for them waits for all of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.errors
import pytest

from tests.conformance.clients import TIMEOUT, new_topic
from tests.conformance.conftest import BrokerProcess, running_broker

RETENTION_CHECK_MS = 500
DELETE_DELAY_MS = 1000
BROKER_ARGS = [
    "--log.retention.check.interval.ms",
    str(RETENTION_CHECK_MS),
    "--log.segment.delete.delay.ms",
    str(DELETE_DELAY_MS),
    "--log.initial.task.delay.ms",
    "0",
]
NAMESPACE = "kafscale"
"""The broker's default namespace: the first segment of every object key."""

RETENTION_WAIT = 15.0
"""Seconds for retention to move the log start (checked every 0.5 s, by a 1 s pass)."""
COMPACTION_WAIT = 30.0
"""Seconds for an idle partition's pieces to be compacted (idle 5 s, a pass every 1 s)."""
JANITOR_WAIT = 60.0
"""Seconds for the janitor to delete what was deleted (about 19 s: see the module doc)."""

Rec = tuple[bytes, int | None]
"""A value to produce to partition 0 and its timestamp (None: the producer's clock)."""
Seen = tuple[int, bytes | None]
"""(offset, value) a consumer read."""


def now_ms() -> int:
    return int(time.time() * 1000)


def fresh(vals: list[bytes]) -> list[Rec]:
    """One flush of ``vals``, timestamped by the producer."""
    return [(v, None) for v in vals]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """The module's broker (overrides conftest's): retention checked every 0.5 s, garbage
    deleted 1 s after it became garbage."""
    with running_broker(tmp_path_factory.mktemp("retention"), *BROKER_ARGS) as b:
        yield b


# --- the clients ------------------------------------------------------------------------------


class Side:
    """One client library: its admin client, producer and consumer, on partition 0."""

    name: ClassVar[str]

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.bootstrap = broker.bootstrap

    def close(self) -> None:
        pass

    def create_topic(self, topic: str, configs: dict[str, str]) -> None:
        raise NotImplementedError

    def delete_topic(self, topic: str) -> None:
        raise NotImplementedError

    def delete_records(self, topic: str, before: int) -> int:
        """DeleteRecords through the admin client: the new low watermark."""
        raise NotImplementedError

    def earliest(self, topic: str) -> int:
        """ListOffsets earliest (confluent-kafka: its admin client; kafka-python: its
        consumer's beginning_offsets)."""
        raise NotImplementedError

    def watermarks(self, topic: str) -> tuple[int, int]:
        raise NotImplementedError

    def produce(self, topic: str, flushes: list[list[Rec]]) -> list[int]:
        """Each inner list is sent and acked before the next (one piece each); the acked
        offsets (all on partition 0)."""
        raise NotImplementedError

    def assert_out_of_range(self, topic: str) -> None:
        """A consumer assigned offset 0 with no reset policy reports OFFSET_OUT_OF_RANGE
        within TIMEOUT (and reads no record)."""
        raise NotImplementedError

    def read_from_zero(
        self,
        topic: str,
        reset: str,
        count: int,
        end: int | None = None,
        produce_after: Callable[[], None] | None = None,
    ) -> list[Seen]:
        """A consumer assigned offset 0 with ``auto.offset.reset`` ``reset``: what it reads,
        until ``count`` records came (or TIMEOUT). With ``produce_after``: first wait until the
        consumer has reset its position to ``end`` (reading nothing meanwhile), then call it."""
        raise NotImplementedError


class Confluent(Side):
    name = "confluent-kafka"

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(broker)
        self.admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topic(self, topic: str, configs: dict[str, str]) -> None:
        new = confluent_kafka.admin.NewTopic(
            topic, num_partitions=1, replication_factor=1, config=configs
        )
        self.admin.create_topics([new], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)

    def delete_topic(self, topic: str) -> None:
        self.admin.delete_topics([topic], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)

    def delete_records(self, topic: str, before: int) -> int:
        tp = confluent_kafka.TopicPartition(topic, 0, before)
        [future] = self.admin.delete_records([tp], request_timeout=TIMEOUT).values()
        return int(future.result(timeout=TIMEOUT).low_watermark)

    def earliest(self, topic: str) -> int:
        tp = confluent_kafka.TopicPartition(topic, 0)
        wanted = {tp: confluent_kafka.admin.OffsetSpec.earliest()}
        [future] = self.admin.list_offsets(wanted, request_timeout=TIMEOUT).values()
        return int(future.result(timeout=TIMEOUT).offset)

    def _consumer(self, reset: str, **extra: Any) -> Any:
        return confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "kafscale-conformance-retention",  # required; unused with assign()
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": reset,
                "fetch.wait.max.ms": 100,
                **extra,
            }
        )

    def watermarks(self, topic: str) -> tuple[int, int]:
        consumer = self._consumer("error")
        try:
            low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, 0), timeout=TIMEOUT
            )
        finally:
            consumer.close()
        return int(low), int(high)

    def produce(self, topic: str, flushes: list[list[Rec]]) -> list[int]:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "linger.ms": 1000,  # a batch goes when flushed
                "message.timeout.ms": int(TIMEOUT * 1000),
            }
        )
        producer.list_topics(topic, timeout=TIMEOUT)  # leaders known: one batch per flush
        results: dict[int, int | str] = {}

        def delivered(i: int) -> Any:
            def callback(err: Any, msg: Any) -> None:
                results[i] = str(err) if err is not None else (msg.offset())
                assert err is not None or msg.partition() == 0

            return callback

        i = 0
        for flush in flushes:
            for value, ts in flush:
                producer.produce(
                    topic,
                    value=value,
                    partition=0,
                    on_delivery=delivered(i),
                    timestamp=0 if ts is None else ts,  # 0: now
                )
                i += 1
            assert producer.flush(TIMEOUT) == 0, "messages still undelivered"
        failed = {n: r for n, r in results.items() if isinstance(r, str)}
        assert not failed, f"delivery failed: {failed}"
        return [int(results[n]) for n in range(i)]

    def assert_out_of_range(self, topic: str) -> None:
        consumer = self._consumer("error")
        try:
            consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                m = consumer.poll(0.2)
                if m is None:
                    continue
                assert m.error() is not None, f"a record at offset {m.offset()}"
                # librdkafka reports the broker's OFFSET_OUT_OF_RANGE as _AUTO_OFFSET_RESET
                # ("fetch failed due to requested offset not available on the broker: Broker:
                # Offset out of range") when auto.offset.reset is "error".
                error = m.error()
                assert error.code() == confluent_kafka.KafkaError._AUTO_OFFSET_RESET, error
                assert "Offset out of range" in error.str(), error
                return
        finally:
            consumer.close()
        pytest.fail(f"no error within {TIMEOUT}s")

    def read_from_zero(
        self,
        topic: str,
        reset: str,
        count: int,
        end: int | None = None,
        produce_after: Callable[[], None] | None = None,
    ) -> list[Seen]:
        # librdkafka's position() stays unset until a record is consumed; its statistics tell
        # where the next fetch starts ("next_offset") once the reset's ListOffsets was answered.
        fetching: list[tuple[str, int]] = []

        def stats(text: str) -> None:
            partition = json.loads(text)["topics"].get(topic, {}).get("partitions", {}).get("0")
            if partition is not None:
                fetching.append((partition["fetch_state"], partition["next_offset"]))

        consumer = self._consumer(reset, **{"statistics.interval.ms": 50, "stats_cb": stats})
        out: list[Seen] = []
        try:
            consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
            if produce_after is not None:
                deadline = time.monotonic() + TIMEOUT
                while not fetching or fetching[-1] != ("active", end):
                    assert time.monotonic() < deadline, f"no reset to {end}: {fetching[-5:]}"
                    m = consumer.poll(0.05)
                    assert m is None, f"read before the reset: {m.offset()} {m.error()}"
                produce_after()
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                m = consumer.poll(0.2)
                if m is None:
                    continue
                assert m.error() is None, f"consumer error: {m.error()}"
                out.append((m.offset(), m.value()))
        finally:
            consumer.close()
        return out


class KafkaPython(Side):
    name = "kafka-python"

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(broker)
        self.admin = kafka.KafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=int(TIMEOUT * 1000)
        )

    def close(self) -> None:
        self.admin.close()

    def create_topic(self, topic: str, configs: dict[str, str]) -> None:
        self.admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": 1, "configs": configs}}
        )

    def delete_topic(self, topic: str) -> None:
        self.admin.delete_topics([topic])

    def delete_records(self, topic: str, before: int) -> int:
        tp = kafka.TopicPartition(topic, 0)
        result = self.admin.delete_records({tp: before})
        assert result[tp]["error_code"] == 0, result
        return int(result[tp]["low_watermark"])

    def _consumer(self, reset: str) -> Any:
        return kafka.KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset=reset,
            fetch_max_wait_ms=100,
            request_timeout_ms=int(TIMEOUT * 1000),
        )

    def earliest(self, topic: str) -> int:
        return self.watermarks(topic)[0]

    def watermarks(self, topic: str) -> tuple[int, int]:
        tp = kafka.TopicPartition(topic, 0)
        consumer = self._consumer("none")
        try:
            return (
                int(consumer.beginning_offsets([tp], timeout_ms=TIMEOUT * 1000)[tp]),
                int(consumer.end_offsets([tp], timeout_ms=TIMEOUT * 1000)[tp]),
            )
        finally:
            consumer.close()

    def produce(self, topic: str, flushes: list[list[Rec]]) -> list[int]:
        producer = kafka.KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,  # the plain path; idempotence: test_idempotence.py
            linger_ms=1000,  # a batch goes when flushed
            request_timeout_ms=int(TIMEOUT * 1000),
        )
        futures = []
        try:
            for flush in flushes:
                for value, ts in flush:
                    futures.append(producer.send(topic, value=value, partition=0, timestamp_ms=ts))
                producer.flush(timeout=TIMEOUT)
            metas = [f.get(timeout=TIMEOUT) for f in futures]
        finally:
            producer.close(timeout=TIMEOUT)
        assert {md.partition for md in metas} <= {0}
        return [md.offset for md in metas]

    def assert_out_of_range(self, topic: str) -> None:
        tp = kafka.TopicPartition(topic, 0)
        consumer = self._consumer("none")
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                try:
                    got = consumer.poll(timeout_ms=200)
                except kafka.errors.OffsetOutOfRangeError:
                    return
                assert not got, f"records read: {got}"
        finally:
            consumer.close()
        pytest.fail(f"no OffsetOutOfRangeError within {TIMEOUT}s")

    def read_from_zero(
        self,
        topic: str,
        reset: str,
        count: int,
        end: int | None = None,
        produce_after: Callable[[], None] | None = None,
    ) -> list[Seen]:
        tp = kafka.TopicPartition(topic, 0)
        consumer = self._consumer(reset)
        out: list[Seen] = []
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            if produce_after is not None:
                # position() is 0 until a fetch is answered OFFSET_OUT_OF_RANGE; then it
                # resets (ListOffsets) and tells the new position.
                deadline = time.monotonic() + TIMEOUT
                while (position := consumer.position(tp, timeout_ms=TIMEOUT * 1000)) != end:
                    assert time.monotonic() < deadline, f"no reset to {end}: at {position}"
                    got = consumer.poll(timeout_ms=50)
                    assert not got, f"read before the reset: {got}"
                produce_after()
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                for r in consumer.poll(timeout_ms=200).get(tp, []):
                    out.append((r.offset, r.value))
        finally:
            consumer.close()
        return out


SIDES: list[type[Side]] = [Confluent, KafkaPython]


@pytest.fixture(params=SIDES, ids=lambda c: c.name)
def side(request: pytest.FixtureRequest, checked_broker: BrokerProcess) -> Iterator[Side]:
    s: Side = request.param(checked_broker)
    try:
        yield s
    finally:
        s.close()


# --- what the object store holds ----------------------------------------------------------------


def object_files(broker: BrokerProcess) -> list[Path]:
    root = broker.data_dir / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file())


def where(broker: BrokerProcess, values: list[bytes]) -> dict[str, list[bytes]]:
    """Object-store file (path under ``objects/``) -> the ``values`` it contains, for the files
    holding any. In-progress writes (``.tmp-*``) count: they hold what is being written."""
    root = broker.data_dir / "objects"
    found: dict[str, list[bytes]] = {}
    for path in object_files(broker):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # deleted since the listing
            continue
        hits = [v for v in values if v in data]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


def missing(broker: BrokerProcess, values: list[bytes]) -> list[bytes]:
    """The ``values`` no object-store file contains."""
    held = {v for hits in where(broker, values).values() for v in hits}
    return [v for v in values if v not in held]


def wait_until(broker: BrokerProcess, timeout: float, problem: Callable[[], object]) -> None:
    """Poll ``problem()`` until it is falsy; fail with its last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        last = problem()
        if not last:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"after {timeout}s: {last}\n" + broker.stderr())
        time.sleep(0.25)


def values(topic: str, what: str, count: int, size: int = 40, first: int = 0) -> list[bytes]:
    """Unique values (none is a part of another: fixed-width numbers between delimiters)."""
    return [
        f"<{topic}|{what}|{i:04d}|".encode().ljust(size, b"=") + b">"
        for i in range(first, first + count)
    ]


# --- retention ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    name: str
    configs: dict[str, str]
    flushes: Callable[[str], list[list[Rec]]]
    """The topic's records, one inner list per flush."""
    start: int
    """Where retention must move the log start."""


def _by_time(topic: str) -> list[list[Rec]]:
    """Three flushes of four records two hours old, then two flushes of four fresh ones: with
    retention.ms one hour, the old entries expire (their largest timestamp is past it)."""
    old = now_ms() - 2 * 3600_000
    vals = values(topic, "rec", 20)
    flushes: list[list[Rec]] = [
        [(v, old + i) for i, v in enumerate(vals[n : n + 4], n)] for n in (0, 4, 8)
    ]
    return flushes + [fresh(vals[n : n + 4]) for n in (12, 16)]


def _by_size(topic: str) -> list[list[Rec]]:
    """Six flushes of one 1000-byte record, one entry (a piece) each of about 1.1 KB with the
    record batch and segment framing (1119 bytes with either client), so retention.bytes 2500
    keeps the last three: retention drops the oldest entry while the others still hold 2500
    bytes or more; three entries do, two do not. (Exact for entries of 834 to 1249 bytes.)"""
    return [fresh([v]) for v in values(topic, "rec", 6, size=1000)]


POLICIES = [
    Policy("retention.ms", {"retention.ms": "3600000"}, _by_time, 12),
    Policy("retention.bytes", {"retention.bytes": "2500"}, _by_size, 3),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_retention_then_consumers_reset(side: Side, policy: Policy) -> None:
    """Retention moves the log start; consumers at offset 0 get OFFSET_OUT_OF_RANGE: no policy
    reports it, ``earliest`` reads exactly the retained records from the new log start, and
    ``latest`` reads only what is produced after its reset."""
    topic = new_topic(side.name, f"retention-{policy.name.split('.')[1]}")
    side.create_topic(topic, policy.configs)
    flushes = policy.flushes(topic)
    recs = [v for flush in flushes for v, _ in flush]
    assert side.produce(topic, flushes) == list(range(len(recs)))

    start, end = policy.start, len(recs)

    def not_yet() -> str | None:
        earliest = side.earliest(topic)
        assert earliest <= start, f"retention moved the log start to {earliest}, past {start}"
        return None if earliest == start else f"the earliest offset is {earliest}, not {start}"

    wait_until(side.broker, RETENTION_WAIT, not_yet)
    assert side.watermarks(topic) == (start, end)

    side.assert_out_of_range(topic)
    retained = list(enumerate(recs))[start:]
    assert side.read_from_zero(topic, "earliest", len(retained)) == retained

    after = values(topic, "after", 2, first=end)

    def produce_after() -> None:
        assert side.produce(topic, [fresh(after)]) == [end, end + 1]

    got = side.read_from_zero(topic, "latest", 2, end=end, produce_after=produce_after)
    assert got == [(end, after[0]), (end + 1, after[1])]


# --- DeleteRecords and DeleteTopics: what the object store keeps --------------------------------


@dataclass
class DeletedRecords:
    topic: str
    gone: list[bytes]
    """Offsets 0-5: 0-2 compacted into a segment before the deletion, 3-5 one piece."""
    kept: list[bytes]
    """Offsets 6-11 (two pieces)."""
    segment: set[str] = field(default_factory=set)
    """The compacted segment of offsets 0-2 and its index (keys, as paths under objects/)."""


@dataclass
class DeletedTopic:
    topic: str
    old: list[bytes]
    """The deleted topic's records: 0-2 compacted into a segment, 3-5 one piece."""
    new: list[bytes]
    """The records of the topic created again under the same name."""
    old_dirs: set[str] = field(default_factory=set)
    """The deleted topic's compacted-segment directories ({ns}/topics/{topic id}/{p})."""


@dataclass
class Deletions:
    """Per client name: its DeleteRecords topic and its DeleteTopics topic."""

    records: dict[str, DeletedRecords] = field(default_factory=dict)
    topics: dict[str, DeletedTopic] = field(default_factory=dict)


@pytest.fixture(scope="module", autouse=True)
def to_delete(broker: BrokerProcess) -> Deletions:
    """Phase one of :func:`deletions`, set up before the module's first test (autouse), so that
    the compaction it waits for happens while the retention tests run: through each client, a
    topic for DeleteRecords and one for DeleteTopics, each given offsets 0-2 in one flush
    (compacted into a segment once the partition has been idle for 5 s)."""
    plan = Deletions()
    for cls in SIDES:
        s = cls(broker)
        try:
            d = new_topic(s.name, "deleterecords")
            plan.records[s.name] = r = DeletedRecords(
                d, values(d, "gone", 6), values(d, "kept", 6, first=6)
            )
            t = new_topic(s.name, "deletetopic")
            plan.topics[s.name] = DeletedTopic(t, values(t, "old", 6), values(t, "new", 3))
            s.create_topic(d, {})
            s.create_topic(t, {})
            assert s.produce(d, [fresh(r.gone[:3])]) == [0, 1, 2]
            assert s.produce(t, [fresh(plan.topics[s.name].old[:3])]) == [0, 1, 2]
        finally:
            s.close()
    return plan


@pytest.fixture(scope="module")
def deletions(broker: BrokerProcess, to_delete: Deletions) -> Deletions:
    """Through each client: DeleteRecords below offset 6 of a topic whose offsets 0-2 are in a
    compacted segment, 3-5 in a piece and 6-11 in two pieces; DeleteTopics of a topic with a
    compacted segment and a piece, created again at once and given new records."""
    plan = to_delete
    segments = f"{NAMESPACE}/topics/"
    first = [v for r in plan.records.values() for v in r.gone[:3]]
    first += [v for t in plan.topics.values() for v in t.old[:3]]

    def not_compacted() -> list[bytes]:
        found = where(broker, first)
        held = {v for k, hits in found.items() if k.startswith(segments) for v in hits}
        return [v for v in first if v not in held]

    wait_until(broker, COMPACTION_WAIT, not_compacted)
    # A segment is seen once uploaded, before the swap commits it (milliseconds later): give
    # the swap time, so that DeleteRecords drops the segment and not the piece it replaces
    # (the swap would then fail, and its upload be deleted only at its intent's deadline, in
    # 10 minutes). Nothing a client sees tells when the swap is committed.
    time.sleep(2.0)
    root = broker.data_dir / "objects"
    for r in plan.records.values():
        found = [k for k in where(broker, r.gone[:3]) if k.startswith(segments)]
        r.segment = set(found) | {k.removesuffix(".kfs") + ".index" for k in found}
        assert all((root / k).is_file() for k in r.segment), r.segment
    for t in plan.topics.values():
        t.old_dirs = {
            k.rsplit("/", 1)[0] for k in where(broker, t.old[:3]) if k.startswith(segments)
        }

    sides = [cls(broker) for cls in SIDES]
    try:
        for s in sides:
            r = plan.records[s.name]
            flushes = [fresh(r.gone[3:]), fresh(r.kept[:3]), fresh(r.kept[3:])]
            assert s.produce(r.topic, flushes) == list(range(3, 12))
            # At once: a partition idle for 5 s would have its pieces merged (kept with gone).
            assert s.delete_records(r.topic, 6) == 6
            t = plan.topics[s.name]
            assert s.produce(t.topic, [fresh(t.old[3:])]) == [3, 4, 5]
            s.delete_topic(t.topic)
            s.create_topic(t.topic, {})
            assert s.produce(t.topic, [fresh(t.new)]) == [0, 1, 2]
            # The pieces' data is still in ingest objects (kept at least 15 s), so the tests
            # see it go; the segments were seen above (they may go after the 1 s grace).
            assert missing(broker, r.gone[3:] + r.kept + t.old[3:] + t.new) == []
    finally:
        for s in sides:
            s.close()
    return plan


def test_delete_records_leaves_no_objects(side: Side, deletions: Deletions) -> None:
    """After DeleteRecords below offset 6 and the janitor's grace period, no object holds the
    records below 6 (their segment and its index, and their piece's ingest object, are
    deleted), and the records from 6 on are still stored and read, from the new low
    watermark."""
    r = deletions.records[side.name]
    assert side.watermarks(r.topic) == (6, 12)
    kept = list(enumerate(r.kept, 6))
    assert side.read_from_zero(r.topic, "earliest", len(kept)) == kept

    gone = [v for d in deletions.records.values() for v in d.gone]
    segments = {k for d in deletions.records.values() for k in d.segment}
    root = side.broker.data_dir / "objects"

    def leftovers() -> dict[str, object]:
        left: dict[str, object] = dict(where(side.broker, gone))
        left.update({k: "still there" for k in sorted(segments) if (root / k).exists()})
        return left

    wait_until(side.broker, JANITOR_WAIT, leftovers)
    assert missing(side.broker, r.kept) == []
    assert side.watermarks(r.topic) == (6, 12)
    assert side.read_from_zero(r.topic, "earliest", len(kept)) == kept


def test_delete_topics_leaves_no_objects(side: Side, deletions: Deletions) -> None:
    """After DeleteTopics and the janitor's grace period, no object holds the deleted topic's
    records and its compacted-segment directory is empty; the topic created again under the
    same name (right after the deletion) holds exactly its own records, still stored."""
    t = deletions.topics[side.name]
    assert t.old_dirs, "the deleted topic had compacted segments"
    old = [v for d in deletions.topics.values() for v in d.old]
    dirs = {k for d in deletions.topics.values() for k in d.old_dirs}
    root = side.broker.data_dir / "objects"

    def leftovers() -> dict[str, object]:
        left: dict[str, object] = dict(where(side.broker, old))
        for d in sorted(dirs):
            files = sorted(p.name for p in (root / d).glob("*")) if (root / d).exists() else []
            if files:
                left[d] = files
        return left

    wait_until(side.broker, JANITOR_WAIT, leftovers)
    assert missing(side.broker, t.new) == []
    assert side.watermarks(t.topic) == (0, 3)
    assert side.read_from_zero(t.topic, "earliest", 3) == list(enumerate(t.new))
