"""The admin APIs driven with in-memory frames (no sockets): DeleteTopics, CreatePartitions,
DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DescribeCluster and DeleteRecords, each
at its lowest and highest served version, with their error cases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from generated.alter_configs_request import AlterableConfig as LegacyConfig
from generated.alter_configs_request import AlterConfigsRequest
from generated.alter_configs_request import AlterConfigsResource as LegacyResource
from generated.alter_configs_response import AlterConfigsResponse
from generated.create_partitions_request import (
    CreatePartitionsAssignment,
    CreatePartitionsRequest,
    CreatePartitionsTopic,
)
from generated.create_partitions_response import CreatePartitionsResponse
from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.delete_records_request import (
    DeleteRecordsPartition,
    DeleteRecordsRequest,
    DeleteRecordsTopic,
)
from generated.delete_records_response import DeleteRecordsResponse
from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState
from generated.delete_topics_response import DeleteTopicsResponse
from generated.describe_cluster_request import DescribeClusterRequest
from generated.describe_cluster_response import DescribeClusterResponse
from generated.describe_configs_request import DescribeConfigsRequest, DescribeConfigsResource
from generated.describe_configs_response import DescribeConfigsResponse, DescribeConfigsResult
from generated.incremental_alter_configs_request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from generated.incremental_alter_configs_response import IncrementalAlterConfigsResponse
from generated.registry import APIS, BROKER_APIS
from generated.topic_configs import TOPIC_CONFIGS
from kafscale.broker.handlers import HANDLERS
from kafscale.protocol.records import build_batch
from tests.broker_harness import Client as HarnessClient
from tests.broker_harness import run as harness_run
from tests.broker_harness import values

DELETE_TOPICS, DELETE_RECORDS, DESCRIBE_CONFIGS, ALTER_CONFIGS = 20, 21, 32, 33
CREATE_PARTITIONS, INCREMENTAL_ALTER_CONFIGS, DESCRIBE_CLUSTER = 37, 44, 60
TOPIC, BROKER = 2, 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


class _AnyMessage:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = None  # type: ignore[assignment]


ANY_MESSAGE: Any = _AnyMessage()


def lowest(key: int) -> int:
    return BROKER_APIS[key][0]


def highest(key: int) -> int:
    return BROKER_APIS[key][1]


def both(key: int) -> Any:
    return pytest.mark.parametrize("version", sorted({lowest(key), highest(key)}))


class Client(HarnessClient):
    """The harness client, with the config APIs' requests."""

    async def describe(
        self,
        name: str,
        kind: int = TOPIC,
        version: int = 4,
        keys: list[str] | None = None,
        synonyms: bool = False,
        docs: bool = False,
    ) -> DescribeConfigsResult:
        body = DescribeConfigsRequest(
            resources=[
                DescribeConfigsResource(
                    resource_type=kind, resource_name=name, configuration_keys=keys
                )
            ],
            include_synonyms=synonyms,
            include_documentation=docs,
        )
        resp: DescribeConfigsResponse = await self.call(DESCRIBE_CONFIGS, version, body)
        assert len(resp.results) == 1
        result = resp.results[0]
        assert (result.resource_type, result.resource_name) == (kind, name)
        return result

    async def configs(self, topic: str) -> dict[str, tuple[str | None, int]]:
        """value and source of each config of ``topic``."""
        result = await self.describe(topic)
        assert result.error_code == 0, result
        return {c.name: (c.value, c.config_source) for c in result.configs}

    async def overrides(self, topic: str) -> dict[str, str | None]:
        return {k: v for k, (v, source) in (await self.configs(topic)).items() if source == 1}

    async def incremental(
        self,
        topic: str,
        *ops: tuple[str, int, str | None],
        version: int = 1,
        validate_only: bool = False,
        kind: int = TOPIC,
    ) -> tuple[int, str | None]:
        body = IncrementalAlterConfigsRequest(
            resources=[
                AlterConfigsResource(
                    resource_type=kind,
                    resource_name=topic,
                    configs=[
                        AlterableConfig(name=n, config_operation=op, value=v) for n, op, v in ops
                    ],
                )
            ],
            validate_only=validate_only,
        )
        resp: IncrementalAlterConfigsResponse = await self.call(
            INCREMENTAL_ALTER_CONFIGS, version, body
        )
        (result,) = resp.responses
        assert (result.resource_type, result.resource_name) == (kind, topic)
        return result.error_code, result.error_message


