"""Admin operations through the clients' own admin APIs, against a real broker process.

kafka-python's KafkaAdminClient, confluent-kafka's AdminClient and aiokafka's
AIOKafkaAdminClient (where it has the operation) each: create, list, describe and delete
topics (and create one again under the same name), add partitions, describe and alter configs,
delete records, describe the cluster. Their consumers look offsets up by timestamp, and find
the earliest and latest offsets. kcat has no admin API: its metadata listing (-L) must show
topics appear, grow and disappear.

The broker runs with its defaults (broker id 0, cluster id kafscale-local-cluster), so the
defaults a topic config falls back to are Kafka's, reported as DEFAULT_CONFIG.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import aiokafka
import aiokafka.admin
import aiokafka.admin.config_resource
import aiokafka.errors
import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.admin
import kafka.errors
import pytest

from tests.conformance.clients import CODEC_IDS, TIMEOUT, batch_codecs, new_topic
from tests.conformance.conftest import BrokerProcess, require_kcat

T = TypeVar("T")

BROKER_ID = 0
CLUSTER_ID = "kafscale-local-cluster"

# Kafka error codes.
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_PARTITIONS = 37

# ConfigSource (DescribeConfigs v1+).
DYNAMIC = "DYNAMIC_TOPIC_CONFIG"
DEFAULT = "DEFAULT_CONFIG"
SOURCE_NAMES = {
    0: "UNKNOWN",
    1: DYNAMIC,
    2: "DYNAMIC_BROKER_CONFIG",
    3: "DYNAMIC_DEFAULT_BROKER_CONFIG",
    4: "STATIC_BROKER_CONFIG",
    5: DEFAULT,
}

KAFKA_DEFAULTS = {
    "cleanup.policy": ("delete", DEFAULT),
    "compression.type": ("producer", DEFAULT),
    "max.message.bytes": ("1048588", DEFAULT),
    "message.timestamp.type": ("CreateTime", DEFAULT),
    "min.insync.replicas": ("1", DEFAULT),
    "retention.bytes": ("-1", DEFAULT),
    "retention.ms": ("604800000", DEFAULT),
}
"""Topic configs whose default is Kafka's (segment.bytes is KafScale's own: 64 MiB)."""

Rec = tuple[int, bytes, int | None]
"""(partition, value, timestamp in ms or None: the producer's clock) to produce."""
Seen = tuple[int, bytes | None, int]
"""(offset, value, timestamp) a consumer read."""
Found = tuple[int, int | None] | None
"""What offsets_for_times found: (offset, timestamp of that record if the client tells it)."""
ConfigView = dict[str, tuple[str | None, str]]
"""Config name -> (value, source name)."""


@dataclass(frozen=True)
class Cluster:
    cluster_id: str | None
    controller_id: int
    brokers: list[tuple[int, str, int]]
    """(id, host, port) of each broker."""


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the clients' admin APIs behind one interface -------------------------------------------


class Admin:
    name: ClassVar[str]
    Error: ClassVar[type[BaseException]]
    """What the client raises for an error code the broker answered."""
    InvalidPartitions: ClassVar[type[BaseException]]
    incremental: ClassVar[bool] = True
    """The client has IncrementalAlterConfigs."""
    admin_list_offsets: ClassVar[bool] = True
    """The admin client has ListOffsets (earliest, latest, by timestamp, max timestamp)."""
    tells_found_timestamp: ClassVar[bool] = True
    """The consumer's offsets_for_times tells the timestamp of the record found."""
    legacy_alter_keeps_overrides: ClassVar[bool] = False
    """alter_configs (AlterConfigs) adds the topic's other overrides itself (kafka-python does:
    the API replaces the whole override set)."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.bootstrap = broker.bootstrap

    def close(self) -> None:
        pass

    def code(self, exc: BaseException) -> int:
        raise NotImplementedError

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        raise NotImplementedError

    def topics(self) -> dict[str, list[tuple[int, int, list[int], list[int]]]]:
        """Every topic the metadata lists: its partitions as (index, leader, replicas, isr)."""
        raise NotImplementedError

    def delete_topic(self, topic: str) -> None:
        raise NotImplementedError

    def create_partitions(self, topic: str, count: int) -> None:
        raise NotImplementedError

    def describe_configs(self, topic: str, keys: list[str] | None = None) -> ConfigView:
        raise NotImplementedError

    def alter_configs(self, topic: str, configs: dict[str, str]) -> None:
        raise NotImplementedError

    def incremental_alter_configs(self, topic: str, ops: list[tuple[str, str, str | None]]) -> None:
        """``ops``: (config, SET/DELETE/APPEND/SUBTRACT, value)."""
        raise NotImplementedError

    def delete_records(self, topic: str, partition: int, before: int) -> int:
        """The new low watermark."""
        raise NotImplementedError

    def describe_cluster(self) -> Cluster:
        raise NotImplementedError

    def list_offsets(self, topic: str, partition: int, spec: str | int) -> tuple[int, int]:
        """The admin client's ListOffsets: (offset, timestamp) for earliest, latest,
        max_timestamp or a timestamp."""
        raise NotImplementedError

    # The client's producer and consumer.

    def produce(
        self, topic: str, batches: list[list[Rec]], codec: str | None = None
    ) -> list[tuple[int, int]]:
        """Each inner list sent together (one flush), compressed with ``codec`` (a name all three
        clients know: gzip, ...); the acked (partition, offset) of each record."""
        raise NotImplementedError

    def consume_from_beginning(self, topic: str, partition: int, count: int) -> list[Seen]:
        """From the client's idea of the beginning (its ListOffsets earliest)."""
        raise NotImplementedError

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(earliest, latest) offsets as the consumer sees them."""
        raise NotImplementedError

    def offsets_for_times(self, topic: str, partition: int, timestamps: list[int]) -> list[Found]:
        """The consumer's offsets_for_times for each timestamp in turn (one consumer)."""
        raise NotImplementedError


class KafkaPythonAdmin(Admin):
    name = "kafka-python"
    Error = kafka.errors.KafkaError
    InvalidPartitions = kafka.errors.InvalidPartitionsError
    legacy_alter_keeps_overrides = True

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(broker)
        self.admin = kafka.KafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=int(TIMEOUT * 1000)
        )

    def close(self) -> None:
        self.admin.close()

    def code(self, exc: BaseException) -> int:
        assert isinstance(exc, kafka.errors.KafkaError)
        return int(exc.errno)

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        self.admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1, "configs": configs}}
        )

    def topics(self) -> dict[str, list[tuple[int, int, list[int], list[int]]]]:
        out = {}
        for t in self.admin.describe_topics():
            assert t["error_code"] == 0, t
            out[t["name"]] = sorted(
                (p["partition_index"], p["leader_id"], p["replica_nodes"], p["isr_nodes"])
                for p in t["partitions"]
            )
        assert sorted(out) == sorted(self.admin.list_topics())
        return out

    def delete_topic(self, topic: str) -> None:
        self.admin.delete_topics([topic])

    def create_partitions(self, topic: str, count: int) -> None:
        self.admin.create_partitions({topic: count})

    def describe_configs(self, topic: str, keys: list[str] | None = None) -> ConfigView:
        resource = kafka.admin.ConfigResource("TOPIC", topic, keys)
        result = self.admin.describe_configs([resource], config_filter="all")
        return {
            name: (c["value"], c["config_source"]) for name, c in result["topic"][topic].items()
        }

    def alter_configs(self, topic: str, configs: dict[str, str]) -> None:
        resource = kafka.admin.ConfigResource("TOPIC", topic, dict(configs))
        result = self.admin.alter_configs([resource], incremental=False)
        assert result == {"topic": {topic: "OK"}}

    def incremental_alter_configs(self, topic: str, ops: list[tuple[str, str, str | None]]) -> None:
        configs = {name: (kafka.admin.AlterConfigOp[op], value) for name, op, value in ops}
        resource = kafka.admin.ConfigResource("TOPIC", topic, configs)
        result = self.admin.alter_configs([resource], incremental=True)
        assert result == {"topic": {topic: "OK"}}

    def delete_records(self, topic: str, partition: int, before: int) -> int:
        tp = kafka.TopicPartition(topic, partition)
        result = self.admin.delete_records({tp: before})
        assert result[tp]["error_code"] == 0
        return int(result[tp]["low_watermark"])

    def describe_cluster(self) -> Cluster:
        c = self.admin.describe_cluster()
        return Cluster(
            c["cluster_id"],
            c["controller_id"],
            [(b["broker_id"], b["host"], b["port"]) for b in c["brokers"]],
        )

    def list_offsets(self, topic: str, partition: int, spec: str | int) -> tuple[int, int]:
        tp = kafka.TopicPartition(topic, partition)
        wanted = spec if isinstance(spec, int) else kafka.admin.OffsetSpec[spec.upper()]
        result = self.admin.list_partition_offsets({tp: wanted})
        return int(result[tp].offset), int(result[tp].timestamp)

    def produce(
        self, topic: str, batches: list[list[Rec]], codec: str | None = None
    ) -> list[tuple[int, int]]:
        producer = kafka.KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,  # the plain path; idempotence: test_idempotence.py
            compression_type=codec,
            linger_ms=1000,  # a batch goes when flushed
            request_timeout_ms=int(TIMEOUT * 1000),
        )
        futures = []
        try:
            for batch in batches:
                for partition, value, ts in batch:
                    futures.append(
                        producer.send(topic, value=value, partition=partition, timestamp_ms=ts)
                    )
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
            request_timeout_ms=int(TIMEOUT * 1000),
        )

    def consume_from_beginning(self, topic: str, partition: int, count: int) -> list[Seen]:
        tp = kafka.TopicPartition(topic, partition)
        consumer = self._consumer()
        out: list[Seen] = []
        try:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                for r in consumer.poll(timeout_ms=200).get(tp, []):
                    out.append((r.offset, r.value, r.timestamp))
        finally:
            consumer.close()
        return out

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        tp = kafka.TopicPartition(topic, partition)
        consumer = self._consumer()
        try:
            return (
                int(consumer.beginning_offsets([tp], timeout_ms=TIMEOUT * 1000)[tp]),
                int(consumer.end_offsets([tp], timeout_ms=TIMEOUT * 1000)[tp]),
            )
        finally:
            consumer.close()

    def offsets_for_times(self, topic: str, partition: int, timestamps: list[int]) -> list[Found]:
        tp = kafka.TopicPartition(topic, partition)
        consumer = self._consumer()
        out: list[Found] = []
        try:
            for t in timestamps:
                found = consumer.offsets_for_times({tp: t}, timeout_ms=TIMEOUT * 1000)[tp]
                out.append(None if found is None else (int(found.offset), int(found.timestamp)))
        finally:
            consumer.close()
        return out


