"""The replica and log-dir admin APIs, driven with in-memory frames (no sockets):
DescribeLogDirs, ElectLeaders, ListPartitionReassignments, AlterPartitionReassignments and
AlterReplicaLogDirs, at every served version, with what a broker whose partitions have one
replica (the object store replicates) answers. Every error code answered is checked against a
client's error table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kafka.errors
import pytest

from generated.alter_partition_reassignments_request import (
    AlterPartitionReassignmentsRequest,
    ReassignablePartition,
    ReassignableTopic,
)
from generated.alter_partition_reassignments_response import AlterPartitionReassignmentsResponse
from generated.alter_replica_log_dirs_request import (
    AlterReplicaLogDir,
    AlterReplicaLogDirsRequest,
    AlterReplicaLogDirTopic,
)
from generated.alter_replica_log_dirs_response import AlterReplicaLogDirsResponse
from generated.delete_records_request import (
    DeleteRecordsPartition,
    DeleteRecordsRequest,
    DeleteRecordsTopic,
)
from generated.describe_log_dirs_request import DescribableLogDirTopic, DescribeLogDirsRequest
from generated.describe_log_dirs_response import DescribeLogDirsResponse
from generated.elect_leaders_request import ElectLeadersRequest, TopicPartitions
from generated.elect_leaders_response import ElectLeadersResponse
from generated.errors import ErrorCode
from generated.list_partition_reassignments_request import (
    ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsTopics,
)
from generated.list_partition_reassignments_response import ListPartitionReassignmentsResponse
from generated.registry import APIS, BROKER_APIS
from kafscale.broker.cluster import BrokerInfo
from kafscale.broker.config import BrokerConfig
from kafscale.broker.handlers.describe_log_dirs import log_dir
from kafscale.broker.log import not_owner
from kafscale.protocol.records import build_batch
from tests.broker_harness import Client, run

ALTER_REPLICA_LOG_DIRS, DESCRIBE_LOG_DIRS, ELECT_LEADERS = 34, 35, 43
ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS = 45, 46
PREFERRED, UNCLEAN = 0, 1
NOT_NEEDED = "Leader election not needed for topic partition."


def versions(key: int) -> Any:
    lo, hi = BROKER_APIS[key]
    return pytest.mark.parametrize("version", range(lo, hi + 1))


def test_served_at_kafkas_whole_range() -> None:
    for key in (34, 35, 43, 45, 46):
        assert BROKER_APIS[key] == APIS[key].valid_versions, key


def test_codes_are_kafkas() -> None:
    e = kafka.errors
    assert e.for_code(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION) is e.UnknownTopicOrPartitionError
    assert e.for_code(ErrorCode.INVALID_REQUEST) is e.InvalidRequestError
    assert (
        e.for_code(ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE) is e.PreferredLeaderNotAvailableError
    )
    assert (
        e.for_code(ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE) is e.EligibleLeadersNotAvailableError
    )
    assert e.for_code(ErrorCode.ELECTION_NOT_NEEDED) is e.ElectionNotNeededError
    assert e.for_code(ErrorCode.INVALID_REPLICA_ASSIGNMENT) is e.InvalidReplicationAssignmentError
    assert e.for_code(ErrorCode.NO_REASSIGNMENT_IN_PROGRESS) is e.NoReassignmentInProgressError
    assert e.for_code(ErrorCode.LOG_DIR_NOT_FOUND) is e.LogDirNotFoundError
    assert e.for_code(ErrorCode.REPLICA_NOT_AVAILABLE) is e.ReplicaNotAvailableError


def test_the_log_dir_names_the_object_store(tmp_path: Path) -> None:
    assert log_dir(BrokerConfig(s3_bucket="logs", namespace="prod")) == "s3://logs/prod"
    local = log_dir(BrokerConfig(data_dir=tmp_path / "d", namespace="ns"))
    assert local == os.path.join(tmp_path, "d", "objects", "ns") and os.path.isabs(local)
    relative = log_dir(BrokerConfig(data_dir=Path("rel")))
    assert relative == os.path.join(os.getcwd(), "rel", "objects", "kafscale")


# --- DescribeLogDirs ----------------------------------------------------------------------


async def describe_log_dirs(
    c: Client, version: int, topics: dict[str, list[int]] | None = None
) -> tuple[str, dict[str, dict[int, int]], DescribeLogDirsResponse]:
    body = DescribeLogDirsRequest(
        topics=None
        if topics is None
        else [DescribableLogDirTopic(topic=t, partitions=ps) for t, ps in topics.items()]
    )
    resp: DescribeLogDirsResponse = await c.call(DESCRIBE_LOG_DIRS, version, body)
    (result,) = resp.results
    assert result.error_code == 0 and resp.error_code == 0
    sizes = {}
    for topic in result.topics:
        assert topic.partitions, topic
        sizes[topic.name] = {p.partition_index: p.partition_size for p in topic.partitions}
        assert all(p.offset_lag == 0 and not p.is_future_key for p in topic.partitions)
    if version >= 4:
        assert (result.total_bytes, result.usable_bytes) == (-1, -1)
    return result.log_dir, sizes, resp


@versions(DESCRIBE_LOG_DIRS)
def test_describe_log_dirs(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", partitions=2)
        await c.create("b")
        for value in (b"x" * 100, b"y" * 200):  # two flushes: two committed entries
            assert (await c.produce("a", build_batch([value]))).error_code == 0
        assert (await c.produce("a", build_batch([b"z"]), partition=1)).error_code == 0
        logs = c.broker.logs.logs
        first, second = logs[("a", 0)].segments
        one = logs[("a", 1)].segments[0].size
        assert first.size > 0 and second.size > 0 and one > 0

        path, sizes, _ = await describe_log_dirs(c, version)
        assert path == str(tmp_path / "objects" / "kafscale")
        assert sizes == {"a": {0: first.size + second.size, 1: one}, "b": {0: 0}}
        # Only what was asked for; unknown topics and partitions are left out.
        _, sizes, _ = await describe_log_dirs(c, version, {"a": [1, 7], "nope": [0], "b": []})
        assert sizes == {"a": {1: one}}
        _, sizes, _ = await describe_log_dirs(c, version, {})
        assert sizes == {}
        # An entry wholly below the log start no longer counts.
        body = DeleteRecordsRequest(
            topics=[
                DeleteRecordsTopic(
                    name="a", partitions=[DeleteRecordsPartition(partition_index=0, offset=1)]
                )
            ],
            timeout_ms=1000,
        )
        assert (await c.call(21, 2, body)).topics[0].partitions[0].low_watermark == 1
        _, sizes, _ = await describe_log_dirs(c, version, {"a": [0]})
        assert sizes == {"a": {0: second.size}}

    run(tmp_path, scenario)


def test_describe_log_dirs_lists_only_owned_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", partitions=3)

        async def get(topic: str, partition: int) -> Any:
            raise not_owner(topic, partition)

        monkeypatch.setattr(c.broker.logs, "get", get)
        _, sizes, _ = await describe_log_dirs(c, 4)
        assert sizes == {}

    run(tmp_path, scenario)


# --- ElectLeaders -------------------------------------------------------------------------


async def elect(
    c: Client,
    version: int,
    wanted: dict[str, list[int]] | None,
    election: int = PREFERRED,
) -> tuple[int, dict[str, dict[int, tuple[int, str | None]]]]:
    body = ElectLeadersRequest(
        election_type=election,
        topic_partitions=None
        if wanted is None
        else [TopicPartitions(topic=t, partitions=ps) for t, ps in wanted.items()],
    )
    resp: ElectLeadersResponse = await c.call(ELECT_LEADERS, version, body)
    results = {
        r.topic: {p.partition_id: (p.error_code, p.error_message) for p in r.partition_result}
        for r in resp.replica_election_results
    }
    return resp.error_code, results


@versions(ELECT_LEADERS)
def test_elect_leaders_when_placement_already_holds(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", partitions=2)
        await c.create("b")
        error, results = await elect(c, version, {"a": [0, 1, 2], "zz": [0]})
        assert error == 0
        assert results == {
            "a": {
                0: (ErrorCode.ELECTION_NOT_NEEDED, NOT_NEEDED),
                1: (ErrorCode.ELECTION_NOT_NEEDED, NOT_NEEDED),
                2: (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "No such partition as a-2"),
            },
            "zz": {0: (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "No such topic as zz")},
        }
        # Every partition: those needing no election are left out, as Kafka does.
        assert await elect(c, version, None) == (0, {"a": {}, "b": {}})
        if version >= 1:
            assert await elect(c, version, {"b": [0]}, UNCLEAN) == (
                0,
                {"b": {0: (ErrorCode.ELECTION_NOT_NEEDED, NOT_NEEDED)}},
            )
            bad = (ErrorCode.INVALID_REQUEST, "Unknown election type 7")
            assert await elect(c, version, {"a": [0, 1]}, 7) == (
                ErrorCode.INVALID_REQUEST,
                {"a": {0: bad, 1: bad}},
            )

    run(tmp_path, scenario)


def test_elect_leaders_hands_over_what_placement_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This broker (0) owns a-0 while placement names broker 1: it hands it over now. Broker 2
    owns a-1, placement names 1: that one moves at broker 2's next round (retriable)."""

    async def scenario(c: Client) -> None:
        await c.create("a", partitions=3)
        cluster, released = c.broker.cluster, []
        owners = {0: (0, 4), 1: (2, 4), 2: (1, 4)}
        monkeypatch.setattr(cluster, "owner", lambda topic, p: owners[p])
        monkeypatch.setattr(cluster, "desired_owner", lambda topic, p, n: 1)

        async def release(topic: str, partition: int) -> None:
            released.append((topic, partition))

        monkeypatch.setattr(c.broker.logs, "release", release)
        error, results = await elect(c, 2, {"a": [0, 1, 2]})
        assert error == 0 and released == [("a", 0)]
        assert results["a"][0] == (0, None)
        code, message = results["a"][1]
        assert code == ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE and "broker 2" in (message or "")
        assert results["a"][2] == (ErrorCode.ELECTION_NOT_NEEDED, NOT_NEEDED)
        # With every partition asked for, the one needing no election is left out.
        released.clear()
        _, results = await elect(c, 2, None)
        assert set(results["a"]) == {0, 1}
        # Unclean: a partition with a leader needs none.
        _, results = await elect(c, 2, {"a": [0, 1]}, UNCLEAN)
        assert {p: code for p, (code, _) in results["a"].items()} == {
            0: ErrorCode.ELECTION_NOT_NEEDED,
            1: ErrorCode.ELECTION_NOT_NEEDED,
        }
        # No live broker at all (only reachable through a broken view): nobody to elect.
        monkeypatch.setattr(cluster, "owner", lambda topic, p: None)
        monkeypatch.setattr(cluster, "desired_owner", lambda topic, p, n: None)
        _, results = await elect(c, 2, {"a": [0]}, UNCLEAN)
        assert results["a"][0][0] == ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE
        _, results = await elect(c, 2, {"a": [0]})
        assert results["a"][0][0] == ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE

    run(tmp_path, scenario)