def run(tmp_path: Path, scenario: Callable[[Client], Awaitable[None]], **config: Any) -> None:
    harness_run(tmp_path, scenario, client=Client, **config)


# --- the served table ---------------------------------------------------------------------


def test_served_table_matches_handlers() -> None:
    assert set(BROKER_APIS) == set(HANDLERS)
    for key, (lo, hi) in BROKER_APIS.items():
        assert APIS[key].valid_versions[0] <= lo <= hi <= APIS[key].valid_versions[1], key


def test_admin_apis_are_served_with_their_ranges() -> None:
    assert {k: BROKER_APIS[k] for k in (20, 21, 32, 33, 37, 44, 60)} == {
        20: (1, 6),
        21: (0, 2),
        32: (1, 4),
        33: (0, 2),
        37: (0, 3),
        44: (0, 1),
        60: (0, 1),
    }


# --- DeleteTopics -------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(lowest(DELETE_TOPICS), 6))
def test_delete_topics_by_name(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a")
        await c.create("b", partitions=2)
        await c.produce("a", build_batch([b"x"]))
        body = DeleteTopicsRequest(topic_names=["a", "nope", "a"], timeout_ms=1000)
        resp: DeleteTopicsResponse = await c.call(DELETE_TOPICS, version, body)
        got = [(r.name, r.error_code) for r in resp.responses]
        assert got == [("a", 0), ("nope", 3), ("a", 42)]
        if version >= 5:
            assert resp.responses[0].error_message is None
            assert resp.responses[1].error_message
        assert await c.topics() == {"b": 2}
        assert (await c.produce("a", build_batch([b"y"]))).error_code == 3
        # The name can be used again: a new, empty topic.
        await c.create("a")
        fetched = await c.fetch("a", 0)
        assert (fetched.error_code, fetched.high_watermark) == (0, 0)
        assert (await c.produce("a", build_batch([b"z"]))).base_offset == 0
        assert values((await c.fetch("a", 0)).records) == [(0, b"z")]

    run(tmp_path, scenario)


def test_delete_topics_v6_by_id_and_by_name(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        a = await c.create("a")
        b = await c.create("b")
        c_id = await c.create("c")
        unknown = uuid.uuid4()
        body = DeleteTopicsRequest(
            topics=[
                DeleteTopicState(name=None, topic_id=a),
                DeleteTopicState(name="b"),
                DeleteTopicState(name=None, topic_id=unknown),
                DeleteTopicState(name="nope"),
                DeleteTopicState(name="c", topic_id=c_id),  # both: refused
                DeleteTopicState(name="b"),  # twice
            ],
            timeout_ms=1000,
        )
        resp: DeleteTopicsResponse = await c.call(DELETE_TOPICS, 6, body)
        got = [(r.name, r.topic_id, r.error_code) for r in resp.responses]
        assert got == [
            ("a", a, 0),
            ("b", b, 0),
            (None, unknown, 100),  # UNKNOWN_TOPIC_ID
            ("nope", uuid.UUID(int=0), 3),
            ("c", c_id, 42),
            ("b", uuid.UUID(int=0), 42),
        ]
        assert all(r.error_message for r in resp.responses if r.error_code)
        assert await c.topics() == {"c": 1}

    run(tmp_path, scenario)


def test_delete_topic_fails_produce_requests_waiting_for_a_flush(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        waiting = asyncio.create_task(c.produce("t", build_batch([b"never"])))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        body = DeleteTopicsRequest(topic_names=["t"], timeout_ms=1000)
        resp: DeleteTopicsResponse = await c.call(DELETE_TOPICS, 5, body)
        assert resp.responses[0].error_code == 0
        assert (await asyncio.wait_for(waiting, 2)).error_code == 3
        assert c.broker.logs.pending_bytes == 0  # close() does not wait for it

    run(tmp_path, scenario, flush_interval_ms=60_000)


# --- CreatePartitions ---------------------------------------------------------------------


@both(CREATE_PARTITIONS)
def test_create_partitions(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        await c.create("u", partitions=3)

        async def grow(*topics: CreatePartitionsTopic, validate: bool = False) -> list[Any]:
            body = CreatePartitionsRequest(
                topics=list(topics), timeout_ms=1000, validate_only=validate
            )
            resp: CreatePartitionsResponse = await c.call(CREATE_PARTITIONS, version, body)
            assert [r.name for r in resp.results] == [t.name for t in topics]
            return [(r.error_code, r.error_message) for r in resp.results]

        def want(name: str, count: int, *replicas: list[int]) -> CreatePartitionsTopic:
            return CreatePartitionsTopic(
                name=name,
                count=count,
                assignments=[CreatePartitionsAssignment(broker_ids=r) for r in replicas]
                if replicas
                else None,
            )

        assert await grow(want("t", 4), validate=True) == [(0, None)]
        assert await c.topics() == {"t": 1, "u": 3}
        assert await grow(want("t", 3)) == [(0, None)]
        assert await c.topics() == {"t": 3, "u": 3}
        assert (await c.produce("t", build_batch([b"p2"]), partition=2)).error_code == 0
        results = await grow(want("u", 2), want("u", 3), want("nope", 5))  # fewer, twice
        assert [code for code, _ in results] == [37, 42, 3]
        assert all(message for _, message in results)
        for bad in ([[0], [1]], [[0]], [[0, 0], [0]]):  # another broker, too few, two replicas
            assert await grow(want("t", 5, *bad)) == [(39, ANY_MESSAGE)]
        assert await grow(want("u", 3)) == [(37, ANY_MESSAGE)]  # no change
        assert await grow(want("u", 100_001)) == [(37, ANY_MESSAGE)]  # max.partitions.per.topic
        assert await grow(want("t", 5, [0], [0])) == [(0, None)]
        assert await c.topics() == {"t": 5, "u": 3}

    run(tmp_path, scenario)


def test_max_partitions_per_topic(tmp_path: Path) -> None:
    """max.partitions.per.topic bounds CreateTopics and CreatePartitions with
    INVALID_PARTITIONS and a message naming the setting; up to it, any count is fine."""

    async def scenario(c: Client) -> None:
        created = await c.call(
            19,
            7,
            CreateTopicsRequest(
                topics=[
                    CreatableTopic(name="ok", num_partitions=50, replication_factor=1),
                    CreatableTopic(name="big", num_partitions=51, replication_factor=1),
                ]
            ),
        )
        assert [(t.name, t.error_code) for t in created.topics] == [("ok", 0), ("big", 37)]
        assert "max.partitions.per.topic=50" in created.topics[1].error_message
        grown = await c.call(
            37,
            3,
            CreatePartitionsRequest(
                topics=[CreatePartitionsTopic(name="ok", count=51, assignments=None)],
                timeout_ms=1000,
                validate_only=False,
            ),
        )
        assert [r.error_code for r in grown.results] == [37]
        assert "max.partitions.per.topic=50" in grown.results[0].error_message
        assert await c.topics() == {"ok": 50}

    run(tmp_path, scenario, max_partitions_per_topic=50)


# --- DescribeConfigs ----------------------------------------------------------------------


@both(DESCRIBE_CONFIGS)
def test_describe_topic_configs(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", retention_ms="1000", cleanup_policy="compact")
        result = await c.describe("t", version=version)
        assert (result.error_code, result.error_message) == (0, None)
        by_name = {e.name: e for e in result.configs}
        assert set(by_name) == set(TOPIC_CONFIGS)
        assert (by_name["retention.ms"].value, by_name["retention.ms"].config_source) == (
            "1000",
            1,  # DYNAMIC_TOPIC_CONFIG
        )
        assert by_name["cleanup.policy"].value == "compact"
        # The broker's message.max.bytes (not Kafka's default): STATIC_BROKER_CONFIG.
        assert (by_name["max.message.bytes"].value, by_name["max.message.bytes"].config_source) == (
            "5000",
            4,
        )
        assert (by_name["segment.bytes"].value, by_name["segment.bytes"].config_source) == (
            "67108864",  # KafScale's log.segment.bytes
            5,  # DEFAULT_CONFIG
        )
        for entry in result.configs:
            assert not entry.read_only and not entry.is_sensitive and not entry.is_default
            assert entry.synonyms == []
            if version >= 3:
                assert entry.config_type != 0 and entry.documentation is None
        only = await c.describe("t", version=version, keys=["retention.ms", "unknown.key"])
        assert [e.name for e in only.configs] == ["retention.ms"]
        everything = await c.describe("t", version=version, keys=[])  # empty: all, as Kafka
        assert len(everything.configs) == len(TOPIC_CONFIGS)

    run(tmp_path, scenario, message_max_bytes=5000)


@both(DESCRIBE_CONFIGS)
def test_describe_configs_synonyms_and_documentation(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", retention_ms="1000")
        result = await c.describe("t", version=version, synonyms=True, docs=version >= 3)
        by_name = {e.name: e for e in result.configs}
        synonyms = [(s.name, s.value, s.source) for s in by_name["retention.ms"].synonyms]
        assert synonyms == [
            ("retention.ms", "1000", 1),
            ("log.retention.ms", "604800000", 5),
            ("log.retention.hours", "168", 5),
        ]
        synonyms = [(s.name, s.value, s.source) for s in by_name["cleanup.policy"].synonyms]
        assert synonyms == [("log.cleanup.policy", "delete", 5)]
        if version >= 3:
            assert by_name["cleanup.policy"].config_type == 7  # LIST
            assert by_name["retention.ms"].config_type == 5  # LONG
            assert by_name["retention.ms"].documentation

    run(tmp_path, scenario)


@both(DESCRIBE_CONFIGS)
def test_describe_broker_configs(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        result = await c.describe("3", kind=BROKER, version=version, synonyms=True)
        assert result.error_code == 0
        by_name = {e.name: e for e in result.configs}
        assert {
            "message.max.bytes",
            "num.partitions",
            "auto.create.topics.enable",
            "log.retention.ms",
            "socket.request.max.bytes",
        } <= set(by_name)
        assert all(e.read_only for e in result.configs)
        assert (by_name["num.partitions"].value, by_name["num.partitions"].config_source) == (
            "6",
            4,  # STATIC_BROKER_CONFIG
        )
        assert by_name["auto.create.topics.enable"].value == "false"
        assert (by_name["log.retention.ms"].value, by_name["log.retention.ms"].config_source) == (
            "604800000",
            5,
        )
        # As Kafka lists them: the static setting, then the default.
        assert [(s.name, s.value, s.source) for s in by_name["num.partitions"].synonyms] == [
            ("num.partitions", "6", 4),
            ("num.partitions", "1", 5),
        ]
        cluster_default = await c.describe("", kind=BROKER, version=version)
        assert (cluster_default.error_code, cluster_default.configs) == (0, [])
        assert (await c.describe("03", kind=BROKER, version=version)).error_code == 0
        for other in ("0", "x"):
            wrong = await c.describe(other, kind=BROKER, version=version)
            assert (wrong.error_code, wrong.configs) == (42, [])
            assert wrong.error_message

    run(tmp_path, scenario, broker_id=3, num_partitions=6, auto_create_topics_enable=False)


@both(DESCRIBE_CONFIGS)
def test_describe_configs_errors(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        body = DescribeConfigsRequest(
            resources=[
                DescribeConfigsResource(resource_type=TOPIC, resource_name="nope"),
                DescribeConfigsResource(resource_type=TOPIC, resource_name="bad/name"),
                DescribeConfigsResource(resource_type=3, resource_name="group"),
                DescribeConfigsResource(resource_type=TOPIC, resource_name="t"),
            ]
        )
        resp: DescribeConfigsResponse = await c.call(DESCRIBE_CONFIGS, version, body)
        assert [r.error_code for r in resp.results] == [3, 17, 42, 0]
        assert all(r.error_message for r in resp.results[:3])
        assert [r.resource_name for r in resp.results] == ["nope", "bad/name", "group", "t"]

    run(tmp_path, scenario)


# --- AlterConfigs -------------------------------------------------------------------------


@both(ALTER_CONFIGS)
def test_alter_configs_replaces_the_override_set(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", retention_ms="1000")
        await c.create("u")

        async def alter(
            *resources: tuple[int, str, dict[str, str | None]], validate: bool = False
        ) -> list[int]:
            body = AlterConfigsRequest(
                resources=[
                    LegacyResource(
                        resource_type=kind,
                        resource_name=name,
                        configs=[LegacyConfig(name=k, value=v) for k, v in configs.items()],
                    )
                    for kind, name, configs in resources
                ],
                validate_only=validate,
            )
            resp: AlterConfigsResponse = await c.call(ALTER_CONFIGS, version, body)
            assert [(r.resource_type, r.resource_name) for r in resp.responses] == [
                (kind, name) for kind, name, _ in resources
            ]
            for r in resp.responses:
                assert (r.error_message is None) == (r.error_code == 0)
            return [r.error_code for r in resp.responses]

        assert await alter((TOPIC, "t", {"cleanup.policy": "compact"}), validate=True) == [0]
        assert await c.overrides("t") == {"retention.ms": "1000"}
        changed = await alter((TOPIC, "t", {"cleanup.policy": "compact", "segment.bytes": "1024"}))
        assert changed == [0]
        assert await c.overrides("t") == {"cleanup.policy": "compact", "segment.bytes": "1024"}
        configs = await c.configs("t")
        assert configs["retention.ms"] == ("604800000", 5)  # back to the default
        codes = await alter(
            (TOPIC, "t", {"no.such.config": "1"}),
            (TOPIC, "u", {"retention.ms": "soon"}),
            (TOPIC, "nope", {}),
            (BROKER, "0", {"num.partitions": "3"}),
            (TOPIC, "u", {"retention.ms": None}),  # u again: duplicate resource
        )
        assert codes == [40, 40, 3, 42, 42]
        assert await alter((TOPIC, "u", {"retention.ms": None})) == [42]  # null value
        assert await c.overrides("t") == {"cleanup.policy": "compact", "segment.bytes": "1024"}
        assert await alter((TOPIC, "t", {})) == [0]
        assert await c.overrides("t") == {}

    run(tmp_path, scenario)


def test_alter_configs_take_effect(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        big = build_batch([b"x" * 600])
        assert (await c.produce("t", big)).error_code == 0
        code = await c.incremental("t", ("max.message.bytes", SET, "500"))
        assert code == (0, None)
        assert (await c.produce("t", big)).error_code == 10  # MESSAGE_TOO_LARGE

    run(tmp_path, scenario)


# --- IncrementalAlterConfigs --------------------------------------------------------------


@both(INCREMENTAL_ALTER_CONFIGS)
def test_incremental_alter_configs(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", segment_bytes="2048")
        ok = (0, None)
        assert await c.incremental("t", ("retention.ms", SET, "10"), version=version) == ok
        assert await c.overrides("t") == {"retention.ms": "10", "segment.bytes": "2048"}
        assert (
            await c.incremental("t", ("cleanup.policy", APPEND, "compact"), version=version) == ok
        )
        assert (await c.overrides("t"))["cleanup.policy"] == "delete,compact"
        assert (
            await c.incremental("t", ("cleanup.policy", APPEND, "compact"), version=version) == ok
        )
        assert (await c.overrides("t"))["cleanup.policy"] == "delete,compact"
        sub = ("cleanup.policy", SUBTRACT, "delete")
        assert await c.incremental("t", sub, ("retention.ms", DELETE, None), version=version) == ok
        assert await c.overrides("t") == {"cleanup.policy": "compact", "segment.bytes": "2048"}
        # Deleting a config that has no override changes nothing.
        assert await c.incremental("t", ("retention.bytes", DELETE, None), version=version) == ok
        assert (
            await c.incremental(
                "t", ("segment.bytes", SET, "14"), validate_only=True, version=version
            )
            == ok
        )
        assert (await c.overrides("t"))["segment.bytes"] == "2048"

    run(tmp_path, scenario)


@both(INCREMENTAL_ALTER_CONFIGS)
def test_incremental_alter_configs_errors(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", cleanup_policy="compact")
        cases: list[tuple[tuple[str, int, str | None], int]] = [
            (("retention.ms", APPEND, "5"), 40),  # not a list config: INVALID_CONFIG, as Kafka
            (("retention.ms", SUBTRACT, "5"), 40),
            (("retention.ms", 9, "5"), 42),  # unknown operation
            (("retention.ms", SET, None), 42),  # null value
            (("no.such.config", SET, "1"), 40),
            (("retention.ms", SET, "soon"), 40),
            (("cleanup.policy", SET, "forever"), 40),
        ]
        for op, code in cases:
            error, message = await c.incremental("t", op, version=version)
            assert (op, error) == (op, code)
            assert message
        twice = await c.incremental(
            "t", ("retention.ms", SET, "1"), ("retention.ms", SET, "2"), version=version
        )
        assert twice[0] == 42
        assert (await c.incremental("nope", ("retention.ms", SET, "1"), version=version))[0] == 3
        broker = await c.incremental("0", ("num.partitions", SET, "2"), kind=BROKER)
        assert broker[0] == 42 and "dynamic broker configs" in (broker[1] or "")
        # Nothing above changed anything.
        assert await c.overrides("t") == {"cleanup.policy": "compact"}

    run(tmp_path, scenario)


# --- DescribeCluster ----------------------------------------------------------------------


@both(DESCRIBE_CLUSTER)
def test_describe_cluster(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        resp: DescribeClusterResponse = await c.call(
            DESCRIBE_CLUSTER, version, DescribeClusterRequest()
        )
        assert (resp.error_code, resp.error_message) == (0, None)
        assert resp.cluster_id == "my-cluster"
        assert resp.controller_id == 7
        assert [(b.broker_id, b.host, b.port, b.rack) for b in resp.brokers] == [
            (7, "broker.example", 19092, None)
        ]
        if version >= 1:
            assert resp.endpoint_type == 1

    run(
        tmp_path,
        scenario,
        broker_id=7,
        cluster_id="my-cluster",
        advertised_host="broker.example",
        advertised_port=19092,
    )


def test_describe_cluster_endpoint_types(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        version = highest(DESCRIBE_CLUSTER)
        controller: DescribeClusterResponse = await c.call(
            DESCRIBE_CLUSTER, version, DescribeClusterRequest(endpoint_type=2)
        )
        assert controller.error_code == 114  # MISMATCHED_ENDPOINT_TYPE
        assert controller.error_message and controller.brokers == []
        unknown: DescribeClusterResponse = await c.call(
            DESCRIBE_CLUSTER, version, DescribeClusterRequest(endpoint_type=9)
        )
        assert unknown.error_code == 115  # UNSUPPORTED_ENDPOINT_TYPE

    run(tmp_path, scenario)


# --- DeleteRecords ------------------------------------------------------------------------


async def delete_records(
    c: Client, version: int, topic: str, *offsets: tuple[int, int]
) -> list[tuple[int, int, int]]:
    body = DeleteRecordsRequest(
        topics=[
            DeleteRecordsTopic(
                name=topic,
                partitions=[
                    DeleteRecordsPartition(partition_index=p, offset=o) for p, o in offsets
                ],
            )
        ],
        timeout_ms=1000,
    )
    resp: DeleteRecordsResponse = await c.call(DELETE_RECORDS, version, body)
    assert [t.name for t in resp.topics] == [topic]
    return [(p.partition_index, p.low_watermark, p.error_code) for p in resp.topics[0].partitions]


@both(DELETE_RECORDS)
def test_delete_records_then_fetch_below_log_start(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", partitions=2)
        for i in range(5):
            assert (await c.produce("t", build_batch([b"%d" % i]))).base_offset == i
        assert await delete_records(c, version, "t", (0, 3)) == [(0, 3, 0)]
        below = await c.fetch("t", 0)
        assert below.error_code == 1  # OFFSET_OUT_OF_RANGE
        assert below.log_start_offset == 3
        at = await c.fetch("t", 3)
        assert at.error_code == 0 and at.log_start_offset == 3
        assert values(at.records) == [(3, b"3"), (4, b"4")]
        assert await c.earliest("t") == 3
        # Earlier offsets change nothing; an offset past the high watermark is refused.
        assert await delete_records(c, version, "t", (0, 1), (0, 6), (1, 1), (2, 0)) == [
            (0, 3, 0),
            (0, -1, 1),
            (1, -1, 1),  # partition 1 is empty: its high watermark is 0
            (2, -1, 3),  # no such partition
        ]
        assert await delete_records(c, version, "t", (0, -2)) == [(0, -1, 1)]
        assert await delete_records(c, version, "t", (0, -1)) == [(0, 5, 0)]  # everything
        assert (await c.fetch("t", 4)).error_code == 1
        fetched = await c.fetch("t", 5)
        assert (fetched.error_code, bytes(fetched.records)) == (0, b"")
        # Offsets keep counting from the high watermark.
        assert (await c.produce("t", build_batch([b"5"]))).base_offset == 5
        assert values((await c.fetch("t", 5)).records) == [(5, b"5")]
        assert (await delete_records(c, version, "nope", (0, 0))) == [(0, -1, 3)]

    run(tmp_path, scenario)


def test_log_start_survives_a_restart(tmp_path: Path) -> None:
    async def write(c: Client) -> None:
        await c.create("t")
        await c.produce("t", build_batch([b"a", b"b", b"c"]))
        assert await delete_records(c, 2, "t", (0, 2)) == [(0, 2, 0)]

    async def read(c: Client) -> None:
        assert await c.earliest("t") == 2
        assert (await c.fetch("t", 1)).error_code == 1
        # The batch holding offset 2 is returned whole (as Kafka does); the consumer skips
        # the offsets below the one it asked for.
        assert values((await c.fetch("t", 2)).records)[-1] == (2, b"c")

    run(tmp_path, write)
    run(tmp_path, read)
