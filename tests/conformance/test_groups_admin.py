"""Group administration through the clients' admin APIs, against a real broker process.

First groups known by their committed offsets alone (assign() + commit: "Empty", no members),
then the ``kafka-consumer-groups`` workflows for a group with a live, subscribed member and
after it left: list (state filters Stable / Empty), describe (assignor, members with client id,
host and decoded assignment), committed offsets and lag (end offset - committed, as
``kafka-consumer-groups --describe`` computes it), delete (NON_EMPTY_GROUP while a member is
live), OffsetDelete (GROUP_SUBSCRIBED_TO_TOPIC for a subscribed topic), and resetting offsets
to earliest / latest / a timestamp (refused while a member is live, then the restarted consumer
resumes from the reset offsets). Both confluent-kafka's AdminClient and kafka-python's
KafkaAdminClient (list_groups / describe_groups / delete_groups, dicts) are used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.admin
import kafka.errors
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions
from confluent_kafka.admin import OffsetSpec
from kafka.admin import MemberToRemove, OffsetTimestamp
from kafka.admin import OffsetSpec as KafkaPythonOffsetSpec
from kafka.structs import OffsetAndMetadata

from tests.conformance.clients import TIMEOUT, KafkaPython, new_topic
from tests.conformance.conftest import BrokerProcess
from tests.conformance.test_offsets import confluent_consumer

RECORDS = 6
"""Records per partition in the workflow tests; record i has timestamp BASE_TS + i * 1000."""
BASE_TS = int(time.time() * 1000) - 3_600_000  # within the default retention
NON_EMPTY_GROUP = 68

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """Poll ``probe`` until it returns something other than None (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- groups known only by their committed offsets ------------------------------------------


def test_confluent_admin_lists_describes_and_deletes_groups(checked_broker: BrokerProcess) -> None:
    topic = new_topic("confluent", "groups")
    group = new_topic("confluent", "group")
    KafkaPython(checked_broker).create_topic(topic, 1, {})
    consumer = confluent_consumer(checked_broker, group)
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0)])
        offsets = [confluent_kafka.TopicPartition(topic, 0, 7)]
        for tp in consumer.commit(offsets=offsets, asynchronous=False) or []:
            assert tp.error is None, tp
    finally:
        consumer.close()

    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": checked_broker.bootstrap})
    listed = admin.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT)
    assert not listed.errors
    (mine,) = [g for g in listed.valid if g.group_id == group]
    assert mine.is_simple_consumer_group
    assert mine.state == confluent_kafka.ConsumerGroupState.EMPTY

    described = admin.describe_consumer_groups([group, group + "-unknown"])
    desc = described[group].result(TIMEOUT)
    assert (desc.state, desc.members) == (confluent_kafka.ConsumerGroupState.EMPTY, [])
    unknown = described[group + "-unknown"].result(TIMEOUT)
    assert unknown.state == confluent_kafka.ConsumerGroupState.DEAD

    assert admin.delete_consumer_groups([group])[group].result(TIMEOUT) is None
    listed = admin.list_consumer_groups(request_timeout=TIMEOUT).result(TIMEOUT)
    assert group not in {g.group_id for g in listed.valid}
    consumer = confluent_consumer(checked_broker, group)
    try:
        (tp,) = consumer.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=TIMEOUT)
        assert tp.offset == confluent_kafka.OFFSET_INVALID
    finally:
        consumer.close()


