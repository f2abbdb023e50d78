"""The group coordinator: drives each group's sans-io state machine (``group.py``) from the
handlers, completes parked JoinGroup/SyncGroup requests, runs one timer for every group's
deadlines, and expires committed offsets (``offsets.retention.minutes``).

Membership lives in this broker's memory, as Kafka keeps it (Kafka also logs it; we do not:
after a restart members get UNKNOWN_MEMBER_ID, rejoin and resume from their committed offsets,
which live in the metadata store). With several brokers each group has exactly one
coordinator; see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from generated.errors import ErrorCode
from kafscale.broker.group import EMPTY, STABLE, Group, GroupSettings, JoinResult, SyncResult
from kafscale.broker.offsets import Offsets, TopicPartition
from kafscale.broker.periodic import stop_tasks

log = logging.getLogger("kafscale.broker")


class GroupCoordinator:
    """Every group this broker coordinates."""

    def __init__(
        self,
        offsets: Offsets,
        settings: GroupSettings,
        *,
        session_timeout_bounds_ms: tuple[int, int] = (6000, 1800000),
        offsets_retention_ms: int = 7 * 24 * 3600 * 1000,
        retention_check_interval_ms: int = 600000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.offsets = offsets
        self.settings = settings
        self.session_timeout_bounds_ms = session_timeout_bounds_ms
        self.offsets_retention_ms = offsets_retention_ms
        self.retention_check_interval_ms = retention_check_interval_ms
        self.clock = clock
        self.groups: dict[str, Group] = {}
        self.transition_listeners: list[Callable[[str, str, str], None]] = []
        """Called with (group id, old state, new state) when a group changes state."""
        self._wake = asyncio.Event()
        self._timer_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def now(self) -> float:
        """Milliseconds of wall-clock time, as Kafka's coordinator uses."""
        return self.clock() * 1000

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run_timer()),
            asyncio.create_task(self._run_retention()),
        ]

    async def close(self) -> None:
        """Stop the timers; parked JoinGroup/SyncGroup requests get NOT_COORDINATOR, which
        sends clients to FindCoordinator and a fresh JoinGroup (Kafka does this when a
        coordinator resigns)."""
        await stop_tasks(self._tasks)
        self.forget_all()

    # --- the APIs --------------------------------------------------------------------------

    async def join(
        self,
        group_id: str,
        *,
        member_id: str,
        instance_id: str | None,
        protocol_type: str,
        protocols: Sequence[tuple[str, bytes]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        client_id: str,
        client_host: str,
        version: int,
    ) -> JoinResult:
        if not group_id:
            return JoinResult(ErrorCode.INVALID_GROUP_ID, member_id)
        low, high = self.session_timeout_bounds_ms
        if not low <= session_timeout_ms <= high:
            return JoinResult(ErrorCode.INVALID_SESSION_TIMEOUT, member_id)
        group = self.groups.get(group_id)
        if group is None:
            # The group is created by a first join (no member id). A known member id for a
            # group not in memory (e.g. after a restart): Kafka would find the group from its
            # committed offsets, Empty, and answer through the same checks.
            if member_id and not await self.offsets.exists(group_id):
                return JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id)
            group = self.groups.get(group_id)
            if group is None:
                group = self.groups[group_id] = Group(group_id, self.settings, self.now())
                group.on_transition = self._transitioned
        join = functools.partial(
            group.join,
            member_id=member_id,
            instance_id=instance_id,
            protocol_type=protocol_type,
            protocols=protocols,
            session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
            client_id=client_id,
            client_host=client_host,
            version=version,
        )
        result = await self._parked(group, join)
        assert isinstance(result, JoinResult)
        return result

    async def sync(
        self,
        group_id: str,
        *,
        member_id: str,
        instance_id: str | None,
        generation: int,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: Sequence[tuple[str, bytes]],
    ) -> SyncResult:
        if not group_id:
            return SyncResult(ErrorCode.INVALID_GROUP_ID)
        group = self.groups.get(group_id)
        if group is None:
            return SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
        sync = functools.partial(
            group.sync,
            member_id=member_id,
            instance_id=instance_id,
            generation=generation,
            protocol_type=protocol_type,
            protocol_name=protocol_name,
            assignments=assignments,
        )
        result = await self._parked(group, sync)
        assert isinstance(result, SyncResult)
        return result

    def heartbeat(
        self, group_id: str, *, member_id: str, instance_id: str | None, generation: int
    ) -> int:
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        error = group.heartbeat(
            self.now(), member_id=member_id, instance_id=instance_id, generation=generation
        )
        self._settle(group)
        return error

    def leave(
        self, group_id: str, members: Sequence[tuple[str, str | None]]
    ) -> tuple[int, list[int]]:
        """The request's error and each leaving (member id, group instance id)'s error."""
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID, []
        group = self.groups.get(group_id)
        if group is None:
            return 0, [ErrorCode.UNKNOWN_MEMBER_ID for _ in members]
        now = self.now()
        errors = [group.leave(now, member_id=m, instance_id=i) for m, i in members]
        self._settle(group)
        return 0, errors

    def validate_commit(
        self, group_id: str, *, member_id: str, instance_id: str | None, generation: int
    ) -> int | None:
        """0 when an OffsetCommit may be stored; None when this group is not in memory (it
        has no members: the caller applies the rules for a group known by its offsets)."""
        group = self.groups.get(group_id)
        if group is None:
            return None
        error = group.validate_commit(
            self.now(), member_id=member_id, instance_id=instance_id, generation=generation
        )
        self._settle(group)
        return error

    def forget_all(self) -> None:
        """This broker no longer coordinates any group (its lease was lost): parked requests
        get NOT_COORDINATOR and members go find the new coordinator."""
        for group_id in list(self.groups):
            group = self.groups.pop(group_id)
            group.close(ErrorCode.NOT_COORDINATOR)
            self._deliver(group)

    def _transitioned(self, group_id: str, old: str, new: str) -> None:
        for listener in self.transition_listeners:
            listener(group_id, old, new)

    def get(self, group_id: str) -> Group | None:
        """The group's membership, if this coordinator holds it in memory."""
        return self.groups.get(group_id)

    def forget(self, group_id: str) -> None:
        """DeleteGroups removed an Empty group."""
        group = self.groups.pop(group_id, None)
        if group is not None:
            group.close(ErrorCode.UNKNOWN_MEMBER_ID)
            self._deliver(group)

    # --- completions and time --------------------------------------------------------------

    async def _parked(
        self, group: Group, call: Callable[[float, object], None]
    ) -> JoinResult | SyncResult:
        """Make a call that may park its request (JoinGroup, SyncGroup) with a future as its
        waiter token, and wait for whatever completes it."""
        waiter: asyncio.Future[JoinResult | SyncResult] = asyncio.get_running_loop().create_future()
        call(self.now(), waiter)
        self._settle(group)
        return await waiter

    def _settle(self, group: Group) -> None:
        """Fire the deadlines a call made due at once (e.g. a zero initial rebalance delay),
        answer what completed, and wake the timer for an earlier deadline."""
        now = self.now()
        deadline = group.next_deadline()
        if deadline is not None and deadline <= now:
            group.advance(now)
            deadline = group.next_deadline()
        self._deliver(group)
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            self._wake.set()

    @staticmethod
    def _deliver(group: Group) -> None:
        for waiter, result in group.take_completed():
            future = cast("asyncio.Future[Any]", waiter)
            if not future.done():
                future.set_result(result)

    async def _run_timer(self) -> None:
        while True:
            deadlines = [d for g in self.groups.values() if (d := g.next_deadline()) is not None]
            self._timer_at = min(deadlines, default=None)
            timeout = None if self._timer_at is None else max(0.0, self._timer_at - self.now())
            self._wake.clear()
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives
            # after the wake-up was set but before this task ran, and close() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout is None else timeout / 1000):
                    await self._wake.wait()
            now = self.now()
            for group in list(self.groups.values()):
                deadline = group.next_deadline()
                if deadline is not None and deadline <= now:
                    try:
                        group.advance(now)
                    finally:
                        self._deliver(group)

    # --- offsets retention -----------------------------------------------------------------

    async def _run_retention(self) -> None:
        while True:
            await asyncio.sleep(self.retention_check_interval_ms / 1000)
            try:
                await self.expire_offsets()
            except Exception:  # a metadata store hiccup: the next round tries again
                log.exception("offsets retention check failed")

    async def expire_offsets(self) -> int:
        """Delete expired committed offsets, as Kafka's GroupMetadata.removeExpiredOffsets
        (KIP-211); how many. A group with members keeps its offsets, except a Stable consumer
        group's for topics none of its members subscribes to (by commit time). An Empty group
        that had members loses all once it has been Empty for the retention time; a group
        known only by its commits (a simple consumer, or a group from before a restart) loses
        each when it is that old. An explicit v2-4 retention time wins."""
        now = self.now()
        retention = self.offsets_retention_ms
        expired_total = 0
        for group_id in await self.offsets.groups():
            group = self.groups.get(group_id)
            subscribed: set[str] = set()
            if group is None or (group.state == EMPTY and group.protocol_type is None):
                base: float | None = None  # each offset's commit time
            elif group.state == EMPTY:
                base = group.state_since
            elif group.state == STABLE and (topics := group.subscribed_topics()) is not None:
                base, subscribed = None, topics
            else:
                continue
            expired: list[TopicPartition] = []
            for tp, committed in (await self.offsets.fetch(group_id)).items():
                if tp[0] in subscribed:
                    continue
                if committed.expire_ms >= 0:
                    gone = now >= committed.expire_ms
                else:
                    gone = now - (committed.commit_ms if base is None else base) >= retention
                if gone:
                    expired.append(tp)
            if expired:
                await self.offsets.delete(group_id, expired)
                expired_total += len(expired)
                log.info("group %s: %d committed offsets expired", group_id, len(expired))
        for group_id, group in list(self.groups.items()):
            # Kafka drops an Empty group with no offsets left (nothing to remember it by).
            if group.state == EMPTY and not group.pending_members:
                if not await self.offsets.exists(group_id) and self.groups.get(group_id) is group:
                    del self.groups[group_id]
        return expired_total
