# Metadata (key 3), versions 0-12.
# - Brokers: every live broker (registered with a lease). Each partition's leader is its owner
#   (the broker holding its owner key; read from the store when our mirror knows none, so a claim
#   that just committed is not announced as a later epoch) with the epoch it took it at; a
#   partition nobody owns yet names the broker that should take it (it claims the partition on the
#   first request) with the epoch that claim will start (the last committed + 1; a broker used
#   without the cluster machinery never claims: the last committed). Naming a new leader with the
#   previous leader's epoch would tell clients two leaders for one epoch, which Kafka never does,
#   and librdkafka can then leave the partition on the wrong broker until its messages time out
#   (librdkafka issue 4976, PR 5593). With no live broker to name, LEADER_NOT_AVAILABLE (5).
#   Replicas and ISR are the leader alone: the object store replicates. The controller is the live
#   broker with the lowest id.
# - Topics null (v1+) = all topics; an empty list = none. Unknown topics are auto-created when
#   the broker allows it AND the request's AllowAutoTopicCreation (v4+) says so (v0-3: always
#   allowed by the request), else UNKNOWN_TOPIC_OR_PARTITION (3). Lookups by topic id (v10+)
#   answer UNKNOWN_TOPIC_ID (100) when unknown; before v12 a request naming a topic id (or a
#   null name) is INVALID_REQUEST (42) for every topic, as Kafka answers it.
# - Topic ids are real UUIDs (Kafka's); authorized operations are not computed (-2147483648).
# - Internal topics (kafscale/broker/internal_topics.py): IsInternal is true for Kafka's
#   internal names (__consumer_offsets, __transaction_state, __share_group_state), in answers
#   for unknown names too, as Kafka sets it. __consumer_offsets exists once a group has been
#   looked up (FindCoordinator creates it, as Kafka does): an empty topic of one partition,
#   listed with the others (so ListTopics, DescribeTopics and a consumer's
#   exclude.internal.topics see it as on Kafka), while the offsets live in the metadata store.
#   Asked for by name, it is auto-created like that (one partition, compacted); the other two
#   names are never auto-created (no transactions, no share groups):
#   UNKNOWN_TOPIC_OR_PARTITION.
from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import TYPE_CHECKING

from generated.errors import ErrorCode
from generated.metadata_request import MetadataRequest
from generated.metadata_response import (
    MetadataResponse,
    MetadataResponseBroker,
    MetadataResponsePartition,
    MetadataResponseTopic,
)
from kafscale.broker.cluster import Cluster
from kafscale.broker.handlers import RequestContext
from kafscale.broker.internal_topics import GROUP_METADATA_TOPIC, ensure_offsets_topic, is_internal
from kafscale.broker.log import LogManager
from kafscale.broker.topics import Topic, TopicError

if TYPE_CHECKING:
    from kafscale.broker.server import Broker

log = logging.getLogger("kafscale.broker")


_Partitions = list[MetadataResponsePartition]
_CACHE: weakref.WeakKeyDictionary[Cluster, dict[str, tuple[tuple[object, ...], _Partitions]]] = (
    weakref.WeakKeyDictionary()
)
"""Per cluster view, each topic's partition list while neither its owner keys nor the live
brokers changed: clients ask for thousands of partitions, and the answer only changes with
ownership. Only lists where every partition had an owner are kept (the others read the
store)."""


def _cache_key(topic: Topic, cluster: Cluster) -> tuple[object, ...]:
    return (
        topic.id,
        topic.partitions,
        cluster.owners.group_version(topic.name.encode()),
        cluster.brokers.version,
    )


def _answer(topic: Topic, partitions: _Partitions) -> MetadataResponseTopic:
    return MetadataResponseTopic(
        error_code=0,
        name=topic.name,
        topic_id=topic.id,
        is_internal=is_internal(topic.name),
        partitions=partitions,
    )


async def _topic(topic: Topic, cluster: Cluster, logs: LogManager) -> MetadataResponseTopic:
    return (await _topics([topic], cluster, logs))[0]


async def _topics(
    topics: list[Topic], cluster: Cluster, logs: LogManager
) -> list[MetadataResponseTopic]:
    """The answers for ``topics``: from the cache, the others built concurrently (each may
    read the store: thousands of topics must not wait for one read after another)."""
    cache = _CACHE.setdefault(cluster, {})
    out: list[MetadataResponseTopic | None] = []
    missing: list[tuple[int, tuple[object, ...]]] = []  # index, cache key before building
    for i, topic in enumerate(topics):
        key = _cache_key(topic, cluster)
        hit = cache.get(topic.name)
        if hit is not None and hit[0] == key:
            out.append(_answer(topic, hit[1]))
        else:
            out.append(None)
            missing.append((i, key))
    built = await asyncio.gather(*(_partitions(topics[i], cluster, logs) for i, _ in missing))
    for (i, key), (partitions, complete) in zip(missing, built, strict=True):
        topic = topics[i]
        out[i] = _answer(topic, partitions)
        # Kept under the key read before building: a change while it was built (the builds
        # of other topics read the store) makes the next ask build it again.
        if complete:
            cache[topic.name] = (key, partitions)
        else:
            cache.pop(topic.name, None)
    if len(cache) > 2 * len(logs.topics.by_name) + 16:  # forget deleted topics
        for name in [n for n in cache if n not in logs.topics.by_name]:
            del cache[name]
    return [answer for answer in out if answer is not None]


