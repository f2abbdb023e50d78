"""The group coordinator (kafscale/broker/coordinator.py): parked requests completed as
futures, the timer, and offsets retention (KIP-211), with a controllable clock and a real
sqlite metadata store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from generated.consumer_protocol_subscription import ConsumerProtocolSubscription
from generated.errors import ErrorCode
from kafscale.broker.coordinator import GroupCoordinator
from kafscale.broker.group import EMPTY, STABLE, GroupSettings, JoinResult
from kafscale.broker.offsets import CommittedOffset, Offsets
from kafscale.metadata.sqlite import SqliteMetadataStore

DAY_MS = 24 * 3600 * 1000
RETENTION_MS = 7 * DAY_MS


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000_000_000.0

    def __call__(self) -> float:
        return self.ms / 1000


def run(
    tmp_path: Path, scenario: Callable[[GroupCoordinator, Offsets, Clock], Awaitable[None]]
) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(tmp_path / "m.sqlite3")
        offsets = Offsets(store, "ns")
        clock = Clock()
        coordinator = GroupCoordinator(
            offsets,
            GroupSettings(initial_rebalance_delay_ms=0),
            offsets_retention_ms=RETENTION_MS,
            retention_check_interval_ms=3_600_000,
            clock=clock,
        )
        await coordinator.start()
        try:
            await scenario(coordinator, offsets, clock)
        finally:
            await coordinator.close()
            await store.close()

    asyncio.run(main())


def subscription(*topics: str) -> bytes:
    return b"\x00\x01" + b"".join(
        ConsumerProtocolSubscription(topics=list(topics)).encode_chunks(1)
    )


async def join(
    c: GroupCoordinator, group: str, member: str = "", meta: bytes = b"", version: int = 3
) -> JoinResult:
    return await c.join(
        group,
        member_id=member,
        instance_id=None,
        protocol_type="consumer",
        protocols=[("range", meta)],
        session_timeout_ms=10_000,
        rebalance_timeout_ms=10_000,
        client_id="c",
        client_host="/h",
        version=version,
    )


async def stable_member(c: GroupCoordinator, group: str, meta: bytes = b"") -> JoinResult:
    joined = await join(c, group, meta=meta)
    synced = await c.sync(
        group,
        member_id=joined.member_id,
        instance_id=None,
        generation=joined.generation,
        protocol_type=None,
        protocol_name=None,
        assignments=[(joined.member_id, b"a")],
    )
    assert synced.error == 0
    return joined


def committed(at_ms: float, offset: int = 1, expire_ms: int = -1) -> CommittedOffset:
    return CommittedOffset(offset, commit_ms=int(at_ms), expire_ms=expire_ms)


def test_simple_consumer_offsets_expire_by_commit_time(tmp_path: Path) -> None:
    async def scenario(c: GroupCoordinator, offsets: Offsets, clock: Clock) -> None:
        now = clock.ms
        await offsets.commit(
            "simple",
            {("t", 0): committed(now - RETENTION_MS), ("t", 1): committed(now - RETENTION_MS + 1)},
        )
        await offsets.commit("legacy", {("t", 0): committed(now, expire_ms=int(now) - 1)})
        await offsets.commit("kept", {("t", 0): committed(now, expire_ms=int(now) + 1)})
        assert await c.expire_offsets() == 2
        assert list(await offsets.fetch("simple")) == [("t", 1)]
        assert not await offsets.exists("legacy")  # an explicit v2-4 retention time wins
        assert await offsets.exists("kept")

    run(tmp_path, scenario)


def test_group_offsets_expire_once_it_has_been_empty_for_the_retention(tmp_path: Path) -> None:
    async def scenario(c: GroupCoordinator, offsets: Offsets, clock: Clock) -> None:
        member = await stable_member(c, "g")
        old = clock.ms - 30 * DAY_MS  # committed long ago, but the group had members since
        await offsets.commit("g", {("t", 0): committed(old)})
        assert await c.expire_offsets() == 0  # Stable, not subscribed info: kept
        assert c.leave("g", [(member.member_id, None)]) == (0, [0])
        await asyncio.sleep(0)
        group = c.get("g")
        assert group is not None and group.state == EMPTY
        clock.ms += RETENTION_MS - 1
        assert await c.expire_offsets() == 0  # empty for less than the retention
        clock.ms += 1
        assert await c.expire_offsets() == 1
        assert c.get("g") is None  # an Empty group with no offsets is forgotten

    run(tmp_path, scenario)


def test_stable_consumer_group_keeps_offsets_of_subscribed_topics(tmp_path: Path) -> None:
    async def scenario(c: GroupCoordinator, offsets: Offsets, clock: Clock) -> None:
        await stable_member(c, "g", meta=subscription("subscribed"))
        group = c.get("g")
        assert group is not None and group.state == STABLE
        old = clock.ms - RETENTION_MS
        await offsets.commit(
            "g",
            {
                ("subscribed", 0): committed(old),
                ("dropped", 0): committed(old),
                ("dropped", 1): committed(clock.ms),
            },
        )
        assert await c.expire_offsets() == 1
        assert list(await offsets.fetch("g")) == [("dropped", 1), ("subscribed", 0)]

    run(tmp_path, scenario)


def test_close_answers_parked_joins_with_not_coordinator(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(tmp_path / "m.sqlite3")
        c = GroupCoordinator(Offsets(store, "ns"), GroupSettings(initial_rebalance_delay_ms=60_000))
        await c.start()
        parked = asyncio.create_task(join(c, "g"))
        await asyncio.sleep(0.05)
        assert not parked.done()  # waiting out the initial delay
        await c.close()
        result = await asyncio.wait_for(parked, 1)
        assert result.error == ErrorCode.NOT_COORDINATOR
        await store.close()

    asyncio.run(main())


def test_timer_completes_a_rebalance_at_its_deadline(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(tmp_path / "m.sqlite3")
        c = GroupCoordinator(Offsets(store, "ns"), GroupSettings(initial_rebalance_delay_ms=150))
        await c.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        first, second = await asyncio.gather(join(c, "g"), join(c, "g"))
        elapsed = loop.time() - started
        assert first.error == second.error == 0 and first.generation == second.generation == 1
        assert {first.leader} == {second.leader}
        assert 0.14 <= elapsed < 2  # the initial delay, then the timer fired
        await c.close()
        await store.close()

    asyncio.run(main())


def test_join_for_an_unknown_group_with_a_member_id(tmp_path: Path) -> None:
    async def scenario(c: GroupCoordinator, offsets: Offsets, clock: Clock) -> None:
        assert (await join(c, "nope", member="m")).error == 25  # UNKNOWN_MEMBER_ID
        assert c.get("nope") is None  # not created by a join that names a member
        assert (await join(c, "", member="")).error == 24  # INVALID_GROUP_ID
        bad = await c.join(
            "g",
            member_id="",
            instance_id=None,
            protocol_type="consumer",
            protocols=[("range", b"")],
            session_timeout_ms=1,
            rebalance_timeout_ms=1,
            client_id="c",
            client_host="/h",
            version=3,
        )
        assert bad.error == 26  # INVALID_SESSION_TIMEOUT

    run(tmp_path, scenario)
