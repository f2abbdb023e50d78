"""The classic consumer-group protocol driven with explicit requests (JoinGroup 0-9, SyncGroup
0-5, Heartbeat 0-4, LeaveGroup 0-5, OffsetCommit against live generations), each answer
checked against what Kafka 3.9's GroupCoordinator gives, and the bad inputs a broker must
survive: huge or garbage member metadata, unknown protocol types, zombie commits, heartbeat
storms, static members replaced while they wait.

The broker runs in this process with its listener and coordinator timer started (session
timeouts must expire by themselves; some tests use sockets), requests go through
``Broker.respond`` (tests/broker_harness.py's Client) unless a test needs a connection. Short
session timeouts and no initial rebalance delay keep it fast; waits have deadlines.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from generated.api_versions_request import ApiVersionsRequest
from generated.api_versions_response import ApiVersionsResponse
from generated.consumer_protocol_subscription import ConsumerProtocolSubscription
from generated.delete_groups_request import DeleteGroupsRequest
from generated.delete_groups_response import DeleteGroupsResponse
from generated.describe_groups_request import DescribeGroupsRequest
from generated.describe_groups_response import DescribedGroup, DescribeGroupsResponse
from generated.heartbeat_request import HeartbeatRequest
from generated.heartbeat_response import HeartbeatResponse
from generated.join_group_request import JoinGroupRequest, JoinGroupRequestProtocol
from generated.join_group_response import JoinGroupResponse
from generated.leave_group_request import LeaveGroupRequest, MemberIdentity
from generated.leave_group_response import LeaveGroupResponse
from generated.registry import APIS, BROKER_APIS
from generated.sync_group_request import SyncGroupRequest, SyncGroupRequestAssignment
from generated.sync_group_response import SyncGroupResponse
from kafscale.broker.config import BrokerConfig
from kafscale.broker.server import Broker
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.metadata.store import Compare, Delete, Put, TxnResult
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Message
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client
from tests.test_broker_offsets import commit, delete, fetch

JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
DESCRIBE_GROUPS, DELETE_GROUPS, API_VERSIONS = 15, 42, 18

NONE = 0
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
INVALID_REQUEST = 42
NON_EMPTY_GROUP = 68
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82
GROUP_SUBSCRIBED_TO_TOPIC = 86

MIN_SESSION_MS = 100
SESSION_MS = 10_000
"""Long enough never to expire in a test unless the test waits for it."""
REBALANCE_MS = 5_000
DEADLINE_S = 10.0
PROTOCOLS: list[tuple[str, bytes]] = [("range", b"range-metadata")]

T = TypeVar("T")


class CountingStore(SqliteMetadataStore):
    """Counts metadata-store transactions (every write, ``put`` included, is one)."""

    txns = 0

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        self.txns += 1
        return await super().txn(compare, success, failure)


class GroupClient(Client):
    def __init__(self, broker: Broker, store: CountingStore) -> None:
        super().__init__(broker)
        self.store = store

    @property
    def port(self) -> int:
        return self.broker.port


def run(tmp_path: Path, scenario: Callable[[GroupClient], Awaitable[None]], **config: Any) -> None:
    """Run ``scenario`` against a started broker (listener and group coordinator timer) on
    ``tmp_path``, then stop it as SIGTERM would."""

    async def main() -> None:
        settings = {
            "flush_interval_ms": 5,
            "listen_port": 0,
            "group_min_session_timeout_ms": MIN_SESSION_MS,
            "group_initial_rebalance_delay_ms": 0,
            **config,
        }
        store = CountingStore(tmp_path / "metadata.sqlite3")
        broker = Broker(
            BrokerConfig(data_dir=tmp_path, **settings), LocalObjectStore(tmp_path / "o"), store
        )
        await broker.start()
        try:
            await asyncio.wait_for(scenario(GroupClient(broker, store)), 30)
        finally:
            await broker.stop()

    asyncio.run(main())


# --- requests --------------------------------------------------------------------------------


async def join(
    c: Client,
    group: str,
    *,
    version: int = 9,
    member: str = "",
    instance: str | None = None,
    protocol_type: str = "consumer",
    protocols: Sequence[tuple[str, bytes]] = PROTOCOLS,
    session_ms: int = SESSION_MS,
    rebalance_ms: int = REBALANCE_MS,
) -> JoinGroupResponse:
    body = JoinGroupRequest(
        group_id=group,
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=rebalance_ms,
        member_id=member,
        group_instance_id=instance,
        protocol_type=protocol_type,
        protocols=[JoinGroupRequestProtocol(name=n, metadata=m) for n, m in protocols],
    )
    resp: JoinGroupResponse = await c.call(JOIN_GROUP, version, body)
    return resp


async def join_new(c: Client, group: str, *, version: int = 9, **kwargs: Any) -> JoinGroupResponse:
    """A new dynamic member's join: from v4 MEMBER_ID_REQUIRED first, then a join with it."""
    if version >= 4 and kwargs.get("instance") is None:
        first = await join(c, group, version=version, **kwargs)
        assert first.error_code == MEMBER_ID_REQUIRED, first
        kwargs["member"] = first.member_id
    return await join(c, group, version=version, **kwargs)


async def sync(
    c: Client,
    group: str,
    generation: int,
    member: str,
    assignments: dict[str, bytes] | None = None,
    *,
    version: int = 5,
    instance: str | None = None,
    protocol_type: str | None = None,
    protocol_name: str | None = None,
) -> SyncGroupResponse:
    body = SyncGroupRequest(
        group_id=group,
        generation_id=generation,
        member_id=member,
        group_instance_id=instance,
        protocol_type=protocol_type,
        protocol_name=protocol_name,
        assignments=[
            SyncGroupRequestAssignment(member_id=m, assignment=a)
            for m, a in (assignments or {}).items()
        ],
    )
    resp: SyncGroupResponse = await c.call(SYNC_GROUP, version, body)
    return resp


async def heartbeat(
    c: Client,
    group: str,
    generation: int,
    member: str,
    *,
    version: int = 4,
    instance: str | None = None,
) -> int:
    body = HeartbeatRequest(
        group_id=group, generation_id=generation, member_id=member, group_instance_id=instance
    )
    resp: HeartbeatResponse = await c.call(HEARTBEAT, version, body)
    return resp.error_code


async def leave(
    c: Client, group: str, *members: tuple[str, str | None], version: int = 5
) -> LeaveGroupResponse:
    if version < 3:
        ((member, _),) = members
        body = LeaveGroupRequest(group_id=group, member_id=member)
    else:
        body = LeaveGroupRequest(
            group_id=group,
            members=[MemberIdentity(member_id=m, group_instance_id=i) for m, i in members],
        )
    resp: LeaveGroupResponse = await c.call(LEAVE_GROUP, version, body)
    return resp