async def _partitions(topic: Topic, cluster: Cluster, logs: LogManager) -> tuple[_Partitions, bool]:
    """The topic's partitions as Metadata lists them, and whether every one had an owner."""
    stored: list[int] | None = None
    in_store: dict[int, tuple[int, int]] = {}
    partitions = []
    for p in range(topic.partitions):
        owner = cluster.owner(topic.name, p)
        if owner is None and stored is None:
            # The epochs, then the owners: a claim that committed since our mirror last heard
            # has started the epoch we would otherwise name as the next one (read in this
            # order, a claim committing in between is seen as an owner).
            stored = await logs.leader_epochs(topic.name, topic.partitions)
            if logs.cluster is not None:
                in_store = await cluster.stored_owners(topic.name)
        owner = owner or in_store.get(p)
        if owner is not None:
            leader, epoch = owner
        else:
            assert stored is not None
            desired = cluster.desired_owner(topic.name, p, topic.partitions)
            claimed = 1 if logs.cluster is not None else 0  # a claim starts the next epoch
            leader, epoch = (desired, stored[p] + claimed) if desired is not None else (-1, -1)
        partitions.append(
            MetadataResponsePartition(
                error_code=0 if leader >= 0 else ErrorCode.LEADER_NOT_AVAILABLE,
                partition_index=p,
                leader_id=leader,
                leader_epoch=epoch,
                replica_nodes=[leader] if leader >= 0 else [],
                isr_nodes=[leader] if leader >= 0 else [],
                offline_replicas=[],
            )
        )
    return partitions, stored is None


async def handle(ctx: RequestContext, request: MetadataRequest) -> MetadataResponse:
    broker = ctx.broker
    config = broker.config
    topics = broker.topics
    out: list[MetadataResponseTopic] = []
    if request.topics is None or (ctx.version == 0 and not request.topics):
        every = sorted(topics.by_name.values(), key=lambda t: t.name)
        out = await _topics(every, broker.cluster, broker.logs)
    else:
        allow = request.allow_auto_topic_creation if ctx.version >= 4 else True
        if ctx.version < 12:  # v10-11 carry topic ids, but Kafka refuses lookups by id
            for wanted in request.topics:
                if wanted.name is None or wanted.topic_id != uuid.UUID(int=0):
                    raise TopicError(
                        ErrorCode.INVALID_REQUEST,
                        f"topic ids are not supported in Metadata v{ctx.version} requests",
                    )
        for wanted in request.topics:
            if wanted.name is None:
                topic = topics.by_id.get(wanted.topic_id)
                if topic is None:
                    out.append(
                        MetadataResponseTopic(
                            error_code=ErrorCode.UNKNOWN_TOPIC_ID,
                            name=None,
                            topic_id=wanted.topic_id,
                        )
                    )
                else:
                    out.append(await _topic(topic, broker.cluster, broker.logs))
                continue
            topic = topics.get(wanted.name)
            error: int = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            if topic is None and allow and config.auto_create_topics_enable:
                topic, error = await _auto_create(broker, wanted.name)
            if topic is None:
                out.append(
                    MetadataResponseTopic(
                        error_code=error,
                        name=wanted.name,
                        topic_id=uuid.UUID(int=0),
                        is_internal=is_internal(wanted.name),
                    )
                )
            else:
                out.append(await _topic(topic, broker.cluster, broker.logs))
    live = broker.cluster.live()
    return MetadataResponse(
        throttle_time_ms=0,
        brokers=[
            MetadataResponseBroker(node_id=b.id, host=h, port=p, rack=None)
            for b in live.values()
            for h, p in [b.endpoint(ctx.listener_name)]
        ],
        cluster_id=config.cluster_id,
        controller_id=min(live, default=-1),
        topics=out,
    )


async def _auto_create(broker: Broker, name: str) -> tuple[Topic | None, int]:
    """The topic a Metadata request auto-creates, or None and the error to answer."""
    topics = broker.topics
    if name == GROUP_METADATA_TOPIC:
        return await ensure_offsets_topic(topics), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    if is_internal(name):  # __transaction_state, __share_group_state: not served here
        return None, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    try:
        topic = await topics.create(name, broker.config.num_partitions, {})
    except TopicError as e:
        if e.code != ErrorCode.TOPIC_ALREADY_EXISTS:
            return None, e.code
        return topics.get(name), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION  # lost a creation race
    log.info("auto-created topic %s (%d partitions)", topic.name, topic.partitions)
    return topic, 0