def test_kafka_python_admin_lists_describes_and_deletes_groups(
    checked_broker: BrokerProcess,
) -> None:
    topic = new_topic("kafka-python", "groups")
    group = new_topic("kafka-python", "group")
    KafkaPython(checked_broker).create_topic(topic, 1, {})
    tp = kafka.TopicPartition(topic, 0)
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=checked_broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=int(TIMEOUT * 1000),
    )
    try:
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(3, "", -1)})
    finally:
        consumer.close()

    admin = kafka.admin.KafkaAdminClient(
        bootstrap_servers=checked_broker.bootstrap, request_timeout_ms=int(TIMEOUT * 1000)
    )
    try:
        (listed,) = [g for g in admin.list_groups() if g["group_id"] == group]
        assert listed == {
            "group_id": group,
            "protocol_type": "",
            "group_state": "Empty",
            "group_type": "classic",
        }
        desc = admin.describe_groups([group])[group]
        assert (desc["group_state"], desc["protocol_type"], desc["members"]) == ("Empty", "", [])
        assert desc["error"] is None
        assert admin.list_group_offsets({group: None}) == {
            group: {tp: OffsetAndMetadata(3, "", -1)}
        }
        assert admin.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.list_group_offsets({group: None}) == {group: {}}
    finally:
        admin.close()


# --- confluent-kafka: a subscribed consumer and its group ------------------------------------


def produce_timestamped(broker: BrokerProcess, topic: str, partitions: int, first: int = 0) -> None:
    """RECORDS records (offsets first..) to each partition, record i at BASE_TS + i * 1000."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "log_level": 3}
    )
    for p in range(partitions):
        for i in range(first, first + RECORDS):
            producer.produce(topic, value=b"%d" % i, partition=p, timestamp=BASE_TS + i * 1000)
    assert producer.flush(TIMEOUT) == 0


def confluent_subscriber(
    broker: BrokerProcess, group: str, topic: str, client_id: str, assignor: str = "roundrobin"
) -> confluent_kafka.Consumer:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "client.id": client_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": assignor,
            "session.timeout.ms": 6000,
            "log_level": 3,
        }
    )
    consumer.subscribe([topic])
    return consumer


def confluent_first_offsets(consumer: confluent_kafka.Consumer, partitions: int) -> dict[int, int]:
    """Poll until a record of every partition came: the offset of each partition's first."""
    first: dict[int, int] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(first) < partitions and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        first.setdefault(msg.partition(), msg.offset())
    return first


def confluent_committed(admin: Any, group: str) -> dict[tuple[str, int], int]:
    request = [ConsumerGroupTopicPartitions(group)]
    result = admin.list_consumer_group_offsets(request)[group].result(TIMEOUT)
    for tp in result.topic_partitions:
        assert tp.error is None, tp
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


def confluent_list_offsets(admin: Any, topic: str, partitions: int, spec: Any) -> dict[int, int]:
    wanted = {confluent_kafka.TopicPartition(topic, p): spec for p in range(partitions)}
    return {
        tp.partition: future.result(TIMEOUT).offset
        for tp, future in admin.list_offsets(wanted, request_timeout=TIMEOUT).items()
    }


def confluent_alter(admin: Any, group: str, topic: str, offsets: dict[int, int]) -> list[Any]:
    """AlterConsumerGroupOffsets (an OffsetCommit with generation -1); each partition's error."""
    tps = [confluent_kafka.TopicPartition(topic, p, o) for p, o in offsets.items()]
    result = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
    return [tp.error for tp in result[group].result(TIMEOUT).topic_partitions]


def confluent_states(admin: Any, states: set[Any]) -> set[str]:
    listed = admin.list_consumer_groups(request_timeout=TIMEOUT, states=states).result(TIMEOUT)
    assert not listed.errors
    return {g.group_id for g in listed.valid}


