"""Consumer groups (JoinGroup/SyncGroup/Heartbeat/LeaveGroup) with real clients against a broker
process: kafka-python, confluent-kafka (librdkafka), aiokafka and kcat in the same groups.

Each consumer is a process of its own (``group_member.py``; kcat is one anyway): a SIGKILL is
then exactly a crashed consumer (no LeaveGroup, no last commit, its TCP connections reset), so
only its session timeout can remove it, and a static member can be restarted as a new process
with the same group instance id. Threads could not be killed that way, and one process's
clients would share a GIL and its stalls. Members report what they do as JSON lines stamped with
``time.monotonic()`` — one clock for every process of the machine — so the test orders the
events of different members exactly (see group_member.py).

Members consume at least once: a batch is reported ("processed") before its offsets are
committed synchronously, and the commit's outcome is reported. What that allows, checked by
:class:`Ledger` over every member's events:

- every acknowledged record is consumed (nothing lost or skipped), with the produced value;
- a consumption is *settled* when its batch's commit succeeded, *unsettled* when the commit
  was refused (the member's generation was fenced: a rebalance, a broker restart) or never
  came (the member was killed between processing and committing). A record is consumed at
  most once settled, and no settled consumption comes after a successful commit (by anyone)
  past its record: committed offsets are where the group resumes. Unless a broker restart
  made zombies (members reading on from their own position, not knowing they lost their
  membership until their commit fails), no consumption at all comes after such a commit;
- so every duplicate is an unsettled consumption, and duplicates are bounded by the records
  of unsettled batches — the killed member's last batch, batches whose commit was refused —
  reported with the counts.

Eager rebalancing (every client here uses eager assignors) also means a partition has at most
one owner at any instant — a member revokes everything before it rejoins and is assigned after
SyncGroup — and a member consumes only partitions it owns: checked from the assignment
callbacks' timestamps where membership is not lost by a broker restart.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

from tests.conformance.clients import TIMEOUT, KafkaPython, new_topic
from tests.conformance.conftest import BrokerProcess, require_kcat

WORKER = Path(__file__).with_name("group_member.py")
PARTITIONS = 6
SESSION_MS = 3000
HEARTBEAT_MS = 1000
"""A third of the session, as Kafka advises."""
REBALANCE_MS = 10000
"""max.poll.interval.ms, the JoinGroup rebalance timeout: how long a rebalance waits for a
member that does not rejoin. Our members poll every 100 ms, so only a dead member makes a
rebalance wait — and a dead member is removed by its session timeout first."""
STATIC_SESSION_MS = 6000
"""Static members get longer sessions: a restarted process must rejoin within it."""
STABLE_TIMEOUT = 30.0
ADMIN_TIMEOUT = 5.0
PRODUCE_RATE = 300
"""Records per second the background producer writes (round robin over the partitions)."""
POLL = 0.05


# --- members ---------------------------------------------------------------------------------


class Consumer:
    """A group member process; ``events`` are what it reported, in order."""

    name: str
    client_id: str

    def __init__(self, name: str, client_id: str, log: Path) -> None:
        self.name = name
        self.client_id = client_id
        self.log = log
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes]
        self.ended: float | None = None
        """When the process ended (killed, or its "closed" report), monotonic."""
        self.readers: list[threading.Thread] = []
        self.spawned = time.monotonic()

    def _add(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def _reader(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"read-{self.name}", daemon=True)
        thread.start()
        self.readers.append(thread)

    def of(self, *kinds: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["ev"] in kinds]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def assignment(self) -> frozenset[int]:
        """The partitions it owns now, by its own callbacks (eager: each "assigned" is whole)."""
        current: set[int] = set()
        for e in self.of("assigned", "revoked", "lost"):
            if e["ev"] == "assigned":
                current = set(e["partitions"])
            else:
                current -= set(e["partitions"])
        return frozenset(current)

    def last_assigned(self) -> dict[str, Any] | None:
        assigned = self.of("assigned")
        return assigned[-1] if assigned else None

    def kill(self) -> float:
        """SIGKILL; the time it was sent."""
        assert self.alive, f"{self.name} is not running\n{self.diagnostics()}"
        self.ended = time.monotonic()
        self.proc.kill()
        self.proc.wait()
        self._join_readers()
        return self.ended

    def _join_readers(self) -> None:
        for thread in self.readers:
            thread.join(5)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.name} did not exit within {timeout}s\n{self.diagnostics()}")
        self._join_readers()
        if self.ended is None:
            self.ended = time.monotonic()
        return status

    def stop(self) -> None:
        """Ask it to stop (commit is already done per batch; close) and require exit 0."""
        raise NotImplementedError

    def diagnostics(self) -> str:
        with self.lock:
            interesting = [e for e in self.events if e["ev"] not in ("batch", "commit")]
            batches = sum(e["ev"] == "batch" for e in self.events)
        tail = self.log.read_text(errors="replace").splitlines()[-30:] if self.log.exists() else []
        status = self.proc.poll()
        return "\n".join(
            [
                f"--- {self.name} (client id {self.client_id}, exit status {status}, "
                f"{batches} batches); events other than batches and commits:",
                *(json.dumps(e) for e in interesting[-20:]),
                f"--- {self.log} (last 30 lines):",
                *tail,
            ]
        )


class Member(Consumer):
    """A kafka-python, confluent-kafka or aiokafka consumer in its own process."""

    def __init__(
        self,
        name: str,
        client: str,
        broker: BrokerProcess,
        group: str,
        topic: str,
        *,
        client_id: str | None = None,
        session_ms: int = SESSION_MS,
        instance_id: str | None = None,
        process_ms: int = 0,
    ) -> None:
        super().__init__(name, client_id or name, broker.log_dir / f"member-{name}.log")
        settings = {
            "client": client,
            "name": self.client_id,
            "bootstrap": broker.bootstrap,
            "group": group,
            "topic": topic,
            "session_ms": session_ms,
            "heartbeat_ms": HEARTBEAT_MS,
            "rebalance_ms": REBALANCE_MS,
            "instance_id": instance_id,
            "process_ms": process_ms,
        }
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(settings)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._reader(self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"ev": "raw", "t": time.monotonic(), "line": line.decode("replace")}
            self._add(event)

    def stop(self) -> None:
        assert self.alive, f"{self.name} exited by itself\n{self.diagnostics()}"
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        self.proc.stdin.close()
        status = self.wait_exit()
        assert status == 0, f"{self.name} exited {status}\n{self.diagnostics()}"
        closed = self.of("closed")
        assert closed, f"{self.name} did not report closing\n{self.diagnostics()}"
        self.ended = closed[-1]["t"]


KCAT_REBALANCE = re.compile(r"rebalanced \(memberid [^)]*\): (assigned|revoked): (.*)")


class KcatMember(Consumer):
    """``kcat -G``: librdkafka's balanced consumer. Its records come on stdout ("partition
    offset value" lines), its rebalances on stderr; both are stamped as the test reads them."""

    def __init__(self, name: str, broker: BrokerProcess, group: str, topic: str) -> None:
        super().__init__(name, name, broker.log_dir / f"member-{name}.log")
        cmd = [
            require_kcat(),
            "-b",
            broker.bootstrap,
            "-G",
            group,
            "-X",
            f"client.id={name}",
            "-X",
            f"session.timeout.ms={SESSION_MS}",
            "-X",
            f"heartbeat.interval.ms={HEARTBEAT_MS}",
            "-o",
            "beginning",
            "-u",
            "-f",
            r"%p %o %s\n",
            topic,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.records: list[tuple[int, int, str]] = []
        self._reader(self._read_records)
        self._reader(self._read_log)

    def _read_records(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            partition, offset, value = line.decode().rstrip("\n").split(" ", 2)
            with self.lock:
                self.records.append((int(partition), int(offset), value))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("wb") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                match = KCAT_REBALANCE.search(line.decode(errors="replace"))
                if match:
                    partitions = [int(p) for p in re.findall(r"\[(\d+)\]", match.group(2))]
                    self._add(
                        {"ev": match.group(1), "t": time.monotonic(), "partitions": partitions}
                    )

    def stop(self) -> None:
        assert self.alive, f"{self.name} exited by itself\n{self.diagnostics()}"
        self.proc.send_signal(signal.SIGTERM)  # kcat stops cleanly: commits, leaves the group
        status = self.wait_exit()
        assert status == 0, f"{self.name} exited {status}\n{self.diagnostics()}"


@pytest.fixture
def members() -> Iterator[list[Consumer]]:
    """Every member a test starts; any still running at the end is killed (by its pid)."""
    started: list[Consumer] = []
    yield started
    for member in started:
        if member.alive:
            member.proc.kill()
            member.proc.wait()
        with member.lock:  # for a post-mortem, next to the member's stderr
            lines = [json.dumps(e) + "\n" for e in member.events]
        member.log.with_suffix(".events").write_text("".join(lines))


def diagnostics(consumers: list[Consumer]) -> str:
    return "\n".join(c.diagnostics() for c in consumers)


# --- the group as the broker describes it ---------------------------------------------------


@dataclass(frozen=True)
class Described:
    state: str
    assignments: dict[str, frozenset[int]]
    """client id -> partitions (the leader's assignment, as the broker hands it out)."""
    members: dict[str, tuple[str, str | None]]
    """client id -> (member id, group instance id)."""


class Admin:
    def __init__(self, broker: BrokerProcess) -> None:
        self.bootstrap = broker.bootstrap
        self.client = self.new_client()

    def new_client(self) -> confluent_kafka.admin.AdminClient:
        return confluent_kafka.admin.AdminClient(
            {"bootstrap.servers": self.bootstrap, "log_level": 0}
        )

    def describe(self, group: str) -> Described | None:
        """DescribeGroups; None while the broker does not answer (a restart)."""
        try:
            futures = self.client.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT)
            desc = futures[group].result(ADMIN_TIMEOUT + 1)
        except (confluent_kafka.KafkaException, concurrent.futures.TimeoutError):
            # librdkafka 2.16's admin client sometimes never sends the request after the
            # broker was SIGKILLed and restarted (its connection is up; nothing reaches the
            # broker): a new client does.
            self.client = self.new_client()
            return None
        assignments: dict[str, frozenset[int]] = {}
        ids: dict[str, tuple[str, str | None]] = {}
        for m in desc.members:
            assert m.client_id not in assignments, f"two members with client id {m.client_id}"
            assignments[m.client_id] = frozenset(
                tp.partition for tp in m.assignment.topic_partitions
            )
            ids[m.client_id] = (m.member_id, m.group_instance_id)
        return Described(desc.state.name, assignments, ids)


def wait_stable(
    admin: Admin,
    group: str,
    live: list[Consumer],
    *,
    after: float | None = None,
    timeout: float = STABLE_TIMEOUT,
) -> dict[str, frozenset[int]]:
    """Wait until the live members own every partition exactly once, each at least one, by
    their own callbacks (each assigned after ``after`` if given) and DescribeGroups agrees:
    the group is Stable with exactly these members and assignments. Client id -> partitions."""
    deadline = time.monotonic() + timeout
    views: dict[str, frozenset[int]] = {}
    described: Described | None = None
    while time.monotonic() < deadline:
        for c in live:
            assert c.alive, f"{c.name} exited\n{c.diagnostics()}"
        views = {c.client_id: c.assignment() for c in live}
        fresh = after is None or all(
            (e := c.last_assigned()) is not None and e["t"] > after for c in live
        )
        owned = [p for parts in views.values() for p in parts]
        if fresh and all(views.values()) and sorted(owned) == list(range(PARTITIONS)):
            described = admin.describe(group)
            if described and described.state == "STABLE" and described.assignments == views:
                return views
        time.sleep(POLL)
    pytest.fail(
        f"the group did not stabilise in {timeout}s: members' views {views}, "
        f"DescribeGroups {described}\n{diagnostics(live)}"
    )


# --- the producer and what was consumed ------------------------------------------------------


class NumberedProducer:
    """A thread producing numbered records round robin over the partitions (acks=all, no
    idempotence) until finished; ``acked`` is (partition, offset) -> value of each delivery.
    Retries are on and the message timeout long, so records outlive a broker restart (a
    retried record may be in the log twice, at two offsets: both are then to be consumed)."""

    rate: float = PRODUCE_RATE
    """Records per second."""

    def __init__(self, broker: BrokerProcess, topic: str) -> None:
        self.topic = topic
        self.producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "acks": "all",
                "enable.idempotence": False,
                "linger.ms": 5,
                "message.timeout.ms": 60000,
                "reconnect.backoff.ms": 100,
                "reconnect.backoff.max.ms": 500,
                "log_level": 0,  # a broker restart makes librdkafka complain; not our concern
            }
        )
        self.acked: dict[tuple[int, int], str] = {}
        self.failed: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="numbered-producer", daemon=True)
        self.thread.start()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked[(msg.partition(), msg.offset())] = msg.value().decode()
        else:
            self.failed.append(str(err))

    def _run(self) -> None:
        seq = 0
        tick = time.monotonic()
        interval = PARTITIONS / self.rate
        while not self.stopping.is_set():
            for partition in range(PARTITIONS):
                self.producer.produce(
                    self.topic,
                    f"r{seq}".encode(),
                    partition=partition,
                    on_delivery=self._delivered,
                )
                seq += 1
            self.producer.poll(0)
            tick += interval
            time.sleep(max(0.0, tick - time.monotonic()))

    def wait_acked(self, count: int, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.thread.is_alive(), "the producer thread died"
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks in {timeout}s"
            time.sleep(POLL)

    def finish(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        left = self.producer.flush(60)
        assert left == 0, f"{left} records still undelivered"
        assert not self.failed, f"{len(self.failed)} deliveries failed: {self.failed[:5]}"


@dataclass
class Consumption:
    t: float
    member: str
    partition: int
    offset: int
    value: str
    settled: bool
    """The member's commit of this record's batch succeeded."""


@dataclass
class Ledger:
    """Every member's batches and commits, checked against what the producer was acked."""

    acked: dict[tuple[int, int], str]
    consumed: dict[tuple[int, int], list[Consumption]] = field(
        default_factory=lambda: defaultdict(list)
    )
    commits: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    """partition -> (time, offset) of each successful commit."""
    unsettled: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Records in batches whose commit failed ("refused") or never came ("no commit: <name>")."""

    @classmethod
    def of(cls, acked: dict[tuple[int, int], str], consumers: list[Member]) -> Ledger:
        ledger = cls(dict(acked))
        for c in consumers:
            events = c.of("batch", "commit")
            for i, e in enumerate(events):
                if e["ev"] == "commit":
                    if e["ok"]:
                        for p, o in e["offsets"].items():
                            ledger.commits[int(p)].append((e["t"], o))
                    continue
                following = events[i + 1] if i + 1 < len(events) else None
                settled = bool(following and following["ev"] == "commit" and following["ok"])
                if not settled:
                    reason = "refused" if following is not None else f"no commit: {c.name}"
                    ledger.unsettled[reason] += len(e["records"])
                for p, o, value in e["records"]:
                    ledger.consumed[(p, o)].append(
                        Consumption(e["t"], c.name, p, o, value, settled)
                    )
        return ledger

    @property
    def duplicates(self) -> int:
        return sum(len(c) - 1 for c in self.consumed.values())

    def missing(self) -> list[tuple[int, int]]:
        return sorted(set(self.acked) - set(self.consumed))

    def check(self, *, strict: bool) -> None:
        """``strict``: every consumption follows the committed offsets, not only those whose
        commit succeeded — true unless zombies are possible: members that lost their
        membership without knowing it (a broker restart) still read from their own position
        until their commit fails."""
        lost = self.missing()
        assert not lost, f"{len(lost)} acked records never consumed, e.g. {lost[:10]}"
        # A record the broker stored but whose ack a broker kill lost is sent again by the
        # producer: the log then has it twice, only the retry acked. Nothing else may appear.
        acked_values = {(p, value) for (p, _), value in self.acked.items()}
        phantom = [
            (key, cs[0].value)
            for key, cs in sorted(self.consumed.items())
            if key not in self.acked and (key[0], cs[0].value) not in acked_values
        ]
        assert not phantom, f"consumed records the producer never had acked: {phantom[:10]}"
        wrong = [
            (c.partition, c.offset, c.value, self.acked[key])
            for key, cs in self.consumed.items()
            for c in cs
            if key in self.acked and c.value != self.acked[key]
        ]
        assert not wrong, f"records consumed with another value than produced: {wrong[:10]}"
        for (p, o), cs in self.consumed.items():
            settled = [c.member for c in cs if c.settled]
            assert len(settled) <= 1, f"{p}@{o} consumed and committed by {settled}"
            for c in cs:
                if not (strict or c.settled):
                    continue  # a zombie's: it reads from its own position
                past = [(t, off) for t, off in self.commits[p] if t < c.t and off > o]
                assert not past, (
                    f"{p}@{o} consumed by {c.member} at {c.t:.3f} after commits past it "
                    f"(time, offset): {past[:3]}; all its consumptions: "
                    f"{[(c.member, c.t, c.settled) for c in cs]}"
                )
        unsettled = sum(self.unsettled.values())
        assert self.duplicates <= unsettled, (self.duplicates, dict(self.unsettled))

    def summary(self) -> str:
        consumptions = sum(len(c) for c in self.consumed.values())
        retried = len(set(self.consumed) - set(self.acked))
        return (
            f"produced {len(self.acked)} (+{retried} unacked copies of retried records), "
            f"consumed {consumptions} "
            f"({len(self.consumed)} distinct), duplicates {self.duplicates}, "
            f"lost {len(self.missing())}; unsettled records (the bound on duplicates): "
            f"{dict(self.unsettled) or 0}"
        )


def wait_all_consumed(
    producer: NumberedProducer, consumers: list[Member], timeout: float = 30.0
) -> Ledger:
    deadline = time.monotonic() + timeout
    while True:
        ledger = Ledger.of(producer.acked, consumers)
        missing = ledger.missing()
        if not missing:
            return ledger
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(missing)} acked records not consumed within {timeout}s, e.g. "
                f"{missing[:10]}\n{diagnostics(list(consumers))}"
            )
        time.sleep(POLL * 4)


def produce_one_each(broker: BrokerProcess, topic: str) -> None:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": broker.bootstrap, "enable.idempotence": False}
    )
    for p in range(PARTITIONS):
        producer.produce(topic, f"one-{p}".encode(), partition=p)
    assert producer.flush(TIMEOUT) == 0


def check_ownership(consumers: list[Consumer]) -> None:
    """At most one owner per partition at any instant, and members consume only partitions
    they own (eager rebalancing; membership never lost to a broker restart)."""
    intervals: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    for c in consumers:
        start: dict[int, float] = {}
        end = c.ended if c.ended is not None else float("inf")
        for e in c.of("assigned", "revoked", "lost", "batch"):
            if e["ev"] == "assigned":
                for p in start:
                    intervals[p].append((start[p], e["t"], c.name))
                start = dict.fromkeys(e["partitions"], e["t"])
            elif e["ev"] in ("revoked", "lost"):
                for p in e["partitions"]:
                    if p in start:
                        intervals[p].append((start.pop(p), e["t"], c.name))
            else:
                foreign = {p for p, _, _ in e["records"]} - set(start)
                assert not foreign, f"{c.name} consumed partitions {foreign} it did not own"
        for p, t in start.items():
            intervals[p].append((t, end, c.name))
    for p, spans in intervals.items():
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            assert start_b >= end_a, f"partition {p}: {b} owned it before {a} let go: {spans}"


# --- tests -----------------------------------------------------------------------------------


def test_mixed_clients_kill_and_join(
    fresh_broker: BrokerProcess, members: list[Consumer], report: Callable[[str], None]
) -> None:
    """kafka-python, confluent-kafka and aiokafka share a 6-partition topic; the first member
    (the group's leader) is SIGKILLed and its partitions move to the others once its session
    expires; a fourth member joins. A producer writes throughout."""
    topic, group = new_topic("groups", "mixed"), new_topic("groups", "mixed-group")
    KafkaPython(fresh_broker).create_topic(topic, PARTITIONS, {})
    admin = Admin(fresh_broker)
    producer = NumberedProducer(fresh_broker, topic)

    def start(name: str, client: str) -> Member:
        member = Member(name, client, fresh_broker, group, topic)
        members.append(member)
        return member

    # The first member alone becomes the leader (and stays it while it rejoins each time).
    # Its batches take a while to process, so that the kill can come in the middle of one.
    first = Member("kp-1", "kafka-python", fresh_broker, group, topic, process_ms=400)
    members.append(first)
    assert wait_stable(admin, group, [first]) == {"kp-1": frozenset(range(PARTITIONS))}
    others = [start("ck-1", "confluent"), start("aio-1", "aiokafka")]
    started = time.monotonic()
    views = wait_stable(admin, group, [first, *others], after=started)
    report(f"3 members stable {time.monotonic() - started:.1f}s after 2 joined: {views}")
    deadline = time.monotonic() + TIMEOUT
    while not all(m.of("commit") for m in [first, *others]):
        assert time.monotonic() < deadline, "not every member committed\n" + diagnostics(members)
        time.sleep(POLL)

    # Killed while processing a batch (reported, not committed): whoever gets its partitions
    # must consume that batch again.
    deadline = time.monotonic() + TIMEOUT
    while not (events := first.of("batch", "commit")) or events[-1]["ev"] != "batch":
        assert time.monotonic() < deadline, "kp-1 got no batch\n" + first.diagnostics()
        time.sleep(0.005)
    killed = first.kill()
    in_flight = first.of("batch", "commit")[-1]
    assert in_flight["ev"] == "batch", "the kill came after the commit"
    views = wait_stable(admin, group, others, after=killed)
    moved = max(e["t"] for m in others if (e := m.last_assigned()) is not None) - killed
    revoked = [e["t"] for m in others for e in m.of("revoked", "lost") if e["t"] > killed]
    assert revoked, "the survivors were assigned anew without revoking\n" + diagnostics(others)
    noticed = min(revoked) - killed
    report(
        f"kill -> survivors revoked {noticed:.2f}s, reassigned {moved:.2f}s "
        f"(session {SESSION_MS} ms, heartbeat {HEARTBEAT_MS} ms): {views}"
    )
    # The broker expires the member when its session runs out, counted from its last
    # heartbeat (at most a heartbeat interval before the kill); the survivors hear of the
    # rebalance at their next heartbeat, rejoin, sync.
    assert noticed >= (SESSION_MS - HEARTBEAT_MS) / 1000 - 0.1, "expired before its session"
    assert moved <= (SESSION_MS + 2 * HEARTBEAT_MS) / 1000 + 2.0, "too slow to move partitions"

    producer.wait_acked(len(producer.acked) + 200)  # records the survivors own alone
    joiner = start("kp-2", "kafka-python")
    views = wait_stable(admin, group, [*others, joiner])
    joined = max(e["t"] for m in [*others, joiner] if (e := m.last_assigned()) is not None)
    report(f"4th member: all assigned {joined - joiner.spawned:.2f}s after it started: {views}")

    producer.wait_acked(len(producer.acked) + 200)
    producer.finish()
    ledger = wait_all_consumed(producer, [first, *others, joiner])
    for m in [*others, joiner]:
        m.stop()
    check_ownership(members)
    ledger = Ledger.of(producer.acked, [first, *others, joiner])
    report(ledger.summary())
    ledger.check(strict=True)
    # The killed member is the only one whose batches can be without a commit, and its last
    # batch was consumed again, by the survivors.
    assert set(ledger.unsettled) <= {"refused", "no commit: kp-1"}, dict(ledger.unsettled)
    again = [(p, o) for p, o, _ in in_flight["records"]]
    assert all({c.member for c in ledger.consumed[key]} - {"kp-1"} for key in again)
    assert ledger.duplicates >= len(again)
    report(f"kp-1 was killed processing a batch of {len(again)} records: all consumed again")


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_members_rejoin_after_a_coordinator_restart(
    fresh_broker: BrokerProcess,
    members: list[Consumer],
    report: Callable[[str], None],
    kill: bool,
) -> None:
    """The broker restarts under a group of three clients: membership lives in its memory, so
    the members' parked requests get NOT_COORDINATOR and their heartbeats UNKNOWN_MEMBER_ID;
    they rejoin on their own and resume from their committed offsets."""
    topic, group = new_topic("groups", "restart"), new_topic("groups", "restart-group")
    KafkaPython(fresh_broker).create_topic(topic, PARTITIONS, {})
    admin = Admin(fresh_broker)
    producer = NumberedProducer(fresh_broker, topic)
    group_members = [
        Member(name, client, fresh_broker, group, topic)
        for name, client in [("kp", "kafka-python"), ("ck", "confluent"), ("aio", "aiokafka")]
    ]
    members.extend(group_members)
    wait_stable(admin, group, group_members)

    def committed_after(t: float) -> bool:
        return all(any(e["ok"] and e["t"] > t for e in m.of("commit")) for m in group_members)

    deadline = time.monotonic() + TIMEOUT
    while not committed_after(0):
        assert time.monotonic() < deadline, "not every member committed\n" + diagnostics(members)
        time.sleep(POLL)

    ids = {m.name: m.of("assigned")[-1]["member"] for m in group_members}
    restarted = time.monotonic()
    fresh_broker.restart(kill=kill)
    up = time.monotonic()
    views = wait_stable(admin, group, group_members, after=restarted)
    stable = max(e["t"] for m in group_members if (e := m.last_assigned()) is not None)
    deadline = time.monotonic() + TIMEOUT
    while not committed_after(stable):  # and consuming again, each from its new partitions
        assert time.monotonic() < deadline, "a member did not resume\n" + diagnostics(members)
        time.sleep(POLL)
    rejoined = {m.name: m.of("assigned")[-1]["member"] for m in group_members}
    assert all(rejoined[m] != ids[m] for m in ids), f"not new members: {ids} {rejoined}"
    # kafka-python and librdkafka tell a lost membership (the coordinator does not know the
    # member id) from a rebalance: their "partitions lost" callbacks ran.
    for m in group_members[:2]:
        assert any(e["t"] > restarted for e in m.of("lost")), m.diagnostics()
    refused = sum(not e["ok"] for m in group_members for e in m.of("commit") if e["t"] > restarted)
    report(
        f"{'SIGKILL' if kill else 'SIGTERM'} restart: broker down {up - restarted:.2f}s, group "
        f"stable again {stable - up:.2f}s after it listened; {refused} commits refused: {views}"
    )

    producer.wait_acked(len(producer.acked) + 200)
    producer.finish()
    ledger = wait_all_consumed(producer, group_members)
    for m in group_members:
        m.stop()
    ledger = Ledger.of(producer.acked, group_members)
    report(ledger.summary())
    ledger.check(strict=False)
    assert set(ledger.unsettled) <= {"refused"}, dict(ledger.unsettled)


def test_kcat_balanced_consumer_shares_a_group(
    checked_broker: BrokerProcess, members: list[Consumer], report: Callable[[str], None]
) -> None:
    """``kcat -G`` (librdkafka's balanced consumer) joins a group with kafka-python and
    confluent-kafka: the partitions are split with no overlap (range: every client's first
    choice) and kcat prints exactly the records of its partitions."""
    require_kcat()
    topic, group = new_topic("groups", "kcat"), new_topic("groups", "kcat-group")
    KafkaPython(checked_broker).create_topic(topic, PARTITIONS, {})
    admin = Admin(checked_broker)
    python_members = [
        Member("kp-k", "kafka-python", checked_broker, group, topic),
        Member("ck-k", "confluent", checked_broker, group, topic),
    ]
    kcat = KcatMember("kcat-k", checked_broker, group, topic)
    members.extend([*python_members, kcat])
    views = wait_stable(admin, group, [*python_members, kcat])
    report(f"kcat + kafka-python + confluent-kafka: {views}")

    producer = confluent_kafka.Producer(
        {"bootstrap.servers": checked_broker.bootstrap, "enable.idempotence": False}
    )
    expected: dict[int, list[tuple[int, str]]] = {}
    for p in range(PARTITIONS):
        expected[p] = [(i, f"p{p}-record{i}") for i in range(5)]
        for _, value in expected[p]:
            producer.produce(topic, value.encode(), partition=p)
    assert producer.flush(TIMEOUT) == 0

    def got() -> dict[str, set[tuple[int, int, str]]]:
        out = {
            m.client_id: {tuple(r) for e in m.of("batch") for r in e["records"]}
            for m in python_members
        }
        with kcat.lock:
            out[kcat.client_id] = set(kcat.records)
        return out

    wanted = {
        name: {(p, o, v) for p in parts for o, v in expected[p]} for name, parts in views.items()
    }
    deadline = time.monotonic() + TIMEOUT
    while got() != wanted and time.monotonic() < deadline:
        time.sleep(POLL)
    assert got() == wanted, diagnostics(members)
    with kcat.lock:
        assert len(kcat.records) == len(wanted[kcat.client_id]), "kcat printed a record twice"
    # No rebalance happened meanwhile: the assignments are still those.
    assert {m.client_id: m.assignment() for m in [*python_members, kcat]} == views
    for m in [*python_members, kcat]:
        m.stop()
    check_ownership(members)


def test_static_members_restart_without_rebalance_and_are_fenced(
    checked_broker: BrokerProcess, members: list[Consumer], report: Callable[[str], None]
) -> None:
    """Static membership (KIP-345): a static member that comes back (a confluent-kafka
    consumer closed without leaving, a kafka-python one SIGKILLed) with its group instance id
    within its session gets its partitions back and nobody rebalances (the other members see
    no callback, the generation stays); a second live consumer with the same instance id
    takes over and fences the first, which fails with FENCED_INSTANCE_ID."""
    topic, group = new_topic("groups", "static"), new_topic("groups", "static-group")
    KafkaPython(checked_broker).create_topic(topic, PARTITIONS, {})
    admin = Admin(checked_broker)

    def start(name: str, client: str, client_id: str, instance_id: str | None) -> Member:
        member = Member(
            name,
            client,
            checked_broker,
            group,
            topic,
            client_id=client_id,
            session_ms=STATIC_SESSION_MS,
            instance_id=instance_id,
        )
        members.append(member)
        return member

    def callbacks_since(member: Member, t: float) -> list[dict[str, Any]]:
        return [e for e in member.of("assigned", "revoked", "lost") if e["t"] > t]

    def first_assigned(member: Member) -> float:
        return float(member.of("assigned")[0]["t"])

    # The first member alone is the leader: its restarts test the leader's rejoin (librdkafka
    # sends JoinGroup v5, so it is told the old leader id, and does not assign again).
    ck = start("ck-s", "confluent", "ck-s", "ck-static")
    wait_stable(admin, group, [ck])
    kp = start("kp-s", "kafka-python", "kp-s", "kp-static")
    aio = start("aio-d", "aiokafka", "aio-d", None)  # a dynamic member watching
    before = wait_stable(admin, group, [ck, kp, aio], after=time.monotonic())
    quiet = time.monotonic()
    described = admin.describe(group)
    assert described is not None
    assert {c: i for c, (_, i) in described.members.items()} == {
        "ck-s": "ck-static",
        "kp-s": "kp-static",
        "aio-d": None,
    }
    generation = kp.of("assigned")[-1]["gen"]
    assert aio.of("assigned")[-1]["gen"] == generation

    # 1. Closed without LeaveGroup: still a member until its session runs out.
    ck.stop()
    after_close = admin.describe(group)
    assert after_close is not None and after_close.state == "STABLE", after_close
    assert after_close.members == described.members, "the static member left the group"
    closed_at = time.monotonic()
    ck2 = start("ck-s#2", "confluent", "ck-s", "ck-static")
    assert wait_stable(admin, group, [ck2, kp, aio]) == before
    report(
        f"static confluent-kafka member back {first_assigned(ck2) - closed_at:.2f}s after "
        f"close: {sorted(before['ck-s'])}"
    )
    now = admin.describe(group)
    assert now is not None
    assert now.members["ck-s"] != described.members["ck-s"], "a new incarnation, a new member id"
    assert not callbacks_since(kp, quiet) and not callbacks_since(aio, quiet), diagnostics(members)

    # 2. SIGKILLed and restarted.
    killed = kp.kill()
    kp2 = start("kp-s#2", "kafka-python", "kp-s", "kp-static")
    assert wait_stable(admin, group, [ck2, kp2, aio]) == before
    assert kp2.of("assigned")[-1]["gen"] == generation, "the generation moved: a rebalance"
    report(
        f"static kafka-python member back {first_assigned(kp2) - killed:.2f}s after SIGKILL: "
        f"{sorted(before['kp-s'])}, generation still {generation}"
    )
    assert not callbacks_since(aio, quiet), aio.diagnostics()
    assert not callbacks_since(ck2, first_assigned(ck2)), ck2.diagnostics()

    # 3. A second live consumer with the same instance id fences the first.
    for old, name, client, client_id, instance in [
        (ck2, "ck-s#3", "confluent", "ck-s", "ck-static"),
        (kp2, "kp-s#3", "kafka-python", "kp-s", "kp-static"),
    ]:
        new = start(name, client, client_id, instance)
        deadline = time.monotonic() + TIMEOUT
        while not new.of("assigned"):
            assert time.monotonic() < deadline, new.diagnostics()
            time.sleep(POLL)
        assert new.assignment() == old.assignment() == before[client_id]
        # librdkafka fails at the fenced heartbeat; kafka-python only stops heartbeating,
        # and fails when it commits: give the zombie records to commit.
        produce_one_each(checked_broker, topic)
        status = old.wait_exit(TIMEOUT)
        fatal = old.of("fatal")
        assert status == 3 and fatal, f"the fenced consumer did not fail\n{old.diagnostics()}"
        error = fatal[0]["error"]
        assert "fenced" in error.lower(), error
        report(f"{old.name}, fenced by {name}, failed: {error}")
        live = [m for m in members if m.alive]
        assert wait_stable(admin, group, live) == before
    assert not callbacks_since(aio, quiet), aio.diagnostics()
    live = [m for m in members if m.alive]
    for m in live:
        assert len(m.of("assigned")) == 1 or m is aio, m.diagnostics()

    # 4. The group still rebalances: the latest incarnation of the leader assigns.
    joined = time.monotonic()
    live.append(start("aio-d2", "aiokafka", "aio-d2", None))
    views = wait_stable(admin, group, live, after=joined)
    report(f"a new member joins, the group rebalances: {views}")
    for m in live:
        m.stop()
