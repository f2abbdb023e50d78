"""The conformance scenarios on a cluster of three brokers (etcd + S3 through moto), with the
clients bootstrapped from the list of all three (tests/conformance/three_brokers.py):

1. each client (kafka-python, confluent-kafka, aiokafka, kcat) produces to and consumes from
   a 6-partition topic whose partitions are spread over the three brokers (two each): exact
   records at consecutive offsets, the offsets the producer was acked, the end offsets; every
   broker's Metadata names the three brokers and, for each partition, the owner (and leader
   epoch) of its owner key in etcd;
2. admin through confluent-kafka's and kafka-python's admin clients: describe the cluster,
   create / describe / delete topics, describe configs, ListOffsets (sent to each
   partition's leader: two of every three partitions live elsewhere than the bootstrap's
   first broker);
3. a consumer group of kafka-python, confluent-kafka and aiokafka members over 6 partitions
   while a producer writes: one assignment covering every partition once; then the broker
   coordinating the group (FindCoordinator, asked of each broker, and the group's owner key
   agree on which) is killed with SIGKILL: after the lease TTL another broker coordinates
   (it starts the group Empty with its committed offsets), the members find it, rejoin and
   continue from their committed offsets; the killed broker comes back and takes its
   partitions back; nothing acknowledged is lost (the Ledger of test_groups.py);
4. a cold restart of every broker (SIGTERM all, or SIGKILL all; etcd and the bucket keep
   their data): every partition of every topic reads back exactly as before, the acked
   records of a fresh workload pass the history checker (tests/checker.py), every committed
   offset of the module's groups is still there, and a subscribing consumer resumes at them.

One cluster serves the module; each test leaves every broker running, and none may log a
traceback.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import confluent_kafka
import confluent_kafka.admin
import pytest

from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.errors import ErrorCode
from generated.registry import api
from kafscale.protocol.framing import encode_request
from tests.checker import History, check
from tests.conformance import test_groups, three_brokers
from tests.conformance.clients import (
    CLIENTS,
    TIMEOUT,
    Client,
    KafkaPython,
    Msg,
    new_topic,
    produce_and_check,
)
from tests.conformance.test_admin import (
    CLUSTER_ID,
    DYNAMIC,
    UNKNOWN_TOPIC_OR_PARTITION,
    Admin,
    ConfluentAdmin,
    KafkaPythonAdmin,
    Rec,
)
from tests.conformance.test_admin import Cluster as Described
from tests.conformance.test_groups import (
    Admin as GroupAdmin,
)
from tests.conformance.test_groups import (
    Consumer,
    Ledger,
    Member,
    NumberedProducer,
    diagnostics,
    wait_all_consumed,
    wait_stable,
)
from tests.conformance.test_groups_admin import (
    confluent_committed,
    confluent_first_offsets,
    confluent_subscriber,
)
from tests.conformance.test_offsets import confluent_consumer
from tests.conformance.three_brokers import (
    LEASE_TTL_MS,
    OWNERS_TIMEOUT,
    MetadataView,
    bootstrap_of,
    find_coordinator,
    group_owner,
    metadata,
    owners,
    stored_batches,
    wait_owned,
    wait_placed,
)
from tests.faults.cluster import Cluster
from tests.faults.workload import Workload

PARTITIONS = 6
"""Two partitions per broker: the placement gives none more than ceil(6 / 3)."""
GROUPS: list[str] = []
"""Groups whose committed offsets the cold restarts must keep (in the order made)."""
POLL = 0.05
METADATA_CONVERGENCE = 10.0
_reads = itertools.count(1)
GROUP_RATE = 120
"""Records per second written while the group consumes."""
SETTLING = {
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
    confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
}
"""Errors a broker answers while partitions are handed over; clients retry them."""


cluster = three_brokers.cluster
checked = three_brokers.checked
members = test_groups.members


def check_metadata(cluster: Cluster, topic: str) -> dict[int, tuple[int, int]]:
    """Every broker's Metadata names the three brokers (controller: the lowest id) and, for
    each partition, the owner of its owner key in etcd with that key's leader epoch, once the
    owners are where the placement over the three brokers puts them: two partitions on each.
    The owners, by partition."""
    owned = wait_owned(cluster, topic, PARTITIONS)
    spread = Counter(b for b, _ in owned.values())
    assert spread == dict.fromkeys(range(3), 2), f"{topic} not spread evenly: {owned}"
    expected = {
        "error": 0,
        "brokers": {b.id: ("127.0.0.1", b.port) for b in cluster.brokers},
        "controller": 0,
        "errors": {},
        "leaders": owned,
    }

    def seen(view: MetadataView) -> dict[str, object]:
        return {
            "error": view.error,
            "brokers": view.brokers,
            "controller": view.controller,
            "errors": view.errors,
            "leaders": view.leaders,
        }

    views = each_broker_metadata(cluster, topic, lambda view: seen(view) == expected)
    for b, view in views.items():
        assert seen(view) == expected, f"broker {b}'s Metadata vs the owner keys"
    return owned


def each_broker_metadata(
    cluster: Cluster, topic: str, agrees: Callable[[MetadataView], bool]
) -> dict[int, MetadataView]:
    """Each broker's Metadata for ``topic``, asked again until it ``agrees`` (or for
    METADATA_CONVERGENCE seconds: brokers learn of owner keys and topics through etcd
    watches, so a broker may lag the store for a moment after a change)."""
    views = {}
    for b in cluster.brokers:
        deadline = time.monotonic() + METADATA_CONVERGENCE
        while not agrees(view := metadata(b.address, topic)) and time.monotonic() < deadline:
            time.sleep(POLL)
        views[b.id] = view
    return views


# --- 1. produce / consume with each client ---------------------------------------------------


@pytest.mark.parametrize("client_cls", CLIENTS, ids=lambda c: c.name)
def test_produce_consume_across_brokers(
    checked: Cluster, client_cls: type[Client], report: Callable[[str], None]
) -> None:
    """8 records per partition (keys, a header) produced with acks=all by the client, to 6
    partitions on 3 brokers; each partition read back by the same client: the exact records
    at offsets 0..7, the acked (partition, offset) of each, end offset 8."""
    cluster = checked
    client = client_cls(bootstrap_of(cluster))
    topic = new_topic(client.name, "cluster")
    started = time.monotonic()
    client.create_topic(topic, PARTITIONS, {})
    # Partition by partition: kcat sends each run of equal partition and headers with one
    # command (the other clients send everything at once either way).
    msgs = [
        Msg(
            f"key-{i % 3}".encode(),
            f"{client.name} p{p} record {i}".encode(),
            (("partition", str(p).encode()),),
            partition=p,
        )
        for p in range(PARTITIONS)
        for i in range(8)
    ]
    produce_and_check(client, topic, msgs)
    owned = check_metadata(cluster, topic)
    per_broker = defaultdict(list)
    for p, (b, _) in sorted(owned.items()):
        per_broker[b].append(p)
    report(
        f"{client.name}: {len(msgs)} records over partitions by broker {dict(per_broker)}, "
        f"read back exactly ({time.monotonic() - started:.1f}s)"
    )


# --- 2. admin --------------------------------------------------------------------------------


@pytest.mark.parametrize("admin_cls", [ConfluentAdmin, KafkaPythonAdmin], ids=lambda c: c.name)
def test_admin_across_brokers(
    checked: Cluster, admin_cls: type[Admin], report: Callable[[str], None]
) -> None:
    """DescribeCluster names the three brokers (controller 0); a topic created with configs
    is listed with each partition's leader = its owner, its configs described as set;
    ListOffsets earliest / latest and the consumer's watermarks of each partition match what
    was produced; DeleteTopics removes it (and its owner keys); deleting again is refused."""
    cluster = checked
    started = time.monotonic()
    admin = admin_cls(bootstrap_of(cluster))
    try:
        described = admin.describe_cluster()
        assert sorted(described.brokers) == [(b.id, "127.0.0.1", b.port) for b in cluster.brokers]
        assert described == Described(CLUSTER_ID, 0, described.brokers)

        topic = new_topic(admin.name, "cluster-admin")
        admin.create_topic(
            topic, PARTITIONS, {"retention.ms": "3600000", "cleanup.policy": "delete"}
        )
        records: list[Rec] = [
            (p, f"p{p}-{i}".encode(), None) for p in range(PARTITIONS) for i in range(p + 1)
        ]
        acked = admin.produce(topic, [records])
        assert acked == [(p, i) for p in range(PARTITIONS) for i in range(p + 1)]
        owned = check_metadata(cluster, topic)
        assert admin.topics()[topic] == [
            (p, owned[p][0], [owned[p][0]], [owned[p][0]]) for p in range(PARTITIONS)
        ]
        assert admin.describe_configs(topic, ["retention.ms", "cleanup.policy"]) == {
            "retention.ms": ("3600000", DYNAMIC),
            "cleanup.policy": ("delete", DYNAMIC),
        }
        offsets = {
            p: (
                admin.list_offsets(topic, p, "earliest"),
                admin.list_offsets(topic, p, "latest"),
                admin.watermarks(topic, p),
            )
            for p in range(PARTITIONS)
        }
        assert offsets == {p: ((0, -1), (p + 1, -1), (0, p + 1)) for p in range(PARTITIONS)}
        got = admin.consume_from_beginning(topic, 5, 6)
        assert [(o, v) for o, v, _ in got] == [(i, f"p5-{i}".encode()) for i in range(6)]

        admin.delete_topic(topic)
        gone = each_broker_metadata(cluster, topic, lambda v: v.error == UNKNOWN_TOPIC_OR_PARTITION)
        assert {b: v.error for b, v in gone.items()} == dict.fromkeys(
            range(3), UNKNOWN_TOPIC_OR_PARTITION
        ), "a broker still lists the deleted topic"
        assert topic not in admin.topics()
        assert owners(cluster, topic) == {}, "owner keys outlived the topic"
        with pytest.raises(admin.Error) as info:
            admin.delete_topic(topic)
        assert admin.code(info.value) == UNKNOWN_TOPIC_OR_PARTITION
    finally:
        admin.close()
    report(f"{admin.name}: leaders {owned} ({time.monotonic() - started:.1f}s)")


@pytest.mark.parametrize("admin_cls", [ConfluentAdmin, KafkaPythonAdmin], ids=lambda c: c.name)
def test_topics_of_thousands_of_partitions(
    checked: Cluster, admin_cls: type[Admin], report: Callable[[str], None]
) -> None:
    """On etcd (128 operations per transaction: CreateTopics of 128 partitions and more used
    to drop the client's connection), through the client's admin API: a topic of 1,000
    partitions, and one grown from 10 to 2,000; every partition is listed and gets an owner,
    and the last partition of each takes a record and gives it back."""
    cluster = checked
    started = time.monotonic()
    admin = admin_cls(bootstrap_of(cluster))
    wide, grown = new_topic(admin.name, "wide"), new_topic(admin.name, "grown")
    try:
        admin.create_topic(wide, 1000, {})
        admin.create_topic(grown, 10, {})
        admin.create_partitions(grown, 2000)
        listed = admin.topics()
        assert [p for p, *_ in listed[wide]] == list(range(1000))
        assert [p for p, *_ in listed[grown]] == list(range(2000))
        for topic, last in ((wide, 999), (grown, 1999)):
            assert admin.produce(topic, [[(last, b"the last one", None)]]) == [(last, 0)]
            got = admin.consume_from_beginning(topic, last, 1)
            assert [(o, v) for o, v, _ in got] == [(0, b"the last one")]
        placed = wait_placed(cluster, {wide: 1000, grown: 2000}, timeout=60)
        assert len(placed[wide]) == 1000 and len(placed[grown]) == 2000
        took = time.monotonic() - started
        admin.delete_topic(wide)
        admin.delete_topic(grown)
    finally:
        admin.close()
    report(f"{admin.name}: 1,000 + 10 -> 2,000 partitions created, owned, used ({took:.1f}s)")


def test_a_broker_killed_during_a_large_create_leaves_no_half_topic(checked: Cluster) -> None:
    """CreateTopics of 5,000 partitions sent to a broker that is killed (-9) at once: after
    its restart every broker either does not know the topic or knows all 5,000 partitions
    (a topic is one metadata key, whatever its size), and a second create settles it."""
    cluster = checked
    victim = cluster.brokers[1]
    topic = new_topic("raw", "killed-create")
    body = CreateTopicsRequest(
        topics=[CreatableTopic(name=topic, num_partitions=5000, replication_factor=1)],
        timeout_ms=30000,
    )
    with socket.create_connection(("127.0.0.1", victim.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(encode_request(api("CreateTopics"), 4, 1, "kill", body)))
        victim.kill()
    cluster.heal()
    seen = {b.id: metadata(b.address, topic) for b in cluster.brokers}
    for broker, view in seen.items():
        if view.error == 0:
            assert sorted({*view.leaders, *view.errors}) == list(range(5000)), broker
        else:
            assert view.error == UNKNOWN_TOPIC_OR_PARTITION, (broker, view.error)
    admin = ConfluentAdmin(bootstrap_of(cluster))
    try:
        try:
            admin.create_topic(topic, 5000, {})
        except admin.Error as e:  # the killed broker had created it
            assert admin.code(e) == ErrorCode.TOPIC_ALREADY_EXISTS
        assert len(admin.topics()[topic]) == 5000
        admin.delete_topic(topic)
    finally:
        admin.close()


# --- 3. a consumer group through the kill of its coordinator --------------------------------


class SlowerProducer(NumberedProducer):
    """test_groups.py's producer at GROUP_RATE records per second: every record is a segment
    object of its own at this pace (10 ms flushes), which the cold restarts read back from S3."""

    rate = GROUP_RATE


def coordinator_of(cluster: Cluster, group: str, timeout: float = OWNERS_TIMEOUT) -> int:
    """The group's coordinator, once every running broker's FindCoordinator names the same
    live broker and that broker holds the group's owner key."""
    deadline = time.monotonic() + timeout
    while True:
        live = [b for b in cluster.brokers if b.running]
        answers = {b.id: find_coordinator(b.address, group) for b in live}
        named = set(answers.values())
        holder = group_owner(cluster, group)
        if len(named) == 1 and holder in named and holder in {b.id for b in live}:
            return holder
        if time.monotonic() > deadline:
            pytest.fail(f"{group}: FindCoordinator answers {answers}, owner key held by {holder}")
        time.sleep(0.1)


def test_group_survives_its_coordinator_kill(
    checked: Cluster, members: list[Consumer], report: Callable[[str], None]
) -> None:
    """kafka-python, confluent-kafka and aiokafka members (each a process of its own,
    test_groups.py's group_member.py) share 6 partitions spread over the 3 brokers while a
    producer writes; every broker's FindCoordinator and the group's owner key name one
    coordinator, which is SIGKILLed: another broker takes the group over after the lease TTL,
    the members rejoin it (new member ids, every partition assigned once again) and commit
    through it; the killed broker restarts and takes its partitions back. Every acked record
    is consumed, with the produced value, duplicates only from batches whose commit was
    refused."""
    cluster = checked
    endpoint = bootstrap_of(cluster)
    topic, group = new_topic("cluster", "group"), new_topic("cluster", "group-g")
    KafkaPython(endpoint).create_topic(topic, PARTITIONS, {})
    owned = check_metadata(cluster, topic)
    admin = GroupAdmin(endpoint)
    producer = SlowerProducer(endpoint, topic)
    group_members: list[Member] = [
        Member(name, client, endpoint, group, topic)
        for name, client in [("kp", "kafka-python"), ("ck", "confluent"), ("aio", "aiokafka")]
    ]
    members.extend(group_members)
    GROUPS.append(group)
    started = time.monotonic()
    consumers: list[Consumer] = [*group_members]
    views = wait_stable(admin, group, consumers)
    report(f"3 members stable {time.monotonic() - started:.1f}s after starting: {views}")

    def committed_after(t: float) -> bool:
        return all(any(e["ok"] and e["t"] > t for e in m.of("commit")) for m in group_members)

    def wait_committed_after(t: float) -> None:
        deadline = time.monotonic() + test_groups.STABLE_TIMEOUT
        while not committed_after(t):
            assert time.monotonic() < deadline, "a member did not commit\n" + diagnostics(
                list(group_members)
            )
            time.sleep(POLL)

    wait_committed_after(0)
    coordinator = coordinator_of(cluster, group)
    victim = cluster.brokers[coordinator]
    lost_partitions = sorted(p for p, (b, _) in owned.items() if b == coordinator)
    ids = {m.name: m.of("assigned")[-1]["member"] for m in group_members}

    killed = time.monotonic()
    victim.kill()
    views = wait_stable(admin, group, consumers, after=killed)
    stable = max(e["t"] for m in group_members if (e := m.last_assigned()) is not None)
    successor = coordinator_of(cluster, group)
    assert successor != coordinator
    taken = wait_owned(cluster, topic, PARTITIONS)  # by the survivors
    wait_committed_after(stable)  # consuming and committing again through the new coordinator
    rejoined = {m.name: m.of("assigned")[-1]["member"] for m in group_members}
    assert all(rejoined[m] != ids[m] for m in ids), f"not new members: {ids} {rejoined}"
    refused = sum(not e["ok"] for m in group_members for e in m.of("commit") if e["t"] > killed)
    report(
        f"coordinator broker {coordinator} (owning partitions {lost_partitions}) SIGKILLed: "
        f"broker {successor} coordinates, group stable again {stable - killed:.1f}s after the "
        f"kill (lease TTL {LEASE_TTL_MS} ms, session {test_groups.SESSION_MS} ms); {refused} "
        f"commits refused meanwhile: {views}"
    )

    # The killed broker comes back and takes its partitions back from the survivors.
    back = time.monotonic()
    victim.start()
    returned = check_metadata(cluster, topic)
    # Each of its partitions changed hands twice (to a survivor, back; no flapping): two
    # leader epochs.
    assert {p: returned[p][1] - owned[p][1] for p in lost_partitions} == dict.fromkeys(
        lost_partitions, 2
    ), (owned, taken, returned)
    producer.wait_acked(len(producer.acked) + 120, timeout=20)
    producer.finish()
    wait_all_consumed(producer, group_members)
    for m in group_members:
        m.stop()
    ledger = Ledger.of(producer.acked, group_members)
    report(f"broker {coordinator} back after {time.monotonic() - back:.1f}s; {ledger.summary()}")
    # Zombies are possible (members that lost their membership read on from their own
    # position until a commit fails): strict=False, as for a single broker's restart.
    ledger.check(strict=False)
    assert set(ledger.unsettled) <= {"refused"}, dict(ledger.unsettled)


# --- 4. cold restart -------------------------------------------------------------------------


Snapshot = dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None]]]


