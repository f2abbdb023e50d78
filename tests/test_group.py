"""The sans-io group state machine (kafscale/broker/group.py) against Kafka 3.9's classic
GroupCoordinator rules, driven with explicit times: no sockets, no sleeps."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from generated.consumer_protocol_subscription import ConsumerProtocolSubscription
from generated.errors import ErrorCode
from kafscale.broker.group import (
    COMPLETING_REBALANCE,
    EMPTY,
    NEW_MEMBER_JOIN_TIMEOUT_MS,
    PREPARING_REBALANCE,
    STABLE,
    Group,
    GroupSettings,
    JoinResult,
    SyncResult,
)

SESSION = 10_000
REBALANCE = 30_000
RANGE = [("range", b"meta")]


@dataclass
class Driver:
    """A group plus bookkeeping of parked requests, as the coordinator does with futures."""

    group: Group
    now: float = 0.0
    answers: dict[int, JoinResult | SyncResult] = field(default_factory=dict)
    tokens: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def new(cls, delay: int = 100, max_size: int = 2**31 - 1) -> Driver:
        return cls(Group("g", GroupSettings(delay, max_size), 0.0))

    def settle(self) -> None:
        if (deadline := self.group.next_deadline()) is not None and deadline <= self.now:
            self.group.advance(self.now)
        for token, result in self.group.take_completed():
            assert token not in self.answers, f"request {token} answered twice"
            self.answers[token] = result  # type: ignore[index]

    def tick(self, ms: float) -> None:
        self.now += ms
        self.settle()

    def initial_delay(self) -> None:
        """Let an initial rebalance's delay run out (it extends while members arrive)."""
        for _ in range(2):
            self.tick(self.group.settings.initial_rebalance_delay_ms)

    def join(
        self,
        member_id: str = "",
        *,
        instance_id: str | None = None,
        protocols: list[tuple[str, bytes]] = RANGE,
        protocol_type: str = "consumer",
        version: int = 5,
        session: int = SESSION,
        rebalance: int = REBALANCE,
    ) -> int:
        token = next(self.tokens)
        self.group.join(
            self.now,
            token,
            member_id=member_id,
            instance_id=instance_id,
            protocol_type=protocol_type,
            protocols=protocols,
            session_timeout_ms=session,
            rebalance_timeout_ms=rebalance,
            client_id="client",
            client_host="/127.0.0.1",
            version=version,
        )
        self.settle()
        return token

    def sync(
        self,
        member_id: str,
        generation: int,
        assignments: list[tuple[str, bytes]] | None = None,
        instance_id: str | None = None,
    ) -> int:
        token = next(self.tokens)
        self.group.sync(
            self.now,
            token,
            member_id=member_id,
            instance_id=instance_id,
            generation=generation,
            protocol_type=None,
            protocol_name=None,
            assignments=assignments or [],
        )
        self.settle()
        return token

    def leave(self, member_id: str, instance_id: str | None = None) -> int:
        error = self.group.leave(self.now, member_id=member_id, instance_id=instance_id)
        self.settle()
        return error

    def beat(self, member_id: str, generation: int) -> int:
        error = self.group.heartbeat(
            self.now, member_id=member_id, instance_id=None, generation=generation
        )
        self.settle()
        return error

    def joined(self, token: int) -> JoinResult:
        result = self.answers[token]
        assert isinstance(result, JoinResult)
        return result

    def synced(self, token: int) -> SyncResult:
        result = self.answers[token]
        assert isinstance(result, SyncResult)
        return result

    def member(self, version: int = 5, **kwargs: object) -> str:
        """A dynamic member through MEMBER_ID_REQUIRED (v4+) — its join parked."""
        first = self.joined(self.join(version=version, **kwargs))  # type: ignore[arg-type]
        assert first.error == ErrorCode.MEMBER_ID_REQUIRED
        return first.member_id

    def stable_group(self, n: int) -> tuple[list[str], int]:
        """n members in a Stable group; (member ids with the leader first, generation)."""
        ids = [self.member() for _ in range(n)]
        tokens = [self.join(m) for m in ids]
        self.initial_delay()
        results = [self.joined(t) for t in tokens]
        leader = results[0].leader
        generation = results[0].generation
        assert all(r.error == 0 and r.generation == generation for r in results)
        others = [m for m in ids if m != leader]
        sync_tokens = [self.sync(m, generation) for m in others]
        self.sync(leader, generation, [(m, m.encode()) for m in ids])
        assert all(self.synced(t).error == 0 for t in sync_tokens)
        assert self.group.state == STABLE
        return [leader, *others], generation


