"""Group administration through the clients' admin APIs, against a real broker process.

Groups exist through committed offsets alone (assign() + commit; JoinGroup is not served yet),
so each is listed and described as an "Empty" group with no members, and can be deleted.
kafka-python 3 names the calls list_groups / describe_groups / delete_groups (dicts).
"""

from __future__ import annotations

import confluent_kafka
import confluent_kafka.admin
import kafka
import kafka.admin
from kafka.structs import OffsetAndMetadata

from tests.conformance.clients import TIMEOUT, KafkaPython, new_topic
from tests.conformance.conftest import BrokerProcess
from tests.conformance.test_offsets import confluent_consumer


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
