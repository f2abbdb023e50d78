"""Committed offsets (OffsetCommit, OffsetFetch, OffsetDelete) driven with in-memory frames:
every served version, groups without members (simple consumers), Kafka's error answers, and
commits surviving a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from generated.delete_topics_request import DeleteTopicsRequest
from generated.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from generated.offset_commit_response import OffsetCommitResponse
from generated.offset_delete_request import (
    OffsetDeleteRequest,
    OffsetDeleteRequestPartition,
    OffsetDeleteRequestTopic,
)
from generated.offset_delete_response import OffsetDeleteResponse
from generated.offset_fetch_request import (
    OffsetFetchRequest,
    OffsetFetchRequestGroup,
    OffsetFetchRequestTopic,
    OffsetFetchRequestTopics,
)
from generated.offset_fetch_response import OffsetFetchResponse
from generated.registry import BROKER_APIS
from kafscale.broker.offsets import MAX_TXN_OPS, CommittedOffset, Offsets
from tests.test_broker_admin import Client, run

OFFSET_COMMIT, OFFSET_FETCH, OFFSET_DELETE = 8, 9, 47
UNKNOWN_TOPIC_OR_PARTITION, OFFSET_METADATA_TOO_LARGE = 3, 12
ILLEGAL_GENERATION, INVALID_GROUP_ID, UNKNOWN_MEMBER_ID, GROUP_ID_NOT_FOUND = 22, 24, 25, 69

# (topic, partition, offset, leader epoch, metadata)
Commit = tuple[str, int, int, int, str | None]
# (topic, partition) -> (offset, leader epoch, metadata, error)
Fetched = dict[tuple[str, int], tuple[int, int, str | None, int]]


async def commit(
    c: Client,
    group: str,
    *entries: Commit,
    version: int = 9,
    generation: int = -1,
    member: str = "",
    instance: str | None = None,
) -> dict[tuple[str, int], int]:
    """Commit; the error code of each partition."""
    topics: dict[str, list[OffsetCommitRequestPartition]] = {}
    for topic, p, offset, epoch, metadata in entries:
        topics.setdefault(topic, []).append(
            OffsetCommitRequestPartition(
                partition_index=p,
                committed_offset=offset,
                committed_leader_epoch=epoch if version >= 6 else -1,
                committed_metadata=metadata,
            )
        )
    body = OffsetCommitRequest(
        group_id=group,
        generation_id_or_member_epoch=generation,
        member_id=member,
        group_instance_id=instance,
        topics=[OffsetCommitRequestTopic(name=t, partitions=ps) for t, ps in topics.items()],
    )
    resp: OffsetCommitResponse = await c.call(OFFSET_COMMIT, version, body)
    return {(t.name, p.partition_index): p.error_code for t in resp.topics for p in t.partitions}


async def fetch(
    c: Client, group: str, wanted: dict[str, list[int]] | None, version: int = 9
) -> tuple[int, Fetched]:
    """OffsetFetch of one group: (top-level or group error, partitions)."""
    if version >= 8:
        topics = (
            None
            if wanted is None
            else [
                OffsetFetchRequestTopics(name=t, partition_indexes=ps) for t, ps in wanted.items()
            ]
        )
        body = OffsetFetchRequest(groups=[OffsetFetchRequestGroup(group_id=group, topics=topics)])
        resp: OffsetFetchResponse = await c.call(OFFSET_FETCH, version, body)
        (result,) = resp.groups
        assert result.group_id == group
        error, found = result.error_code, result.topics
    else:
        legacy = (
            None
            if wanted is None
            else [OffsetFetchRequestTopic(name=t, partition_indexes=ps) for t, ps in wanted.items()]
        )
        resp = await c.call(
            OFFSET_FETCH, version, OffsetFetchRequest(group_id=group, topics=legacy)
        )
        error, found = resp.error_code, resp.topics
    out: Fetched = {}
    for t in found:
        for p in t.partitions:
            out[(t.name, p.partition_index)] = (
                p.committed_offset,
                p.committed_leader_epoch,
                p.metadata,
                p.error_code,
            )
    return error, out


async def delete(c: Client, group: str, *tps: tuple[str, int]) -> tuple[int, Any]:
    topics: dict[str, list[OffsetDeleteRequestPartition]] = {}
    for t, p in tps:
        topics.setdefault(t, []).append(OffsetDeleteRequestPartition(partition_index=p))
    body = OffsetDeleteRequest(
        group_id=group,
        topics=[OffsetDeleteRequestTopic(name=t, partitions=ps) for t, ps in topics.items()],
    )
    resp: OffsetDeleteResponse = await c.call(OFFSET_DELETE, 0, body)
    errors = {(t.name, p.partition_index): p.error_code for t in resp.topics for p in t.partitions}
    return resp.error_code, errors


def test_served_versions() -> None:
    assert {k: BROKER_APIS[k] for k in (8, 9, 47)} == {8: (0, 9), 9: (0, 9), 47: (0, 0)}


@pytest.mark.parametrize("version", range(10))
def test_commit_then_fetch_at_every_version(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 3)
        assert await commit(c, "g", ("t", 0, 42, 5, "m0"), ("t", 2, 7, 5, None), version=version)
        assert await commit(c, "g", ("t", 0, 43, 6, "again"), version=version) == {("t", 0): 0}
        epoch = 6 if version >= 6 else -1  # committed leader epoch exists from v6
        seen = epoch if version >= 5 else -1  # and is answered from OffsetFetch v5
        assert await fetch(c, "g", {"t": [0, 1, 2]}, version=version) == (
            0,
            {
                ("t", 0): (43, seen, "again", 0),
                ("t", 1): (-1, -1, "", 0),  # never committed: -1, never 0
                ("t", 2): (7, 5 if version >= 6 else -1, "", 0),  # null metadata kept as ""
            },
        )

    run(tmp_path, scenario)


@pytest.mark.parametrize("fetch_version", range(10))
def test_a_v9_commit_read_at_every_fetch_version(tmp_path: Path, fetch_version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t")
        assert await commit(c, "g", ("t", 0, 1000, 3, "meta"), version=9) == {("t", 0): 0}
        epoch = 3 if fetch_version >= 5 else -1
        error, found = await fetch(c, "g", {"t": [0], "nope": [0]}, version=fetch_version)
        # An unknown topic is no error for OffsetFetch: just nothing committed.
        assert (error, found) == (
            0,
            {("t", 0): (1000, epoch, "meta", 0), ("nope", 0): (-1, -1, "", 0)},
        )
        other = await fetch(c, "other", {"t": [0]}, version=fetch_version)
        assert other == (0, {("t", 0): (-1, -1, "", 0)})

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [2, 7, 8, 9])
def test_fetch_all_topics_of_a_group(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("a", 2)
        await c.create("b", 1)
        await c.create("gone", 1)
        await commit(c, "g", ("b", 0, 5, -1, ""), ("a", 1, 3, -1, "x"), ("gone", 0, 9, -1, ""))
        await commit(c, "g/sub", ("a", 0, 99, -1, ""))  # '/' in a group id: its own keys
        await commit(c, "h", ("a", 0, 77, -1, ""))
        await c.call(20, 5, DeleteTopicsRequest(topic_names=["gone"]))
        await c.create("gone", 1)  # a new topic of the same name: the old commit is not its
        expected = {("a", 1): (3, -1, "x", 0), ("b", 0): (5, -1, "", 0)}
        assert await fetch(c, "g", None, version=version) == (0, expected)
        assert await fetch(c, "g/sub", None, version=version) == (0, {("a", 0): (99, -1, "", 0)})
        assert await fetch(c, "none", None, version=version) == (0, {})
        assert (await fetch(c, "g", {"gone": [0]}, version=version))[1] == {
            ("gone", 0): (-1, -1, "", 0)
        }

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [8, 9])
def test_fetch_several_groups_in_one_request(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        await commit(c, "g1", ("t", 0, 10, -1, "one"))
        await commit(c, "g2", ("t", 1, 20, -1, "two"))
        body = OffsetFetchRequest(
            groups=[
                OffsetFetchRequestGroup(
                    group_id="g1",
                    topics=[OffsetFetchRequestTopics(name="t", partition_indexes=[0, 1])],
                ),
                OffsetFetchRequestGroup(group_id="g2", topics=None),
                OffsetFetchRequestGroup(group_id="g3", topics=None),
            ],
            require_stable=True,  # accepted and ignored: nothing is ever pending
        )
        resp: OffsetFetchResponse = await c.call(OFFSET_FETCH, version, body)
        got = {
            g.group_id: (
                g.error_code,
                [
                    (t.name, p.partition_index, p.committed_offset, p.metadata)
                    for t in g.topics
                    for p in t.partitions
                ],
            )
            for g in resp.groups
        }
        assert got == {
            "g1": (0, [("t", 0, 10, "one"), ("t", 1, -1, "")]),
            "g2": (0, [("t", 1, 20, "two")]),
            "g3": (0, []),
        }

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [0, 1, 8, 9])
def test_commit_errors(tmp_path: Path, version: int) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        # Unknown topic or partition: that partition only; the others are committed.
        assert await commit(
            c,
            "g",
            ("t", 0, 1, -1, ""),
            ("t", 2, 1, -1, ""),
            ("nope", 0, 1, -1, ""),
            version=version,
        ) == {
            ("t", 0): 0,
            ("t", 2): UNKNOWN_TOPIC_OR_PARTITION,
            ("nope", 0): UNKNOWN_TOPIC_OR_PARTITION,
        }
        assert await commit(c, "g", ("t", 1, 1, -1, "m" * 4097), version=version) == {
            ("t", 1): OFFSET_METADATA_TOO_LARGE
        }
        assert await commit(c, "g", ("t", 1, 1, -1, "m" * 4096), version=version) == {("t", 1): 0}
        if version >= 1:
            # Member fields: no group has members yet, as a Kafka group with none.
            fresh = await commit(
                c, "fresh", ("t", 0, 5, -1, ""), version=version, generation=1, member="m"
            )
            assert fresh == {("t", 0): ILLEGAL_GENERATION}  # group unknown
            known = await commit(
                c, "g", ("t", 0, 5, -1, ""), version=version, generation=1, member="m"
            )
            assert known == {("t", 0): UNKNOWN_MEMBER_ID}  # group known, member not in it
            assert (await fetch(c, "fresh", None))[1] == {}
            # Generation -1 on a group with no members passes whatever member it names
            # (Kafka's ClassicGroup.validateOffsetCommit).
            named = await commit(c, "fresh", ("t", 0, 5, -1, ""), version=version, member="m")
            assert named == {("t", 0): 0}
        if version >= 7:
            static = await commit(c, "g", ("t", 0, 6, -1, ""), version=version, instance="i")
            assert static == {("t", 0): 0}
        expected = 6 if version >= 7 else 1
        assert (await fetch(c, "g", {"t": [0]}))[1] == {("t", 0): (expected, -1, "", 0)}
        # An empty group id is accepted by OffsetCommit/OffsetFetch, as Kafka does.
        assert await commit(c, "", ("t", 0, 8, -1, ""), version=version) == {("t", 0): 0}
        assert (await fetch(c, "", {"t": [0]}, version=version))[1][("t", 0)][0] == 8

    run(tmp_path, scenario)


def test_offset_delete(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 2)
        assert await delete(c, "", ("t", 0)) == (INVALID_GROUP_ID, {})
        assert await delete(c, "g", ("t", 0)) == (GROUP_ID_NOT_FOUND, {})
        await commit(c, "g", ("t", 0, 1, -1, ""), ("t", 1, 2, -1, ""))
        assert await delete(c, "g", ("t", 0), ("t", 5), ("nope", 0)) == (
            0,
            {
                ("t", 0): 0,
                ("t", 5): UNKNOWN_TOPIC_OR_PARTITION,
                ("nope", 0): UNKNOWN_TOPIC_OR_PARTITION,
            },
        )
        assert await fetch(c, "g", {"t": [0, 1]}) == (
            0,
            {("t", 0): (-1, -1, "", 0), ("t", 1): (2, -1, "", 0)},
        )
        assert await delete(c, "g", ("t", 0)) == (0, {("t", 0): 0})  # nothing there: fine
        assert await delete(c, "g", ("t", 1)) == (0, {("t", 1): 0})
        assert await delete(c, "g", ("t", 1)) == (GROUP_ID_NOT_FOUND, {})  # no offsets left

    run(tmp_path, scenario)


def test_a_large_commit_is_chunked_into_transactions(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        n = 300
        await c.create("wide", n)
        store = c.broker.meta
        sizes: list[int] = []
        original = store.txn

        async def counting(compare: Any, success: Any, failure: Any = ()) -> Any:
            sizes.append(len(success))
            return await original(compare, success, failure)

        store.txn = counting  # type: ignore[method-assign]
        errors = await commit(c, "g", *[("wide", p, p * 10, -1, "") for p in range(n)])
        assert set(errors.values()) == {0}
        assert sizes == [MAX_TXN_OPS, MAX_TXN_OPS, n - 2 * MAX_TXN_OPS]
        _, found = await fetch(c, "g", None)
        assert found == {("wide", p): (p * 10, -1, "", 0) for p in range(n)}

    run(tmp_path, scenario)


def test_commits_survive_a_restart(tmp_path: Path) -> None:
    async def write(c: Client) -> None:
        await c.create("t", 2)
        assert await commit(c, "g", ("t", 0, 11, 2, "kept"), ("t", 1, 12, 3, None)) == {
            ("t", 0): 0,
            ("t", 1): 0,
        }

    async def read(c: Client) -> None:
        assert await fetch(c, "g", None) == (
            0,
            {("t", 0): (11, 2, "kept", 0), ("t", 1): (12, 3, "", 0)},
        )

    run(tmp_path, write)
    run(tmp_path, read)


def test_store_layout_and_topic_cleanup(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.create("t", 1)
        await c.create("u", 1)
        await commit(c, "g", ("t", 0, 4, 1, "m"), ("u", 0, 5, -1, ""))
        await commit(c, "a/b%", ("t", 0, 6, -1, ""))
        store = c.broker.meta
        ns = c.broker.config.namespace
        kv = await store.get(f"/{ns}/offsets/g/t/00000".encode())
        assert kv is not None
        value = CommittedOffset.from_json(kv.value)
        assert (value.offset, value.leader_epoch, value.metadata) == (4, 1, "m")
        assert value.commit_ms > 0
        assert await store.get(f"/{ns}/offsets/a%2Fb%25/t/00000".encode()) is not None
        offsets = Offsets(store, ns)
        assert await offsets.delete_topic("t") == 2
        assert list(await offsets.fetch("g")) == [("u", 0)]
        assert await offsets.fetch("a/b%") == {}

    run(tmp_path, scenario)


def test_delete_topics_drops_the_topics_committed_offsets(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState

        await c.create("t", 1)
        await c.create("u", 1)
        await commit(c, "g", ("t", 0, 4, -1, ""), ("u", 0, 5, -1, ""))
        body = DeleteTopicsRequest(topics=[DeleteTopicState(name="t")], timeout_ms=1000)
        resp = await c.call(20, 6, body)
        assert resp.responses[0].error_code == 0
        ns = c.broker.config.namespace
        keys = [kv.key for kv in await c.broker.meta.range(f"/{ns}/offsets/".encode())]
        assert keys == [f"/{ns}/offsets/g/u/00000".encode()]

    run(tmp_path, scenario)
