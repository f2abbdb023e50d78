# Fetch (key 1), versions 4-17 (v17 adds only a replica's directory id, tagged: ignored).
# - Reads committed data only (below the high watermark), whole record batches from the batch
#   holding FetchOffset on. IsolationLevel read_committed reads below the last stable offset
#   (LastStableOffset: the first offset of the earliest undecided transaction) and answers the
#   aborted transactions overlapping the records returned (AbortedTransactions, from the index
#   kept with the log's entries), so the client drops their batches; read_uncommitted gets
#   everything below the high watermark. Control batches (transaction markers) are returned
#   as stored; clients skip them. The first batch is returned whole even past the byte limits
#   (KIP-74) so consumers always progress; after it, PartitionMaxBytes, the request's MaxBytes
#   and the server's fetch.max.bytes cap the response whatever the request says.
# - Partitions whose data is not cached are read from the object store concurrently (within the
#   request's byte budget), then the answer is built in request order.
# - MaxWaitMs / MinBytes: long poll, woken by commits. A partition answered with an error or a
#   diverging epoch answers the whole request at once, as Kafka does; so does one that names no
#   partition.
# - FetchOffset outside [log start, high watermark] -> OFFSET_OUT_OF_RANGE (1).
# - Topic ids (v13+) -> UNKNOWN_TOPIC_ID (100) when unknown; names (v4-12) ->
#   UNKNOWN_TOPIC_OR_PARTITION (3). Fetch sessions (KIP-227) are not kept: SessionId 0 always,
#   so clients send full fetch requests.
# - CurrentLeaderEpoch (v9+, when >= 0) is checked against the partition's leader epoch:
#   older -> FENCED_LEADER_EPOCH (74), newer -> UNKNOWN_LEADER_EPOCH (75), with -1 offsets.
# - LastFetchedEpoch (v12+, when >= 0), as Kafka's leader: its end offset is looked up in the
#   epoch history (OffsetForLeaderEpoch's answer); unknown -> OFFSET_OUT_OF_RANGE; FetchOffset
#   below the log start -> OFFSET_OUT_OF_RANGE; when the answered epoch is older than
#   LastFetchedEpoch or ends before FetchOffset, no records and DivergingEpoch = (epoch, end
#   offset), which is where the client must truncate to. We never truncate committed data, so
#   only a client with a log we never served can diverge.
from __future__ import annotations

import asyncio
import bisect
import logging
import time

from generated.errors import ErrorCode
from generated.fetch_request import FetchRequest
from generated.fetch_response import (
    AbortedTransaction,
    EpochEndOffset,
    FetchableTopicResponse,
    FetchResponse,
    PartitionData,
)
from kafscale.broker.handlers import RequestContext
from kafscale.broker.log import UNDEFINED_EPOCH, FlushError, PartitionLog
from kafscale.broker.metrics import count_records
from kafscale.broker.txn_index import aborted_between
from kafscale.protocol.records import parse_batches

READ_COMMITTED = 1

log = logging.getLogger("kafscale.broker")


async def handle(ctx: RequestContext, request: FetchRequest) -> FetchResponse:
    deadline = time.monotonic() + max(request.max_wait_ms, 0) / 1000
    if not any(topic.partitions for topic in request.topics):
        deadline = 0  # nothing to wait for: answered at once, as Kafka does
    while True:
        response, size, urgent = await _read_all(ctx, request)
        remaining = deadline - time.monotonic()
        if urgent or size >= max(request.min_bytes, 1) or remaining <= 0 or ctx.broker.logs.closing:
            if size:
                _count_out(ctx, response)
            return response
        await ctx.broker.logs.wait_for_commit(remaining)


def _count_out(ctx: RequestContext, response: FetchResponse) -> None:
    """The bytes and records this answer carries, per topic (metrics: bytes out)."""
    topics = ctx.broker.topics
    for resp_topic in response.responses:
        name = resp_topic.topic
        if ctx.version >= 13:
            known = topics.by_id.get(resp_topic.topic_id)
            name = known.name if known is not None else ""
        for pd in resp_topic.partitions:
            if pd.records:
                ctx.broker.metrics.fetched(name, len(pd.records), count_records(pd.records))


def _budget(ctx: RequestContext, request: FetchRequest) -> int:
    asked = request.max_bytes if request.max_bytes > 0 else 2**31 - 1
    return min(asked, ctx.broker.config.fetch_max_bytes)


