# OffsetCommit (key 8), versions 0-9.
# - Offsets are stored in the metadata store (kafscale/broker/offsets.py), all partitions of
#   a request in one transaction (chunked above 128 operations), checked as Kafka 3.9's
#   default (classic) GroupCoordinator checks them (validateOffsetCommit):
#   - generation -1 (a consumer using assign(), or the admin client): accepted while the group
#     has no members, whatever member id it names (Kafka's ClassicGroup.validateOffsetCommit;
#     the older Scala coordinator checked a named member even then); else UNKNOWN_MEMBER_ID
#     (25) without a member id. The offset, metadata (null -> "") and leader epoch (v6+) are
#     kept. v0 has no member fields, so it is always such a commit.
#   - a member's commit: the member id must be in the group (UNKNOWN_MEMBER_ID), a group
#     instance id must be that member's (FENCED_INSTANCE_ID (82)), the generation the
#     group's (ILLEGAL_GENERATION (22): a zombie of an older generation; its offset is not
#     stored); during CompletingRebalance REBALANCE_IN_PROGRESS (27); in Stable and
#     PreparingRebalance the commit also counts as the member's heartbeat.
#   - a group that does not exist (not in the coordinator's memory, no committed offsets)
#     and generation >= 0: ILLEGAL_GENERATION. Kafka's newer coordinator (4.0) answers
#     GROUP_ID_NOT_FOUND (69) here from v9; 3.9's default does not.
#   - An empty group id is accepted, as Kafka does for OffsetCommit/OffsetFetch ("for
#     backwards compatibility"); of the group APIs served so far only OffsetDelete answers
#     INVALID_GROUP_ID (24) for it.
# - Another broker coordinates the group: NOT_COORDINATOR (16) for every partition (also
#   when it took the group over while this commit was being written: the transaction compares
#   our coordinator key, so a deposed coordinator never writes a commit).
# - Unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION (3) for that partition only (checked
#   before the group, as KafkaApis does); metadata over 4096 characters
#   (offset.metadata.max.bytes): OFFSET_METADATA_TOO_LARGE (12).
# - v1 CommitTimestamp (-1: now) is kept as commit_ms; v2-4 RetentionTimeMs (other than -1)
#   sets this commit's expiry, as Kafka's old expiration semantics; otherwise
#   offsets.retention.minutes applies (kafscale/broker/coordinator.py).
from __future__ import annotations

from typing import TYPE_CHECKING

from generated.errors import ErrorCode
from generated.offset_commit_request import OffsetCommitRequest
from generated.offset_commit_response import (
    OffsetCommitResponse,
    OffsetCommitResponsePartition,
    OffsetCommitResponseTopic,
)
from kafscale.broker.handlers import RequestContext, coordinator_error
from kafscale.broker.offsets import CommittedOffset, Offsets, TopicPartition, now_ms

if TYPE_CHECKING:
    from kafscale.broker.server import Broker
    from kafscale.broker.topics import Topic

MAX_METADATA = 4096
"""offset.metadata.max.bytes (Kafka's default; it counts characters)."""


def partition_error(topic: Topic | None, partition: int, metadata: str) -> int:
    """0, or why one partition's offset cannot be committed (OffsetCommit and
    TxnOffsetCommit): UNKNOWN_TOPIC_OR_PARTITION, OFFSET_METADATA_TOO_LARGE."""
    if topic is None or not 0 <= partition < topic.partitions:
        return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    if len(metadata) > MAX_METADATA:
        return ErrorCode.OFFSET_METADATA_TOO_LARGE
    return 0


async def handle(ctx: RequestContext, request: OffsetCommitRequest) -> OffsetCommitResponse:
    broker = ctx.broker
    offsets = broker.offsets
    now = now_ms()
    retention = request.retention_time_ms if 2 <= ctx.version <= 4 else -1
    out: list[OffsetCommitResponseTopic] = []
    pending: list[tuple[TopicPartition, OffsetCommitResponsePartition, CommittedOffset]] = []
    for wanted in request.topics:
        topic = broker.topics.get(wanted.name)
        result = OffsetCommitResponseTopic(name=wanted.name)
        out.append(result)
        for part in wanted.partitions:
            resp = OffsetCommitResponsePartition(partition_index=part.partition_index)
            result.partitions.append(resp)
            metadata = part.committed_metadata or ""
            resp.error_code = partition_error(topic, part.partition_index, metadata)
            if topic is not None and not resp.error_code:
                stamp = part.commit_timestamp if part.commit_timestamp != -1 else now
                committed = CommittedOffset(
                    part.committed_offset,
                    part.committed_leader_epoch,
                    metadata,
                    stamp,
                    str(topic.id),
                    now + retention if retention != -1 else -1,
                )
                pending.append(((wanted.name, part.partition_index), resp, committed))
    if pending:
        error = await _membership_error(ctx, broker, offsets, request)
        if error:
            for _, resp, _ in pending:
                resp.error_code = error
        else:  # a partition named twice: the last one counts
            guard = broker.cluster.group_guard(request.group_id)
            if not await offsets.commit(request.group_id, {tp: c for tp, _, c in pending}, guard):
                for _, resp, _ in pending:  # another broker took the group over meanwhile
                    resp.error_code = ErrorCode.NOT_COORDINATOR
    return OffsetCommitResponse(throttle_time_ms=0, topics=out)


async def _membership_error(
    ctx: RequestContext, broker: Broker, offsets: Offsets, request: OffsetCommitRequest
) -> int:
    """Kafka's validateOffsetCommit (0: the commit may be stored)."""
    if refused := await coordinator_error(ctx, request.group_id, claim=True):
        return refused
    generation = request.generation_id_or_member_epoch
    error = broker.groups.validate_commit(
        request.group_id,
        member_id=request.member_id,
        instance_id=request.group_instance_id,
        generation=generation,
    )
    if error is not None:
        return error
    # Not in the coordinator's memory: a group without members, known by its offsets or not.
    if generation < 0:
        return 0
    return (
        ErrorCode.UNKNOWN_MEMBER_ID
        if await offsets.exists(request.group_id)
        else ErrorCode.ILLEGAL_GENERATION
    )