def read_everything(cluster: Cluster, timeout: float = 60.0) -> Snapshot:
    """Every partition of every topic, from offset 0 (nothing here deletes records) to its
    high watermark: (offset, key, value) of each record. librdkafka's debug log of the
    reading consumer goes to ``read-everything-N.log`` next to the brokers' logs."""
    bootstrap = cluster.bootstrap
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=TIMEOUT)
    log_path = cluster.root / f"read-everything-{next(_reads)}.log"
    logger = logging.getLogger(f"kafscale.conformance.{log_path.stem}")
    logger.propagate = False
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(created).3f %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "cluster-read-everything",  # unused with assign()
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 100,
            "debug": "metadata,topic,fetch,broker",
        },
        logger=logger,
    )
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    try:
        ends: dict[tuple[str, int], int] = {}
        for name, t in md.topics.items():
            for p in t.partitions:
                while (name, p) not in ends:
                    try:
                        _, high = consumer.get_watermark_offsets(
                            confluent_kafka.TopicPartition(name, p), timeout=TIMEOUT
                        )
                    except confluent_kafka.KafkaException as e:
                        # Just after a restart, while the brokers settle who owns what:
                        # librdkafka leaves the retry of this call to its caller.
                        if e.args[0].code() not in SETTLING or time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                    else:
                        ends[(name, p)] = int(high)
        out: Snapshot = {key: [] for key in ends}
        consumer.assign(
            [
                confluent_kafka.TopicPartition(t, p, confluent_kafka.OFFSET_BEGINNING)
                for (t, p), end in ends.items()
                if end
            ]
        )

        def behind() -> bool:
            return any(len(out[key]) < end for key, end in ends.items())

        while behind() and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=0.2):
                if m.error() is None:
                    key, at = (str(m.topic()), int(m.partition() or 0)), int(m.offset() or 0)
                    out[key].append((at, m.key(), m.value()))
                else:  # kept for a failure's message; librdkafka retries what it can
                    errors.append(f"{m.topic()}-{m.partition()}: {m.error()}")
        wrong = {
            key: (len(out[key]), end)
            for key, end in ends.items()
            if [o for o, _, _ in out[key]] != list(range(end))
        }
        assert not wrong, (
            f"partitions not read exactly from 0 to their end in {timeout}s: {wrong}; consumer "
            f"errors: {errors[-10:]}; "
            + describe_partitions(cluster, list(wrong))
            + f"; librdkafka's log: {log_path}"
        )
        return out
    finally:
        consumer.close()
        logger.removeHandler(handler)
        handler.close()