def test_first_join_from_v4_needs_the_member_id_then_completes_after_the_initial_delay() -> None:
    d = Driver.new(delay=3000)
    first = d.joined(d.join(version=4))
    assert (first.error, first.generation, first.leader) == (ErrorCode.MEMBER_ID_REQUIRED, -1, "")
    assert first.member_id.startswith("client-")
    assert d.group.state == EMPTY and first.member_id in d.group.pending_members
    token = d.join(first.member_id, version=4)
    assert token not in d.answers and d.group.state == PREPARING_REBALANCE
    d.tick(2999)
    assert token not in d.answers  # the initial delay waits for more members
    d.tick(1)
    result = d.joined(token)
    assert (result.error, result.generation, result.leader) == (0, 1, first.member_id)
    assert result.protocol_type == "consumer" and result.protocol_name == "range"
    assert result.members == [(first.member_id, None, b"meta")]
    assert d.group.state == COMPLETING_REBALANCE


def test_before_v4_a_new_member_joins_at_once_and_the_initial_delay_extends() -> None:
    d = Driver.new(delay=1000)
    a = d.join(version=3, rebalance=2500)
    d.tick(900)
    b = d.join(version=3, rebalance=2500)  # a new member during the delay: wait another delay
    d.tick(100)
    assert a not in d.answers
    d.tick(999)
    assert a not in d.answers and b not in d.answers
    d.tick(1)
    assert d.joined(a).generation == d.joined(b).generation == 1
    assert len(d.joined(a).members) + len(d.joined(b).members) == 2  # only the leader's list


def test_initial_delay_is_capped_by_the_rebalance_timeout() -> None:
    d = Driver.new(delay=1000)
    first = d.join(version=3, rebalance=1500)
    for _ in range(5):  # members keep arriving
        d.tick(400)
        d.join(version=3, rebalance=1500)
    assert first in d.answers  # by 1,500 ms at the latest, not 1,000 ms after the last
    assert d.joined(first).generation == 1


def test_leader_assignment_is_handed_out_unchanged_and_missing_members_get_nothing() -> None:
    d = Driver.new()
    a, b, c = (d.member() for _ in range(3))
    tokens = [d.join(m) for m in (a, b, c)]
    d.initial_delay()
    results = [d.joined(t) for t in tokens]
    leader = results[0].leader
    assert {r.leader for r in results} == {leader}
    assert [len(r.members) for r in results].count(3) == 1  # only the leader gets members
    followers = [m for m in (a, b, c) if m != leader]
    parked = d.sync(followers[0], 1)
    assert parked not in d.answers
    blob = bytes(range(256)) * 3
    done = d.sync(leader, 1, [(followers[0], blob), (leader, b"L"), ("stranger", b"x")])
    assert d.synced(parked).assignment == blob
    assert d.synced(done).assignment == b"L"
    late = d.synced(d.sync(followers[1], 1))
    assert (late.error, late.assignment) == (0, b"")  # the leader left it out
    assert d.group.state == STABLE and "stranger" not in d.group.members


def test_a_new_member_rebalances_a_stable_group_and_stragglers_are_removed() -> None:
    d = Driver.new()
    (leader, follower), gen = d.stable_group(2)
    newcomer = d.member()
    waiting = d.join(newcomer)
    assert d.group.state == PREPARING_REBALANCE and waiting not in d.answers
    hb = d.group.heartbeat(d.now, member_id=follower, instance_id=None, generation=gen)
    assert hb == ErrorCode.REBALANCE_IN_PROGRESS
    rejoin = d.join(leader)
    assert rejoin not in d.answers  # the follower has not rejoined yet
    d.tick(REBALANCE)  # the follower never rejoins: removed at the rebalance timeout
    assert d.joined(rejoin).generation == gen + 1
    assert set(d.group.members) == {leader, newcomer}
    assert d.group.heartbeat(d.now, member_id=follower, instance_id=None, generation=gen) == (
        ErrorCode.UNKNOWN_MEMBER_ID
    )


def test_rebalance_completes_as_soon_as_every_member_rejoined() -> None:
    d = Driver.new()
    (leader, follower), gen = d.stable_group(2)
    a = d.join(follower, protocols=[("range", b"changed")])  # new metadata: rebalance
    assert d.group.state == PREPARING_REBALANCE
    b = d.join(leader)
    assert d.joined(a).generation == d.joined(b).generation == gen + 1
    assert (follower, None, b"changed") in d.joined(b).members