class ConfluentAdmin(Admin):
    name = "confluent-kafka"
    Error = confluent_kafka.KafkaException
    InvalidPartitions = confluent_kafka.KafkaException  # with KafkaError.INVALID_PARTITIONS
    tells_found_timestamp = False

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(broker)
        self.admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": self.bootstrap})

    def code(self, exc: BaseException) -> int:
        assert isinstance(exc, confluent_kafka.KafkaException)
        return int(exc.args[0].code())

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        new = confluent_kafka.admin.NewTopic(
            topic, num_partitions=partitions, replication_factor=1, config=configs
        )
        self.admin.create_topics([new], request_timeout=TIMEOUT)[topic].result(timeout=TIMEOUT)

    def topics(self) -> dict[str, list[tuple[int, int, list[int], list[int]]]]:
        md = self.admin.list_topics(timeout=TIMEOUT)
        out = {}
        for name, t in md.topics.items():
            assert t.error is None, (name, t.error)
            out[name] = sorted(
                (p.id, p.leader, list(p.replicas), list(p.isrs)) for p in t.partitions.values()
            )
        # describe_topics (Metadata for named topics) agrees.
        if out:
            futures = self.admin.describe_topics(
                confluent_kafka.TopicCollection(sorted(out)), request_timeout=TIMEOUT
            )
            for name, future in futures.items():
                d = future.result(timeout=TIMEOUT)
                described = sorted(
                    (p.id, p.leader.id, [r.id for r in p.replicas], [r.id for r in p.isr])
                    for p in d.partitions
                )
                assert described == out[name], f"describe_topics({name}) vs list_topics"
        return out

    def delete_topic(self, topic: str) -> None:
        futures = self.admin.delete_topics([topic], request_timeout=TIMEOUT)
        futures[topic].result(timeout=TIMEOUT)

    def create_partitions(self, topic: str, count: int) -> None:
        new = confluent_kafka.admin.NewPartitions(topic, count)
        futures = self.admin.create_partitions([new], request_timeout=TIMEOUT)
        futures[topic].result(timeout=TIMEOUT)

    def _resource(self, topic: str, **kwargs: Any) -> Any:
        return confluent_kafka.admin.ConfigResource(
            confluent_kafka.admin.ResourceType.TOPIC, topic, **kwargs
        )

    def describe_configs(self, topic: str, keys: list[str] | None = None) -> ConfigView:
        # confluent-kafka always asks for every config; ``keys`` filters here.
        futures = self.admin.describe_configs([self._resource(topic)], request_timeout=TIMEOUT)
        [future] = futures.values()
        entries = future.result(timeout=TIMEOUT)
        out = {}
        for name, e in entries.items():
            assert e.name == name
            out[name] = (e.value, confluent_kafka.admin.ConfigSource(e.source).name)
        return out if keys is None else {k: v for k, v in out.items() if k in keys}

    def alter_configs(self, topic: str, configs: dict[str, str]) -> None:
        resource = self._resource(topic, set_config=dict(configs))
        with warnings.catch_warnings():  # deprecated for incremental_alter_configs
            warnings.simplefilter("ignore", DeprecationWarning)
            futures = self.admin.alter_configs([resource], request_timeout=TIMEOUT)
        [future] = futures.values()
        future.result(timeout=TIMEOUT)

    def incremental_alter_configs(self, topic: str, ops: list[tuple[str, str, str | None]]) -> None:
        entries = [
            confluent_kafka.admin.ConfigEntry(
                name, value, incremental_operation=confluent_kafka.admin.AlterConfigOpType[op]
            )
            for name, op, value in ops
        ]
        resource = self._resource(topic, incremental_configs=entries)
        futures = self.admin.incremental_alter_configs([resource], request_timeout=TIMEOUT)
        [future] = futures.values()
        future.result(timeout=TIMEOUT)

    def delete_records(self, topic: str, partition: int, before: int) -> int:
        tp = confluent_kafka.TopicPartition(topic, partition, before)
        futures = self.admin.delete_records([tp], request_timeout=TIMEOUT)
        [future] = futures.values()
        return int(future.result(timeout=TIMEOUT).low_watermark)

    def describe_cluster(self) -> Cluster:
        c = self.admin.describe_cluster(request_timeout=TIMEOUT).result(timeout=TIMEOUT)
        return Cluster(c.cluster_id, c.controller.id, [(n.id, n.host, n.port) for n in c.nodes])

    def list_offsets(self, topic: str, partition: int, spec: str | int) -> tuple[int, int]:
        offset_spec = confluent_kafka.admin.OffsetSpec
        wanted = (
            offset_spec.for_timestamp(spec)
            if isinstance(spec, int)
            else getattr(offset_spec, spec)()
        )
        tp = confluent_kafka.TopicPartition(topic, partition)
        futures = self.admin.list_offsets({tp: wanted}, request_timeout=TIMEOUT)
        [future] = futures.values()
        info = future.result(timeout=TIMEOUT)
        return int(info.offset), int(info.timestamp)

    def produce(
        self, topic: str, batches: list[list[Rec]], codec: str | None = None
    ) -> list[tuple[int, int]]:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "compression.type": codec or "none",
                "linger.ms": 1000,  # a batch goes when flushed
                "message.timeout.ms": int(TIMEOUT * 1000),
            }
        )
        # Know the partitions' leaders first: records produced while the topic's metadata is
        # still unknown wait in librdkafka's unassigned queue and can leave it in separate
        # batches (one gzip batch is what test_list_offsets_admin needs).
        producer.list_topics(topic, timeout=TIMEOUT)
        results: dict[int, tuple[int, int] | str] = {}

        def delivered(i: int) -> Any:
            def callback(err: Any, msg: Any) -> None:
                results[i] = str(err) if err is not None else (msg.partition(), msg.offset())

            return callback

        i = 0
        for batch in batches:
            for partition, value, ts in batch:
                extra = {} if ts is None else {"timestamp": ts}
                producer.produce(
                    topic, value=value, partition=partition, on_delivery=delivered(i), **extra
                )
                i += 1
            assert producer.flush(TIMEOUT) == 0, "messages still undelivered"
        failed = {i: r for i, r in results.items() if isinstance(r, str)}
        assert not failed, f"delivery failed: {failed}"
        return [cast(tuple[int, int], results[n]) for n in range(i)]

    def _consumer(self) -> Any:
        return confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "kafscale-conformance-admin",  # required; unused with assign()
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "error",
                "fetch.wait.max.ms": 100,
            }
        )

    def consume_from_beginning(self, topic: str, partition: int, count: int) -> list[Seen]:
        consumer = self._consumer()
        out: list[Seen] = []
        try:
            consumer.assign(
                [confluent_kafka.TopicPartition(topic, partition, confluent_kafka.OFFSET_BEGINNING)]
            )
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                m = consumer.poll(0.2)
                if m is None:
                    continue
                assert m.error() is None, f"consumer error: {m.error()}"
                out.append((m.offset(), m.value(), m.timestamp()[1]))
        finally:
            consumer.close()
        return out

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        consumer = self._consumer()
        try:
            low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, partition), timeout=TIMEOUT
            )
        finally:
            consumer.close()
        return int(low), int(high)

    def offsets_for_times(self, topic: str, partition: int, timestamps: list[int]) -> list[Found]:
        consumer = self._consumer()
        out: list[Found] = []
        try:
            for t in timestamps:
                [tp] = consumer.offsets_for_times(
                    [confluent_kafka.TopicPartition(topic, partition, t)], timeout=TIMEOUT
                )
                assert tp.error is None, tp.error
                # -1 (OFFSET_END): no record at or after the timestamp; its timestamp is not told.
                out.append(None if tp.offset == confluent_kafka.OFFSET_END else (tp.offset, None))
        finally:
            consumer.close()
        return out


