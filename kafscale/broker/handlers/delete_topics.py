# DeleteTopics (key 20), versions 1-6.
# - By name (v1-6) or, in v6, by topic id (Name null). An unknown name answers
#   UNKNOWN_TOPIC_OR_PARTITION (3), an unknown id UNKNOWN_TOPIC_ID (100); an entry naming both
#   a name and a non-zero id, or a topic already named earlier in the request, INVALID_REQUEST
#   (42).
# - Deletion removes the topic, its partition states and its segment list from the metadata
#   store in one transaction, and drops the broker's partition logs (produce requests still
#   waiting for a flush get UNKNOWN_TOPIC_OR_PARTITION). Segment objects are left in the object
#   store: nothing points at them any more, so they are never served.
# - An internal topic (__consumer_offsets, ...: kafscale/broker/internal_topics.py) is not
#   deleted: INVALID_TOPIC_EXCEPTION (17). Kafka 3.9 would delete it, and every group's
#   committed offsets with it; here the offsets are not in it, so deleting the empty topic would
#   do nothing a client asked for (DeleteGroups and OffsetDelete remove offsets).
# - Results carry the topic id from v6 (the field is ignorable below), an ErrorMessage from v5.
from __future__ import annotations

import logging
import uuid

from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState
from generated.delete_topics_response import DeletableTopicResult, DeleteTopicsResponse
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.internal_topics import is_internal
from kafscale.broker.topics import Topic, TopicError

log = logging.getLogger("kafscale.broker")

ZERO = uuid.UUID(int=0)


async def handle(ctx: RequestContext, request: DeleteTopicsRequest) -> DeleteTopicsResponse:
    broker = ctx.broker
    if ctx.version >= 6:
        wanted = list(request.topics)
    else:
        wanted = [DeleteTopicState(name=name) for name in request.topic_names]
    results: list[DeletableTopicResult] = []
    seen: set[str | uuid.UUID] = set()
    for entry in wanted:
        result = DeletableTopicResult(name=entry.name, topic_id=entry.topic_id)
        results.append(result)
        try:
            key = entry.name if entry.name is not None else entry.topic_id
            if key in seen:
                raise TopicError(
                    ErrorCode.INVALID_REQUEST, f"topic {key} appears twice in the request"
                )
            seen.add(key)
            topic = _find(broker.topics.by_name, broker.topics.by_id, entry)
            result.name, result.topic_id = topic.name, topic.id
            seen |= {topic.name, topic.id}
            if is_internal(topic.name):
                raise TopicError(
                    ErrorCode.INVALID_TOPIC_EXCEPTION,
                    f"Cannot delete internal topic {topic.name} (committed offsets are kept in "
                    "the metadata store, not in a topic: DeleteGroups and OffsetDelete remove "
                    "them)",
                )
            await broker.topics.delete(topic.name, broker.logs.janitor.topic_deleted)
        except TopicError as e:
            result.error_code, result.error_message = e.code, e.message
            continue
        broker.logs.forget_topic(topic.name)
        # Kafka drops a deleted topic's committed offsets too (a re-created topic starts clean).
        await broker.offsets.delete_topic(topic.name)
        log.info("deleted topic %s", topic.name)
    return DeleteTopicsResponse(throttle_time_ms=0, responses=results)


def _find(
    by_name: dict[str, Topic], by_id: dict[uuid.UUID, Topic], entry: DeleteTopicState
) -> Topic:
    if entry.name is not None:
        if entry.topic_id != ZERO:
            raise TopicError(
                ErrorCode.INVALID_REQUEST, "give either a topic name or a topic id, not both"
            )
        topic = by_name.get(entry.name)
        if topic is None:
            raise TopicError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {entry.name!r} does not exist"
            )
        return topic
    topic = by_id.get(entry.topic_id)
    if topic is None:
        raise TopicError(ErrorCode.UNKNOWN_TOPIC_ID, f"no topic has id {entry.topic_id}")
    return topic