def test_unchanged_follower_rejoin_in_stable_gets_the_current_generation() -> None:
    d = Driver.new()
    (leader, follower), gen = d.stable_group(2)
    again = d.joined(d.join(follower))
    assert (again.error, again.generation, again.leader, again.members) == (0, gen, leader, [])
    assert d.group.state == STABLE
    assert d.synced(d.sync(follower, gen)).assignment == follower.encode()
    d.join(leader)  # the leader rejoining forces a rebalance (e.g. topic metadata changed)
    assert d.group.state == PREPARING_REBALANCE


def test_session_timeout_expires_a_silent_member() -> None:
    d = Driver.new()
    (leader, follower), gen = d.stable_group(2)
    while follower in d.group.members:
        assert d.now < 2 * SESSION, "the silent member never expired"
        assert d.beat(leader, gen) == 0
        d.tick(SESSION / 4)
    assert d.now >= SESSION  # not before its session timeout
    assert d.beat(leader, gen) == ErrorCode.REBALANCE_IN_PROGRESS  # the leader must rejoin
    assert d.group.state == PREPARING_REBALANCE
    rejoin = d.join(leader)
    assert d.joined(rejoin).members == [(leader, None, b"meta")]


def test_a_new_member_that_never_rejoins_is_dropped_after_the_join_timeout() -> None:
    d = Driver.new()
    (leader,), _gen = d.stable_group(1)
    d.join(version=3)  # a v3 member joins at once: a rebalance the leader ignores
    d.tick(REBALANCE)  # the leader did not rejoin: removed; the new member leads alone
    assert leader not in d.group.members and len(d.group.members) == 1
    assert d.group.state == COMPLETING_REBALANCE


def test_a_pending_member_holds_a_rebalance_until_it_joins_or_expires() -> None:
    d = Driver.new()
    (leader,), gen = d.stable_group(1)
    pending = d.member(session=2000)
    assert d.group.state == STABLE  # a pending member alone does not rebalance
    rejoin = d.join(leader)  # the leader rejoining starts one
    d.tick(1999)
    assert rejoin not in d.answers  # it waits for the pending member
    d.tick(1)
    assert d.joined(rejoin).generation == gen + 1
    assert pending not in d.group.members and not d.group.pending_members


def test_generation_and_member_fencing() -> None:
    d = Driver.new()
    (leader, follower), gen = d.stable_group(2)
    assert d.group.heartbeat(d.now, member_id=follower, instance_id=None, generation=gen - 1) == (
        ErrorCode.ILLEGAL_GENERATION
    )
    assert d.synced(d.sync(follower, gen + 1)).error == ErrorCode.ILLEGAL_GENERATION
    assert d.synced(d.sync("nobody", gen)).error == ErrorCode.UNKNOWN_MEMBER_ID
    commit = d.group.validate_commit
    assert commit(d.now, member_id=follower, instance_id=None, generation=gen) == 0
    assert commit(d.now, member_id=follower, instance_id=None, generation=gen - 1) == (
        ErrorCode.ILLEGAL_GENERATION
    )
    assert (
        commit(d.now, member_id="", instance_id=None, generation=-1) == ErrorCode.UNKNOWN_MEMBER_ID
    )
    assert commit(d.now, member_id="zombie", instance_id=None, generation=gen) == (
        ErrorCode.UNKNOWN_MEMBER_ID
    )
    d.join(leader)
    d.join(follower)
    assert d.group.state == COMPLETING_REBALANCE
    assert commit(d.now, member_id=follower, instance_id=None, generation=gen + 1) == (
        ErrorCode.REBALANCE_IN_PROGRESS
    )


def test_simple_commits_are_accepted_only_while_the_group_is_empty() -> None:
    d = Driver.new()
    assert d.group.validate_commit(0, member_id="", instance_id=None, generation=-1) == 0
    # Kafka's ClassicGroup: generation -1 on an Empty group passes whatever member it names.
    assert d.group.validate_commit(0, member_id="m", instance_id="i", generation=-1) == 0
    assert d.group.validate_commit(0, member_id="", instance_id=None, generation=0) == (
        ErrorCode.UNKNOWN_MEMBER_ID
    )
    (member,), _ = d.stable_group(1)
    assert d.group.validate_commit(0, member_id="", instance_id=None, generation=-1) == (
        ErrorCode.UNKNOWN_MEMBER_ID
    )
    assert d.group.validate_commit(0, member_id=member, instance_id=None, generation=-1) == (
        ErrorCode.ILLEGAL_GENERATION
    )