class AioKafkaAdmin(Admin):
    name = "aiokafka"
    Error = aiokafka.errors.KafkaError
    InvalidPartitions = aiokafka.errors.InvalidPartitionsError
    incremental = False
    admin_list_offsets = False

    def code(self, exc: BaseException) -> int:
        assert isinstance(exc, aiokafka.errors.KafkaError)
        return int(exc.errno)

    def _run(self, fn: Callable[[aiokafka.admin.AIOKafkaAdminClient], Awaitable[T]]) -> T:
        async def run() -> T:
            admin = aiokafka.admin.AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=int(TIMEOUT * 1000)
            )
            await admin.start()
            try:
                return await fn(admin)
            finally:
                await admin.close()

        return asyncio.run(asyncio.wait_for(run(), TIMEOUT))

    @staticmethod
    def _raise(code: int, what: str) -> None:
        if code:
            raise aiokafka.errors.for_code(code)(what)

    def create_topic(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        new = aiokafka.admin.NewTopic(topic, partitions, 1, topic_configs=configs)
        resp = self._run(lambda a: a.create_topics([new]))
        for name, code, *_ in resp.topic_errors:
            self._raise(code, f"CreateTopics {name}")

    def topics(self) -> dict[str, list[tuple[int, int, list[int], list[int]]]]:
        out = {}
        for t in self._run(lambda a: a.describe_topics()):  # all topics: no auto-creation
            assert t["error_code"] == 0, t
            out[t["topic"]] = sorted(
                (p["partition"], p["leader"], p["replicas"], p["isr"]) for p in t["partitions"]
            )
        assert sorted(out) == sorted(self._run(lambda a: a.list_topics()))
        return out

    def delete_topic(self, topic: str) -> None:
        resp = self._run(lambda a: a.delete_topics([topic]))
        for name, code, *_ in resp.topic_error_codes:
            self._raise(code, f"DeleteTopics {name}")

    def create_partitions(self, topic: str, count: int) -> None:
        new = aiokafka.admin.NewPartitions(count)
        self._run(lambda a: a.create_partitions({topic: new}))  # raises on an error code

    def describe_configs(self, topic: str, keys: list[str] | None = None) -> ConfigView:
        resource = aiokafka.admin.config_resource.ConfigResource(
            "TOPIC", topic, None if keys is None else dict.fromkeys(keys)
        )
        [resp] = self._run(lambda a: a.describe_configs([resource]))
        [result] = resp.to_object()["resources"]
        self._raise(result["error_code"], f"DescribeConfigs {topic}")
        return {
            c["config_names"]: (c["config_value"], SOURCE_NAMES[c["config_source"]])
            for c in result["config_entries"]
        }

    def alter_configs(self, topic: str, configs: dict[str, str]) -> None:
        resource = aiokafka.admin.config_resource.ConfigResource("TOPIC", topic, dict(configs))
        [resp] = self._run(lambda a: a.alter_configs([resource]))
        for code, message, *_ in resp.resources:
            self._raise(code, f"AlterConfigs {topic}: {message}")

    def delete_records(self, topic: str, partition: int, before: int) -> int:
        tp = aiokafka.TopicPartition(topic, partition)
        wanted = {tp: aiokafka.admin.RecordsToDelete(before)}
        return int(self._run(lambda a: a.delete_records(wanted))[tp])  # raises on an error

    def describe_cluster(self) -> Cluster:
        c = self._run(lambda a: a.describe_cluster())  # Metadata: aiokafka has no DescribeCluster
        return Cluster(
            c.get("cluster_id"),
            c["controller_id"],
            [(b["node_id"], b["host"], b["port"]) for b in c["brokers"]],
        )

    def produce(
        self, topic: str, batches: list[list[Rec]], codec: str | None = None
    ) -> list[tuple[int, int]]:
        async def run() -> list[tuple[int, int]]:
            producer = aiokafka.AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                compression_type=codec,
                # Records sent in one go share a batch (aiokafka's flush() waits for linger).
                linger_ms=100,
                request_timeout_ms=int(TIMEOUT * 1000),
            )
            await producer.start()
            futures = []
            try:
                for batch in batches:
                    for partition, value, ts in batch:
                        futures.append(
                            await producer.send(
                                topic, value=value, partition=partition, timestamp_ms=ts
                            )
                        )
                    await producer.flush()
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
            request_timeout_ms=int(TIMEOUT * 1000),
        )

    def _with_consumer(self, fn: Callable[[aiokafka.AIOKafkaConsumer], Awaitable[T]]) -> T:
        async def run() -> T:
            consumer = self._consumer()
            await consumer.start()
            try:
                return await fn(consumer)
            finally:
                await consumer.stop()

        return asyncio.run(asyncio.wait_for(run(), TIMEOUT + 5))

    def consume_from_beginning(self, topic: str, partition: int, count: int) -> list[Seen]:
        tp = aiokafka.TopicPartition(topic, partition)

        async def read(consumer: aiokafka.AIOKafkaConsumer) -> list[Seen]:
            out: list[Seen] = []
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + TIMEOUT
            while len(out) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(tp, timeout_ms=200)
                out += [(r.offset, r.value, r.timestamp) for r in batches.get(tp, [])]
            return out

        return self._with_consumer(read)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        tp = aiokafka.TopicPartition(topic, partition)

        async def ask(consumer: aiokafka.AIOKafkaConsumer) -> tuple[int, int]:
            low = (await consumer.beginning_offsets([tp]))[tp]
            high = (await consumer.end_offsets([tp]))[tp]
            return int(low), int(high)

        return self._with_consumer(ask)

    def offsets_for_times(self, topic: str, partition: int, timestamps: list[int]) -> list[Found]:
        tp = aiokafka.TopicPartition(topic, partition)

        async def ask(consumer: aiokafka.AIOKafkaConsumer) -> list[Found]:
            out: list[Found] = []
            for t in timestamps:
                found = (await consumer.offsets_for_times({tp: t}))[tp]
                out.append(None if found is None else (int(found.offset), int(found.timestamp)))
            return out

        return self._with_consumer(ask)


