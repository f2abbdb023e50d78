"""The four clients behind one small interface, for the conformance tests.

Each adapter creates topics with the client's own admin API (kcat has none: it borrows
confluent-kafka's), produces with acks=all and reports the (partition, offset) each record was
acked at where the client tells it, consumes one partition with assign() (groups have their
own tests: test_groups.py) and asks ListOffsets for a partition's end offset.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import socket
import struct
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import aiokafka
import aiokafka.admin
import confluent_kafka
import confluent_kafka.admin
import kafka
import pytest

from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.fetch_response import FetchResponse, PartitionData
from generated.registry import api
from kafscale.protocol.framing import encode_request
from tests.conformance.conftest import BrokerProcess, require_kcat

TIMEOUT = 10.0
"""Seconds any one produce, consume or admin call may take."""
MAX_REQUEST = 4 * 1024 * 1024
"""Producers' request/message size limit: above the 1 MiB record."""
LARGE = 1024 * 1024
LINE_MAX = 4096
"""kcat gets longer values as files rather than stdin lines."""
LARGE_TOPIC_CONFIG = {"max.message.bytes": str(2 * 1024 * 1024)}
"""Kafka's default max.message.bytes (1048588) is below a 1 MiB value plus batch overhead."""

Headers = tuple[tuple[str, bytes], ...]
_topic_ids = itertools.count()


@dataclass(frozen=True)
class Msg:
    """A record to produce; partition None lets the client's partitioner choose (by key)."""

    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    partition: int | None = 0


