# OffsetDelete (key 47), version 0.
# - Removes the group's committed offsets of the given partitions (one metadata transaction,
#   chunked above 128 operations); a partition with no commit is no error.
# - A group with members: a consumer group keeps the offsets of topics its members subscribe
#   to (GROUP_SUBSCRIBED_TO_TOPIC (86) for those partitions; all of them when a member's
#   subscription does not parse, as Kafka); a group of another protocol type: NON_EMPTY_GROUP
#   (68).
# - Another broker coordinates the group: NOT_COORDINATOR (16).
# - Empty group id: INVALID_GROUP_ID (24); a group neither in the coordinator's memory nor
#   with committed offsets: GROUP_ID_NOT_FOUND (69). A group error is the top-level ErrorCode
#   with no topics, as Kafka answers. Unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION
#   (3) for that partition.
from __future__ import annotations

from generated.errors import ErrorCode
from generated.offset_delete_request import OffsetDeleteRequest
from generated.offset_delete_response import (
    OffsetDeleteResponse,
    OffsetDeleteResponsePartition,
    OffsetDeleteResponseTopic,
)
from kafscale.broker.group import CONSUMER, EMPTY
from kafscale.broker.handlers import RequestContext, coordinator_error
from kafscale.broker.offsets import TopicPartition


async def handle(ctx: RequestContext, request: OffsetDeleteRequest) -> OffsetDeleteResponse:
    broker = ctx.broker
    offsets = broker.offsets
    if not request.group_id:
        return OffsetDeleteResponse(error_code=ErrorCode.INVALID_GROUP_ID, throttle_time_ms=0)
    if error := await coordinator_error(ctx, request.group_id, claim=True):
        return OffsetDeleteResponse(error_code=error, throttle_time_ms=0)
    group = broker.groups.get(request.group_id)
    if group is None and not await offsets.exists(request.group_id):
        return OffsetDeleteResponse(error_code=ErrorCode.GROUP_ID_NOT_FOUND, throttle_time_ms=0)
    subscribed: set[str] | None = set()  # None: unknown, every topic counts as subscribed
    if group is not None and group.state != EMPTY:
        if group.protocol_type != CONSUMER:
            return OffsetDeleteResponse(error_code=ErrorCode.NON_EMPTY_GROUP, throttle_time_ms=0)
        subscribed = group.subscribed_topics()
    out: list[OffsetDeleteResponseTopic] = []
    doomed: list[TopicPartition] = []
    for wanted in request.topics:
        topic = broker.topics.get(wanted.name)
        result = OffsetDeleteResponseTopic(name=wanted.name)
        out.append(result)
        for part in wanted.partitions:
            resp = OffsetDeleteResponsePartition(partition_index=part.partition_index)
            result.partitions.append(resp)
            if topic is None or not 0 <= part.partition_index < topic.partitions:
                resp.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            elif subscribed is None or wanted.name in subscribed:
                resp.error_code = ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
            else:
                doomed.append((wanted.name, part.partition_index))
    await offsets.delete(request.group_id, doomed)
    return OffsetDeleteResponse(error_code=0, throttle_time_ms=0, topics=out)
