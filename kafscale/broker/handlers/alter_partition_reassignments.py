# AlterPartitionReassignments (key 45), version 0 (Kafka 3.9's only).
# - A partition has exactly one replica, its leader (the broker owning it, placed by the cluster:
#   kafscale/broker/cluster.py); the object store, not replicas, keeps its data durable. So the
#   only assignment accepted is that leader alone, which changes nothing (no error, as Kafka
#   answers an assignment equal to the current one). Anything else -> INVALID_REPLICA_ASSIGNMENT
#   (39) saying so; Kafka's own checks come first, with its messages: an empty list, a broker
#   that is not live ("no such broker is registered"), a broker named twice.
# - Replicas null (cancel) -> NO_REASSIGNMENT_IN_PROGRESS (85): none ever is.
# - Unknown topic or partition -> UNKNOWN_TOPIC_OR_PARTITION (3), Kafka's messages. The
#   top-level error is 0 with a null message.
from __future__ import annotations

from generated.alter_partition_reassignments_request import (
    AlterPartitionReassignmentsRequest,
    ReassignablePartition,
)
from generated.alter_partition_reassignments_response import (
    AlterPartitionReassignmentsResponse,
    ReassignablePartitionResponse,
    ReassignableTopicResponse,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.handlers.elect_leaders import leader_of


async def handle(
    ctx: RequestContext, request: AlterPartitionReassignmentsRequest
) -> AlterPartitionReassignmentsResponse:
    responses: list[ReassignableTopicResponse] = []
    for topic in request.topics:
        result = ReassignableTopicResponse(name=topic.name)
        responses.append(result)
        for part in topic.partitions:
            code, message = _check(ctx, topic.name, part)
            result.partitions.append(
                ReassignablePartitionResponse(
                    partition_index=part.partition_index, error_code=code, error_message=message
                )
            )
    return AlterPartitionReassignmentsResponse(
        throttle_time_ms=0, error_code=0, error_message=None, responses=responses
    )


def _check(ctx: RequestContext, name: str, part: ReassignablePartition) -> tuple[int, str | None]:
    """(error code, message) for one partition's target assignment."""
    broker = ctx.broker
    topic = broker.topics.get(name)
    index = part.partition_index
    if topic is None:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"Unable to find a topic named {name}."
    if not 0 <= index < topic.partitions:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"Unable to find partition {name}:{index}."
    if part.replicas is None:
        return ErrorCode.NO_REASSIGNMENT_IN_PROGRESS, "No partition reassignment is in progress."
    if not part.replicas:
        return (
            ErrorCode.INVALID_REPLICA_ASSIGNMENT,
            "The manual partition assignment includes an empty replica list.",
        )
    live = broker.cluster.live()
    previous: int | None = None
    for broker_id in sorted(part.replicas):
        if broker_id not in live:
            return (
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                f"The manual partition assignment includes broker {broker_id}, but no such "
                "broker is registered.",
            )
        if broker_id == previous:
            return (
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                f"The manual partition assignment includes the broker {broker_id} more than once.",
            )
        previous = broker_id
    leader = leader_of(broker.cluster, name, index, topic.partitions)
    if part.replicas == [leader]:
        return 0, None
    return (
        ErrorCode.INVALID_REPLICA_ASSIGNMENT,
        f"{name}-{index} has one replica, its leader, placed by the cluster on broker {leader}: "
        "the object store keeps its data durable, so replicas cannot be added or moved "
        f"(the only assignment accepted is [{leader}])",
    )
