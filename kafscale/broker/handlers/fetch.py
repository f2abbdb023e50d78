# Fetch (key 1), versions 4-16.
# - Reads committed data only (below the high watermark), whole record batches from the batch
#   holding FetchOffset on. The first batch is returned whole even past the byte limits
#   (KIP-74) so consumers always progress; after it, PartitionMaxBytes, the request's MaxBytes
#   and the server's fetch.max.bytes cap the response whatever the request says.
# - MaxWaitMs / MinBytes: long poll, woken by commits.
# - FetchOffset outside [log start, high watermark] -> OFFSET_OUT_OF_RANGE (1).
# - Topic ids (v13+) -> UNKNOWN_TOPIC_ID (100) when unknown; names (v4-12) ->
#   UNKNOWN_TOPIC_OR_PARTITION (3). Fetch sessions (KIP-227) are not kept: SessionId 0 always,
#   so clients send full fetch requests.
from __future__ import annotations

import time

from generated.fetch_request import FetchRequest
from generated.fetch_response import FetchableTopicResponse, FetchResponse, PartitionData
from kafscale.broker.handlers import RequestContext

OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
UNKNOWN_TOPIC_ID = 100


async def handle(ctx: RequestContext, request: FetchRequest) -> FetchResponse:
    deadline = time.monotonic() + max(request.max_wait_ms, 0) / 1000
    while True:
        response, size = await _read_all(ctx, request)
        remaining = deadline - time.monotonic()
        if size >= max(request.min_bytes, 1) or remaining <= 0 or ctx.broker.logs.closing:
            return response
        await ctx.broker.logs.wait_for_commit(remaining)


async def _read_all(ctx: RequestContext, request: FetchRequest) -> tuple[FetchResponse, int]:
    broker = ctx.broker
    budget = min(
        request.max_bytes if request.max_bytes > 0 else 2**31 - 1, broker.config.fetch_max_bytes
    )
    total = 0
    out: list[FetchableTopicResponse] = []
    for wanted in request.topics:
        if ctx.version >= 13:
            topic = broker.topics.by_id.get(wanted.topic_id)
            missing = UNKNOWN_TOPIC_ID
        else:
            topic = broker.topics.get(wanted.topic)
            missing = UNKNOWN_TOPIC_OR_PARTITION
        resp_topic = FetchableTopicResponse(topic=wanted.topic, topic_id=wanted.topic_id)
        out.append(resp_topic)
        for part in wanted.partitions:
            pd = PartitionData(
                partition_index=part.partition,
                high_watermark=-1,
                last_stable_offset=-1,
                log_start_offset=-1,
                records=b"",
            )
            resp_topic.partitions.append(pd)
            if topic is None or not 0 <= part.partition < topic.partitions:
                pd.error_code = missing
                continue
            plog = await broker.logs.get(topic.name, part.partition)
            pd.high_watermark = pd.last_stable_offset = plog.hw
            pd.log_start_offset = plog.log_start
            if not plog.log_start <= part.fetch_offset <= plog.hw:
                pd.error_code = OFFSET_OUT_OF_RANGE
                continue
            limit = min(max(part.partition_max_bytes, 0), budget - total)
            if limit <= 0 and total > 0:
                continue
            data = await broker.logs.read(plog, part.fetch_offset, max(limit, 1))
            pd.records = data
            total += len(data)
    return FetchResponse(throttle_time_ms=0, error_code=0, session_id=0, responses=out), total