@dataclass(frozen=True)
class Record:
    """A record as a consumer saw it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


Acked = tuple[int, int]
"""(partition, offset) a producer was told for one record."""


def new_topic(client: str, what: str) -> str:
    return f"{client}-{what}-{next(_topic_ids)}"


# --- the clients -----------------------------------------------------------------------------


class Client:
    name: ClassVar[str]
    codec_names: ClassVar[dict[str, str | None]]
    """Our codec name -> this client's setting."""
    binary_safe: ClassVar[bool] = True
    """Keys, values and headers may be any bytes (not only text without newlines)."""
    empty_is_not_null: ClassVar[bool] = True
    """The client can produce b"" distinct from a null key/value."""
    null_key_and_value: ClassVar[bool] = False
    """The client sends a record whose key and value are both null (the Python clients refuse:
    "Need at least one: key or value")."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.bootstrap = broker.bootstrap

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        raise NotImplementedError

    def produce(self, topic: str, msgs: list[Msg], codec: str) -> list[Acked] | None:
        """Produce in order with acks=all; the acked (partition, offset) of each, if told."""
        raise NotImplementedError

    def consume(self, topic: str, partition: int, count: int, start: int = 0) -> list[Record]:
        """Read from ``start`` until ``count`` records came (or TIMEOUT). Whatever the last
        poll brought beyond ``count`` is kept, so extra records show up in the comparison."""
        raise NotImplementedError

    def end_offset(self, topic: str, partition: int) -> int:
        raise NotImplementedError


class KafkaPython(Client):
    name = "kafka-python"
    codec_names: ClassVar[dict[str, str | None]] = {
        "none": None,
        "gzip": "gzip",
        "snappy": "snappy",
        "lz4": "lz4",
        "zstd": "zstd",
    }

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        admin = kafka.KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics(
                {topic: {"num_partitions": partitions, "replication_factor": 1, "configs": configs}}
            )  # raises on an error code
        finally:
            admin.close()

    def produce(self, topic: str, msgs: list[Msg], codec: str) -> list[Acked]:
        producer = kafka.KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            # The plain produce path (kafka-python defaults to idempotence: test_idempotence.py).
            enable_idempotence=False,
            compression_type=self.codec_names[codec],
            max_request_size=MAX_REQUEST,
            linger_ms=10,
            request_timeout_ms=10000,
        )
        try:
            futures = [
                producer.send(
                    topic,
                    key=m.key,
                    value=m.value,
                    headers=list(m.headers),
                    partition=m.partition,
                )
                for m in msgs
            ]
            producer.flush(timeout=TIMEOUT)
            metas = [f.get(timeout=TIMEOUT) for f in futures]
        finally:
            producer.close(timeout=TIMEOUT)
        return [(md.partition, md.offset) for md in metas]

    def _consumer(self) -> Any:
        return kafka.KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=100,
            request_timeout_ms=10000,
        )

    def consume(self, topic: str, partition: int, count: int, start: int = 0) -> list[Record]:
        tp = kafka.TopicPartition(topic, partition)
        consumer = self._consumer()
        out: list[Record] = []
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                for r in consumer.poll(timeout_ms=200).get(tp, []):
                    out.append(
                        Record(r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                    )
        finally:
            consumer.close()
        return out

    def end_offset(self, topic: str, partition: int) -> int:
        tp = kafka.TopicPartition(topic, partition)
        consumer = self._consumer()
        try:
            return int(consumer.end_offsets([tp])[tp])
        finally:
            consumer.close()


class ConfluentKafka(Client):
    name = "confluent-kafka"
    null_key_and_value = True
    codec_names: ClassVar[dict[str, str | None]] = {
        "none": "none",
        "gzip": "gzip",
        "snappy": "snappy",
        "lz4": "lz4",
        "zstd": "zstd",
    }

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [
                confluent_kafka.admin.NewTopic(
                    topic, num_partitions=partitions, replication_factor=1, config=configs
                )
            ],
            request_timeout=TIMEOUT,
        )
        futures[topic].result(timeout=TIMEOUT)  # raises KafkaException on an error code

    def produce(self, topic: str, msgs: list[Msg], codec: str) -> list[Acked]:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "compression.type": self.codec_names[codec],
                "message.max.bytes": MAX_REQUEST,
                "linger.ms": 10,
                "message.timeout.ms": int(TIMEOUT * 1000),
            }
        )
        results: dict[int, Acked | str] = {}

        def delivered(i: int) -> Any:
            def callback(err: Any, msg: Any) -> None:
                results[i] = str(err) if err is not None else (msg.partition(), msg.offset())

            return callback

        for i, m in enumerate(msgs):
            extra = {} if m.partition is None else {"partition": m.partition}
            producer.produce(
                topic,
                key=m.key,
                value=m.value,
                headers=list(m.headers),
                on_delivery=delivered(i),
                **extra,
            )
            producer.poll(0)
        left = producer.flush(TIMEOUT)
        assert left == 0, f"{left} messages still undelivered after {TIMEOUT}s"
        failed = {i: r for i, r in results.items() if isinstance(r, str)}
        assert not failed, f"delivery failed: {failed}"
        return [cast(Acked, results[i]) for i in range(len(msgs))]

    def _consumer(self) -> Any:
        return confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                # librdkafka requires a group id; with assign() and no commits it is unused.
                "group.id": "kafscale-conformance",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "error",
                "fetch.wait.max.ms": 100,
            }
        )

    def consume(self, topic: str, partition: int, count: int, start: int = 0) -> list[Record]:
        consumer = self._consumer()
        out: list[Record] = []
        try:
            consumer.assign([confluent_kafka.TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                m = consumer.poll(0.2)
                if m is None:
                    continue
                assert m.error() is None, f"consumer error: {m.error()}"
                out.append(
                    Record(m.partition(), m.offset(), m.key(), m.value(), tuple(m.headers() or ()))
                )
        finally:
            consumer.close()
        return out

    def end_offset(self, topic: str, partition: int) -> int:
        consumer = self._consumer()
        try:
            _low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, partition), timeout=TIMEOUT
            )
            return int(high)
        finally:
            consumer.close()


class AioKafka(Client):
    name = "aiokafka"
    codec_names: ClassVar[dict[str, str | None]] = {
        "none": None,
        "gzip": "gzip",
        "snappy": "snappy",
        "lz4": "lz4",
        "zstd": "zstd",
    }

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        async def run() -> None:
            admin = aiokafka.admin.AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                resp = await admin.create_topics(
                    [aiokafka.admin.NewTopic(topic, partitions, 1, topic_configs=configs)]
                )
            finally:
                await admin.close()
            errors = [e for e in resp.topic_errors if e[1] != 0]
            assert not errors, f"CreateTopics answered errors: {errors}"

        asyncio.run(asyncio.wait_for(run(), TIMEOUT))

    def produce(self, topic: str, msgs: list[Msg], codec: str) -> list[Acked]:
        async def run() -> list[Acked]:
            producer = aiokafka.AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                compression_type=self.codec_names[codec],
                max_request_size=MAX_REQUEST,
                linger_ms=10,
                request_timeout_ms=10000,
            )
            await producer.start()
            try:
                futures = [
                    await producer.send(
                        topic,
                        key=m.key,
                        value=m.value,
                        headers=list(m.headers),
                        partition=m.partition,
                    )
                    for m in msgs
                ]
                metas = [await f for f in futures]
            finally:
                await producer.stop()
            return [(md.partition, md.offset) for md in metas]

        return asyncio.run(asyncio.wait_for(run(), TIMEOUT))

    def _consumer(self) -> Any:
        return aiokafka.AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=100,
        )

    def consume(self, topic: str, partition: int, count: int, start: int = 0) -> list[Record]:
        async def run() -> list[Record]:
            tp = aiokafka.TopicPartition(topic, partition)
            consumer = self._consumer()
            await consumer.start()
            out: list[Record] = []
            try:
                consumer.assign([tp])
                consumer.seek(tp, start)
                deadline = time.monotonic() + TIMEOUT
                while len(out) < count and time.monotonic() < deadline:
                    batches = await consumer.getmany(tp, timeout_ms=200)
                    for r in batches.get(tp, []):
                        out.append(
                            Record(r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                        )
            finally:
                await consumer.stop()
            return out

        return asyncio.run(run())

    def end_offset(self, topic: str, partition: int) -> int:
        async def run() -> int:
            tp = aiokafka.TopicPartition(topic, partition)
            consumer = self._consumer()
            await consumer.start()
            try:
                return int((await consumer.end_offsets([tp]))[tp])
            finally:
                await consumer.stop()

        return asyncio.run(asyncio.wait_for(run(), TIMEOUT))


class Kcat(Client):
    """kcat reads newline-separated "key<TAB>value" lines; -Z makes an empty key/value null,
    and -H headers apply to a whole run, so messages are sent in runs of equal partition and
    headers. Values over LINE_MAX go as files (one message each, null key): the 1 MiB record.
    kcat does not tell the producer's offsets; consume() reads to the end (-e)."""

    name = "kcat"
    codec_names: ClassVar[dict[str, str | None]] = {
        "none": "none",
        "gzip": "gzip",
        "snappy": "snappy",
        "lz4": "lz4",
        "zstd": "zstd",
    }
    binary_safe = False
    empty_is_not_null = False
    null_key_and_value = True

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(broker)
        self.kcat = require_kcat()

    def _run(self, args: list[str], stdin: bytes = b"") -> bytes:
        cmd = [self.kcat, "-b", self.bootstrap, *args]
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT}s; stderr:\n{e.stderr!r}")
        assert done.returncode == 0, (
            f"{' '.join(cmd)} exited {done.returncode}; stderr:\n"
            + done.stderr.decode(errors="replace")
        )
        return done.stdout

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        ConfluentKafka(self.broker).create_topic(topic, partitions, configs)  # kcat has no admin

    def produce(self, topic: str, msgs: list[Msg], codec: str) -> None:
        common = [
            "-P",
            "-t",
            topic,
            "-z",
            self.codec_names[codec] or "none",
            "-X",
            "acks=all",
            "-X",
            f"message.max.bytes={MAX_REQUEST}",
        ]
        for (partition, headers, large), run in itertools.groupby(
            msgs,
            key=lambda m: (m.partition, m.headers, m.value is not None and len(m.value) > LINE_MAX),
        ):
            args = list(common)
            if partition is not None:
                args += ["-p", str(partition)]
            for name, value in headers:
                args += ["-H", f"{name}={value.decode()}"]
            run = list(run)
            if large:  # one file per message: sent whole, with a null key
                files = []
                for i, m in enumerate(run):
                    assert m.key is None and m.value is not None
                    path = self.broker.log_dir / f"kcat-{topic}-{i}.bin"
                    path.write_bytes(m.value)
                    files.append(str(path))
                self._run(args + files)
            else:
                lines = []
                for m in run:
                    for part in (m.key, m.value):
                        assert part != b"", "kcat -Z cannot send an empty key/value"
                        assert part is None or (b"\t" not in part and b"\n" not in part)
                    lines.append((m.key or b"") + b"\t" + (m.value or b"") + b"\n")
                self._run([*args, "-K", "\t", "-Z"], b"".join(lines))
        return None

    def consume(self, topic: str, partition: int, count: int, start: int = 0) -> list[Record]:
        # -e: exit at the end of the partition, so this reads everything there is.
        out = self._run(
            ["-C", "-t", topic, "-p", str(partition), "-o", str(start), "-e", "-J", "-q"]
        )
        records = []
        for line in out.decode().splitlines():
            j = json.loads(line)
            h = j.get("headers") or []
            headers = tuple((h[i], h[i + 1].encode()) for i in range(0, len(h), 2))
            records.append(
                Record(
                    j["partition"],
                    j["offset"],
                    None if j["key"] is None else j["key"].encode(),
                    None if j["payload"] is None else j["payload"].encode(),
                    headers,
                )
            )
        return records

    def end_offset(self, topic: str, partition: int) -> int:
        # -Q with timestamp -1 asks ListOffsets for the latest offset: "topic [p] offset N".
        out = self._run(["-Q", "-t", f"{topic}:{partition}:-1"]).decode()
        words = out.split()
        assert words[:2] == [topic, f"[{partition}]"] and words[2] == "offset", out
        return int(words[3])