# --- ListPartitionReassignments / AlterPartitionReassignments -----------------------------


def test_list_partition_reassignments_is_always_empty(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", partitions=2)
        for topics in (
            None,
            [ListPartitionReassignmentsTopics(name="a", partition_indexes=[0, 1, 5])],
            [ListPartitionReassignmentsTopics(name="unknown", partition_indexes=[0])],
        ):
            resp: ListPartitionReassignmentsResponse = await c.call(
                LIST_PARTITION_REASSIGNMENTS, 0, ListPartitionReassignmentsRequest(topics=topics)
            )
            assert (resp.error_code, resp.error_message, resp.topics) == (0, None, [])

    run(tmp_path, scenario)


async def reassign(
    c: Client, wanted: dict[str, dict[int, list[int] | None]]
) -> dict[str, dict[int, tuple[int, str | None]]]:
    body = AlterPartitionReassignmentsRequest(
        topics=[
            ReassignableTopic(
                name=t,
                partitions=[
                    ReassignablePartition(partition_index=p, replicas=r) for p, r in ps.items()
                ],
            )
            for t, ps in wanted.items()
        ]
    )
    resp: AlterPartitionReassignmentsResponse = await c.call(ALTER_PARTITION_REASSIGNMENTS, 0, body)
    assert (resp.error_code, resp.error_message) == (0, None)
    return {
        r.name: {p.partition_index: (p.error_code, p.error_message) for p in r.partitions}
        for r in resp.responses
    }


def test_alter_partition_reassignments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", partitions=3)
        results = await reassign(
            c,
            {
                "a": {0: [0], 1: None, 2: [], 3: [0]},
                "nope": {0: [0]},
            },
        )
        assert results == {
            "a": {
                0: (0, None),
                1: (
                    ErrorCode.NO_REASSIGNMENT_IN_PROGRESS,
                    "No partition reassignment is in progress.",
                ),
                2: (
                    ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                    "The manual partition assignment includes an empty replica list.",
                ),
                3: (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "Unable to find partition a:3."),
            },
            "nope": {
                0: (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, "Unable to find a topic named nope.")
            },
        }
        results = await reassign(c, {"a": {0: [1], 1: [0, 0]}})
        assert results["a"] == {
            0: (
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                "The manual partition assignment includes broker 1, but no such broker is "
                "registered.",
            ),
            1: (
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                "The manual partition assignment includes the broker 0 more than once.",
            ),
        }
        # Another live broker: more replicas, or the other broker alone, are refused.
        live = {i: BrokerInfo(i, "127.0.0.1", 9092 + i) for i in (0, 1)}
        monkeypatch.setattr(c.broker.cluster, "live", lambda: live)
        monkeypatch.setattr(c.broker.cluster, "owner", lambda topic, p: (0, 1))
        results = await reassign(c, {"a": {0: [0, 1], 1: [1], 2: [0]}})
        for p in (0, 1):
            code, message = results["a"][p]
            assert code == ErrorCode.INVALID_REPLICA_ASSIGNMENT
            assert message and "one replica" in message and "[0]" in message
        assert results["a"][2] == (0, None)

    run(tmp_path, scenario)


# --- AlterReplicaLogDirs ------------------------------------------------------------------


@versions(ALTER_REPLICA_LOG_DIRS)
def test_alter_replica_log_dirs(
    tmp_path: Path, version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", partitions=2)
        ours = log_dir(c.broker.config)

        async def call(dirs: list[tuple[str, str, list[int]]]) -> dict[str, dict[int, int]]:
            body = AlterReplicaLogDirsRequest(
                dirs=[
                    AlterReplicaLogDir(
                        path=path, topics=[AlterReplicaLogDirTopic(name=t, partitions=ps)]
                    )
                    for path, t, ps in dirs
                ]
            )
            resp: AlterReplicaLogDirsResponse = await c.call(ALTER_REPLICA_LOG_DIRS, version, body)
            return {
                r.topic_name: {p.partition_index: p.error_code for p in r.partitions}
                for r in resp.results
            }

        assert await call([(ours, "a", [0, 1, 4]), (ours, "nope", [0])]) == {
            "a": {0: 0, 1: 0, 4: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION},
            "nope": {0: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION},
        }
        # Another dir is not found, whatever the partition (checked first, as Kafka).
        assert await call([("/var/lib/kafka", "a", [0]), (ours + "/x", "nope", [0])]) == {
            "a": {0: ErrorCode.LOG_DIR_NOT_FOUND},
            "nope": {0: ErrorCode.LOG_DIR_NOT_FOUND},
        }

        async def get(topic: str, partition: int) -> Any:
            raise not_owner(topic, partition)

        monkeypatch.setattr(c.broker.logs, "get", get)
        assert await call([(ours, "a", [1])]) == {"a": {1: ErrorCode.REPLICA_NOT_AVAILABLE}}

    run(tmp_path, scenario)
