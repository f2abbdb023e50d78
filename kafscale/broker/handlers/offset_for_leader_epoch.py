# OffsetForLeaderEpoch (key 23), versions 0-4.
# - For each partition, the end offset of the requested LeaderEpoch from the partition's epoch
#   history, as Kafka's LeaderEpochFileCache.endOffsetFor: the current epoch ends at the log
#   end offset (our high watermark: nothing above it is ever visible); an older epoch answers
#   the largest known epoch <= it and the start offset of the first later epoch; an epoch
#   below every known one (its data deleted) answers itself with the first known epoch's start
#   offset; -1 or an epoch above the current one -> LeaderEpoch -1, EndOffset -1, no error.
#   Consumers use it to validate their position after a leader change (KIP-320): an end offset
#   below the position means the log was truncated there.
# - CurrentLeaderEpoch (v2+, unless -1) is checked against the partition's leader epoch first:
#   older -> FENCED_LEADER_EPOCH (74), newer -> UNKNOWN_LEADER_EPOCH (75).
# - ReplicaId (v3+) is accepted and not used, as in Kafka: consumers (-1), followers and debug
#   clients (-2) get the same answer from the leader.
# - Unknown topic or partition -> UNKNOWN_TOPIC_OR_PARTITION (3). LeaderEpoch exists from v1
#   (v0 answers only the end offset); ThrottleTimeMs from v2.
from __future__ import annotations

from generated.offset_for_leader_epoch_request import OffsetForLeaderEpochRequest
from generated.offset_for_leader_epoch_response import (
    EpochEndOffset,
    OffsetForLeaderEpochResponse,
    OffsetForLeaderTopicResult,
)
from kafscale.broker.handlers import RequestContext, owned_log
from kafscale.broker.log import UNDEFINED_EPOCH
from kafscale.protocol.message import in_range


async def handle(
    ctx: RequestContext, request: OffsetForLeaderEpochRequest
) -> OffsetForLeaderEpochResponse:
    with_epoch = any(
        f.name == "leader_epoch" and in_range(ctx.version, f.versions)
        for f in EpochEndOffset._fields
    )
    out: list[OffsetForLeaderTopicResult] = []
    for wanted in request.topics:
        result = OffsetForLeaderTopicResult(topic=wanted.topic)
        out.append(result)
        for part in wanted.partitions:
            resp = EpochEndOffset(partition=part.partition)  # epoch -1, end offset -1
            result.partitions.append(resp)
            sent = ctx.version >= 2 and part.current_leader_epoch != UNDEFINED_EPOCH
            plog = await owned_log(
                ctx, wanted.topic, part.partition, part.current_leader_epoch if sent else None
            )
            if isinstance(plog, int):
                resp.error_code = plog
                continue
            epoch, resp.end_offset = plog.end_offset_for_epoch(part.leader_epoch)
            if with_epoch:
                resp.leader_epoch = epoch
    return OffsetForLeaderEpochResponse(throttle_time_ms=0, topics=out)