def test_confluent_admin_workflows_with_a_live_member_and_after_it_left(
    checked_broker: BrokerProcess,
) -> None:
    topic = new_topic("confluent", "live")
    group = new_topic("confluent", "live-group")
    KafkaPython(checked_broker).create_topic(topic, 2, {})
    produce_timestamped(checked_broker, topic, 2)
    admin = confluent_kafka.admin.AdminClient(
        {"bootstrap.servers": checked_broker.bootstrap, "log_level": 3}
    )

    consumer = confluent_subscriber(checked_broker, group, topic, "live-client")
    try:
        assert confluent_first_offsets(consumer, 2) == {0: 0, 1: 0}
        member_id = consumer.memberid()
        # Commit as the member (its generation): partition 0 at 4, partition 1 at 2.
        commits = [
            confluent_kafka.TopicPartition(topic, 0, 4),
            confluent_kafka.TopicPartition(topic, 1, 2),
        ]
        for tp in consumer.commit(offsets=commits, asynchronous=False) or []:
            assert tp.error is None, tp

        # Listing with a state filter: Stable now, not Empty.
        assert group in confluent_states(admin, {ConsumerGroupState.STABLE})
        assert group not in confluent_states(admin, {ConsumerGroupState.EMPTY})

        desc = admin.describe_consumer_groups([group])[group].result(TIMEOUT)
        assert (desc.state, desc.partition_assignor) == (ConsumerGroupState.STABLE, "roundrobin")
        assert not desc.is_simple_consumer_group
        (member,) = desc.members
        assert (member.member_id, member.client_id, member.host) == (
            member_id,
            "live-client",
            "/127.0.0.1",
        )
        assigned = {(tp.topic, tp.partition) for tp in member.assignment.topic_partitions}
        assert assigned == {(topic, 0), (topic, 1)}

        # Lag, as kafka-consumer-groups --describe computes it: log end offset - committed.
        committed = confluent_committed(admin, group)
        assert committed == {(topic, 0): 4, (topic, 1): 2}
        end = confluent_list_offsets(admin, topic, 2, OffsetSpec.latest())
        assert {p: end[p] - committed[(topic, p)] for p in end} == {0: RECORDS - 4, 1: RECORDS - 2}

        # Deleting a group with a live member is refused, and so is altering its offsets.
        deleted = admin.delete_consumer_groups([group])[group]
        error = deleted.exception(TIMEOUT)
        assert error is not None and error.args[0].code() == NON_EMPTY_GROUP, error
        errors = confluent_alter(admin, group, topic, {0: 0, 1: 0})
        assert [e and e.code() for e in errors] == [
            confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID
        ] * 2
        assert confluent_committed(admin, group) == committed
    finally:
        consumer.close()  # LeaveGroup

    # After the member left: Empty, no members, still a consumer group (protocol type kept).
    assert group in confluent_states(admin, {ConsumerGroupState.EMPTY})
    assert group not in confluent_states(admin, {ConsumerGroupState.STABLE})
    desc = admin.describe_consumer_groups([group])[group].result(TIMEOUT)
    assert (desc.state, desc.members) == (ConsumerGroupState.EMPTY, [])
    assert not desc.is_simple_consumer_group

    # kafka-consumer-groups --reset-offsets: offsets found by ListOffsets, altered while the
    # group is inactive; a restarted consumer resumes from them.
    def reset_and_restart(spec: Any, expected: dict[int, int]) -> dict[int, int]:
        found = confluent_list_offsets(admin, topic, 2, spec)
        assert found == expected
        assert confluent_alter(admin, group, topic, found) == [None, None]
        assert confluent_committed(admin, group) == {(topic, p): o for p, o in found.items()}
        restarted = confluent_subscriber(checked_broker, group, topic, "restarted")
        try:
            return confluent_first_offsets(restarted, 2)
        finally:
            restarted.close()

    assert reset_and_restart(OffsetSpec.earliest(), {0: 0, 1: 0}) == {0: 0, 1: 0}
    assert reset_and_restart(OffsetSpec.for_timestamp(BASE_TS + 3000), {0: 3, 1: 3}) == {
        0: 3,
        1: 3,
    }
    # To latest: the restarted consumer's first records are the ones produced afterwards.
    found = confluent_list_offsets(admin, topic, 2, OffsetSpec.latest())
    assert found == {0: RECORDS, 1: RECORDS}
    assert confluent_alter(admin, group, topic, found) == [None, None]
    produce_timestamped(checked_broker, topic, 2, first=RECORDS)
    restarted = confluent_subscriber(checked_broker, group, topic, "restarted")
    try:
        assert confluent_first_offsets(restarted, 2) == {0: RECORDS, 1: RECORDS}
    finally:
        restarted.close()

    # Now the group can be deleted, offsets and all.
    assert admin.delete_consumer_groups([group])[group].result(TIMEOUT) is None
    assert group not in confluent_states(admin, set())
    desc = admin.describe_consumer_groups([group])[group].result(TIMEOUT)
    assert desc.state == ConsumerGroupState.DEAD


