"""One consumer group's membership: Kafka's classic group protocol as a sans-io state machine.

The rules follow Kafka 3.9's classic ``GroupCoordinator`` / ``GroupMetadata`` (the default
coordinator of that release): states Empty -> PreparingRebalance -> CompletingRebalance ->
Stable, a JoinGroup that parks until every known member rejoined (or the rebalance timeout),
MEMBER_ID_REQUIRED for a first join from v4 (KIP-394), one protocol all members support, the
leader's assignment handed out unchanged, generations fencing stale members, session timeouts,
and static membership (KIP-345).

No I/O and no clock: every call takes ``now`` (ms). A JoinGroup or SyncGroup that must wait is
parked under an opaque *waiter* token; whenever a call (or :meth:`Group.advance` at a
deadline) completes parked requests, their results are queued in :attr:`Group.completed` for
the caller to deliver. :meth:`Group.next_deadline` says when ``advance`` must run next.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from generated.consumer_protocol_subscription import ConsumerProtocolSubscription
from generated.errors import ErrorCode

EMPTY = "Empty"
PREPARING_REBALANCE = "PreparingRebalance"
COMPLETING_REBALANCE = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"

NEW_MEMBER_JOIN_TIMEOUT_MS = 5 * 60 * 1000
"""A new member's JoinGroup is held at most this long (Kafka's NewMemberJoinTimeoutMs): a
client that disconnected mid-rebalance must not stay in the group forever."""

CONSUMER = "consumer"


@dataclass(slots=True)
class GroupSettings:
    """The broker settings a group obeys (Kafka's names)."""

    initial_rebalance_delay_ms: int = 3000
    """group.initial.rebalance.delay.ms: an Empty group's first rebalance waits this long
    for more members (extended while they keep arriving, up to the rebalance timeout)."""
    max_size: int = 2**31 - 1
    """group.max.size."""


@dataclass(slots=True)
class JoinResult:
    error: int
    member_id: str
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    """(member id, group instance id, metadata for the chosen protocol); the leader's only."""
    skip_assignment: bool = False


@dataclass(slots=True)
class SyncResult:
    error: int
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(slots=True)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    join_waiter: object | None = None
    join_version: int = 0
    sync_waiter: object | None = None
    is_new: bool = False
    deadline: float | None = None
    """When the member expires unless it heartbeats (None: parked in a rebalance)."""

    def metadata(self, protocol: str) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""

    def matches(self, protocols: Sequence[tuple[str, bytes]]) -> bool:
        return self.protocols == list(protocols)


Completion = tuple[object, JoinResult | SyncResult]


class Group:
    """The membership of one group (in the coordinator's memory, as in Kafka)."""

    def __init__(self, group_id: str, settings: GroupSettings, now: float) -> None:
        self.group_id = group_id
        self.settings = settings
        self.state = EMPTY
        self.state_since = now
        self.generation = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self.static_members: dict[str, str] = {}  # group instance id -> member id
        self.pending_members: dict[str, float] = {}  # MEMBER_ID_REQUIRED given, until deadline
        self.pending_sync: set[str] = set()
        self.join_deadline: float | None = None
        self.join_extensible_until: float | None = None  # the initial delayed join
        self.new_member_added = False
        self.sync_deadline: float | None = None
        self.completed: list[Completion] = []
        self.on_transition: Callable[[str, str, str], None] | None = None
        """Called with (group id, old state, new state) on every state change (metrics)."""

    # --- queries ---------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        return self.state == EMPTY

    def has(self, member_id: str) -> bool:
        return member_id in self.members

    def next_deadline(self) -> float | None:
        deadlines = [m.deadline for m in self.members.values() if m.deadline is not None]
        deadlines.extend(self.pending_members.values())
        if self.join_deadline is not None:
            deadlines.append(self.join_deadline)
        if self.sync_deadline is not None:
            deadlines.append(self.sync_deadline)
        return min(deadlines, default=None)

    def take_completed(self) -> list[Completion]:
        completed, self.completed = self.completed, []
        return completed

    def subscribed_topics(self) -> set[str] | None:
        """Topics the members of a consumer group subscribe to; None when unknown (another
        protocol type, or metadata that does not parse), as Kafka's computeSubscribedTopics."""
        if self.protocol_type != CONSUMER or self.protocol_name is None:
            return None
        topics: set[str] = set()
        for member in self.members.values():
            metadata = member.metadata(self.protocol_name)
            try:
                version = int.from_bytes(metadata[:2], "big", signed=True)
                low, high = ConsumerProtocolSubscription.VALID_VERSIONS
                if version < low:
                    return None
                # A newer version is read as the newest we know (Kafka's forward compatibility:
                # fields are only ever appended), so trailing bytes are fine.
                subscription, _ = ConsumerProtocolSubscription.read(metadata, 2, min(version, high))
            except Exception:
                return None
            topics.update(subscription.topics)
        return topics

    # --- JoinGroup -------------------------------------------------------------------------

    def join(
        self,
        now: float,
        waiter: object,
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
    ) -> None:
        """Handle a JoinGroup; its result is queued in :attr:`completed` now or later."""

        def fail(error: int, member: str = member_id) -> None:
            self.completed.append((waiter, JoinResult(error, member)))

        protocols = list(protocols)
        names = {name for name, _ in protocols}
        if not self._accepts_joining_member(member_id):
            self._remove(member_id)
            fail(ErrorCode.GROUP_MAX_SIZE_REACHED, "")
        elif self.state == DEAD:
            fail(ErrorCode.COORDINATOR_NOT_AVAILABLE)
        elif not self._supports_protocols(protocol_type, names):
            fail(ErrorCode.INCONSISTENT_GROUP_PROTOCOL)
        elif not member_id:
            new_id = f"{instance_id or client_id}-{uuid.uuid4()}"
            args = (session_timeout_ms, rebalance_timeout_ms, protocol_type, protocols)
            if instance_id is not None:
                old_id = self.static_members.get(instance_id)
                if old_id is None:
                    self._add_and_rebalance(
                        now, waiter, version, new_id, instance_id, client_id, client_host, *args
                    )
                else:
                    self._replace_static_member(
                        now, waiter, version, old_id, new_id, instance_id, *args
                    )
            elif version >= 4:  # KIP-394: the member id comes back first, the member rejoins
                self.pending_members[new_id] = now + session_timeout_ms
                fail(ErrorCode.MEMBER_ID_REQUIRED, new_id)
            else:
                self._add_and_rebalance(
                    now, waiter, version, new_id, None, client_id, client_host, *args
                )
        elif member_id in self.pending_members:
            if instance_id is not None:  # Kafka: IllegalStateException; a pending id is dynamic
                fail(ErrorCode.UNKNOWN_MEMBER_ID)
            else:
                args = (session_timeout_ms, rebalance_timeout_ms, protocol_type, protocols)
                self._add_and_rebalance(
                    now, waiter, version, member_id, None, client_id, client_host, *args
                )
        elif error := self._validate_member(member_id, instance_id):
            fail(error)
        else:
            member = self.members[member_id]
            unchanged = member.matches(protocols)
            if self.state == COMPLETING_REBALANCE and unchanged:
                # A rejoin with unchanged metadata (a lost JoinGroup response): this generation;
                # the members again for the leader only.
                is_leader = member_id == self.leader
                self.completed.append((waiter, self._join_result(member, with_members=is_leader)))
            elif self.state == STABLE and member_id != self.leader and unchanged:
                # A follower with nothing new: this generation, so it can SyncGroup again.
                self.completed.append((waiter, self._join_result(member, with_members=False)))
            elif self.state in (PREPARING_REBALANCE, COMPLETING_REBALANCE, STABLE):
                # Joining a rebalance; or changed metadata, or the leader asking for one (e.g.
                # the topics changed).
                self._update_member(
                    member, waiter, version, protocols, session_timeout_ms, rebalance_timeout_ms
                )
                self._maybe_prepare_rebalance(now)
            else:
                fail(ErrorCode.UNKNOWN_MEMBER_ID)
        if self.state == PREPARING_REBALANCE:
            self._try_complete_join(now)

    def _accepts_joining_member(self, member_id: str) -> bool:
        limit = self.settings.max_size
        if self.state in (EMPTY, DEAD):
            return True
        member = self.members.get(member_id)
        if self.state == PREPARING_REBALANCE:
            awaiting = sum(1 for m in self.members.values() if m.join_waiter is not None)
            return (member is not None and member.join_waiter is not None) or awaiting < limit
        return member is not None or len(self.members) < limit

    def _supports_protocols(self, protocol_type: str, names: set[str]) -> bool:
        if self.state == EMPTY:
            return bool(protocol_type) and bool(names)
        return self.protocol_type == protocol_type and bool(names & self._candidate_protocols())

    def _candidate_protocols(self) -> set[str]:
        """The protocols every member supports."""
        members = iter(self.members.values())
        first = next(members, None)
        if first is None:
            return set()
        candidates = {name for name, _ in first.protocols}
        for member in members:
            candidates &= {name for name, _ in member.protocols}
        return candidates

    def _select_protocol(self) -> str:
        """Each member votes for its most preferred candidate; the most votes win (ties: the
        first voted for)."""
        candidates = self._candidate_protocols()
        votes: dict[str, int] = {}
        for member in self.members.values():
            vote = next((name for name, _ in member.protocols if name in candidates), None)
            if vote is not None:
                votes[vote] = votes.get(vote, 0) + 1
        if not votes:  # unreachable: every joining member shares a protocol with the group
            return next(iter(self.members.values())).protocols[0][0]
        return max(votes, key=lambda name: votes[name])

    def _add_and_rebalance(
        self,
        now: float,
        waiter: object,
        version: int,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
    ) -> None:
        member = Member(
            member_id,
            instance_id,
            client_id,
            client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type,
            protocols,
            join_waiter=waiter,
            join_version=version,
            is_new=True,
            # A new member cannot heartbeat before its JoinGroup answers.
            deadline=now + NEW_MEMBER_JOIN_TIMEOUT_MS,
        )
        if self.state == PREPARING_REBALANCE and self.generation == 0:
            self.new_member_added = True  # the initial delayed join may wait longer
        if instance_id is not None:
            self.static_members[instance_id] = member_id
        if not self.members:
            self.protocol_type = protocol_type
        if self.leader is None:
            self.leader = member_id
        self.members[member_id] = member
        self.pending_members.pop(member_id, None)
        self._maybe_prepare_rebalance(now)

    def _update_member(
        self,
        member: Member,
        waiter: object,
        version: int,
        protocols: list[tuple[str, bytes]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
    ) -> None:
        if member.join_waiter is not None:
            # A second JoinGroup while one is parked (a retry on another connection): the
            # first is answered so that its connection is not held forever.
            answer = JoinResult(ErrorCode.REBALANCE_IN_PROGRESS, member.member_id)
            self.completed.append((member.join_waiter, answer))
        member.protocols = protocols
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.join_waiter = waiter
        member.join_version = version

    def _replace_static_member(
        self,
        now: float,
        waiter: object,
        version: int,
        old_id: str,
        new_id: str,
        instance_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
    ) -> None:
        """A static member rejoining without its member id (a restart): the new incarnation
        takes the old one's place and the old one's parked requests are fenced."""
        previous_leader = self.leader
        member = self.members.pop(old_id)
        if member.join_waiter is not None:
            self.completed.append(
                (member.join_waiter, JoinResult(ErrorCode.FENCED_INSTANCE_ID, old_id))
            )
            member.join_waiter = None
        if member.sync_waiter is not None:
            self.completed.append((member.sync_waiter, SyncResult(ErrorCode.FENCED_INSTANCE_ID)))
            member.sync_waiter = None
        member.member_id = new_id
        self.members[new_id] = member
        if self.leader == old_id:
            self.leader = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        self.static_members[instance_id] = new_id
        self._heartbeat(now, member)
        self._update_member(
            member, waiter, version, protocols, session_timeout_ms, rebalance_timeout_ms
        )
        if self.state == STABLE:
            if self.protocol_name == self._select_protocol():
                # No rebalance: the assignment stands. From v9 (KIP-814) a rejoining leader gets
                # the members but is told to skip the assignment; before, it is told the old
                # leader id so that it does not think itself the leader and reassign.
                is_leader = self.leader == new_id and version >= 9
                result = self._join_result(member, with_members=is_leader)
                result.skip_assignment = is_leader
                if not is_leader:
                    result.leader = previous_leader or ""
                member.join_waiter = None
                self.completed.append((waiter, result))
            else:
                self._maybe_prepare_rebalance(now)
        elif self.state == COMPLETING_REBALANCE:
            # The leader may already be assigning to the old member id: start over.
            self._prepare_rebalance(now)

    # --- rebalancing -----------------------------------------------------------------------

    def _rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def _maybe_prepare_rebalance(self, now: float) -> None:
        if self.state in (STABLE, COMPLETING_REBALANCE, EMPTY):
            self._prepare_rebalance(now)

    def _prepare_rebalance(self, now: float) -> None:
        if self.state == COMPLETING_REBALANCE:
            self._propagate_assignment(now, ErrorCode.REBALANCE_IN_PROGRESS, reset=True)
        self.sync_deadline = None
        timeout = self._rebalance_timeout_ms()
        if self.state == EMPTY:
            delay = self.settings.initial_rebalance_delay_ms
            self.join_deadline = now + delay
            self.join_extensible_until = now + max(timeout, delay)
            self.new_member_added = False
        else:
            self.join_deadline = now + timeout
            self.join_extensible_until = None
        self._transition(PREPARING_REBALANCE, now)

    def _all_members_joined(self) -> bool:
        return not self.pending_members and all(
            m.join_waiter is not None for m in self.members.values()
        )

    def _try_complete_join(self, now: float) -> None:
        # The initial delayed join never completes early: it waits for more members.
        if self.join_extensible_until is None and self._all_members_joined():
            self._complete_join(now)

    def _join_deadline_passed(self, now: float) -> None:
        extensible = self.join_extensible_until
        if extensible is not None and self.new_member_added and now < extensible:
            self.new_member_added = False
            self.join_deadline = min(now + self.settings.initial_rebalance_delay_ms, extensible)
            return
        self._complete_join(now)

    def _complete_join(self, now: float) -> None:
        self.join_deadline = None
        self.join_extensible_until = None
        for member in [m for m in self.members.values() if m.join_waiter is None]:
            if member.instance_id is None:  # static members stay until their session expires
                self._remove(member.member_id)
        if self.members and not self._elect_joined_leader():
            # Only static members that did not rejoin: wait another rebalance timeout for
            # them to rejoin or expire.
            self.join_deadline = now + self._rebalance_timeout_ms()
            return
        self.generation += 1
        self.pending_sync.clear()
        if not self.members:
            self.protocol_name = None
            self._transition(EMPTY, now)
            return
        self.protocol_name = self._select_protocol()
        self._transition(COMPLETING_REBALANCE, now)
        for member in self.members.values():
            if member.join_waiter is not None:
                result = self._join_result(member, with_members=member.member_id == self.leader)
                self.completed.append((member.join_waiter, result))
                member.join_waiter = None
            self._heartbeat(now, member)
            member.is_new = False
            self.pending_sync.add(member.member_id)
        self.sync_deadline = now + self._rebalance_timeout_ms()

    def _elect_joined_leader(self) -> bool:
        leader = self.members.get(self.leader or "")
        if leader is not None and leader.join_waiter is not None:
            return True
        joined = next((m for m in self.members.values() if m.join_waiter is not None), None)
        if joined is None:
            return False
        self.leader = joined.member_id
        return True

    def _join_result(self, member: Member, *, with_members: bool) -> JoinResult:
        protocol = self.protocol_name or ""
        return JoinResult(
            ErrorCode.NONE,
            member.member_id,
            self.generation,
            self.protocol_type,
            self.protocol_name,
            self.leader or "",
            [(m.member_id, m.instance_id, m.metadata(protocol)) for m in self.members.values()]
            if with_members
            else [],
        )

    def _transition(self, state: str, now: float) -> None:
        old, self.state = self.state, state
        self.state_since = now
        if self.on_transition is not None and old != state:
            self.on_transition(self.group_id, old, state)

    # --- SyncGroup -------------------------------------------------------------------------

    def sync(
        self,
        now: float,
        waiter: object,
        *,
        member_id: str,
        instance_id: str | None,
        generation: int,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: Iterable[tuple[str, bytes]],
    ) -> None:
        """Handle a SyncGroup; its result is queued in :attr:`completed` now or later."""
        error = self._validate(member_id, instance_id, generation)
        if not error and protocol_type is not None and protocol_type != self.protocol_type:
            error = ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        if not error and protocol_name is not None and protocol_name != self.protocol_name:
            error = ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        if not error and self.state == EMPTY:
            error = ErrorCode.UNKNOWN_MEMBER_ID
        if not error and self.state == PREPARING_REBALANCE:
            error = ErrorCode.REBALANCE_IN_PROGRESS
        if error:
            self.completed.append((waiter, SyncResult(error)))
            return
        member = self.members[member_id]
        self.pending_sync.discard(member_id)
        if self.state == STABLE:
            self.completed.append((waiter, self._sync_result(member)))
            self._heartbeat(now, member)
        else:  # CompletingRebalance: wait for the leader's assignment
            if member.sync_waiter is not None:
                self.completed.append(
                    (member.sync_waiter, SyncResult(ErrorCode.REBALANCE_IN_PROGRESS))
                )
            member.sync_waiter = waiter
            if member_id == self.leader:
                given = dict(assignments)  # the leader's, unchanged; a member it missed gets b""
                for each in self.members.values():
                    each.assignment = given.get(each.member_id, b"")
                self._propagate_assignment(now, ErrorCode.NONE, reset=False)
                self._transition(STABLE, now)
        if not self.pending_sync:
            self.sync_deadline = None

    def _sync_result(self, member: Member) -> SyncResult:
        return SyncResult(ErrorCode.NONE, member.assignment, self.protocol_type, self.protocol_name)

    def _propagate_assignment(self, now: float, error: int, *, reset: bool) -> None:
        for member in self.members.values():
            if reset:
                member.assignment = b""
            if member.sync_waiter is not None:
                result = self._sync_result(member) if not error else SyncResult(error)
                self.completed.append((member.sync_waiter, result))
                member.sync_waiter = None
                # A session that ran out while parked restarts now that the member is answered.
                self._heartbeat(now, member)

    # --- Heartbeat, LeaveGroup, OffsetCommit -------------------------------------------------

    def heartbeat(
        self, now: float, *, member_id: str, instance_id: str | None, generation: int
    ) -> int:
        error = self._validate(member_id, instance_id, generation)
        if error:
            return error
        if self.state == EMPTY:
            return ErrorCode.UNKNOWN_MEMBER_ID
        self._heartbeat(now, self.members[member_id])
        return (
            ErrorCode.REBALANCE_IN_PROGRESS if self.state == PREPARING_REBALANCE else ErrorCode.NONE
        )

    def leave(self, now: float, *, member_id: str, instance_id: str | None) -> int:
        """One leaving member (LeaveGroup names several from v3); administrative removal by
        group instance id alone (member id "") is allowed, as in Kafka (KIP-345)."""
        if self.state == DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if not member_id:
            current = self.static_members.get(instance_id) if instance_id is not None else None
            if current is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            self._remove_and_update(now, self.members[current])
            return ErrorCode.NONE
        if member_id in self.pending_members:
            del self.pending_members[member_id]
            if self.state == PREPARING_REBALANCE:
                self._try_complete_join(now)
            return ErrorCode.NONE
        error = self._validate_member(member_id, instance_id)
        if error:
            return error
        self._remove_and_update(now, self.members[member_id])
        return ErrorCode.NONE

    def validate_commit(
        self, now: float, *, member_id: str, instance_id: str | None, generation: int
    ) -> int:
        """Kafka's validateOffsetCommit: 0 when an OffsetCommit may be stored."""
        if self.state == DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if generation < 0 and self.state == EMPTY:
            return ErrorCode.NONE  # the admin client, or a consumer not using group management
        if generation >= 0 or member_id or instance_id is not None:
            error = self._validate(member_id, instance_id, generation)
            if error:
                return error
        elif self.state != EMPTY:
            return ErrorCode.UNKNOWN_MEMBER_ID  # only members may commit for a group with members
        else:
            return ErrorCode.NONE
        if self.state == COMPLETING_REBALANCE:
            # The member has its new generation but not its assignment yet.
            return ErrorCode.REBALANCE_IN_PROGRESS
        if self.state == EMPTY:
            return ErrorCode.NONE
        self._heartbeat(now, self.members[member_id])
        return ErrorCode.NONE

    def _validate(self, member_id: str, instance_id: str | None, generation: int) -> int:
        if self.state == DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        error = self._validate_member(member_id, instance_id)
        if error:
            return error
        return ErrorCode.ILLEGAL_GENERATION if generation != self.generation else ErrorCode.NONE

    def _validate_member(self, member_id: str, instance_id: str | None) -> int:
        """A group instance id must map to this member id; the member id must be known."""
        if instance_id is not None:
            current = self.static_members.get(instance_id)
            if current is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            if current != member_id:
                return ErrorCode.FENCED_INSTANCE_ID
        return ErrorCode.NONE if member_id in self.members else ErrorCode.UNKNOWN_MEMBER_ID

    def _heartbeat(self, now: float, member: Member) -> None:
        member.deadline = now + member.session_timeout_ms

    def _remove_and_update(self, now: float, member: Member) -> None:
        if member.join_waiter is not None:  # the client retries its JoinGroup if still alive
            self.completed.append((member.join_waiter, JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, "")))
            member.join_waiter = None
        if member.sync_waiter is not None:
            self.completed.append((member.sync_waiter, SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)))
            member.sync_waiter = None
        self._remove(member.member_id)
        if self.state in (STABLE, COMPLETING_REBALANCE):
            self._maybe_prepare_rebalance(now)
        elif self.state == PREPARING_REBALANCE:
            self._try_complete_join(now)

    def _remove(self, member_id: str) -> None:
        member = self.members.pop(member_id, None)
        if member is not None and member.instance_id is not None:
            self.static_members.pop(member.instance_id, None)
        if self.leader == member_id:
            self.leader = next(iter(self.members), None)
        self.pending_members.pop(member_id, None)
        self.pending_sync.discard(member_id)

    # --- time ------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Act on every deadline that has passed: expired members and pending members, a
        rebalance's join phase at its timeout, members that never sent SyncGroup."""
        for pending, deadline in list(self.pending_members.items()):
            if deadline <= now:
                del self.pending_members[pending]
                if self.state == PREPARING_REBALANCE:
                    self._try_complete_join(now)
        for member in list(self.members.values()):
            if member.deadline is None or member.deadline > now:
                continue
            if not member.is_new and (
                member.join_waiter is not None or member.sync_waiter is not None
            ):
                member.deadline = None  # parked in a rebalance: the rebalance timeout rules
            elif member.member_id in self.members:
                self._remove_and_update(now, member)
        if self.join_deadline is not None and self.join_deadline <= now:
            self._join_deadline_passed(now)
        if self.sync_deadline is not None and self.sync_deadline <= now:
            self.sync_deadline = None
            if self.state in (COMPLETING_REBALANCE, STABLE) and self.pending_sync:
                for member_id in list(self.pending_sync):
                    self._remove(member_id)
                self._prepare_rebalance(now)

    def close(self, error: int) -> None:
        """Answer every parked request with ``error`` (the coordinator is going away)."""
        for member in self.members.values():
            if member.join_waiter is not None:
                self.completed.append((member.join_waiter, JoinResult(error, member.member_id)))
                member.join_waiter = None
            if member.sync_waiter is not None:
                self.completed.append((member.sync_waiter, SyncResult(error)))
                member.sync_waiter = None
        self._transition(DEAD, self.state_since)
