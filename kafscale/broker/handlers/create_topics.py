# CreateTopics (key 19), versions 2-7.
# - NumPartitions -1 (v4+) takes num.partitions; ReplicationFactor must be -1 or 1 (one broker:
#   anything else is INVALID_REPLICATION_FACTOR, 38); manual assignments must name this broker.
# - Configs are validated as Kafka 3.9 validates them (kafscale/broker/topic_configs.py: every
#   topic config of protocol_specs/topic-configs.yaml; an unknown name, a bad value or a null
#   value -> INVALID_CONFIG, 40, with Kafka's message) and stored with the topic.
# - ValidateOnly checks without creating. Existing topic -> TOPIC_ALREADY_EXISTS (36); bad
#   name -> INVALID_TOPIC_EXCEPTION (17); bad count -> INVALID_PARTITIONS (37).
# - v5+ returns the topic's partitions, replication factor and every topic config with its
#   value and source (as DescribeConfigs); v7 its topic id. A created topic's error message
#   is null, as Kafka's.
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from generated.create_topics_request import CreatableTopic, CreateTopicsRequest
from generated.create_topics_response import (
    CreatableTopicConfigs,
    CreatableTopicResult,
    CreateTopicsResponse,
)
from generated.errors import ErrorCode
from generated.topic_configs import TOPIC_CONFIGS
from kafscale.broker.handlers import RequestContext
from kafscale.broker.topic_configs import describe_topic_config
from kafscale.broker.topics import TopicError

log = logging.getLogger("kafscale.broker")


async def handle(ctx: RequestContext, request: CreateTopicsRequest) -> CreateTopicsResponse:
    results: list[CreatableTopicResult] = []
    creating: list[Awaitable[None]] = []
    seen: set[str] = set()
    for wanted in request.topics:
        result = CreatableTopicResult(
            name=wanted.name, error_message=None, num_partitions=-1, replication_factor=-1
        )
        results.append(result)
        if wanted.name in seen:
            result.error_code = ErrorCode.INVALID_REQUEST
            result.error_message = f"topic {wanted.name!r} appears twice in the request"
            continue
        seen.add(wanted.name)
        creating.append(_create(ctx, request, wanted, result))
    # Each topic is one metadata transaction: a request of a thousand topics waits for them
    # together, not one after another.
    await asyncio.gather(*creating)
    return CreateTopicsResponse(throttle_time_ms=0, topics=results)


async def _create(
    ctx: RequestContext,
    request: CreateTopicsRequest,
    wanted: CreatableTopic,
    result: CreatableTopicResult,
) -> None:
    """Create one topic of the request, filling its ``result``."""
    broker = ctx.broker
    try:
        partitions = wanted.num_partitions
        if wanted.assignments:
            if partitions != -1 or wanted.replication_factor != -1:
                raise TopicError(
                    ErrorCode.INVALID_REQUEST,
                    "give either assignments or partitions/replication",
                )
            if any(a.broker_ids != [broker.config.broker_id] for a in wanted.assignments):
                raise TopicError(
                    ErrorCode.INVALID_REPLICA_ASSIGNMENT, "replicas must be exactly this broker"
                )
            partitions = len(wanted.assignments)
        elif wanted.replication_factor not in (-1, 1):
            raise TopicError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication factor {wanted.replication_factor}: this cluster has 1 broker",
            )
        if partitions == -1:
            partitions = broker.config.num_partitions
        nulls = [c.name for c in wanted.configs if c.value is None]
        if nulls:
            raise TopicError(
                ErrorCode.INVALID_CONFIG,
                "Null value not supported for topic configs: " + ",".join(nulls),
            )
        configs = {c.name: c.value for c in wanted.configs if c.value is not None}
        topic = await broker.topics.create(wanted.name, partitions, configs, request.validate_only)
    except TopicError as e:
        result.error_code, result.error_message = e.code, e.message
        return
    if not request.validate_only:
        log.info("created topic %s (%d partitions)", topic.name, topic.partitions)
    result.topic_id = topic.id
    result.num_partitions = topic.partitions
    result.replication_factor = 1
    if ctx.version < 5:  # the configs are answered from v5 on
        return
    described = [
        describe_topic_config(broker.config, name, topic.configs) for name in sorted(TOPIC_CONFIGS)
    ]
    result.configs = [
        CreatableTopicConfigs(
            name=d.name,
            value=d.value,
            read_only=False,
            config_source=d.source,
            is_sensitive=False,
        )
        for d in described
    ]