# --- kafka-python: the same workflows through KafkaAdminClient ------------------------------


def kafka_python_subscriber(
    broker: BrokerProcess, group: str, topic: str, client_id: str, **config: Any
) -> kafka.KafkaConsumer:
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=[kafka.coordinator.assignors.range.RangePartitionAssignor],
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=100,
        request_timeout_ms=int(TIMEOUT * 1000),
        **config,
    )
    consumer.subscribe([topic])
    return consumer


def kafka_python_first_offsets(consumer: kafka.KafkaConsumer, partitions: int) -> dict[int, int]:
    """Poll until a record of every partition came: the offset of each partition's first."""
    first: dict[int, int] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(first) < partitions and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200).items():
            first.setdefault(tp.partition, records[0].offset)
    return first


def kafka_python_admin(broker: BrokerProcess) -> kafka.admin.KafkaAdminClient:
    return kafka.admin.KafkaAdminClient(
        bootstrap_servers=broker.bootstrap, request_timeout_ms=int(TIMEOUT * 1000)
    )


def test_kafka_python_admin_workflows_with_a_live_member_and_after_it_left(
    checked_broker: BrokerProcess,
) -> None:
    topic = new_topic("kafka-python", "live")
    other = new_topic("kafka-python", "unsubscribed")
    group = new_topic("kafka-python", "live-group")
    KafkaPython(checked_broker).create_topic(topic, 2, {})
    KafkaPython(checked_broker).create_topic(other, 1, {})
    produce_timestamped(checked_broker, topic, 2)
    tps = [kafka.TopicPartition(topic, p) for p in range(2)]
    other_tp = kafka.TopicPartition(other, 0)
    admin = kafka_python_admin(checked_broker)
    try:
        consumer = kafka_python_subscriber(checked_broker, group, topic, "kp-live")
        try:
            assert kafka_python_first_offsets(consumer, 2) == {0: 0, 1: 0}
            # The member commits (with its generation), also for a topic it does not subscribe.
            consumer.commit(
                {
                    tps[0]: OffsetAndMetadata(5, "five", -1),
                    tps[1]: OffsetAndMetadata(1, "", -1),
                    other_tp: OffsetAndMetadata(0, "", -1),
                }
            )

            listed = {g["group_id"]: g for g in admin.list_groups(states_filter=["Stable"])}
            assert listed[group] == {
                "group_id": group,
                "protocol_type": "consumer",
                "group_state": "Stable",
                "group_type": "classic",
            }
            assert group not in {g["group_id"] for g in admin.list_groups(states_filter=["Empty"])}

            desc = admin.describe_groups([group])[group]
            assert (desc["group_state"], desc["protocol_type"], desc["protocol_data"]) == (
                "Stable",
                "consumer",
                "range",
            )
            (member,) = desc["members"]
            assert (member["client_id"], member["client_host"]) == ("kp-live", "/127.0.0.1")
            assert member["group_instance_id"] is None
            # The member's subscription and assignment, decoded by kafka-python itself.
            assert member["member_metadata"]["topics"] == [topic]
            assert member["member_assignment"]["assigned_partitions"] == [
                {"topic": topic, "partitions": [0, 1]}
            ]

            # Lag: log end offset - committed offset.
            committed = admin.list_group_offsets({group: None})[group]
            assert committed == {
                tps[0]: OffsetAndMetadata(5, "five", -1),
                tps[1]: OffsetAndMetadata(1, "", -1),
                other_tp: OffsetAndMetadata(0, "", -1),
            }
            end = admin.list_partition_offsets({tp: KafkaPythonOffsetSpec.LATEST for tp in tps})
            assert {tp.partition: end[tp].offset - committed[tp].offset for tp in tps} == {
                0: RECORDS - 5,
                1: RECORDS - 1,
            }

            # While the member lives: no delete, no reset, no OffsetDelete of its topic (but of
            # a topic it does not subscribe to).
            assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
            reset = admin.reset_group_offsets(
                group, {tp: KafkaPythonOffsetSpec.EARLIEST for tp in tps}
            )
            assert {tp: r["error"] for tp, r in reset.items()} == {
                tp: kafka.errors.UnknownMemberIdError for tp in tps
            }
            altered = admin.alter_group_offsets(group, {tps[0]: OffsetAndMetadata(0, "", -1)})
            assert altered == {tps[0]: kafka.errors.UnknownMemberIdError}
            assert admin.delete_group_offsets(group, [tps[0], other_tp]) == {
                tps[0]: kafka.errors.GroupSubscribedToTopicError,
                other_tp: kafka.errors.NoError,
            }
            assert admin.list_group_offsets({group: None})[group] == {
                tps[0]: OffsetAndMetadata(5, "five", -1),
                tps[1]: OffsetAndMetadata(1, "", -1),
            }
        finally:
            consumer.close()  # LeaveGroup

        assert group in {g["group_id"] for g in admin.list_groups(states_filter=["Empty"])}
        desc = admin.describe_groups([group])[group]
        assert (desc["group_state"], desc["protocol_type"], desc["members"]) == (
            "Empty",
            "consumer",
            [],
        )

        def reset_and_restart(spec: Any) -> dict[int, int]:
            reset = admin.reset_group_offsets(group, {tp: spec for tp in tps})
            assert {r["error"] for r in reset.values()} == {kafka.errors.NoError}
            offsets = {tp.partition: r["offset"] for tp, r in reset.items()}
            stored = admin.list_group_offsets({group: None})[group]
            assert {tp.partition: stored[tp].offset for tp in tps} == offsets
            restarted = kafka_python_subscriber(checked_broker, group, topic, "kp-restarted")
            try:
                assert kafka_python_first_offsets(restarted, 2) == offsets
            finally:
                restarted.close()
            return offsets

        assert reset_and_restart(KafkaPythonOffsetSpec.EARLIEST) == {0: 0, 1: 0}
        assert reset_and_restart(OffsetTimestamp(BASE_TS + 4000)) == {0: 4, 1: 4}
        assert reset_and_restart(OffsetTimestamp(BASE_TS + 4500)) == {0: 5, 1: 5}
        # Latest: nothing to read until more records come.
        reset = admin.reset_group_offsets(group, {tp: KafkaPythonOffsetSpec.LATEST for tp in tps})
        assert {tp.partition: r["offset"] for tp, r in reset.items()} == {0: RECORDS, 1: RECORDS}
        produce_timestamped(checked_broker, topic, 2, first=RECORDS)
        restarted = kafka_python_subscriber(checked_broker, group, topic, "kp-restarted")
        try:
            assert kafka_python_first_offsets(restarted, 2) == {0: RECORDS, 1: RECORDS}
        finally:
            restarted.close()

        assert admin.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.list_group_offsets({group: None}) == {group: {}}
    finally:
        admin.close()