def test_protocol_selection_and_inconsistent_protocols() -> None:
    d = Driver.new(delay=100)
    a = d.join(version=3, protocols=[("roundrobin", b"a"), ("range", b"a")])
    b = d.join(version=3, protocols=[("range", b"b"), ("roundrobin", b"b")])
    c = d.join(version=3, protocols=[("range", b"c"), ("sticky", b"c")])
    bad_type = d.joined(d.join(version=3, protocol_type="connect"))
    bad_protocols = d.joined(d.join(version=3, protocols=[("sticky", b"")]))
    assert bad_type.error == bad_protocols.error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    d.initial_delay()
    assert {d.joined(t).protocol_name for t in (a, b, c)} == {"range"}  # 2 votes to 1
    empty = Driver.new()
    assert empty.joined(empty.join(protocol_type="")).error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    assert empty.joined(empty.join(protocols=[])).error == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    assert empty.group.state == EMPTY and not empty.group.members


def test_static_member_restart_in_stable_keeps_the_assignment_without_rebalance() -> None:
    d = Driver.new(delay=0)
    first = d.joined(d.join(instance_id="i1"))  # static: no MEMBER_ID_REQUIRED
    assert first.error == 0 and first.generation == 1
    other = d.member()
    d.join(other)
    d.join(first.member_id, instance_id="i1")
    results = [r for r in d.answers.values() if isinstance(r, JoinResult) and r.generation == 2]
    leader = results[0].leader
    ids = {first.member_id, other}
    for m in ids - {leader}:
        d.sync(m, 2, instance_id="i1" if m == first.member_id else None)
    d.sync(leader, 2, [(m, m.encode()) for m in ids], "i1" if leader == first.member_id else None)
    assert d.group.state == STABLE
    again = d.joined(d.join(instance_id="i1", version=5))  # restarted: no member id
    assert again.error == 0 and again.generation == 2 and again.member_id != first.member_id
    assert d.group.state == STABLE  # no rebalance
    assert d.synced(d.sync(again.member_id, 2, instance_id="i1")).assignment == (
        first.member_id.encode()
    )
    old = d.group.heartbeat(d.now, member_id=first.member_id, instance_id="i1", generation=2)
    assert old == ErrorCode.FENCED_INSTANCE_ID
    if leader == first.member_id:  # before v9 a rejoining leader is told the old leader id
        assert again.leader == first.member_id and again.members == []


def test_static_leader_rejoin_v9_skips_assignment() -> None:
    d = Driver.new(delay=0)
    lead = d.joined(d.join(instance_id="lead", version=9))
    d.tick(0)
    d.sync(lead.member_id, 1, [(lead.member_id, b"A")], "lead")
    assert d.group.state == STABLE
    again = d.joined(d.join(instance_id="lead", version=9))
    assert again.skip_assignment and again.leader == again.member_id
    assert [m[0] for m in again.members] == [again.member_id]
    assert d.group.state == STABLE and d.group.generation == 1


def test_static_replacement_fences_the_parked_request_of_the_old_incarnation() -> None:
    d = Driver.new(delay=1000)
    old = d.join(instance_id="s", version=5)
    assert old not in d.answers  # parked in the initial delay
    new = d.join(instance_id="s", version=5)
    assert d.joined(old).error == ErrorCode.FENCED_INSTANCE_ID
    d.tick(1000)
    assert d.joined(new).error == 0 and len(d.group.members) == 1


def test_leave_group_by_member_by_instance_and_pending() -> None:
    d = Driver.new()
    (_leader, follower), _gen = d.stable_group(2)
    assert d.leave(follower) == 0
    assert d.group.state == PREPARING_REBALANCE
    assert d.leave(follower) == ErrorCode.UNKNOWN_MEMBER_ID
    pending = d.member()
    assert d.leave(pending) == 0
    assert pending not in d.group.pending_members
    static = Driver.new(delay=0)
    s = static.joined(static.join(instance_id="x"))
    assert static.leave("", "y") == ErrorCode.UNKNOWN_MEMBER_ID
    assert static.leave("other", "x") == ErrorCode.FENCED_INSTANCE_ID
    assert static.leave("", "x") == 0
    assert s.member_id not in static.group.members and static.group.state == EMPTY


def test_leave_during_completing_rebalance_sends_parked_syncs_back_to_join() -> None:
    d = Driver.new()
    a, b, c = (d.member() for _ in range(3))
    tokens = {m: d.join(m) for m in (a, b, c)}
    d.initial_delay()
    results = {m: d.joined(t) for m, t in tokens.items()}
    leader = results[a].leader
    followers = [m for m in (a, b, c) if m != leader]
    parked = d.sync(followers[0], 1)
    assert d.leave(followers[1]) == 0
    assert d.synced(parked).error == ErrorCode.REBALANCE_IN_PROGRESS
    assert d.group.state == PREPARING_REBALANCE


