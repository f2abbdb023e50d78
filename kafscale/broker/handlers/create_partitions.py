# CreatePartitions (key 37), versions 0-3.
# - Only increases: a count at or below the current one -> INVALID_PARTITIONS (37), as is a
#   count above max.partitions.per.topic (any count up to it: a topic is one metadata key);
#   unknown topic -> UNKNOWN_TOPIC_OR_PARTITION (3); a topic named twice in the request ->
#   INVALID_REQUEST (42).
# - Assignments (nullable) must give one replica list per new partition, each exactly this
#   broker; anything else -> INVALID_REPLICA_ASSIGNMENT (39).
# - ValidateOnly checks without creating. New partitions start empty (log start 0).
from __future__ import annotations

import logging

from generated.create_partitions_request import CreatePartitionsRequest, CreatePartitionsTopic
from generated.create_partitions_response import (
    CreatePartitionsResponse,
    CreatePartitionsTopicResult,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.topics import TopicError

log = logging.getLogger("kafscale.broker")


async def handle(ctx: RequestContext, request: CreatePartitionsRequest) -> CreatePartitionsResponse:
    broker = ctx.broker
    results: list[CreatePartitionsTopicResult] = []
    seen: set[str] = set()
    for wanted in request.topics:
        result = CreatePartitionsTopicResult(name=wanted.name, error_code=0, error_message=None)
        results.append(result)
        try:
            if wanted.name in seen:
                raise TopicError(ErrorCode.INVALID_REQUEST, f"topic {wanted.name!r} appears twice")
            seen.add(wanted.name)
            # Existence and count first (validate only), then the assignments against them.
            await broker.topics.add_partitions(wanted.name, wanted.count, validate_only=True)
            topic = broker.topics.get(wanted.name)
            assert topic is not None  # add_partitions checked it
            _check_assignments(wanted, topic.partitions, broker.config.broker_id)
            if not request.validate_only:
                await broker.topics.add_partitions(wanted.name, wanted.count)
                log.info("topic %s now has %d partitions", wanted.name, wanted.count)
        except TopicError as e:
            result.error_code, result.error_message = e.code, e.message
    return CreatePartitionsResponse(throttle_time_ms=0, results=results)


def _check_assignments(wanted: CreatePartitionsTopic, current: int, broker_id: int) -> None:
    if wanted.assignments is None:
        return
    added = wanted.count - current
    if len(wanted.assignments) != added:
        raise TopicError(
            ErrorCode.INVALID_REPLICA_ASSIGNMENT,
            f"adding {added} partition(s) but {len(wanted.assignments)} assignment(s) given",
        )
    for assignment in wanted.assignments:
        if assignment.broker_ids != [broker_id]:
            raise TopicError(
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                f"replicas {assignment.broker_ids}: each new partition's only replica must be "
                f"broker {broker_id}",
            )
