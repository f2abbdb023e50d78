"""Kafka's internal topics, as clients see them here.

Kafka keeps group state in ``__consumer_offsets`` (and transactions in ``__transaction_state``);
a topic bearing one of Kafka's internal names is internal (Metadata's IsInternal), whoever
created it. Our committed offsets live in the metadata store, not in a topic
(:mod:`kafscale.broker.offsets`), yet clients expect to see the topic once groups exist
(``exclude.internal.topics``, UIs, kafka-python's and aiokafka's suites). So, as Kafka does at
the first FindCoordinator of a group, the broker then creates ``__consumer_offsets`` as an
ordinary topic of the topic table that stays empty: Metadata, ListTopics, DescribeTopics,
DescribeConfigs, ListOffsets and Fetch answer for it as for any topic (an empty log), and only
the requests that would change it are refused as Kafka refuses them for a client.

- One partition, not Kafka's 50 (``offsets.topic.num.partitions``): the partitions hold no data
  here, clients never map a group to one of them (FindCoordinator does), and each partition
  would only cost an owner key, a state key and a place in every Metadata answer.
- ``cleanup.policy=compact`` and ``segment.bytes=104857600``, the configs Kafka creates it with.
- Produce -> INVALID_TOPIC_EXCEPTION (17) and DeleteRecords -> INVALID_TOPIC_EXCEPTION, as Kafka
  answers a client (Kafka lets only its own admin client id write to it).
- DeleteTopics -> INVALID_TOPIC_EXCEPTION: Kafka 3.9 would delete it, and every committed offset
  with it; deleting it here would remove nothing but the empty stand-in (the offsets stay), so
  it is refused rather than reported as done (DeleteGroups and OffsetDelete remove offsets).
- CreateTopics of an existing one -> TOPIC_ALREADY_EXISTS (36), as for any topic.
- ``__transaction_state`` and ``__share_group_state`` are never created by the broker
  (transactions and share groups are not served); Metadata names them internal when asked.
"""

from __future__ import annotations

import logging

from generated.errors import ErrorCode
from kafscale.broker.topics import Topic, TopicError, Topics

log = logging.getLogger("kafscale.broker")

GROUP_METADATA_TOPIC = "__consumer_offsets"
TRANSACTION_STATE_TOPIC = "__transaction_state"
SHARE_GROUP_STATE_TOPIC = "__share_group_state"
INTERNAL_TOPICS = frozenset(
    {GROUP_METADATA_TOPIC, TRANSACTION_STATE_TOPIC, SHARE_GROUP_STATE_TOPIC}
)
"""Kafka's ``Topic.INTERNAL_TOPICS`` (3.9)."""

OFFSETS_TOPIC_PARTITIONS = 1
OFFSETS_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.bytes": "104857600"}


def is_internal(name: str | None) -> bool:
    return name in INTERNAL_TOPICS


async def ensure_offsets_topic(topics: Topics) -> Topic | None:
    """``__consumer_offsets``, created now unless it exists (another broker may create it at
    the same moment: one creation wins). None, logged, when the store refused the creation:
    groups do not need the topic, so a caller goes on without it."""
    topic = topics.get(GROUP_METADATA_TOPIC)
    if topic is not None:
        return topic
    try:
        topic = await topics.create(
            GROUP_METADATA_TOPIC, OFFSETS_TOPIC_PARTITIONS, dict(OFFSETS_TOPIC_CONFIGS)
        )
    except TopicError as e:
        if e.code != ErrorCode.TOPIC_ALREADY_EXISTS:
            log.warning("could not create %s: %s", GROUP_METADATA_TOPIC, e.message)
        return topics.get(GROUP_METADATA_TOPIC)
    except Exception:
        log.warning("could not create %s", GROUP_METADATA_TOPIC, exc_info=True)
        return None
    log.info("created internal topic %s (%d partition)", topic.name, topic.partitions)
    return topic
