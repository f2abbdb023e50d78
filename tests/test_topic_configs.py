"""Topic configs as Kafka 3.9 validates, describes and honours them (in memory, no sockets).

- The table (protocol_specs/topic-configs.yaml -> generated/topic_configs.py): every Kafka 3.9
  topic config, generated output up to date, consistent with BrokerConfig.
- Validation: every config accepted with its default; bad values refused with INVALID_CONFIG
  and Kafka's ConfigException text; values Kafka accepts (trimmed, signed, empty lists...).
- Describing: sources, synonyms and documentation as Kafka's ConfigHelper; broker configs.
- CreateTopics: a created topic's error message is null; a null config value is refused.
- IncrementalAlterConfigs: SUBTRACT may leave cleanup.policy empty, as Kafka 3.9 accepts.
- Honoured at produce: LogAppendTime, the timestamp bounds (INVALID_TIMESTAMP), compression.type.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from codegen.__main__ import main as codegen_main
from generated.broker_configs import BROKER_CONFIGS
from generated.create_topics_request import (
    CreatableTopic,
    CreatableTopicConfig,
    CreateTopicsRequest,
)
from generated.create_topics_response import CreateTopicsResponse
from generated.topic_configs import TOPIC_CONFIGS
from kafscale.broker.config import BrokerConfig
from kafscale.broker.topic_configs import (
    ConfigError,
    append_rules,
    check_tables,
    describe_topic_config,
    java_double,
    parse,
    validate,
)
from kafscale.protocol.records import (
    Compression,
    NewRecord,
    TimestampType,
    build_batch,
    iter_records,
    parse_batches,
)
from tests.conftest import REPO
from tests.test_broker_admin import BROKER, DELETE, SET, SUBTRACT, Client, run

ISSUE_18_REFUSED = """file.delete.delay.ms segment.ms segment.jitter.ms segment.index.bytes flush.ms
flush.messages index.interval.bytes message.timestamp.before.max.ms message.timestamp.after.max.ms
message.timestamp.difference.max.ms message.downconversion.enable min.compaction.lag.ms
max.compaction.lag.ms min.cleanable.dirty.ratio delete.retention.ms preallocate
remote.storage.enable local.retention.ms local.retention.bytes
unclean.leader.election.enable""".split()
"""The topic configs a probe found refused as unknown (issue 18)."""

KAFKA_39_TOPIC_CONFIGS = sorted(
    """cleanup.policy compression.gzip.level compression.lz4.level compression.type
compression.zstd.level delete.retention.ms file.delete.delay.ms flush.messages flush.ms
follower.replication.throttled.replicas index.interval.bytes
leader.replication.throttled.replicas local.retention.bytes local.retention.ms
max.compaction.lag.ms max.message.bytes message.downconversion.enable message.format.version
message.timestamp.after.max.ms message.timestamp.before.max.ms
message.timestamp.difference.max.ms message.timestamp.type min.cleanable.dirty.ratio
min.compaction.lag.ms min.insync.replicas preallocate remote.log.copy.disable
remote.log.delete.on.disable remote.storage.enable retention.bytes retention.ms segment.bytes
segment.index.bytes segment.jitter.ms segment.ms unclean.leader.election.enable""".split()
)
"""LogConfig.configNames() of Kafka 3.9."""

CREATE_TOPICS = 19
INVALID_CONFIG, INVALID_TIMESTAMP, MESSAGE_TOO_LARGE = 40, 32, 10


# --- the table ------------------------------------------------------------------------------


def test_every_kafka_39_topic_config_is_in_the_table() -> None:
    assert sorted(TOPIC_CONFIGS) == KAFKA_39_TOPIC_CONFIGS
    assert set(ISSUE_18_REFUSED) <= set(TOPIC_CONFIGS)
    for d in TOPIC_CONFIGS.values():
        assert d.doc and d.here, d.name
        assert all(s in BROKER_CONFIGS for s in d.synonyms), d.name


def test_generated_tables_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    """What `scripts/regen --check` checks (it needs nothing outside the repository)."""
    assert codegen_main(["configs", "--out", str(REPO / "generated"), "--check"]) == 0, (
        capsys.readouterr().err
    )


def test_tables_agree_with_the_broker_settings() -> None:
    assert check_tables() == []


# --- validation -----------------------------------------------------------------------------


def test_every_config_is_accepted_with_its_default() -> None:
    broker = BrokerConfig()
    for name, d in TOPIC_CONFIGS.items():
        validate({name: d.default}, broker)
    validate({name: d.default for name, d in TOPIC_CONFIGS.items()}, broker)


def invalid(name: str, value: str, why: str) -> str:
    """Kafka's ConfigException text."""
    return f"Invalid value {value} for configuration {name}: {why}"