CLIENTS: list[type[Client]] = [KafkaPython, ConfluentKafka, AioKafka, Kcat]


# --- what the broker stores -----------------------------------------------------------------

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
"""The compression codec in a record batch's attributes (bits 0-2)."""


def batch_codecs(broker: BrokerProcess, topic: str, partition: int) -> list[int]:
    """The codec of every record batch in the partition, as the broker serves them (one Fetch v4
    from offset 0, sent with the project's own codecs): proof the client really compressed
    and the broker kept the batches as they were."""
    records = bytes(fetch_v4(broker.host, broker.port, topic, partition).records or b"")
    codecs = []
    position = 0
    while position + 12 <= len(records):
        length = struct.unpack_from(">i", records, position + 8)[0]
        # baseOffset int64, batchLength int32, leaderEpoch int32, magic int8, crc int32, attrs
        attributes = struct.unpack_from(">h", records, position + 21)[0]
        codecs.append(attributes & 0x7)
        position += 12 + length
    assert position == len(records), "the Fetch response ends with a partial batch"
    return codecs


def fetch_v4(
    host: str, port: int, topic: str, partition: int, offset: int = 0, max_bytes: int = 64 << 20
) -> PartitionData:
    """One raw Fetch v4 of one partition from ``offset`` (no wait): the partition's answer,
    which must carry no error. Batches come back as stored (producer id, epoch, sequence)."""
    request = FetchRequest(
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=0,
        max_bytes=max_bytes,
        isolation_level=0,
        topics=[
            FetchTopic(
                topic=topic,
                partitions=[
                    FetchPartition(
                        partition=partition, fetch_offset=offset, partition_max_bytes=max_bytes
                    )
                ],
            )
        ],
    )
    response = FetchResponse.decode(raw_request(host, port, "Fetch", 4, request), 4)
    [topic_response] = response.responses
    [data] = topic_response.partitions
    assert data.error_code == 0, f"Fetch {topic}-{partition} at {offset}: error {data.error_code}"
    return data


