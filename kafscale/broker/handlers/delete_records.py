# DeleteRecords (key 21), versions 0-2.
# - Advances the partition's log start offset to Offset (-1: the high watermark) with one
#   compare-and-swap on the partition state; returns the new low watermark. Fetch and
#   ListOffsets honour it at once (a fetch below it -> OFFSET_OUT_OF_RANGE). Offsets at or
#   below the current log start change nothing and return it. Segment objects wholly below it
#   stay in the object store for now (no cleaner yet); they are never served.
# - Offset beyond the high watermark (or below -1) -> OFFSET_OUT_OF_RANGE (1); unknown topic or
#   partition -> UNKNOWN_TOPIC_OR_PARTITION (3); a concurrent change of the partition state ->
#   NOT_LEADER_OR_FOLLOWER (6, retriable). LowWatermark is -1 on error.
# - An internal topic (__consumer_offsets, ...) -> INVALID_TOPIC_EXCEPTION (17), as Kafka.
from __future__ import annotations

from generated.delete_records_request import DeleteRecordsRequest
from generated.delete_records_response import (
    DeleteRecordsPartitionResult,
    DeleteRecordsResponse,
    DeleteRecordsTopicResult,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext, owned_log
from kafscale.broker.internal_topics import is_internal
from kafscale.broker.log import FlushError


async def handle(ctx: RequestContext, request: DeleteRecordsRequest) -> DeleteRecordsResponse:
    broker = ctx.broker
    out: list[DeleteRecordsTopicResult] = []
    for wanted in request.topics:
        result = DeleteRecordsTopicResult(name=wanted.name)
        out.append(result)
        for part in wanted.partitions:
            resp = DeleteRecordsPartitionResult(
                partition_index=part.partition_index, low_watermark=-1, error_code=0
            )
            result.partitions.append(resp)
            if is_internal(wanted.name):
                resp.error_code = ErrorCode.INVALID_TOPIC_EXCEPTION
                continue
            plog = await owned_log(ctx, wanted.name, part.partition_index)
            if isinstance(plog, int):
                resp.error_code = plog
                continue
            if part.offset < -1:
                resp.error_code = ErrorCode.OFFSET_OUT_OF_RANGE
                continue
            try:
                resp.low_watermark = await broker.logs.delete_records(plog, part.offset)
            except FlushError as e:
                resp.error_code = e.code
    return DeleteRecordsResponse(throttle_time_ms=0, topics=out)
