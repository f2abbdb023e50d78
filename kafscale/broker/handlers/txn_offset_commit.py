# TxnOffsetCommit (key 28), versions 0-4 (all of Kafka 3.9's).
# - Sent to the group's coordinator (NOT_COORDINATOR (16) elsewhere). The offsets are staged
#   in the metadata store (kafscale/broker/transactions.py), invisible to OffsetFetch (which
#   answers UNSTABLE_OFFSET_COMMIT (88) for them when RequireStable is set) until the
#   transaction commits, when its coordinator moves them to the group's committed offsets; an
#   abort drops them.
# - Checked in the same metadata transaction that stages them against the transaction's
#   committed state: the producer id must be the id's (INVALID_PRODUCER_ID_MAPPING (49)), the
#   epoch its current one (PRODUCER_FENCED (90); v0-2: INVALID_PRODUCER_EPOCH (47)), and the
#   group added to the ongoing transaction by AddOffsetsToTxn (INVALID_TXN_STATE (48)), so
#   staged offsets never outlive their transaction.
# - v3+ (KIP-447) carry the member's generation, member id and instance id: with a generation
#   >= 0 they are checked as OffsetCommit checks a member (ILLEGAL_GENERATION (22),
#   UNKNOWN_MEMBER_ID (25), FENCED_INSTANCE_ID (82)): a zombie of an older generation cannot
#   commit. Generation -1 (v0-2, or a producer outside the group) is not checked.
# - Unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION (3) for that partition; metadata
#   over 4096 characters: OFFSET_METADATA_TOO_LARGE (12).
from __future__ import annotations

from generated.txn_offset_commit_request import TxnOffsetCommitRequest
from generated.txn_offset_commit_response import (
    TxnOffsetCommitResponse,
    TxnOffsetCommitResponsePartition,
    TxnOffsetCommitResponseTopic,
)
from kafscale.broker.handlers import RequestContext, coordinator_error
from kafscale.broker.handlers.offset_commit import partition_error
from kafscale.broker.offsets import CommittedOffset, TopicPartition, now_ms
from kafscale.broker.transactions import TxnError, answer_code


async def handle(ctx: RequestContext, request: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse:
    broker = ctx.broker
    now = now_ms()
    out: list[TxnOffsetCommitResponseTopic] = []
    staged: list[tuple[TopicPartition, TxnOffsetCommitResponsePartition, CommittedOffset]] = []
    for wanted in request.topics:
        topic = broker.topics.get(wanted.name)
        result = TxnOffsetCommitResponseTopic(name=wanted.name)
        out.append(result)
        for part in wanted.partitions:
            resp = TxnOffsetCommitResponsePartition(partition_index=part.partition_index)
            result.partitions.append(resp)
            metadata = part.committed_metadata or ""
            resp.error_code = partition_error(topic, part.partition_index, metadata)
            if topic is not None and not resp.error_code:
                committed = CommittedOffset(
                    part.committed_offset,
                    part.committed_leader_epoch,
                    metadata,
                    now,
                    str(topic.id),
                )
                staged.append(((wanted.name, part.partition_index), resp, committed))
    if not staged:
        return TxnOffsetCommitResponse(throttle_time_ms=0, topics=out)
    error = await coordinator_error(ctx, request.group_id, claim=True)
    if not error and ctx.version >= 3 and request.generation_id >= 0:
        error = (
            broker.groups.validate_commit(
                request.group_id,
                member_id=request.member_id,
                instance_id=request.group_instance_id,
                generation=request.generation_id,
            )
            or 0
        )
    if not error:
        try:
            await broker.transactions.stage_offsets(
                request.transactional_id,
                request.group_id,
                request.producer_id,
                request.producer_epoch,
                {tp: c for tp, _, c in staged},
                broker.cluster.group_guard(request.group_id),
            )
        except TxnError as e:
            error = answer_code(e.code, ctx.version, 3)
    for _, resp, _ in staged:
        resp.error_code = error
    return TxnOffsetCommitResponse(throttle_time_ms=0, topics=out)