def describe_partitions(cluster: Cluster, partitions: list[tuple[str, int]]) -> str:
    """What the cluster says about these partitions: owner key, each broker's Metadata
    (leader, epoch), what a raw Fetch from the owner serves."""
    lines = []
    for topic, p in partitions:
        owner = owners(cluster, topic).get(p)
        views: dict[int, object] = {}
        for b in cluster.brokers:
            try:
                views[b.id] = metadata(b.address, topic).leaders.get(p)
            except (OSError, AssertionError) as e:
                views[b.id] = repr(e)
        try:
            served: object = sum(b.record_count for b in stored_batches(cluster, topic, p))
        except (OSError, AssertionError) as e:
            served = repr(e)
        lines.append(
            f"{topic}-{p}: owner key {owner}, Metadata (leader, epoch) by broker {views}, "
            f"records a raw Fetch from the owner serves: {served}"
        )
    return "; ".join(lines)


def committed_offsets(bootstrap: str) -> dict[str, dict[tuple[str, int], int]]:
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    return {group: confluent_committed(admin, group) for group in GROUPS}


def test_transaction_across_brokers(checked: Cluster, report: Callable[[str], None]) -> None:
    """A confluent-kafka transaction over 6 partitions owned by all 3 brokers commits all or
    none: a committed one is read whole by read_committed, an aborted one (its records
    stored first) not at all, both by read_uncommitted; the markers make every partition's
    last stable offset its high watermark (issue 17)."""
    from tests.conformance.test_transactions import consume_all, end_offsets

    cluster = checked
    bootstrap = cluster.bootstrap
    topic = "cluster-txn"
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([confluent_kafka.admin.NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    owned = wait_owned(cluster, topic, PARTITIONS)
    assert len({b for b, _ in owned.values()}) == 3, owned
    p = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "transactional.id": "spread"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(PARTITIONS * 4):
        p.produce(topic, value=b"yes-%d" % i, partition=i % PARTITIONS)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(PARTITIONS * 4):
        p.produce(topic, value=b"no-%d" % i, partition=i % PARTITIONS)
    p.flush(30)
    p.abort_transaction(30)
    committed = consume_all(bootstrap, topic, "read_committed", PARTITIONS * 4, PARTITIONS)
    assert sorted(v for _, _, v in committed) == sorted(b"yes-%d" % i for i in range(24))
    everything = consume_all(bootstrap, topic, "read_uncommitted", 48, PARTITIONS)
    assert len(everything) == 48
    ends = end_offsets(bootstrap, topic, "read_committed", PARTITIONS)
    assert ends == end_offsets(bootstrap, topic, "read_uncommitted", PARTITIONS) == [10] * 6
    # Gone before the cold restarts, which read every topic and count every offset (markers
    # and aborted records are offsets no consumer gets).
    admin.delete_topics([topic])[topic].result(30)
    report(f"transaction over partitions by broker {owned}: all or none, markers everywhere")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_cold_restart_keeps_records_and_offsets(
    checked: Cluster, how: str, report: Callable[[str], None]
) -> None:
    """Records (acks=all) to 6 partitions and a group's commits; then every broker is stopped
    (SIGTERM: drained; SIGKILL: crashed, the restarted brokers wait for their old leases to
    expire) and started again on the same etcd and bucket."""
    cluster = checked
    endpoint = bootstrap_of(cluster)
    topic, group = new_topic("cluster", f"cold-{how}"), new_topic("cluster", f"cold-{how}-g")
    KafkaPython(endpoint).create_topic(topic, PARTITIONS, {})
    history = History()
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": endpoint.bootstrap, "acks": "all", "linger.ms": 5}
    )
    for i in range(20 * PARTITIONS):
        p = i % PARTITIONS
        send = history.invoke("p", f"{how}:{i}", p)

        def delivered(err: Any, msg: Any, send: Any = send) -> None:
            if err is None:
                history.ok(send, msg.offset(), msg.partition())
            else:
                history.unknown(send, str(err))

        producer.produce(topic, f"{how}:{i}".encode(), partition=p, on_delivery=delivered)
    assert producer.flush(TIMEOUT) == 0
    assert all(s.outcome == "ok" for s in history.sends), [s.error for s in history.sends]

    wanted = {(topic, p): 3 * p + 1 for p in range(PARTITIONS)}
    consumer = confluent_consumer(endpoint, group)
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p) for p in range(PARTITIONS)])
        done = consumer.commit(
            offsets=[confluent_kafka.TopicPartition(t, p, o) for (t, p), o in wanted.items()],
            asynchronous=False,
        )
        assert done is not None and all(tp.error is None for tp in done), done
    finally:
        consumer.close()
    GROUPS.append(group)

    reading = time.monotonic()
    before = read_everything(cluster)
    read_before = time.monotonic() - reading
    offsets_before = committed_offsets(endpoint.bootstrap)
    assert offsets_before[group] == wanted
    assert all(offsets_before.values()), f"a group without commits: {offsets_before}"

    stopped = time.monotonic()
    if how == "sigterm":
        statuses = cluster.stop()
        assert statuses == {0: 0, 1: 0, 2: 0}, statuses
    else:
        for b in cluster.brokers:
            b.kill()
    down = time.monotonic()
    cluster.heal()  # starts each again; they listen once registered (after their old leases)
    up = time.monotonic()
    topics: dict[str, int] = defaultdict(int)
    for t, _ in before:
        topics[t] += 1
    wait_placed(cluster, topics)  # the readers start once no partition moves any more
    settled = time.monotonic()

    after = read_everything(cluster)
    served = time.monotonic()
    assert after == before, "the log changed across the restart: " + str(
        {k: (len(before.get(k, [])), len(v)) for k, v in after.items() if before.get(k) != v}
    )
    assert committed_offsets(endpoint.bootstrap) == offsets_before

    workload = Workload(endpoint.bootstrap, topic, PARTITIONS, history)
    workload.final_read(workload.watermarks())
    result = check(history)
    summary = result.summary
    assert result.valid, result.explain()
    assert summary["acked"] == summary["operations"] == 20 * PARTITIONS, result.line()
    counts = [summary[k] for k in ("lost", "unseen", "duplicates", "inconsistent_offsets")]
    assert counts == [0, 0, 0, 0], result.explain()

    # A member of the group resumes exactly at the committed offsets.
    subscriber = confluent_subscriber(endpoint, group, topic, f"{how}-resumer")
    try:
        first = confluent_first_offsets(subscriber, PARTITIONS)
    finally:
        subscriber.close()
    assert first == {p: o for (_, p), o in wanted.items()}

    records = sum(len(v) for v in after.values())
    report(
        f"{how} all: stop {down - stopped:.1f}s, start {up - down:.1f}s, every partition "
        f"on its owner {settled - up:.1f}s later, full read {served - settled:.1f}s (before the "
        f"restart {read_before:.1f}s); {records} records in {len(after)} partitions and the "
        f"offsets of {len(GROUPS)} groups unchanged; {result.line()}"
    )