ADMINS: list[type[Admin]] = [KafkaPythonAdmin, ConfluentAdmin, AioKafkaAdmin]


@pytest.fixture(params=ADMINS, ids=lambda c: c.name)
def admin(request: pytest.FixtureRequest, checked_broker: BrokerProcess) -> Iterator[Admin]:
    cls: type[Admin] = request.param
    a = cls(checked_broker)
    try:
        yield a
    finally:
        a.close()


def partitions_of(count: int) -> list[tuple[int, int, list[int], list[int]]]:
    """What the metadata shows for ``count`` partitions on the one broker."""
    return [(p, BROKER_ID, [BROKER_ID], [BROKER_ID]) for p in range(count)]


# --- topics ---------------------------------------------------------------------------------


def test_create_describe_delete_recreate(admin: Admin) -> None:
    """CreateTopics with configs; the metadata lists the topic with its partitions (leader,
    replicas and ISR: broker 0); DeleteTopics removes it from the metadata (deleting it again:
    UNKNOWN_TOPIC_OR_PARTITION); the same name created again is a new, empty topic (offset 0,
    no records and no config overrides of the old one)."""
    topic = new_topic(admin.name, "lifecycle")
    admin.create_topic(topic, 3, {"retention.ms": "3600000", "cleanup.policy": "delete"})
    assert admin.topics()[topic] == partitions_of(3)
    assert admin.describe_configs(topic, ["retention.ms", "cleanup.policy"]) == {
        "retention.ms": ("3600000", DYNAMIC),
        "cleanup.policy": ("delete", DYNAMIC),
    }
    old = [(0, b"old-0", None), (0, b"old-1", None), (2, b"old-2", None)]
    assert admin.produce(topic, [old]) == [(0, 0), (0, 1), (2, 0)]

    admin.delete_topic(topic)
    assert topic not in admin.topics()
    with pytest.raises(admin.Error) as info:
        admin.delete_topic(topic)
    assert admin.code(info.value) == UNKNOWN_TOPIC_OR_PARTITION

    admin.create_topic(topic, 1, {})
    assert admin.topics()[topic] == partitions_of(1)
    assert admin.describe_configs(topic, ["retention.ms", "cleanup.policy"]) == {
        "retention.ms": KAFKA_DEFAULTS["retention.ms"],
        "cleanup.policy": KAFKA_DEFAULTS["cleanup.policy"],
    }
    assert admin.watermarks(topic, 0) == (0, 0)
    t = now_ms()
    assert admin.produce(topic, [[(0, b"new-0", t)]]) == [(0, 0)]
    assert admin.consume_from_beginning(topic, 0, 1) == [(0, b"new-0", t)]
    assert admin.watermarks(topic, 0) == (0, 1)


