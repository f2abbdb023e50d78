# ListOffsets (key 2), versions 1-9.
# - Timestamp -2: earliest (log start offset); -1: latest (high watermark; with
#   IsolationLevel read_committed (v2+) the last stable offset: the first offset of the
#   earliest transaction still undecided in the partition); -3 (v7+): the
#   first record with the largest timestamp; -4 (v8+, KIP-405's earliest local offset): the log
#   start offset, as Kafka answers for a topic without remote storage; -5 (v9+, KIP-1005's
#   latest tiered offset): -1 with epoch -1, as Kafka answers when remote.storage.enable is
#   false (our object store is the log itself, not a tier behind a local one); otherwise the
#   first record whose timestamp is >= the target, with that record's own timestamp (the
#   segment index finds the batch, its records are read, compressed ones decompressed); -1
#   with timestamp -1 when none is.
# - Unknown topic or partition -> UNKNOWN_TOPIC_OR_PARTITION (3).
# - LeaderEpoch (v4+), as Kafka: latest -> the partition's current leader epoch; earliest ->
#   the first epoch of the history; a record found -> the epoch its batch was written under;
#   -1 with errors and when nothing is found.
# - CurrentLeaderEpoch (v4+, unless -1) is checked against the partition's leader epoch:
#   older -> FENCED_LEADER_EPOCH (74), newer -> UNKNOWN_LEADER_EPOCH (75).
from __future__ import annotations

from generated.errors import ErrorCode
from generated.list_offsets_request import ListOffsetsRequest
from generated.list_offsets_response import (
    ListOffsetsPartitionResponse,
    ListOffsetsResponse,
    ListOffsetsTopicResponse,
)
from kafscale.broker.handlers import RequestContext, owned_log
from kafscale.broker.log import UNDEFINED_EPOCH

EARLIEST, LATEST, MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED = -2, -1, -3, -4, -5
READ_COMMITTED = 1


async def handle(ctx: RequestContext, request: ListOffsetsRequest) -> ListOffsetsResponse:
    broker = ctx.broker
    topics: list[ListOffsetsTopicResponse] = []
    for wanted in request.topics:
        out = ListOffsetsTopicResponse(name=wanted.name)
        topics.append(out)
        for part in wanted.partitions:
            resp = ListOffsetsPartitionResponse(partition_index=part.partition_index)
            out.partitions.append(resp)
            sent = ctx.version >= 4 and part.current_leader_epoch != UNDEFINED_EPOCH
            plog = await owned_log(
                ctx, wanted.name, part.partition_index, part.current_leader_epoch if sent else None
            )
            if isinstance(plog, int):
                resp.error_code = plog
                continue
            epoch = UNDEFINED_EPOCH
            if part.timestamp in (EARLIEST, EARLIEST_LOCAL):
                resp.offset = plog.log_start
                epoch = plog.earliest_epoch()
            elif part.timestamp == LATEST_TIERED:
                resp.offset = -1
            elif part.timestamp == LATEST:
                # read_committed (v2+): the last stable offset, as Kafka answers
                committed = ctx.version >= 2 and request.isolation_level == READ_COMMITTED
                resp.offset = plog.lso if committed else plog.hw
                epoch = plog.epoch
            else:
                found: tuple[int, int] | None
                try:
                    if part.timestamp == MAX_TIMESTAMP:
                        timestamp, offset = await broker.logs.max_timestamp_offset(plog)
                        found = (offset, timestamp) if offset >= 0 else None
                    else:
                        found = await broker.logs.offset_for_timestamp(plog, part.timestamp)
                except Exception:  # the object store failed (after its retries): retriable
                    resp.error_code = ErrorCode.KAFKA_STORAGE_ERROR
                    continue
                if found is not None:
                    resp.offset, resp.timestamp = found
                    epoch = plog.epoch_for_offset(resp.offset)
            if ctx.version >= 4:  # not ignorable: it may only be set where it exists
                resp.leader_epoch = epoch
    return ListOffsetsResponse(throttle_time_ms=0, topics=topics)