def test_kafka_python_static_member_is_removed_by_the_admin(checked_broker: BrokerProcess) -> None:
    """A static member (group.instance.id) does not leave when it closes; the admin removes
    it by instance id (LeaveGroup v3+, as AdminClient.removeMembersFromConsumerGroup)."""
    topic = new_topic("kafka-python", "static")
    group = new_topic("kafka-python", "static-group")
    KafkaPython(checked_broker).create_topic(topic, 1, {})
    produce_timestamped(checked_broker, topic, 1)
    admin = kafka_python_admin(checked_broker)
    try:
        consumer = kafka_python_subscriber(
            checked_broker, group, topic, "kp-static", group_instance_id="instance-1"
        )
        try:
            assert kafka_python_first_offsets(consumer, 1) == {0: 0}
            (member,) = admin.describe_groups([group])[group]["members"]
            assert member["group_instance_id"] == "instance-1"
        finally:
            consumer.close()
        # Still a member (until its session times out) ...
        desc = admin.describe_groups([group])[group]
        assert desc["group_state"] == "Stable"
        assert [m["group_instance_id"] for m in desc["members"]] == ["instance-1"]
        assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}
        # ... until removed by its instance id; an unknown instance id is refused.
        removed = admin.remove_group_members(
            group,
            [MemberToRemove(group_instance_id="instance-1"), MemberToRemove(group_instance_id="x")],
        )
        assert removed == {
            "instance-1": kafka.errors.NoError,
            "x": kafka.errors.UnknownMemberIdError,
        }
        desc = admin.describe_groups([group])[group]
        assert (desc["group_state"], desc["members"]) == ("Empty", [])
        assert admin.delete_groups([group]) == {group: "OK"}
    finally:
        admin.close()