def test_create_partitions(admin: Admin) -> None:
    """CreatePartitions 1 -> 3: the metadata shows three, the new ones are empty and take
    records; asking for fewer or the same number is refused (INVALID_PARTITIONS) and changes
    nothing."""
    topic = new_topic(admin.name, "grow")
    admin.create_topic(topic, 1, {})
    assert admin.produce(topic, [[(0, b"p0", None)]]) == [(0, 0)]
    admin.create_partitions(topic, 3)
    assert admin.topics()[topic] == partitions_of(3)
    assert admin.watermarks(topic, 2) == (0, 0)
    t = now_ms()
    recs = [(2, b"p2-a", t), (1, b"p1", t + 1), (2, b"p2-b", t + 2)]
    assert admin.produce(topic, [recs]) == [(2, 0), (1, 0), (2, 1)]
    assert admin.consume_from_beginning(topic, 2, 2) == [(0, b"p2-a", t), (1, b"p2-b", t + 2)]
    assert admin.watermarks(topic, 0) == (0, 1)
    for count in (2, 3):
        with pytest.raises(admin.InvalidPartitions) as info:
            admin.create_partitions(topic, count)
        assert admin.code(info.value) == INVALID_PARTITIONS, f"create_partitions to {count}"
    assert admin.topics()[topic] == partitions_of(3)