async def describe(c: Client, group: str, version: int = 5) -> DescribedGroup:
    body = DescribeGroupsRequest(groups=[group])
    resp: DescribeGroupsResponse = await c.call(DESCRIBE_GROUPS, version, body)
    (described,) = resp.groups
    return described


async def state(c: Client, group: str) -> str:
    return (await describe(c, group)).group_state


async def delete_groups(c: Client, *groups: str) -> dict[str, int]:
    resp: DeleteGroupsResponse = await c.call(
        DELETE_GROUPS, 2, DeleteGroupsRequest(groups_names=list(groups))
    )
    return {r.group_id: r.error_code for r in resp.results}


def members_of(resp: JoinGroupResponse) -> list[tuple[str, bytes]]:
    return [(m.member_id, bytes(m.metadata)) for m in resp.members]


async def parked(task: asyncio.Task[Any], for_s: float = 0.05) -> bool:
    """True while ``task`` (a JoinGroup or SyncGroup) stays unanswered for ``for_s``."""
    done, _ = await asyncio.wait({task}, timeout=for_s)
    return not done


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]]) -> T:
    """Poll ``probe`` until it returns something other than None, within DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def subscription(*topics: str, version: int = 1) -> bytes:
    """ConsumerProtocolSubscription bytes (the version prefix, then the body)."""
    body = ConsumerProtocolSubscription(topics=list(topics), user_data=None)
    return struct.pack(">h", version) + body.encode(version)


async def stable_pair(
    c: GroupClient,
    group: str,
    *,
    version: int = 9,
    first: Sequence[tuple[str, bytes]] = PROTOCOLS,
    second: Sequence[tuple[str, bytes]] = PROTOCOLS,
    second_session_ms: int = SESSION_MS,
) -> tuple[str, str, int]:
    """Two members in a Stable group: (leader, follower, generation)."""
    a = await join_new(c, group, version=version, protocols=first)
    assert (a.error_code, a.generation_id) == (NONE, 1)
    assert (await sync(c, group, 1, a.member_id, {a.member_id: b"a1"})).error_code == NONE
    if version >= 4:
        required = await join(c, group, version=version, protocols=second)
        assert required.error_code == MEMBER_ID_REQUIRED
        b_id = required.member_id
    else:
        b_id = ""
    b_task = asyncio.create_task(
        join(
            c,
            group,
            version=version,
            member=b_id,
            protocols=second,
            session_ms=second_session_ms,
        )
    )
    assert await parked(b_task)
    assert await heartbeat(c, group, 1, a.member_id) == REBALANCE_IN_PROGRESS
    a2 = await join(c, group, version=version, member=a.member_id, protocols=first)
    b = await b_task
    assert (a2.error_code, b.error_code) == (NONE, NONE)
    assert a2.generation_id == b.generation_id == 2
    assert a2.leader == b.leader == a.member_id
    leader_sync = asyncio.create_task(
        sync(c, group, 2, a.member_id, {a.member_id: b"a2", b.member_id: b"b2"})
    )
    assert (await sync(c, group, 2, b.member_id)).assignment == b"b2"
    assert (await leader_sync).assignment == b"a2"
    return a.member_id, b.member_id, 2


# --- the protocol, version by version ---------------------------------------------------------


def test_served_versions() -> None:
    served = {k: BROKER_APIS[k] for k in (JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP)}
    assert served == {
        JOIN_GROUP: (0, 9),
        HEARTBEAT: (0, 4),
        LEAVE_GROUP: (0, 5),
        SYNC_GROUP: (0, 5),
    }


@pytest.mark.parametrize("version", range(10))
def test_one_member_joins_syncs_heartbeats_and_leaves(tmp_path: Path, version: int) -> None:
    sync_v, heartbeat_v, leave_v = min(version, 5), min(version, 4), min(version, 5)
    metadata = os.urandom(33)

    async def scenario(c: GroupClient) -> None:
        first = await join(c, "g", version=version, protocols=[("range", metadata)])
        if version >= 4:  # KIP-394: a member id first, no generation yet
            assert (first.error_code, first.generation_id, first.leader) == (
                MEMBER_ID_REQUIRED,
                -1,
                "",
            )
            assert first.member_id.startswith("t-") and first.members == []
            assert await state(c, "g") == "Empty"
            member = first.member_id
            joined = await join(
                c, "g", version=version, member=member, protocols=[("range", metadata)]
            )
            assert joined.member_id == member
        else:
            joined = first
        assert joined.error_code == NONE
        member = joined.member_id
        assert member.startswith("t-")
        assert (joined.generation_id, joined.leader, joined.protocol_name) == (1, member, "range")
        assert joined.protocol_type == ("consumer" if version >= 7 else None)
        assert members_of(joined) == [(member, metadata)]
        assert joined.skip_assignment is False
        assert await state(c, "g") == "CompletingRebalance"

        synced = await sync(c, "g", 1, member, {member: b"\x00assignment\xff"}, version=sync_v)
        assert (synced.error_code, bytes(synced.assignment)) == (NONE, b"\x00assignment\xff")
        if sync_v >= 5:
            assert (synced.protocol_type, synced.protocol_name) == ("consumer", "range")
        assert await heartbeat(c, "g", 1, member, version=heartbeat_v) == NONE
        described = await describe(c, "g")
        assert (described.group_state, described.protocol_type, described.protocol_data) == (
            "Stable",
            "consumer",
            "range",
        )
        (m,) = described.members
        assert (m.member_id, m.client_id, bytes(m.member_metadata), bytes(m.member_assignment)) == (
            member,
            "t",
            metadata,
            b"\x00assignment\xff",
        )

        left = await leave(c, "g", (member, None), version=leave_v)
        assert left.error_code == NONE
        if leave_v >= 3:
            assert [(x.member_id, x.error_code) for x in left.members] == [(member, NONE)]
        assert await state(c, "g") == "Empty"
        assert await heartbeat(c, "g", 1, member, version=heartbeat_v) == UNKNOWN_MEMBER_ID

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [1, 3, 5, 9])
def test_two_members_leader_gets_every_members_metadata_and_hands_out_the_assignment(
    tmp_path: Path, version: int
) -> None:
    """The leader gets each member's metadata for the chosen protocol byte for byte, and
    SyncGroup hands each member exactly the bytes the leader gave it."""
    a_meta = {"range": os.urandom(40), "roundrobin": os.urandom(41)}
    b_meta = {"roundrobin": os.urandom(42), "sticky": os.urandom(43)}
    sync_v = min(version, 5)

    async def scenario(c: GroupClient) -> None:
        a = await join_new(c, "g", version=version, protocols=list(a_meta.items()))
        assert (a.generation_id, a.protocol_name) == (1, "range")
        assert members_of(a) == [(a.member_id, a_meta["range"])]
        assert (
            await sync(c, "g", 1, a.member_id, {a.member_id: b"x"}, version=sync_v)
        ).error_code == NONE

        # A second member: it waits for the first to rejoin; the first hears of the rebalance.
        if version >= 4:
            required = await join(c, "g", version=version, protocols=list(b_meta.items()))
            assert required.error_code == MEMBER_ID_REQUIRED
            b_id = required.member_id
        else:
            b_id = ""
        b_task = asyncio.create_task(
            join(c, "g", version=version, member=b_id, protocols=list(b_meta.items()))
        )
        assert await parked(b_task)
        assert await state(c, "g") == "PreparingRebalance"
        assert await heartbeat(c, "g", 1, a.member_id) == REBALANCE_IN_PROGRESS
        assert (
            await sync(c, "g", 1, a.member_id, version=sync_v)
        ).error_code == REBALANCE_IN_PROGRESS
        a2 = await join(c, "g", version=version, member=a.member_id, protocols=list(a_meta.items()))
        b = await b_task
        assert (a2.error_code, b.error_code) == (NONE, NONE)
        assert a2.generation_id == b.generation_id == 2
        # "roundrobin" is the only protocol both support.
        assert a2.protocol_name == b.protocol_name == "roundrobin"
        assert a2.leader == b.leader == a.member_id
        assert sorted(members_of(a2)) == sorted(
            [(a.member_id, a_meta["roundrobin"]), (b.member_id, b_meta["roundrobin"])]
        )
        assert b.members == []  # only the leader gets the members
        if version >= 5:
            assert [m.group_instance_id for m in a2.members] == [None, None]

        # The follower's SyncGroup waits for the leader's; each gets its bytes, unchanged.
        assignments = {a.member_id: os.urandom(100), b.member_id: os.urandom(7), "x": b"ignored"}
        b_sync = asyncio.create_task(sync(c, "g", 2, b.member_id, version=sync_v))
        assert await parked(b_sync)
        assert await heartbeat(c, "g", 2, b.member_id) == NONE  # CompletingRebalance
        a_sync = await sync(c, "g", 2, a.member_id, assignments, version=sync_v)
        assert (a_sync.error_code, bytes(a_sync.assignment)) == (NONE, assignments[a.member_id])
        b_synced = await b_sync
        assert (b_synced.error_code, bytes(b_synced.assignment)) == (NONE, assignments[b.member_id])
        # In Stable a SyncGroup answers at once with the member's assignment.
        again = await sync(c, "g", 2, b.member_id, version=sync_v)
        assert bytes(again.assignment) == assignments[b.member_id]
        described = await describe(c, "g")
        assert described.group_state == "Stable"
        assert {m.member_id: bytes(m.member_assignment) for m in described.members} == {
            a.member_id: assignments[a.member_id],
            b.member_id: assignments[b.member_id],
        }

    run(tmp_path, scenario)


def test_a_rejoin_with_unchanged_metadata_during_completing_rebalance(tmp_path: Path) -> None:
    """A member that lost its JoinGroup response rejoins with the same metadata: it gets the
    current generation again, and only the leader gets the members (Kafka: "members = if
    (group.isLeader(memberId)) group.currentMemberMetadata else List.empty")."""

    async def scenario(c: GroupClient) -> None:
        leader, follower, generation = await stable_pair(c, "g")
        # The leader forces a rebalance; both rejoin: CompletingRebalance.
        leader_join = asyncio.create_task(join(c, "g", member=leader))
        assert await parked(leader_join)
        follower_join = await join(c, "g", member=follower)
        leader_joined = await leader_join
        assert follower_join.generation_id == leader_joined.generation_id == generation + 1
        assert await state(c, "g") == "CompletingRebalance"

        again = await join(c, "g", member=follower)
        assert (again.error_code, again.generation_id, again.leader) == (
            NONE,
            generation + 1,
            leader,
        )
        assert again.members == []
        again = await join(c, "g", member=leader)
        assert (again.error_code, again.generation_id) == (NONE, generation + 1)
        assert sorted(m for m, _ in members_of(again)) == sorted([leader, follower])
        assert await state(c, "g") == "CompletingRebalance"

    run(tmp_path, scenario)


# --- errors -----------------------------------------------------------------------------------


def test_inconsistent_group_protocol(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        # An empty protocol type or no protocols cannot create a group (nor a pending member).
        for version in (0, 4, 9):
            no_type = await join(c, "g", version=version, protocol_type="")
            assert (no_type.error_code, no_type.member_id) == (INCONSISTENT_GROUP_PROTOCOL, "")
            no_protocols = await join(c, "g", version=version, protocols=[])
            assert no_protocols.error_code == INCONSISTENT_GROUP_PROTOCOL
        # As in Kafka, the first join created the group (Empty, no protocol type) before it was
        # refused; the offsets retention check drops such a group later.
        described = await describe(c, "g")
        assert (described.group_state, described.protocol_type) == ("Empty", "")

        a = await join_new(c, "g", protocols=[("range", b"1"), ("roundrobin", b"2")])
        assert a.error_code == NONE
        await sync(c, "g", 1, a.member_id, {a.member_id: b""})
        # Another protocol type, or protocols the group does not share, by a new member ...
        for protocol_type, protocols in [
            ("connect", [("range", b"1")]),
            ("Consumer", [("range", b"1")]),
            ("consumer", [("sticky", b"3"), ("cooperative-sticky", b"4")]),
            ("consumer", []),
        ]:
            for version in (0, 3, 4, 9):
                refused = await join(
                    c, "g", version=version, protocol_type=protocol_type, protocols=protocols
                )
                assert (refused.error_code, refused.member_id, refused.generation_id) == (
                    INCONSISTENT_GROUP_PROTOCOL,
                    "",
                    -1,
                ), (protocol_type, protocols, version)
            # ... or by the member itself.
            refused = await join(
                c, "g", member=a.member_id, protocol_type=protocol_type, protocols=protocols
            )
            assert (refused.error_code, refused.member_id) == (
                INCONSISTENT_GROUP_PROTOCOL,
                a.member_id,
            )
        # None of that disturbed the group.
        assert await state(c, "g") == "Stable"
        assert await heartbeat(c, "g", 1, a.member_id) == NONE
        # One shared protocol is enough.
        b = await join(c, "g", protocols=[("sticky", b""), ("roundrobin", b"")])
        assert b.error_code == MEMBER_ID_REQUIRED
        # SyncGroup v5 names the protocol type and name: they must be the group's.
        bad_type = await sync(c, "g", 1, a.member_id, protocol_type="connect")
        bad_name = await sync(c, "g", 1, a.member_id, protocol_name="roundrobin")
        assert (bad_type.error_code, bad_name.error_code) == (
            INCONSISTENT_GROUP_PROTOCOL,
            INCONSISTENT_GROUP_PROTOCOL,
        )
        good = await sync(c, "g", 1, a.member_id, protocol_type="consumer", protocol_name="range")
        assert (good.error_code, good.protocol_type, good.protocol_name) == (
            NONE,
            "consumer",
            "range",
        )

    run(tmp_path, scenario)


def test_invalid_session_timeout_and_group_id(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        for version in (0, 4, 9):
            for session_ms in (MIN_SESSION_MS - 1, 0, -1, 60_001):
                refused = await join(c, "g", version=version, session_ms=session_ms)
                assert refused.error_code == INVALID_SESSION_TIMEOUT, (version, session_ms)
        for session_ms in (MIN_SESSION_MS, 60_000):
            assert (await join(c, "g", session_ms=session_ms)).error_code == MEMBER_ID_REQUIRED
        assert (await join(c, "")).error_code == INVALID_GROUP_ID
        assert (await sync(c, "", 1, "m")).error_code == INVALID_GROUP_ID
        assert await heartbeat(c, "", 1, "m") == INVALID_GROUP_ID
        assert (await leave(c, "", ("m", None))).error_code == INVALID_GROUP_ID
        assert (await leave(c, "", ("m", None), version=0)).error_code == INVALID_GROUP_ID

    run(tmp_path, scenario, group_max_session_timeout_ms=60_000)


def test_unknown_member_id(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        # No such group.
        assert (await join(c, "nope", member="ghost")).error_code == UNKNOWN_MEMBER_ID
        assert (await sync(c, "nope", 1, "ghost")).error_code == UNKNOWN_MEMBER_ID
        assert await heartbeat(c, "nope", 1, "ghost") == UNKNOWN_MEMBER_ID
        left = await leave(c, "nope", ("ghost", None))
        assert [(m.member_id, m.error_code) for m in left.members] == [("ghost", UNKNOWN_MEMBER_ID)]
        assert (await leave(c, "nope", ("ghost", None), version=2)).error_code == UNKNOWN_MEMBER_ID
        assert await state(c, "nope") == "Dead"

        # A group with a member, and a member id it does not know.
        a = await join_new(c, "g")
        assert (await sync(c, "g", 1, a.member_id, {a.member_id: b"a"})).error_code == NONE
        for version in (0, 3, 4, 9):
            refused = await join(c, "g", version=version, member="ghost")
            assert (refused.error_code, refused.member_id) == (UNKNOWN_MEMBER_ID, "ghost")
        assert (await sync(c, "g", 1, "ghost")).error_code == UNKNOWN_MEMBER_ID
        assert await heartbeat(c, "g", 1, "ghost") == UNKNOWN_MEMBER_ID
        assert await heartbeat(c, "g", 1, "") == UNKNOWN_MEMBER_ID
        # A member id handed out by MEMBER_ID_REQUIRED is no member before it joins.
        pending = (await join(c, "g")).member_id
        assert await heartbeat(c, "g", 1, pending) == UNKNOWN_MEMBER_ID
        assert (await sync(c, "g", 1, pending)).error_code == UNKNOWN_MEMBER_ID
        # ... and leaves without a rebalance.
        left = await leave(c, "g", (pending, None))
        assert [m.error_code for m in left.members] == [NONE]
        assert await state(c, "g") == "Stable"
        # An unknown group instance id.
        assert await heartbeat(c, "g", 1, a.member_id, instance="who") == UNKNOWN_MEMBER_ID
        assert await heartbeat(c, "g", 1, a.member_id) == NONE
        assert await state(c, "g") == "Stable"

    run(tmp_path, scenario)


def test_illegal_generation_and_rebalance_in_progress(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        a = await join_new(c, "g")
        # CompletingRebalance: heartbeats are fine, another generation is not.
        assert await heartbeat(c, "g", 1, a.member_id) == NONE
        for generation in (0, 2, -1):
            assert await heartbeat(c, "g", generation, a.member_id) == ILLEGAL_GENERATION
            assert (await sync(c, "g", generation, a.member_id)).error_code == ILLEGAL_GENERATION
        assert (await sync(c, "g", 1, a.member_id, {a.member_id: b"a"})).error_code == NONE
        assert await heartbeat(c, "g", 2, a.member_id) == ILLEGAL_GENERATION
        assert await heartbeat(c, "g", 1, a.member_id) == NONE

        # A rebalance: heartbeats answer REBALANCE_IN_PROGRESS (and still count), SyncGroup too.
        b_task = asyncio.create_task(join_new(c, "g"))
        assert await parked(b_task)
        for version in range(5):
            assert await heartbeat(c, "g", 1, a.member_id, version=version) == REBALANCE_IN_PROGRESS
        assert (await sync(c, "g", 1, a.member_id)).error_code == REBALANCE_IN_PROGRESS
        assert await heartbeat(c, "g", 0, a.member_id) == ILLEGAL_GENERATION
        a2 = await join(c, "g", member=a.member_id)
        b = await b_task
        assert a2.generation_id == b.generation_id == 2
        # The old generation is gone for good.
        assert await heartbeat(c, "g", 1, a.member_id) == ILLEGAL_GENERATION
        assert (await sync(c, "g", 1, b.member_id)).error_code == ILLEGAL_GENERATION
        assert await heartbeat(c, "g", 2, b.member_id) == NONE

    run(tmp_path, scenario)


def test_a_member_that_stops_heartbeating_expires(tmp_path: Path) -> None:
    """Session timeouts fire by themselves (the coordinator's timer): the silent member is
    removed, the other is told to rejoin and continues alone."""

    async def scenario(c: GroupClient) -> None:
        leader, follower, generation = await stable_pair(c, "g", second_session_ms=300)

        async def rebalancing() -> bool | None:
            error = await heartbeat(c, "g", generation, leader)
            return True if error == REBALANCE_IN_PROGRESS else None

        started = time.monotonic()
        await eventually("the silent follower to expire", rebalancing)
        assert time.monotonic() - started >= 0.2
        alone = await join(c, "g", member=leader)
        assert (alone.generation_id, members_of(alone)) == (
            generation + 1,
            [(leader, PROTOCOLS[0][1])],
        )
        assert await heartbeat(c, "g", generation, follower) == UNKNOWN_MEMBER_ID
        assert (await join(c, "g", member=follower)).error_code == UNKNOWN_MEMBER_ID

        # The last member expires too: the group is Empty, and stays known.
        await sync(c, "g", generation + 1, leader, {leader: b""})
        assert (await join(c, "g", member=leader, session_ms=200)).error_code == NONE

        async def empty() -> bool | None:
            return True if await state(c, "g") == "Empty" else None

        await eventually("the last member to expire", empty)
        described = await describe(c, "g")
        assert (described.protocol_type, described.members) == ("consumer", [])

    run(tmp_path, scenario)


# --- bad input -------------------------------------------------------------------------------

MAX_METADATA = 1024 * 1024
"""kafscale's limit on one JoinGroup's protocol names and metadata together (Kafka has none
but the request size; the coordinator keeps the metadata for the group's life)."""


def frame(key: int, version: int, body: Message, correlation: int) -> bytes:
    return b"".join(encode_request(APIS[key], version, correlation, "t", body))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def decode(key: int, version: int, data: bytes, correlation: int) -> Any:
    assert struct.unpack_from(">i", data)[0] == correlation
    header = 4 if APIS[key].response_header_version(version) == 0 else 5
    return APIS[key].response_type().decode(data[header:], version)


async def api_versions_round_trip(port: int) -> float:
    """Seconds an ApiVersions takes on a new connection."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame(API_VERSIONS, 3, ApiVersionsRequest(), 7))
        resp: ApiVersionsResponse = decode(API_VERSIONS, 3, await read_frame(reader), 7)
        assert resp.error_code == NONE
    finally:
        writer.close()
    return time.monotonic() - started


def test_huge_member_metadata_is_refused_and_the_broker_keeps_serving(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
        correlation = 0

        async def join_over(protocols: list[tuple[str, bytes]], version: int = 9) -> Any:
            nonlocal correlation
            correlation += 1
            body = JoinGroupRequest(
                group_id="g",
                session_timeout_ms=SESSION_MS,
                rebalance_timeout_ms=REBALANCE_MS,
                member_id="",
                protocol_type="consumer",
                protocols=[JoinGroupRequestProtocol(name=n, metadata=m) for n, m in protocols],
            )
            writer.write(frame(JOIN_GROUP, version, body, correlation))
            return decode(JOIN_GROUP, version, await read_frame(reader), correlation)

        try:
            # One byte over the limit, in one protocol or spread over several; every version.
            for version in (0, 4, 9):
                refused = await join_over([("range", b"x" * (MAX_METADATA - 4))], version)
                assert (refused.error_code, refused.member_id, refused.members) == (
                    INVALID_REQUEST,
                    "",
                    [],
                )
            spread = [(f"p{i}", b"y" * (MAX_METADATA // 4)) for i in range(4)]
            assert (await join_over(spread)).error_code == INVALID_REQUEST
            assert (await join_over([("range", os.urandom(8 * MAX_METADATA))])).error_code == (
                INVALID_REQUEST
            )
            # Nothing was kept: the group does not exist.
            assert await state(c, "g") == "Dead"
            # Exactly at the limit is fine, on the same connection.
            at_limit = [("range", b"z" * (MAX_METADATA - 5))]
            required = await join_over(at_limit)
            assert required.error_code == MEMBER_ID_REQUIRED
            # Other clients were served all along.
            assert await api_versions_round_trip(c.port) < 2.0
        finally:
            writer.close()
        joined = await join(c, "g", member=required.member_id, protocols=at_limit)
        assert (joined.error_code, members_of(joined)) == (
            NONE,
            [(required.member_id, at_limit[0][1])],
        )

    run(tmp_path, scenario)


GARBAGE = [
    b"",
    b"\xff",
    b"\x00",
    b"\x00\x00\x00\x00\x00\x05ab",
    b"\xff\xff" + bytes(range(200, 256)),
]
"""Member metadata no consumer protocol parser accepts (empty, truncated, negative version,
a topic count beyond the data, random bytes)."""


def test_garbage_member_metadata_is_passed_through(tmp_path: Path) -> None:
    """The coordinator does not parse member metadata for the leader: garbage reaches it
    unchanged; DescribeGroups shows it; OffsetDelete treats every topic as subscribed (Kafka's
    isSubscribedToTopic when the subscriptions do not parse)."""

    async def scenario(c: GroupClient) -> None:
        await c.create("t", 2)
        for i, garbage in enumerate(GARBAGE):
            group = f"g{i}"
            assert await commit(c, group, ("t", 0, 5, -1, ""), ("t", 1, 6, -1, "")) == {
                ("t", 0): NONE,
                ("t", 1): NONE,
            }
            joined = await join_new(c, group, protocols=[("range", garbage)])
            assert members_of(joined) == [(joined.member_id, garbage)]
            member, generation = joined.member_id, joined.generation_id
            synced = await sync(c, group, generation, member, {member: garbage})
            assert bytes(synced.assignment) == garbage
            described = await describe(c, group)
            assert described.group_state == "Stable"
            (m,) = described.members
            assert (bytes(m.member_metadata), bytes(m.member_assignment)) == (garbage, garbage)
            assert await delete(c, group, ("t", 0), ("t", 1)) == (
                NONE,
                {("t", 0): GROUP_SUBSCRIBED_TO_TOPIC, ("t", 1): GROUP_SUBSCRIBED_TO_TOPIC},
            )
            assert await delete_groups(c, group) == {group: NON_EMPTY_GROUP}
            assert await heartbeat(c, group, generation, member) == NONE
            # After the member left, the offsets can go.
            assert [m.error_code for m in (await leave(c, group, (member, None))).members] == [0]
            assert await delete(c, group, ("t", 0)) == (NONE, {("t", 0): NONE})
            assert (await fetch(c, group, {"t": [0, 1]}))[1] == {
                ("t", 0): (-1, -1, "", NONE),
                ("t", 1): (6, -1, "", NONE),
            }

    run(tmp_path, scenario)


def test_offset_delete_while_subscribed(tmp_path: Path) -> None:
    """A consumer group's members subscribe to "a" (v1 and v3 subscriptions, one with trailing
    bytes): OffsetDelete refuses "a" (GROUP_SUBSCRIBED_TO_TOPIC) and deletes "b"."""

    async def scenario(c: GroupClient) -> None:
        await c.create("a", 2)
        await c.create("b", 1)
        assert set(
            (
                await commit(c, "g", ("a", 0, 1, -1, ""), ("a", 1, 2, -1, ""), ("b", 0, 3, -1, ""))
            ).values()
        ) == {NONE}
        await stable_pair(
            c,
            "g",
            first=[("range", subscription("a"))],
            second=[("range", subscription("a", version=3) + b"future fields")],
        )
        assert await delete(c, "g", ("a", 0), ("a", 1), ("b", 0), ("c", 0)) == (
            NONE,
            {
                ("a", 0): GROUP_SUBSCRIBED_TO_TOPIC,
                ("a", 1): GROUP_SUBSCRIBED_TO_TOPIC,
                ("b", 0): NONE,
                ("c", 0): 3,  # UNKNOWN_TOPIC_OR_PARTITION
            },
        )
        assert (await fetch(c, "g", None))[1] == {
            ("a", 0): (1, -1, "", NONE),
            ("a", 1): (2, -1, "", NONE),
        }

    run(tmp_path, scenario)


def test_an_unknown_protocol_type(tmp_path: Path) -> None:
    """Any non-empty protocol type creates a group (Kafka checks nothing else); a different
    type on that group is INCONSISTENT_GROUP_PROTOCOL. It is no consumer group: OffsetDelete
    answers NON_EMPTY_GROUP while it has members."""

    async def scenario(c: GroupClient) -> None:
        await c.create("t")
        kind = "\u00e9trange/\x00protocol " * 10
        joined = await join_new(c, "g", protocol_type=kind, protocols=[("p", b"\x01")])
        assert (joined.error_code, joined.protocol_type, joined.protocol_name) == (NONE, kind, "p")
        member = joined.member_id
        assert (
            await sync(c, "g", 1, member, {member: b"\x02"}, protocol_type=kind)
        ).error_code == NONE
        refused = await join(c, "g", protocols=[("p", b"\x01")])  # "consumer"
        assert refused.error_code == INCONSISTENT_GROUP_PROTOCOL
        refused = await join(c, "g", member=member, protocols=[("p", b"\x01")])
        assert refused.error_code == INCONSISTENT_GROUP_PROTOCOL
        described = await describe(c, "g")
        assert (described.group_state, described.protocol_type, described.protocol_data) == (
            "Stable",
            kind,
            "p",
        )
        assert await delete(c, "g", ("t", 0)) == (NON_EMPTY_GROUP, {})
        # Its members commit like any others.
        committed = await commit(c, "g", ("t", 0, 9, -1, ""), generation=1, member=member)
        assert committed == {("t", 0): NONE}
        assert await heartbeat(c, "g", 1, member) == NONE

    run(tmp_path, scenario)


def test_commits_from_a_zombie_of_an_older_generation_are_refused(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        await c.create("t", 2)
        leader, follower, generation = await stable_pair(c, "g")
        assert await commit(
            c, "g", ("t", 0, 10, -1, "gen2"), generation=generation, member=leader
        ) == {("t", 0): NONE}
        # The group moves on to the next generation ...
        leader_join = asyncio.create_task(join(c, "g", member=leader))
        assert await parked(leader_join)
        # ... (during PreparingRebalance the current generation may still commit) ...
        assert await commit(
            c, "g", ("t", 1, 1, -1, ""), generation=generation, member=follower
        ) == {("t", 1): NONE}
        follower_join = await join(c, "g", member=follower)
        await leader_join
        new = follower_join.generation_id
        assert new == generation + 1
        # ... CompletingRebalance: the new generation has no assignment yet.
        for member in (leader, follower):
            refused = await commit(c, "g", ("t", 0, 11, -1, ""), generation=new, member=member)
            assert refused == {("t", 0): REBALANCE_IN_PROGRESS}
        follower_sync = asyncio.create_task(sync(c, "g", new, follower))
        await sync(c, "g", new, leader, {leader: b"", follower: b""})
        await follower_sync
        # A zombie of the old generation: ILLEGAL_GENERATION at every member version, and the
        # stored offset is unchanged.
        for version in (1, 2, 5, 7, 9):
            zombie = await commit(
                c,
                "g",
                ("t", 0, 0, -1, "zombie"),
                generation=generation,
                member=leader,
                version=version,
            )
            assert zombie == {("t", 0): ILLEGAL_GENERATION}, version
        # A member id the group does not know; an admin commit (generation -1, no member) while
        # the group has members.
        assert await commit(c, "g", ("t", 0, 0, -1, ""), generation=new, member="ghost") == {
            ("t", 0): UNKNOWN_MEMBER_ID
        }
        assert await commit(c, "g", ("t", 0, 0, -1, "")) == {("t", 0): UNKNOWN_MEMBER_ID}
        assert await commit(c, "g", ("t", 0, 0, -1, ""), version=0) == {("t", 0): UNKNOWN_MEMBER_ID}
        assert (await fetch(c, "g", {"t": [0, 1]}))[1] == {
            ("t", 0): (10, -1, "gen2", NONE),
            ("t", 1): (1, -1, "", NONE),
        }
        # The current generation commits.
        assert await commit(c, "g", ("t", 0, 12, -1, "gen3"), generation=new, member=follower) == {
            ("t", 0): NONE
        }
        assert (await fetch(c, "g", {"t": [0]}))[1] == {("t", 0): (12, -1, "gen3", NONE)}
        # Once everyone left, an admin commit is accepted again.
        await leave(c, "g", (leader, None), (follower, None))
        assert await state(c, "g") == "Empty"
        assert await commit(c, "g", ("t", 0, 0, -1, "")) == {("t", 0): NONE}
        # And a member of a past generation is a stranger now.
        assert await commit(c, "g", ("t", 0, 5, -1, ""), generation=new, member=leader) == {
            ("t", 0): UNKNOWN_MEMBER_ID
        }
        assert (await fetch(c, "g", {"t": [0]}))[1] == {("t", 0): (0, -1, "", NONE)}

    run(tmp_path, scenario)


# --- heartbeat storms ------------------------------------------------------------------------


async def pipelined_heartbeats(
    port: int, group: str, generation: int, member: str, count: int
) -> list[int]:
    """``count`` Heartbeats written at once on one connection, then every answer read: their
    error codes, in order (correlation ids are checked)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = HeartbeatRequest(group_id=group, generation_id=generation, member_id=member)
        writer.write(b"".join(frame(HEARTBEAT, 4, body, i) for i in range(count)))
        errors = []
        for i in range(count):
            resp: HeartbeatResponse = decode(HEARTBEAT, 4, await read_frame(reader), i)
            errors.append(resp.error_code)
        return errors
    finally:
        writer.close()


def test_heartbeat_storms_are_answered_in_memory(tmp_path: Path) -> None:
    """5,000 pipelined heartbeats on one connection, then 4 x 2,500 on four at once (and
    heartbeats of strangers): all answered, the group stays Stable in its generation, other
    clients are answered promptly meanwhile, and nothing is written to the metadata store."""

    async def scenario(c: GroupClient) -> None:
        leader, follower, generation = await stable_pair(c, "g")
        writes = c.store.txns

        errors = await pipelined_heartbeats(c.port, "g", generation, leader, 5000)
        assert errors == [NONE] * 5000

        storms = [
            asyncio.create_task(pipelined_heartbeats(c.port, "g", generation, member, 2500))
            for member in (leader, follower, leader, follower)
        ]
        strangers = asyncio.create_task(pipelined_heartbeats(c.port, "nope", 1, "ghost", 2500))
        latencies = []
        while not all(s.done() for s in storms):
            latencies.append(await api_versions_round_trip(c.port))
            assert await state(c, "g") == "Stable"
        for storm in storms:
            assert await storm == [NONE] * 2500
        assert await strangers == [UNKNOWN_MEMBER_ID] * 2500
        assert latencies and max(latencies) < 1.0, latencies

        assert c.store.txns == writes
        assert "nope" not in c.broker.groups.groups  # a heartbeat creates no group
        described = await describe(c, "g")
        assert described.group_state == "Stable"
        assert sorted(m.member_id for m in described.members) == sorted([leader, follower])
        assert await heartbeat(c, "g", generation, follower) == NONE

    run(tmp_path, scenario)


# --- LeaveGroup and static members ------------------------------------------------------------


async def stable_static_trio(c: GroupClient, group: str) -> tuple[str, str, str, int]:
    """Static members "i1" (the leader) and "i2" and a dynamic member in a Stable group:
    (i1's member id, i2's, the dynamic one's, generation)."""
    s1 = await join(c, group, instance="i1", version=5)  # static: no MEMBER_ID_REQUIRED
    assert (s1.error_code, s1.generation_id) == (NONE, 1)
    assert (
        await sync(c, group, 1, s1.member_id, {s1.member_id: b"1"}, instance="i1")
    ).error_code == NONE
    s2_task = asyncio.create_task(join(c, group, instance="i2", version=5))
    assert await parked(s2_task)
    d_task = asyncio.create_task(join_new(c, group, version=5))
    assert await parked(d_task)
    s1 = await join(c, group, member=s1.member_id, instance="i1", version=5)
    s2, d = await s2_task, await d_task
    assert s1.generation_id == s2.generation_id == d.generation_id == 2
    assert sorted((m.member_id, m.group_instance_id) for m in s1.members) == sorted(
        [(s1.member_id, "i1"), (s2.member_id, "i2"), (d.member_id, None)]
    )
    followers = [
        asyncio.create_task(sync(c, group, 2, s2.member_id, instance="i2")),
        asyncio.create_task(sync(c, group, 2, d.member_id)),
    ]
    assignments = {s1.member_id: b"1", s2.member_id: b"2", d.member_id: b"d"}
    assert (await sync(c, group, 2, s1.member_id, assignments, instance="i1")).error_code == NONE
    assert [bytes((await f).assignment) for f in followers] == [b"2", b"d"]
    return s1.member_id, s2.member_id, d.member_id, 2


def test_leave_group_batch(tmp_path: Path) -> None:
    """LeaveGroup v3+ names several members, each with its own answer; a static member may
    be named by its instance id alone (administrative removal)."""

    async def scenario(c: GroupClient) -> None:
        s1, s2, d, generation = await stable_static_trio(c, "g")
        left = await leave(
            c,
            "g",
            (d, None),
            ("", "i2"),  # by instance id only
            ("ghost", None),
            ("", "nobody"),
            ("not-i1s-member-id", "i1"),
            (s1, "i2"),  # i2 is gone now
            (d, None),  # already left
            version=3,
        )
        assert left.error_code == NONE
        assert [(m.member_id, m.group_instance_id, m.error_code) for m in left.members] == [
            (d, None, NONE),
            ("", "i2", NONE),
            ("ghost", None, UNKNOWN_MEMBER_ID),
            ("", "nobody", UNKNOWN_MEMBER_ID),
            ("not-i1s-member-id", "i1", FENCED_INSTANCE_ID),
            (s1, "i2", UNKNOWN_MEMBER_ID),
            (d, None, UNKNOWN_MEMBER_ID),
        ]
        # Two left: the group rebalances around the one that stays.
        described = await describe(c, "g")
        assert described.group_state == "PreparingRebalance"
        assert [(m.member_id, m.group_instance_id) for m in described.members] == [(s1, "i1")]
        assert await heartbeat(c, "g", generation, s1, instance="i1") == REBALANCE_IN_PROGRESS
        assert await heartbeat(c, "g", generation, s2, instance="i2") == UNKNOWN_MEMBER_ID
        assert await heartbeat(c, "g", generation, d) == UNKNOWN_MEMBER_ID
        alone = await join(c, "g", member=s1, instance="i1")
        assert (alone.generation_id, [m.member_id for m in alone.members]) == (generation + 1, [s1])

        # v5 with reasons; then the last member leaves by instance id: Empty.
        body = LeaveGroupRequest(
            group_id="g",
            members=[MemberIdentity(member_id="", group_instance_id="i1", reason="scale down")],
        )
        resp: LeaveGroupResponse = await c.call(LEAVE_GROUP, 5, body)
        assert [(m.group_instance_id, m.error_code) for m in resp.members] == [("i1", NONE)]
        assert await state(c, "g") == "Empty"
        assert await delete_groups(c, "g") == {"g": NONE}

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_leave_group_single_member(tmp_path: Path, version: int) -> None:
    async def scenario(c: GroupClient) -> None:
        leader, follower, generation = await stable_pair(c, "g", version=3)
        assert (
            await leave(c, "g", ("ghost", None), version=version)
        ).error_code == UNKNOWN_MEMBER_ID
        assert (await leave(c, "g", (follower, None), version=version)).error_code == NONE
        assert (
            await leave(c, "g", (follower, None), version=version)
        ).error_code == UNKNOWN_MEMBER_ID
        assert await heartbeat(c, "g", generation, leader) == REBALANCE_IN_PROGRESS
        assert await delete_groups(c, "g") == {"g": NON_EMPTY_GROUP}
        assert (await leave(c, "g", (leader, None), version=version)).error_code == NONE
        assert await state(c, "g") == "Empty"

    run(tmp_path, scenario)


def test_a_leaving_member_releases_a_rebalance(tmp_path: Path) -> None:
    """A member that leaves instead of rejoining: the parked JoinGroup of the other completes
    at once (not at the rebalance timeout), and a parked request of the leaver is answered."""

    async def scenario(c: GroupClient) -> None:
        leader, follower, generation = await stable_pair(c, "g")
        leader_join = asyncio.create_task(join(c, "g", member=leader))
        assert await parked(leader_join)
        started = time.monotonic()
        assert [m.error_code for m in (await leave(c, "g", (follower, None))).members] == [NONE]
        alone = await leader_join
        assert time.monotonic() - started < REBALANCE_MS / 2000
        assert (alone.error_code, alone.generation_id) == (NONE, generation + 1)
        assert members_of(alone) == [(leader, PROTOCOLS[0][1])]
        # A follower leaving with its SyncGroup parked: that request is answered (kafscale's
        # choice: UNKNOWN_MEMBER_ID, where Kafka leaves it to time out) and the rebalance starts
        # over without it.
        b = await join(c, "g")
        assert b.error_code == MEMBER_ID_REQUIRED
        b_task = asyncio.create_task(join(c, "g", member=b.member_id))
        assert await parked(b_task)
        leader_join = asyncio.create_task(join(c, "g", member=leader))
        b_joined, leader_joined = await b_task, await leader_join
        generation = b_joined.generation_id
        assert leader_joined.generation_id == generation
        b_sync = asyncio.create_task(sync(c, "g", generation, b.member_id))
        assert await parked(b_sync)
        assert [m.error_code for m in (await leave(c, "g", (b.member_id, None))).members] == [0]
        assert (await b_sync).error_code == UNKNOWN_MEMBER_ID
        assert await state(c, "g") == "PreparingRebalance"
        assert (await sync(c, "g", generation, leader, {leader: b""})).error_code == (
            REBALANCE_IN_PROGRESS
        )

    run(tmp_path, scenario)


def test_a_static_member_replaced_while_parked_is_fenced(tmp_path: Path) -> None:
    """A static member restarts (rejoins without its member id) while its old incarnation's
    JoinGroup is parked: the old request gets FENCED_INSTANCE_ID, and so does everything the
    old incarnation sends afterwards with its instance id."""

    async def scenario(c: GroupClient) -> None:
        await c.create("t")
        s1, s2, d, generation = await stable_static_trio(c, "g")
        # s2 (old incarnation) rejoins with new metadata: a rebalance, parked until d rejoins.
        old_join = asyncio.create_task(
            join(c, "g", member=s2, instance="i2", version=5, protocols=[("range", b"new")])
        )
        assert await parked(old_join)
        # The new incarnation of i2.
        new_join = asyncio.create_task(join(c, "g", instance="i2", version=5))
        fenced = await old_join
        assert (fenced.error_code, fenced.member_id, fenced.generation_id) == (
            FENCED_INSTANCE_ID,
            s2,
            -1,
        )
        assert await parked(new_join)  # the rebalance still waits for the others
        s1_join = asyncio.create_task(join(c, "g", member=s1, instance="i1", version=5))
        d_joined = await join(c, "g", member=d, version=5)
        s1_joined, new = await s1_join, await new_join
        assert d_joined.generation_id == s1_joined.generation_id == new.generation_id
        assert new.member_id not in (s1, s2, d)
        assert sorted((m.member_id, m.group_instance_id) for m in s1_joined.members) == sorted(
            [(s1, "i1"), (new.member_id, "i2"), (d, None)]
        )
        generation = new.generation_id
        # Everything from the old incarnation is fenced.
        assert await heartbeat(c, "g", generation, s2, instance="i2") == FENCED_INSTANCE_ID
        assert (await sync(c, "g", generation, s2, instance="i2")).error_code == FENCED_INSTANCE_ID
        rejoin = await join(c, "g", member=s2, instance="i2", version=5)
        assert (rejoin.error_code, rejoin.member_id) == (FENCED_INSTANCE_ID, s2)
        committed = await commit(
            c, "g", ("t", 0, 1, -1, ""), generation=generation, member=s2, instance="i2"
        )
        assert committed == {("t", 0): FENCED_INSTANCE_ID}
        left = await leave(c, "g", (s2, "i2"))
        assert [m.error_code for m in left.members] == [FENCED_INSTANCE_ID]
        # Without its instance id the old member id is just unknown.
        assert await heartbeat(c, "g", generation, s2) == UNKNOWN_MEMBER_ID
        # The group was not disturbed by any of it.
        assert await state(c, "g") == "CompletingRebalance"
        assert await heartbeat(c, "g", generation, new.member_id, instance="i2") == NONE

    run(tmp_path, scenario)


def test_a_static_member_replaced_while_its_sync_is_parked(tmp_path: Path) -> None:
    async def scenario(c: GroupClient) -> None:
        s1, s2, d, generation = await stable_static_trio(c, "g")
        # The leader asks for a rebalance; everyone rejoins: CompletingRebalance.
        rejoins = [
            asyncio.create_task(join(c, "g", member=s1, instance="i1", version=5)),
            asyncio.create_task(join(c, "g", member=s2, instance="i2", version=5)),
        ]
        assert await parked(rejoins[0])
        d_joined = await join(c, "g", member=d, version=5)
        generation = d_joined.generation_id
        await asyncio.gather(*rejoins)
        old_sync = asyncio.create_task(sync(c, "g", generation, s2, instance="i2"))
        assert await parked(old_sync)
        # i2 restarts: its old SyncGroup is fenced; the group must rebalance again (the leader
        # may be assigning to the old member id).
        new_join = asyncio.create_task(join(c, "g", instance="i2", version=5))
        assert (await old_sync).error_code == FENCED_INSTANCE_ID
        assert await parked(new_join)
        assert await state(c, "g") == "PreparingRebalance"
        assert await heartbeat(c, "g", generation, s1, instance="i1") == REBALANCE_IN_PROGRESS

    run(tmp_path, scenario)


@pytest.mark.parametrize("version", [5, 8, 9])
def test_a_static_leader_rejoining_a_stable_group(tmp_path: Path, version: int) -> None:
    """A static leader restarting into a Stable group with unchanged metadata: no rebalance,
    the same generation. From v9 (KIP-814) it is told it leads but must skip the assignment;
    before, it is told the old leader id so that it does not assign."""

    async def scenario(c: GroupClient) -> None:
        s1, _, d, generation = await stable_static_trio(c, "g")
        new = await join(c, "g", instance="i1", version=version)
        assert (new.error_code, new.generation_id) == (NONE, generation)
        assert new.member_id != s1
        if version >= 9:
            assert (new.skip_assignment, new.leader) == (True, new.member_id)
            assert sorted(m.group_instance_id or "" for m in new.members) == ["", "i1", "i2"]
        else:
            assert (new.skip_assignment, new.leader, new.members) == (False, s1, [])
        assert await state(c, "g") == "Stable"
        # The new incarnation has the old one's assignment; the old one is fenced.
        synced = await sync(c, "g", generation, new.member_id, instance="i1")
        assert (synced.error_code, bytes(synced.assignment)) == (NONE, b"1")
        assert await heartbeat(c, "g", generation, s1, instance="i1") == FENCED_INSTANCE_ID
        assert await heartbeat(c, "g", generation, d) == NONE

    run(tmp_path, scenario)


def test_a_generation_minus_one_commit_naming_a_member_of_an_empty_group(tmp_path: Path) -> None:
    """Generation -1 commits are accepted while the group is Empty (or unknown), whatever
    member id / instance id they name, as Kafka's ClassicGroup.validateOffsetCommit."""

    async def scenario(c: GroupClient) -> None:
        await c.create("t")
        a = await join_new(c, "g")
        await sync(c, "g", 1, a.member_id, {a.member_id: b""})
        await leave(c, "g", (a.member_id, None))
        assert await state(c, "g") == "Empty"  # in memory
        assert await commit(c, "g", ("t", 0, 1, -1, ""), member=a.member_id) == {("t", 0): NONE}
        # A group nobody knows.
        assert await commit(c, "new", ("t", 0, 1, -1, ""), member="m", instance="i") == {
            ("t", 0): NONE
        }

    run(tmp_path, scenario)