def test_two_clients_share_a_group(checked_broker: BrokerProcess) -> None:
    """A confluent-kafka and a kafka-python consumer in one group (both "range"): described
    with both members and disjoint assignments covering every partition; when one leaves,
    the other gets everything."""
    topic = new_topic("mixed", "shared")
    group = new_topic("mixed", "shared-group")
    KafkaPython(checked_broker).create_topic(topic, 4, {})
    admin = confluent_kafka.admin.AdminClient(
        {"bootstrap.servers": checked_broker.bootstrap, "log_level": 3}
    )
    first = confluent_subscriber(checked_broker, group, topic, "mixed-confluent", "range")
    second = kafka_python_subscriber(checked_broker, group, topic, "mixed-kafka-python")
    closed = False
    try:

        def both_assigned() -> Any:
            first.poll(0.05)
            second.poll(timeout_ms=50)
            desc = admin.describe_consumer_groups([group])[group].result(TIMEOUT)
            if desc.state != ConsumerGroupState.STABLE or len(desc.members) != 2:
                return None
            if len(first.assignment()) + len(second.assignment()) != 4:
                return None
            return desc

        desc = wait_for("both members assigned", both_assigned, 2 * TIMEOUT)
        assert desc.partition_assignor == "range"
        by_client = {
            m.client_id: {tp.partition for tp in m.assignment.topic_partitions}
            for m in desc.members
        }
        assert set(by_client) == {"mixed-confluent", "mixed-kafka-python"}
        assert by_client["mixed-confluent"] | by_client["mixed-kafka-python"] == {0, 1, 2, 3}
        assert by_client["mixed-confluent"].isdisjoint(by_client["mixed-kafka-python"])
        assert by_client["mixed-confluent"] == {tp.partition for tp in first.assignment()}
        assert by_client["mixed-kafka-python"] == {tp.partition for tp in second.assignment()}

        second.close()
        closed = True

        def alone() -> Any:
            first.poll(0.05)
            desc = admin.describe_consumer_groups([group])[group].result(TIMEOUT)
            if desc.state != ConsumerGroupState.STABLE or len(desc.members) != 1:
                return None
            return desc if len(first.assignment()) == 4 else None

        (member,) = wait_for("the remaining member assigned everything", alone).members
        assert member.client_id == "mixed-confluent"
        assert {tp.partition for tp in member.assignment.topic_partitions} == {0, 1, 2, 3}
    finally:
        first.close()
        if not closed:
            second.close()
    desc = admin.describe_consumer_groups([group])[group].result(TIMEOUT)
    assert (desc.state, desc.members) == (ConsumerGroupState.EMPTY, [])