def test_kcat_lists_topics(checked_broker: BrokerProcess) -> None:
    """kcat -L (Metadata for all topics): a created topic appears with its partitions, grows
    with CreatePartitions and disappears with DeleteTopics."""
    kcat = require_kcat()
    admin = ConfluentAdmin(checked_broker)
    topic = new_topic("kcat", "listed")

    def listed() -> dict[str, list[int]]:
        cmd = [kcat, "-b", checked_broker.bootstrap, "-L", "-J"]
        done = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.decode(errors='replace')}"
        md = json.loads(done.stdout)
        assert [b["id"] for b in md["brokers"]] == [BROKER_ID]
        return {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in md["topics"]}

    assert topic not in listed()
    admin.create_topic(topic, 2, {})
    assert listed()[topic] == [0, 1]
    admin.create_partitions(topic, 4)
    assert listed()[topic] == [0, 1, 2, 3]
    admin.delete_topic(topic)
    assert topic not in listed()


# --- configs --------------------------------------------------------------------------------


def test_describe_configs(admin: Admin) -> None:
    """DescribeConfigs of a topic: the overrides given at creation with source
    DYNAMIC_TOPIC_CONFIG, every other config with its default (DEFAULT_CONFIG); asking for
    some keys returns only those."""
    topic = new_topic(admin.name, "describe")
    admin.create_topic(topic, 1, {"retention.ms": "3600000", "max.message.bytes": "2097152"})
    configs = admin.describe_configs(topic)
    expected = dict(KAFKA_DEFAULTS)
    expected["retention.ms"] = ("3600000", DYNAMIC)
    expected["max.message.bytes"] = ("2097152", DYNAMIC)
    assert {name: configs.get(name) for name in expected} == expected
    others = {name: source for name, (_, source) in configs.items() if name not in expected}
    assert set(others.values()) == {DEFAULT}, others
    assert admin.describe_configs(topic, ["retention.ms", "compression.type"]) == {
        "retention.ms": ("3600000", DYNAMIC),
        "compression.type": ("producer", DEFAULT),
    }


