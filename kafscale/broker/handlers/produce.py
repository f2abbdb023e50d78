# Produce (key 0), versions 3-11 (record batch v2 only: magic 0/1 cannot be sent in v3+).
# - Batches are stored byte for byte; only their base offsets are assigned. Each is validated
#   (magic 2, CRC32C, lengths, record count, codec) -> CORRUPT_MESSAGE (2), INVALID_RECORD (87),
#   MESSAGE_TOO_LARGE (10, against the topic's max.message.bytes).
# - acks=1/-1: answered only after the data is in the object store and the new high watermark
#   is committed in the metadata store (group commit by the log's flusher). acks=0: no response.
# - A failed flush answers KAFKA_STORAGE_ERROR (56, retriable) and commits nothing (no gap).
# - Partitions of one request are appended concurrently; a slow flush past TimeoutMs answers
#   REQUEST_TIMED_OUT (7) (the data may still be committed, as in Kafka).
from __future__ import annotations

import asyncio

from generated.produce_request import ProduceRequest
from generated.produce_response import (
    PartitionProduceResponse,
    ProduceResponse,
    TopicProduceResponse,
)
from kafscale.broker.handlers import RequestContext
from kafscale.broker.log import FlushError
from kafscale.protocol.records import RecordError
from kafscale.protocol.wire import Buffer

INVALID_REQUIRED_ACKS = 21
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_RECORD = 87
REQUEST_TIMED_OUT = 7


async def handle(ctx: RequestContext, request: ProduceRequest) -> ProduceResponse | None:
    broker = ctx.broker
    jobs: list[tuple[str, PartitionProduceResponse, asyncio.Future[None] | None]] = []
    bad_acks = request.acks not in (-1, 0, 1)
    timeout = max(request.timeout_ms, 0) / 1000
    for topic_data in request.topic_data:
        topic = broker.topics.get(topic_data.name)
        for part in topic_data.partition_data:
            resp = PartitionProduceResponse(index=part.index, base_offset=-1, log_start_offset=-1)
            job: asyncio.Future[None] | None = None
            if bad_acks:
                resp.error_code = INVALID_REQUIRED_ACKS
            elif topic is None or not 0 <= part.index < topic.partitions:
                resp.error_code = UNKNOWN_TOPIC_OR_PARTITION
            elif part.records is None or len(part.records) == 0:
                resp.error_code = INVALID_RECORD
                resp.error_message = "no record batches"
            else:
                max_bytes = int(
                    topic.config("max.message.bytes") or broker.config.message_max_bytes
                )
                job = asyncio.ensure_future(
                    _append(ctx, topic_data.name, resp, part.records, max_bytes)
                )
            jobs.append((topic_data.name, resp, job))
    pending = [j for _, _, j in jobs if j is not None]
    if pending:
        done, _ = await asyncio.wait(pending, timeout=timeout if request.acks != 0 else None)
        for _, resp, job in jobs:
            if job is not None and job not in done:
                resp.error_code = REQUEST_TIMED_OUT
    if request.acks == 0:
        return None
    by_topic: dict[str, TopicProduceResponse] = {}
    for name, resp, _ in jobs:
        by_topic.setdefault(name, TopicProduceResponse(name=name)).partition_responses.append(resp)
    return ProduceResponse(responses=list(by_topic.values()), throttle_time_ms=0)


async def _append(
    ctx: RequestContext, topic: str, resp: PartitionProduceResponse, data: Buffer, max_bytes: int
) -> None:
    logs = ctx.broker.logs
    try:
        plog = await logs.get(topic, resp.index)  # NOT_LEADER_OR_FOLLOWER unless we own it
        resp.base_offset = await logs.append(plog, data, max_bytes)
        resp.log_start_offset = plog.log_start
    except RecordError as e:
        resp.error_code = e.error_code
        resp.error_message = e.reason
    except FlushError as e:
        resp.error_code = e.code
        resp.error_message = str(e)