ONE_OF_POLICIES = "String must be one of: compact, delete"
ONE_OF_CODECS = "String must be one of: uncompressed, zstd, lz4, snappy, gzip, producer"
THROTTLED = (
    "leader.replication.throttled.replicas must be the literal '*' or a list of replicas in "
    "the following format: [partitionId]:[brokerId],[partitionId]:[brokerId],..."
)
BAD: list[tuple[str, str, str]] = [
    ("retention.ms", "soon", invalid("retention.ms", "soon", "Not a number of type LONG")),
    ("retention.ms", "-2", invalid("retention.ms", "-2", "Value must be at least -1")),
    ("retention.ms", "1e3", invalid("retention.ms", "1e3", "Not a number of type LONG")),
    ("segment.bytes", "13", invalid("segment.bytes", "13", "Value must be at least 14")),
    (
        "segment.bytes",
        "2147483648",
        invalid("segment.bytes", "2147483648", "Not a number of type INT"),
    ),
    (
        "min.cleanable.dirty.ratio",
        "1.50",
        invalid("min.cleanable.dirty.ratio", "1.5", "Value must be no more than 1"),
    ),
    (
        "min.cleanable.dirty.ratio",
        "half",
        invalid("min.cleanable.dirty.ratio", "half", "Not a number of type DOUBLE"),
    ),
    ("cleanup.policy", "delete,forever", invalid("cleanup.policy", "forever", ONE_OF_POLICIES)),
    ("cleanup.policy", "compact,", invalid("cleanup.policy", "", ONE_OF_POLICIES)),
    ("compression.type", " GZIP", invalid("compression.type", "GZIP", ONE_OF_CODECS)),
    (
        "message.timestamp.type",
        "logappendtime",
        invalid(
            "message.timestamp.type",
            "logappendtime",
            "String must be one of: CreateTime, LogAppendTime",
        ),
    ),
    (
        "preallocate",
        "yes",
        invalid("preallocate", "yes", "Expected value to be either true or false"),
    ),
    (
        "compression.gzip.level",
        "0",
        invalid("compression.gzip.level", "0", "Value must be between 1 and 9 or equal to -1"),
    ),
    (
        "compression.zstd.level",
        "23",
        invalid("compression.zstd.level", "23", "Value must be no more than 22"),
    ),
    (
        "message.format.version",
        "0.7",
        invalid("message.format.version", "0.7", "Version 0.7 is not a valid version"),
    ),
    (
        "leader.replication.throttled.replicas",
        "0:1,x",
        invalid("leader.replication.throttled.replicas", "[0:1, x]", THROTTLED),
    ),
    (
        "remote.storage.enable",
        "true",
        "Tiered Storage functionality is disabled in the broker. Topic cannot be configured "
        "with remote log storage.",
    ),
    ("no.such.config", "1", "Unknown topic config name: no.such.config"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_values_get_kafkas_message(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({name: value}, BrokerConfig())
    assert (info.value.code, info.value.message) == (INVALID_CONFIG, message)


def test_checks_across_configs() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"}, BrokerConfig())
    assert info.value.message == (
        "conflict topic config setting min.compaction.lag.ms (10) > max.compaction.lag.ms (5)"
    )
    # The first bad value in LogConfig's order is the one reported.
    with pytest.raises(ConfigError) as info:
        validate({"preallocate": "maybe", "segment.bytes": "1"}, BrokerConfig())
    assert "segment.bytes" in info.value.message


@pytest.mark.parametrize(
    ("name", "value", "parsed"),
    [
        ("retention.ms", " +100\t", 100),
        ("retention.bytes", "-5", -5),  # no validator
        ("cleanup.policy", "", []),  # Kafka 3.9: an empty list is valid
        ("cleanup.policy", " compact ,delete ", ["compact", "delete"]),
        ("min.cleanable.dirty.ratio", "0.25", 0.25),
        ("min.cleanable.dirty.ratio", "1e-1", 0.1),
        ("preallocate", "TRUE", True),
        ("message.format.version", "2.8.1", "2.8.1"),  # truncated to 2.8, as Kafka does
        ("message.format.version", "0.10.0.1", "0.10.0.1"),
        ("leader.replication.throttled.replicas", "*", ["*"]),
        ("follower.replication.throttled.replicas", "0:1, 1:1", ["0:1", "1:1"]),
        ("compression.gzip.level", "-1", -1),
        ("compression.zstd.level", "-131072", -131072),
    ],
)
def test_values_kafka_accepts(name: str, value: str, parsed: Any) -> None:
    assert parse(name, value) == parsed
    validate({name: value}, BrokerConfig())


def test_java_double_text() -> None:
    assert [java_double(x) for x in (0.5, 2.0, 1e7, 1.5e-5, 0.001)] == [
        "0.5",
        "2.0",
        "1.0E7",
        "1.5E-5",
        "0.001",
    ]


# --- describing -----------------------------------------------------------------------------


def test_described_values_sources_and_synonyms(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create(
            "t",
            retention_ms=" 100 ",
            cleanup_policy="compact, delete",
            preallocate="TRUE",
            min_cleanable_dirty_ratio="0.50",
        )
        result = await c.describe("t", synonyms=True, docs=True)
        by_name = {e.name: e for e in result.configs}
        assert [e.name for e in result.configs] == sorted(TOPIC_CONFIGS)

        def entry(name: str) -> tuple[Any, ...]:
            e = by_name[name]
            return e.value, e.config_source, [(s.name, s.value, s.source) for s in e.synonyms]

        # Overrides as Kafka writes the parsed value; the broker's default after them.
        assert entry("retention.ms") == (
            "100",
            1,
            [
                ("retention.ms", "100", 1),
                ("log.retention.ms", "3600000", 4),
                ("log.retention.ms", "604800000", 5),
                ("log.retention.hours", "168", 5),
            ],
        )
        assert entry("cleanup.policy")[:2] == ("compact,delete", 1)
        assert entry("preallocate")[:2] == ("true", 1)
        assert entry("min.cleanable.dirty.ratio")[:2] == ("0.5", 1)
        # Defaults: the broker's setting (STATIC_BROKER_CONFIG), KafScale's, Kafka's.
        assert entry("max.message.bytes") == (
            "5000",
            4,
            [("message.max.bytes", "5000", 4), ("message.max.bytes", "1048588", 5)],
        )
        assert entry("segment.bytes") == ("67108864", 5, [("log.segment.bytes", "67108864", 5)])
        assert entry("delete.retention.ms") == (
            "86400000",
            5,
            [("log.cleaner.delete.retention.ms", "86400000", 5)],
        )
        # As Kafka: a first synonym without a value drops the later ones (log.flush.interval.ms).
        assert entry("flush.ms") == ("9223372036854775807", 5, [])
        assert entry("remote.storage.enable") == ("false", 5, [])  # no broker synonym
        for e in result.configs:
            d = TOPIC_CONFIGS[e.name]
            assert e.documentation == d.doc
            assert (e.read_only, e.is_sensitive) == (False, False)
        types = {e.name: e.config_type for e in result.configs}
        assert (types["cleanup.policy"], types["retention.ms"], types["segment.bytes"]) == (7, 5, 3)
        assert (types["preallocate"], types["min.cleanable.dirty.ratio"]) == (1, 6)
        assert types["compression.type"] == 2

    run(tmp_path, scenario, message_max_bytes=5000, retention_ms=3600000)


def test_broker_configs_with_this_brokers_values(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        result = await c.describe("7", kind=BROKER, synonyms=True, docs=True)
        assert (result.error_code, result.error_message) == (0, None)
        by_name = {e.name: e for e in result.configs}
        values = {name: (e.value, e.config_source) for name, e in by_name.items()}
        assert values["broker.id"] == ("7", 4)
        assert values["node.id"] == ("7", 4)
        assert values["listeners"] == ("PLAINTEXT://127.0.0.1:9092", 4)
        assert values["advertised.listeners"] == ("PLAINTEXT://broker.example:19092", 4)
        assert values["log.dirs"] == (
            str(tmp_path / "objects" / "kafscale"),
            4,
        )  # DescribeLogDirs's dir
        assert values["log.segment.bytes"] == ("67108864", 5)
        assert values["log.retention.ms"] == ("604800000", 5)
        assert values["log.retention.hours"] == ("168", 5)
        assert values["log.retention.minutes"] == (None, 5)
        assert values["message.max.bytes"] == ("1048588", 5)
        assert values["num.partitions"] == ("3", 4)
        assert values["auto.create.topics.enable"] == ("true", 5)
        assert values["log.cleaner.enable"] == ("false", 5)  # no key compaction here
        assert set(by_name) == set(BROKER_CONFIGS)
        assert all(e.read_only and e.documentation for e in result.configs)
        synonyms = [(s.name, s.value, s.source) for s in by_name["log.retention.hours"].synonyms]
        assert synonyms == [("log.retention.hours", "168", 5)]
        assert by_name["log.retention.minutes"].synonyms == []

    run(
        tmp_path,
        scenario,
        broker_id=7,
        num_partitions=3,
        advertised_host="broker.example",
        advertised_port=19092,
    )


def test_described_defaults_follow_the_broker() -> None:
    broker = BrokerConfig(segment_ms=1000, retention_bytes=5)
    assert describe_topic_config(broker, "segment.ms", {}).value == "1000"
    assert describe_topic_config(broker, "retention.bytes", {}).source == 4
    assert append_rules({}, broker).max_batch_bytes == 1048588


# --- CreateTopics -----------------------------------------------------------------------------


def test_create_topics_null_message_on_success_and_every_config(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        configs = {name: d.default for name, d in TOPIC_CONFIGS.items()}
        configs["retention.ms"] = "60000"
        topics = [
            CreatableTopic(
                name="all",
                num_partitions=1,
                replication_factor=1,
                configs=[CreatableTopicConfig(name=k, value=v) for k, v in configs.items()],
            ),
            CreatableTopic(
                name="nulls",
                num_partitions=1,
                replication_factor=1,
                configs=[
                    CreatableTopicConfig(name="retention.ms", value=None),
                    CreatableTopicConfig(name="segment.ms", value=None),
                ],
            ),
            CreatableTopic(
                name="bad",
                num_partitions=1,
                replication_factor=1,
                configs=[CreatableTopicConfig(name="file.delete.delay.ms", value="-1")],
            ),
        ]
        for version in (2, 7):
            body = CreateTopicsRequest(topics=topics, validate_only=version == 2)
            resp: CreateTopicsResponse = await c.call(CREATE_TOPICS, version, body)
            ok, nulls, bad = resp.topics
            assert (ok.error_code, ok.error_message) == (0, None)
            assert (nulls.error_code, nulls.error_message) == (
                INVALID_CONFIG,
                "Null value not supported for topic configs: retention.ms,segment.ms",
            )
            assert (bad.error_code, bad.error_message) == (
                INVALID_CONFIG,
                "Invalid value -1 for configuration file.delete.delay.ms: Value must be at least 0",
            )
        returned = {e.name: (e.value, e.config_source) for e in ok.configs}
        assert sorted(returned) == sorted(TOPIC_CONFIGS)
        assert returned["retention.ms"] == ("60000", 1)
        assert all(source == 1 for _, source in returned.values())  # all given: overrides
        overrides = await c.overrides("all")
        assert overrides == configs

    run(tmp_path, scenario)


# --- IncrementalAlterConfigs --------------------------------------------------------------


def test_subtracting_every_cleanup_policy_leaves_it_empty(tmp_path: Path) -> None:
    """Kafka 3.9 accepts an empty cleanup.policy (ValidList.in checks each item: none); the
    topic then has no retention, as in Kafka (neither delete nor compact)."""

    async def scenario(c: Client) -> None:
        await c.create("t", retention_ms="1")
        ok = (0, None)
        assert await c.incremental("t", ("cleanup.policy", SUBTRACT, "delete")) == ok
        assert await c.overrides("t") == {"retention.ms": "1", "cleanup.policy": ""}
        assert (await c.configs("t"))["cleanup.policy"] == ("", 1)
        assert (await c.produce("t", build_batch([b"kept"]))).error_code == 0
        broker = c.broker
        plog = await broker.logs.get("t", 0)
        time.sleep(0.01)
        assert await broker.compactor.retain(plog) == 0  # retention.ms=1, yet nothing deleted
        # DELETE of a name with no override changes nothing, known or not (as Kafka's controller).
        assert await c.incremental("t", ("no.such.config", DELETE, None)) == ok
        assert await c.incremental("t", ("cleanup.policy", SET, "delete")) == ok
        assert await broker.compactor.retain(plog) == 1  # delete again: retention applies

    run(tmp_path, scenario)


# --- honoured at produce ---------------------------------------------------------------------


def _batches(records: Any) -> list[tuple[Any, list[Any]]]:
    """(batch info, records) of each batch of a Fetch answer (CRCs checked)."""
    data = bytes(records)
    return [
        (b, list(iter_records(data[b.position : b.end])))
        for b in parse_batches(data, 1 << 30, verify_records=False)
    ]


def test_log_append_time_stamps_batches(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", message_timestamp_type="LogAppendTime")
        await c.create("c")
        sent = build_batch([b"a", b"b"], timestamp=1_000_000, compression=Compression.GZIP)
        before = int(time.time() * 1000)
        resp = await c.produce("t", sent)
        after = int(time.time() * 1000)
        assert resp.error_code == 0 and before <= resp.log_append_time_ms <= after
        ((batch, records),) = _batches((await c.fetch("t", 0)).records)
        assert batch.timestamp_type == TimestampType.LOG_APPEND_TIME
        assert batch.max_timestamp == resp.log_append_time_ms
        assert batch.compression == Compression.GZIP  # only the stamp changed
        assert [(r.offset, r.timestamp, bytes(r.value)) for r in records] == [
            (0, resp.log_append_time_ms, b"a"),
            (1, resp.log_append_time_ms, b"b"),
        ]
        # CreateTime topics keep the producer's timestamps, and answer -1.
        resp = await c.produce("c", sent)
        assert (resp.error_code, resp.log_append_time_ms) == (0, -1)
        ((batch, records),) = _batches((await c.fetch("c", 0)).records)
        assert batch.timestamp_type == TimestampType.CREATE_TIME
        assert [r.timestamp for r in records] == [1_000_000, 1_000_000]
        # A producer may not set LogAppendTime itself on a LogAppendTime topic.
        own = build_batch([b"x"], timestamp_type=TimestampType.LOG_APPEND_TIME)
        resp = await c.produce("t", own)
        assert resp.error_code == INVALID_TIMESTAMP
        assert [e.batch_index for e in resp.record_errors] == [0]
        assert "Producer should not set timestamp type to LogAppendTime" in (
            resp.record_errors[0].batch_index_error_message
        )

    run(tmp_path, scenario)


def test_timestamps_out_of_bounds_are_refused(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("before", message_timestamp_before_max_ms="60000")
        await c.create("after", message_timestamp_after_max_ms="60000")
        await c.create("difference", message_timestamp_difference_max_ms="60000")
        now = int(time.time() * 1000)
        old, future = now - 3_600_000, now + 3_600_000
        batch = build_batch(
            [NewRecord(b"ok", timestamp=now), NewRecord(b"old", timestamp=old)], timestamp=now
        )
        resp = await c.produce("before", batch)
        assert resp.error_code == INVALID_TIMESTAMP
        assert resp.error_message == (
            "One or more records have been rejected due to invalid timestamp"
        )
        ((index, message),) = [
            (e.batch_index, e.batch_index_error_message) for e in resp.record_errors
        ]
        assert index == 1
        assert message.startswith(
            f"Timestamp {old} of message with offset 1 is out of range. The timestamp should be "
            "within ["
        )
        assert (await c.produce("after", batch)).error_code == 0  # old is fine there
        ahead = build_batch([b"soon"], timestamp=future)
        assert (await c.produce("after", ahead)).error_code == INVALID_TIMESTAMP
        assert (await c.produce("before", ahead)).error_code == 0
        # The deprecated difference bounds both sides where they keep their defaults.
        assert (await c.produce("difference", batch)).error_code == INVALID_TIMESTAMP
        assert (await c.produce("difference", ahead)).error_code == INVALID_TIMESTAMP
        fresh = build_batch([b"now"], timestamp=int(time.time() * 1000))
        assert (await c.produce("difference", fresh)).error_code == 0
        # Only the accepted batch (ahead) was written: nothing refused takes an offset.
        assert (await c.produce("before", fresh)).base_offset == 1

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("target", "sent", "stored"),
    [
        ("zstd", Compression.NONE, Compression.ZSTD),
        ("gzip", Compression.LZ4, Compression.GZIP),
        ("snappy", Compression.GZIP, Compression.SNAPPY),
        ("lz4", Compression.ZSTD, Compression.LZ4),
        ("uncompressed", Compression.GZIP, Compression.NONE),
        ("producer", Compression.SNAPPY, Compression.SNAPPY),
    ],
)
def test_compression_type_recompresses(
    tmp_path: Path, target: str, sent: Compression, stored: Compression
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", compression_type=target)
        values = [f"record {i} ".encode() * 20 for i in range(50)]
        batch = build_batch(
            values, compression=sent, producer_id=5, producer_epoch=0, base_sequence=0
        )
        resp = await c.produce("t", batch)
        assert (resp.error_code, resp.base_offset) == (0, 0)
        ((info, records),) = _batches((await c.fetch("t", 0)).records)
        assert info.compression == stored
        assert (info.producer_id, info.base_sequence) == (5, 0)  # the producer's, kept
        assert [bytes(r.value) for r in records] == values
        # The idempotent retry is recognised whatever the codec it is stored in.
        again = await c.produce("t", batch)
        assert (again.error_code, again.base_offset) == (0, 0)

    run(tmp_path, scenario)


def test_max_message_bytes_after_recompression(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", compression_type="uncompressed", max_message_bytes="2000")
        small = build_batch([b"z" * 10_000], compression=Compression.GZIP)
        assert len(small) < 2000
        resp = await c.produce("t", small)
        assert resp.error_code == MESSAGE_TOO_LARGE
        assert "max.message.bytes" in resp.error_message

    run(tmp_path, scenario)