def test_alter_configs(admin: Admin) -> None:
    """AlterConfigs (the legacy API) sets the topic's overrides, replacing the whole set: an
    override not named goes back to its default (kafka-python adds the topic's other overrides
    to the request itself, so there it stays)."""
    topic = new_topic(admin.name, "alter")
    admin.create_topic(topic, 1, {"retention.ms": "3600000"})
    admin.alter_configs(topic, {"max.message.bytes": "2097152", "cleanup.policy": "compact"})
    configs = admin.describe_configs(topic)
    expected = dict(KAFKA_DEFAULTS)
    expected["max.message.bytes"] = ("2097152", DYNAMIC)
    expected["cleanup.policy"] = ("compact", DYNAMIC)
    if admin.legacy_alter_keeps_overrides:
        expected["retention.ms"] = ("3600000", DYNAMIC)
    assert {name: configs.get(name) for name in expected} == expected


@pytest.mark.parametrize(
    "admin", [c for c in ADMINS if c.incremental], indirect=True, ids=lambda c: c.name
)
def test_incremental_alter_configs(admin: Admin) -> None:
    """IncrementalAlterConfigs (clients that have it): SET, DELETE (back to the default), APPEND
    and SUBTRACT on a list config (cleanup.policy), each confirmed by DescribeConfigs."""
    topic = new_topic(admin.name, "incremental")
    admin.create_topic(topic, 1, {"retention.ms": "3600000", "max.message.bytes": "2097152"})
    admin.incremental_alter_configs(
        topic,
        [
            ("retention.ms", "SET", "7200000"),
            ("max.message.bytes", "DELETE", None),
            ("cleanup.policy", "APPEND", "compact"),
        ],
    )
    keys = ["retention.ms", "max.message.bytes", "cleanup.policy", "compression.type"]
    assert admin.describe_configs(topic, keys) == {
        "retention.ms": ("7200000", DYNAMIC),
        "max.message.bytes": KAFKA_DEFAULTS["max.message.bytes"],
        "cleanup.policy": ("delete,compact", DYNAMIC),
        "compression.type": KAFKA_DEFAULTS["compression.type"],
    }
    admin.incremental_alter_configs(
        topic, [("cleanup.policy", "SUBTRACT", "delete"), ("compression.type", "SET", "zstd")]
    )
    assert admin.describe_configs(topic, keys) == {
        "retention.ms": ("7200000", DYNAMIC),
        "max.message.bytes": KAFKA_DEFAULTS["max.message.bytes"],
        "cleanup.policy": ("compact", DYNAMIC),
        "compression.type": ("zstd", DYNAMIC),
    }


# --- offsets --------------------------------------------------------------------------------


def relative(timestamp: int | None, t1: int) -> int | str | None:
    """A timestamp as "T1+ms" (readable in a failure); None and -1 (none) as they are."""
    return timestamp if timestamp is None or timestamp < 0 else f"T1{timestamp - t1:+d}"


def mismatches(what: str, got: list[Any], expected: list[Any]) -> str:
    lines = [
        f"  {g[0]}: got {g[1]}, expected {e[1]}"
        for g, e in zip(got, expected, strict=True)
        if g != e
    ]
    return "\n".join([f"{what}:", *lines])


def test_offsets_for_times(admin: Admin) -> None:
    """Records with explicit timestamps T1 < T2 < T3 in one batch, then T4, T5 each in a batch
    of its own: the consumer's offsets_for_times finds the first record whose timestamp is >=
    the one asked and tells that record's timestamp (where the client tells one: not
    confluent-kafka); past the last timestamp there is none. Earliest/latest are 0 and 5."""
    topic = new_topic(admin.name, "times")
    admin.create_topic(topic, 1, {})
    base = now_ms() - 60_000
    ts = [base + 1000 * i for i in range(5)]
    values = [f"t{i + 1}".encode() for i in range(5)]
    recs = [(0, v, t) for v, t in zip(values, ts, strict=True)]
    acked = admin.produce(topic, [recs[:3], recs[3:4], recs[4:]])
    assert acked == [(0, i) for i in range(5)]
    # Three batches as sent; librdkafka now and then splits the first (a send already under
    # way when the others are queued): the answers below hold either way.
    assert 3 <= len(batch_codecs(admin.broker, topic, 0)) <= 4, "record batches stored"
    assert admin.consume_from_beginning(topic, 0, 5) == [
        (i, v, t) for i, (v, t) in enumerate(zip(values, ts, strict=True))
    ]
    assert admin.watermarks(topic, 0) == (0, 5)

    # (label, timestamp asked, offset of the record found)
    lookups: list[tuple[str, int, int | None]] = [("T1-30s", ts[0] - 30_000, 0)]
    for i, t in enumerate(ts):
        if i:  # between the previous record's timestamp and this one's
            lookups.append((f"T{i + 1}-1", t - 1, i))
        lookups.append((f"T{i + 1}", t, i))
    lookups.append(("T5+1", ts[4] + 1, None))
    founds = admin.offsets_for_times(topic, 0, [t for _, t, _ in lookups])
    got = [
        (label, None if found is None else (found[0], relative(found[1], base)))
        for (label, _, _), found in zip(lookups, founds, strict=True)
    ]
    told = admin.tells_found_timestamp
    expected = [
        (label, None if i is None else (i, f"T1+{1000 * i}" if told else None))
        for label, _, i in lookups
    ]
    assert got == expected, mismatches(
        "timestamp asked -> (offset, timestamp) of the record found", got, expected
    )