async def _warm(ctx: RequestContext, request: FetchRequest) -> None:
    """Start reading, all at once, what the partitions will take from the object store (as
    far as the request's budget goes): the answer is then built in order from the cache, so
    a consumer catching up on many partitions does not wait for one GET after another."""
    logs = ctx.broker.logs
    planned, budget = 0, _budget(ctx, request)
    jobs = []
    for wanted in request.topics:
        topic = (
            ctx.broker.topics.by_id.get(wanted.topic_id)
            if ctx.version >= 13
            else ctx.broker.topics.get(wanted.topic)
        )
        if topic is None:
            continue
        for part in wanted.partitions:
            plog = logs.logs.get((topic.name, part.partition))
            if plog is None or not plog.log_start <= part.fetch_offset < plog.hw:
                continue
            if planned >= budget:
                break
            limit = min(max(part.partition_max_bytes, 1), budget - planned)
            planned += limit
            jobs.append((plog, part.fetch_offset, limit))
    if len(jobs) > 1:  # one partition: its read is all there is
        await asyncio.gather(*(logs.warm(*job) for job in jobs))


async def _read_all(ctx: RequestContext, request: FetchRequest) -> tuple[FetchResponse, int, bool]:
    """The response, its record bytes, and whether a partition must be answered now (an error
    or a diverging epoch)."""
    broker = ctx.broker
    await _warm(ctx, request)
    budget = _budget(ctx, request)
    total = 0
    urgent = False
    out: list[FetchableTopicResponse] = []
    for wanted in request.topics:
        if ctx.version >= 13:
            topic = broker.topics.by_id.get(wanted.topic_id)
            missing = ErrorCode.UNKNOWN_TOPIC_ID
        else:
            topic = broker.topics.get(wanted.topic)
            missing = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
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
                urgent = True
                continue
            try:
                plog = await broker.logs.get(topic.name, part.partition)
            except FlushError as e:  # not the owner: NOT_LEADER_OR_FOLLOWER
                pd.error_code = e.code
                urgent = True
                continue
            if ctx.version >= 9 and part.current_leader_epoch >= 0:
                pd.error_code = plog.epoch_error(part.current_leader_epoch)
                if pd.error_code:
                    urgent = True
                    continue
            pd.high_watermark, pd.last_stable_offset = plog.hw, plog.lso
            pd.log_start_offset = plog.log_start
            if ctx.version >= 12 and part.last_fetched_epoch >= 0:
                epoch, end = plog.end_offset_for_epoch(part.last_fetched_epoch)
                if UNDEFINED_EPOCH in (epoch, end) or part.fetch_offset < plog.log_start:
                    pd.error_code = ErrorCode.OFFSET_OUT_OF_RANGE
                    urgent = True
                    continue
                if epoch < part.last_fetched_epoch or end < part.fetch_offset:
                    pd.diverging_epoch = EpochEndOffset(epoch=epoch, end_offset=end)
                    urgent = True
                    continue
            if not plog.log_start <= part.fetch_offset <= plog.hw:
                pd.error_code = ErrorCode.OFFSET_OUT_OF_RANGE
                urgent = True
                continue
            limit = min(max(part.partition_max_bytes, 0), budget - total)
            if limit <= 0 and total > 0:
                continue
            committed = request.isolation_level == READ_COMMITTED
            try:
                data = await broker.logs.read(
                    plog,
                    part.fetch_offset,
                    max(limit, 1),
                    pd.last_stable_offset if committed else None,
                )
                if committed:
                    pd.aborted_transactions = _aborted(plog, part.fetch_offset, data)
            except Exception as e:  # the object store failed (after its retries): retriable
                log.warning("fetch %s-%d: %s", topic.name, part.partition, e)
                pd.error_code = ErrorCode.KAFKA_STORAGE_ERROR
                urgent = True
                continue
            pd.records = data
            total += len(data)
    response = FetchResponse(throttle_time_ms=0, error_code=0, session_id=0, responses=out)
    return response, total, urgent


def _aborted(plog: PartitionLog, fetch_offset: int, data: bytes) -> list[AbortedTransaction]:
    """The aborted transactions overlapping what a read_committed Fetch returns (from the
    aborted-transaction index kept with the log's entries; Kafka answers an empty list, not
    null, when there are none)."""
    if not data:
        return []
    segments = plog.segments
    start = bisect.bisect_right([s.base for s in segments], fetch_offset) - 1
    # Bounded by the high watermark first: a partition without aborted transactions past
    # ``fetch_offset`` (no transaction at all, the usual case) needs no walk of ``data``.
    if not aborted_between(segments, start, fetch_offset, plog.hw):
        return []
    upper = fetch_offset
    for batch in parse_batches(data, len(data), verify_records=False):
        upper = batch.next_offset
    return [
        AbortedTransaction(producer_id=pid, first_offset=first)
        for pid, first in aborted_between(segments, start, fetch_offset, upper)
    ]