def raw_request(host: str, port: int, api_name: str, version: int, body: Any) -> bytes:
    """One request of a non-flexible ``version`` (its response header is the correlation id
    alone) on a connection of its own: the response body."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(encode_request(api(api_name), version, 1, "conformance", body)))
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        frame = _recv_exactly(sock, size)
    assert struct.unpack(">i", frame[:4])[0] == 1, "correlation id"
    return frame[4:]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        assert chunk, "the broker closed the connection"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# --- checks ----------------------------------------------------------------------------------


def describe(value: bytes | None) -> object:
    """Large values compare by length and digest, so a failure prints something readable."""
    if value is not None and len(value) > 256:
        return (len(value), hashlib.sha256(value).hexdigest()[:16])
    return value


def as_seen(partition: int, offset: int, m: Msg) -> tuple[object, ...]:
    return (partition, offset, describe(m.key), describe(m.value), m.headers)


def seen(r: Record) -> tuple[object, ...]:
    return (r.partition, r.offset, describe(r.key), describe(r.value), r.headers)


def check_partition(client: Client, topic: str, partition: int, expected: list[Msg]) -> None:
    """The partition holds exactly ``expected``, in order, at offsets 0, 1, 2, ..."""
    got = client.consume(topic, partition, len(expected))
    assert [seen(r) for r in got] == [as_seen(partition, i, m) for i, m in enumerate(expected)]
    assert client.end_offset(topic, partition) == len(expected)


def produce_and_check(client: Client, topic: str, msgs: list[Msg], codec: str = "none") -> None:
    """Produce ``msgs`` (each with an explicit partition) and check every partition."""
    acked = client.produce(topic, msgs, codec)
    by_partition: dict[int, list[Msg]] = defaultdict(list)
    for m in msgs:
        assert m.partition is not None
        by_partition[m.partition].append(m)
    if acked is not None:
        expected_acks = []
        counters: dict[int, int] = defaultdict(int)
        for m in msgs:
            assert m.partition is not None
            expected_acks.append((m.partition, counters[m.partition]))
            counters[m.partition] += 1
        assert acked == expected_acks, "acked (partition, offset) per record"
    for partition, expected in sorted(by_partition.items()):
        check_partition(client, topic, partition, expected)