@pytest.mark.parametrize(
    "admin", [c for c in ADMINS if c.admin_list_offsets], indirect=True, ids=lambda c: c.name
)
def test_list_offsets_admin(admin: Admin) -> None:
    """The admin client's ListOffsets, on one gzip batch of records timestamped T1, T3, T2:
    earliest, latest, by timestamp (the first record at or after it, and its timestamp) and max
    timestamp (KIP-734; since Kafka 3.7.1/3.8, KAFKA-16310 and KAFKA-16342: the offset of the
    record with the largest timestamp, not the batch's last offset, compressed or not)."""
    topic = new_topic(admin.name, "listoffsets")
    admin.create_topic(topic, 1, {})
    base = now_ms() - 60_000
    t1, t2, t3 = base, base + 1000, base + 2000
    recs = [(0, b"a" * 100, t1), (0, b"c" * 100, t3), (0, b"b" * 100, t2)]  # compressible
    assert admin.produce(topic, [recs], "gzip") == [(0, 0), (0, 1), (0, 2)]
    assert batch_codecs(admin.broker, topic, 0) == [CODEC_IDS["gzip"]], "one gzip batch stored"
    specs: list[tuple[str, str | int]] = [
        ("earliest", "earliest"),
        ("latest", "latest"),
        ("T1", t1),
        ("T1+1", t1 + 1),
        ("T2", t2),
        ("T3+1", t3 + 1),
        ("max_timestamp", "max_timestamp"),
    ]
    got = []
    for label, spec in specs:
        offset, timestamp = admin.list_offsets(topic, 0, spec)
        got.append((label, (offset, relative(timestamp, base))))
    expected = [
        ("earliest", (0, -1)),
        ("latest", (3, -1)),
        ("T1", (0, "T1+0")),
        ("T1+1", (1, "T1+2000")),
        ("T2", (1, "T1+2000")),
        ("T3+1", (-1, -1)),
        ("max_timestamp", (1, "T1+2000")),
    ]
    assert got == expected, mismatches("spec -> (offset, timestamp)", got, expected)


def test_delete_records(admin: Admin) -> None:
    """DeleteRecords before offset 3 of partition 0: the new low watermark is 3, the earliest
    offset is 3 and a consumer starting from the beginning reads 3 and 4; the other partition
    is untouched. An offset below the low watermark changes nothing; -1 deletes up to the high
    watermark; an offset beyond it is refused (OFFSET_OUT_OF_RANGE)."""
    topic = new_topic(admin.name, "deleterecords")
    admin.create_topic(topic, 2, {})
    t = now_ms()
    recs = [(0, f"r{i}".encode(), t + i) for i in range(5)] + [(1, b"other", t)]
    assert admin.produce(topic, [recs]) == [(0, i) for i in range(5)] + [(1, 0)]

    assert admin.delete_records(topic, 0, 3) == 3
    assert admin.watermarks(topic, 0) == (3, 5)
    assert admin.consume_from_beginning(topic, 0, 2) == [(3, b"r3", t + 3), (4, b"r4", t + 4)]
    assert admin.watermarks(topic, 1) == (0, 1)

    assert admin.delete_records(topic, 0, 1) == 3
    assert admin.watermarks(topic, 0) == (3, 5)
    assert admin.delete_records(topic, 0, -1) == 5
    assert admin.watermarks(topic, 0) == (5, 5)
    with pytest.raises(admin.Error) as info:
        admin.delete_records(topic, 1, 2)
    assert admin.code(info.value) == OFFSET_OUT_OF_RANGE
    assert admin.watermarks(topic, 1) == (0, 1)

    assert admin.produce(topic, [[(0, b"after", t + 10)]]) == [(0, 5)]
    assert admin.consume_from_beginning(topic, 0, 1) == [(5, b"after", t + 10)]


# --- cluster --------------------------------------------------------------------------------


def test_describe_cluster(admin: Admin) -> None:
    """One broker (id 0, the address the test connects to), which is the controller; the
    cluster id (aiokafka: from Metadata, as it has no DescribeCluster)."""
    cluster = admin.describe_cluster()
    host, port = admin.broker.host, admin.broker.port
    assert cluster == Cluster(CLUSTER_ID, BROKER_ID, [(BROKER_ID, host, port)])
