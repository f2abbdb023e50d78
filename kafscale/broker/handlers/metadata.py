# Metadata (key 3), versions 0-12.
# - One broker: it leads every partition, is the controller, and is every replica and ISR.
# - Topics null (v1+) = all topics; an empty list = none. Unknown topics are auto-created when
#   the broker allows it AND the request's AllowAutoTopicCreation (v4+) says so (v0-3: always
#   allowed by the request), else UNKNOWN_TOPIC_OR_PARTITION (3). Lookups by topic id (v10+)
#   answer UNKNOWN_TOPIC_ID (100) when unknown.
# - Topic ids are real UUIDs (Kafka's); authorized operations are not computed (-2147483648).
# - LeaderEpoch (v7+) is each partition's current leader epoch (from the loaded partition log,
#   else one read of the topic's partition states).
from __future__ import annotations

import logging
import uuid

from generated.metadata_request import MetadataRequest
from generated.metadata_response import (
    MetadataResponse,
    MetadataResponseBroker,
    MetadataResponsePartition,
    MetadataResponseTopic,
)
from kafscale.broker.handlers import RequestContext
from kafscale.broker.log import LogManager
from kafscale.broker.topics import Topic, TopicError

log = logging.getLogger("kafscale.broker")


async def _topic(topic: Topic, broker_id: int, logs: LogManager) -> MetadataResponseTopic:
    epochs = await logs.leader_epochs(topic.name, topic.partitions)
    return MetadataResponseTopic(
        error_code=0,
        name=topic.name,
        topic_id=topic.id,
        is_internal=False,
        partitions=[
            MetadataResponsePartition(
                error_code=0,
                partition_index=p,
                leader_id=broker_id,
                leader_epoch=epoch,
                replica_nodes=[broker_id],
                isr_nodes=[broker_id],
                offline_replicas=[],
            )
            for p, epoch in enumerate(epochs)
        ],
    )


async def handle(ctx: RequestContext, request: MetadataRequest) -> MetadataResponse:
    broker = ctx.broker
    config = broker.config
    topics = broker.topics
    host, port = config.advertised
    out: list[MetadataResponseTopic] = []
    if request.topics is None or (ctx.version == 0 and not request.topics):
        out = [
            await _topic(t, config.broker_id, broker.logs)
            for t in sorted(topics.by_name.values(), key=lambda t: t.name)
        ]
    else:
        allow = request.allow_auto_topic_creation if ctx.version >= 4 else True
        for wanted in request.topics:
            if wanted.name is None:
                topic = topics.by_id.get(wanted.topic_id)
                if topic is None:
                    out.append(
                        MetadataResponseTopic(error_code=100, name=None, topic_id=wanted.topic_id)
                    )
                else:
                    out.append(await _topic(topic, config.broker_id, broker.logs))
                continue
            topic = topics.get(wanted.name)
            if topic is None and allow and config.auto_create_topics_enable:
                try:
                    topic = await topics.create(wanted.name, config.num_partitions, {})
                    log.info("auto-created topic %s (%d partitions)", topic.name, topic.partitions)
                except TopicError as e:
                    if e.code != 36:  # lost a creation race: the topic exists now
                        out.append(
                            MetadataResponseTopic(
                                error_code=e.code, name=wanted.name, topic_id=uuid.UUID(int=0)
                            )
                        )
                        continue
                    topic = topics.get(wanted.name)
            if topic is None:
                out.append(
                    MetadataResponseTopic(error_code=3, name=wanted.name, topic_id=uuid.UUID(int=0))
                )
            else:
                out.append(await _topic(topic, config.broker_id, broker.logs))
    return MetadataResponse(
        throttle_time_ms=0,
        brokers=[MetadataResponseBroker(node_id=config.broker_id, host=host, port=port, rack=None)],
        cluster_id=config.cluster_id,
        controller_id=config.broker_id,
        topics=out,
    )