def test_members_that_never_sync_are_removed_after_the_rebalance_timeout() -> None:
    d = Driver.new()
    a, b = d.member(), d.member()
    tokens = {m: d.join(m) for m in (a, b)}
    d.initial_delay()
    results = {m: d.joined(t) for m, t in tokens.items()}
    leader = results[a].leader
    follower = b if leader == a else a
    d.sync(leader, 1, [(leader, b"x"), (follower, b"y")])
    assert d.group.state == STABLE
    while d.now < REBALANCE:  # the follower heartbeats but never sends SyncGroup
        assert d.beat(leader, 1) == d.beat(follower, 1) == 0
        d.tick(SESSION / 4)
    assert follower not in d.group.members and d.group.state == PREPARING_REBALANCE


def test_second_join_while_parked_answers_the_first() -> None:
    d = Driver.new(delay=5000)
    m = d.member()
    first = d.join(m)
    second = d.join(m)
    assert d.joined(first).error == ErrorCode.REBALANCE_IN_PROGRESS and second not in d.answers


def test_group_max_size() -> None:
    d = Driver.new(max_size=1)
    d.stable_group(1)
    assert d.joined(d.join(version=3)).error == 81  # GROUP_MAX_SIZE_REACHED


def test_close_answers_every_parked_request() -> None:
    d = Driver.new(delay=5000)
    parked = [d.join(version=3) for _ in range(3)]
    d.group.close(ErrorCode.NOT_COORDINATOR)
    d.settle()
    assert all(d.joined(t).error == ErrorCode.NOT_COORDINATOR for t in parked)


def test_subscribed_topics_from_the_consumer_protocol() -> None:
    def subscription(topics: list[str], version: int) -> bytes:
        body = b"".join(ConsumerProtocolSubscription(topics=topics).encode_chunks(version))
        return version.to_bytes(2, "big") + body

    d = Driver.new()
    a = d.join(version=3, protocols=[("range", subscription(["t1", "t2"], 1))])
    b = d.join(version=3, protocols=[("range", subscription(["t3"], 3) + b"future fields")])
    d.initial_delay()
    assert a in d.answers and b in d.answers
    assert d.group.subscribed_topics() == {"t1", "t2", "t3"}
    d.join(version=3, protocols=[("range", b"\x00")])  # garbage: unknown subscriptions
    assert d.group.subscribed_topics() is None
    other = Driver.new()
    other.join(version=3, protocol_type="connect", protocols=[("v1", b"")])
    assert other.group.subscribed_topics() is None


OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "rejoin", "sync", "lead", "beat", "leave", "tick", "static"]),
        st.integers(0, 5),
        st.integers(0, 6000),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_random_operations_keep_the_invariants(ops: list[tuple[str, int, int]]) -> None:
    """Any sequence of requests and clock ticks: nothing is answered twice, the leader is a
    member, generations only grow, and closing answers every parked request."""
    d = Driver.new(delay=500)
    known: list[str] = []
    generations = [0]
    for op, who, ms in ops:
        member = known[who % len(known)] if known else ""
        if op == "join":
            result = d.answers.get(d.join(version=4, session=3000, rebalance=4000))
            if isinstance(result, JoinResult) and result.member_id:
                known.append(result.member_id)
        elif op == "rejoin" and member:
            d.join(member, version=4, session=3000, rebalance=4000)
        elif op == "static":
            d.join(instance_id=f"s{who % 2}", version=5, session=3000, rebalance=4000)
        elif op == "sync" and member:
            d.sync(member, d.group.generation)
        elif op == "lead" and d.group.leader:
            d.sync(d.group.leader, d.group.generation, [(m, b"a") for m in d.group.members])
        elif op == "beat" and member:
            d.group.heartbeat(d.now, member_id=member, instance_id=None, generation=who)
        elif op == "leave" and member:
            d.group.leave(d.now, member_id=member, instance_id=None)
            d.settle()
        elif op == "tick":
            d.tick(ms)
        group = d.group
        assert group.leader is None or group.leader in group.members
        assert (group.leader is None) == (not group.members)
        assert set(group.static_members.values()) <= set(group.members)
        assert group.generation >= generations[-1]
        generations.append(group.generation)
        if group.state == EMPTY:
            assert not group.members
        parked = [m for m in group.members.values() if m.join_waiter or m.sync_waiter]
        if group.state == STABLE:
            assert not any(m.join_waiter for m in parked)
    issued = set(range(next(d.tokens)))
    d.group.close(ErrorCode.NOT_COORDINATOR)
    d.settle()
    assert set(d.answers) == issued  # every request got exactly one answer
    assert d.now < NEW_MEMBER_JOIN_TIMEOUT_MS * 100
