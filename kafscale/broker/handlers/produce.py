# Produce (key 0), versions 3-11 (record batch v2 only: magic 0/1 cannot be sent in v3+).
# - Batches are stored byte for byte; only their base offsets are assigned. Each is validated
#   (magic 2, CRC32C, lengths, record count, codec) -> CORRUPT_MESSAGE (2), INVALID_RECORD (87),
#   MESSAGE_TOO_LARGE (10, against the topic's max.message.bytes).
# - The topic's configs apply (kafscale/broker/append_rules.py): records outside the
#   message.timestamp.before/after.max.ms bounds -> INVALID_TIMESTAMP (32) with RecordErrors;
#   compression.type other than producer re-compresses the batch; LogAppendTime stamps it with
#   the broker's clock, which the response carries (LogAppendTimeMs; -1 for CreateTime).
# - acks=1/-1: answered only after the data is in the object store and the new high watermark
#   is committed in the metadata store (group commit by the log's flusher). acks=0: no response.
# - A failed flush answers KAFKA_STORAGE_ERROR (56, retriable) and commits nothing (no gap).
# - Partitions of one request are appended concurrently; a slow flush past TimeoutMs answers
#   REQUEST_TIMED_OUT (7) (the data may still be committed, as in Kafka).
# - Transactional batches are stored like others; a producer's first batch of a transaction in
#   a partition is verified against its coordinator's committed state (the transaction ongoing
#   with this partition added, KIP-890's check): INVALID_TXN_STATE (48), INVALID_PRODUCER_EPOCH
#   (47) or INVALID_PRODUCER_ID_MAPPING (49) otherwise (kafscale/broker/log.py). Until its
#   marker is written the transaction holds the partition's last stable offset.
# - An internal topic (__consumer_offsets, ...: kafscale/broker/internal_topics.py) ->
#   INVALID_TOPIC_EXCEPTION (17) with no message, as Kafka answers a client ("Cannot append to
#   internal topic"), before the partition is looked up.
from __future__ import annotations

import asyncio
import time

from generated.errors import ErrorCode
from generated.produce_request import ProduceRequest
from generated.produce_response import (
    BatchIndexAndErrorMessage,
    PartitionProduceResponse,
    ProduceResponse,
    TopicProduceResponse,
)
from kafscale.broker.append_rules import TimestampError
from kafscale.broker.append_rules import apply as apply_rules
from kafscale.broker.handlers import RequestContext
from kafscale.broker.internal_topics import is_internal
from kafscale.broker.log import FlushError
from kafscale.broker.topic_configs import AppendRules
from kafscale.protocol.records import RecordError
from kafscale.protocol.wire import Buffer


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
                resp.error_code = ErrorCode.INVALID_REQUIRED_ACKS
            elif is_internal(topic_data.name):
                resp.error_code = ErrorCode.INVALID_TOPIC_EXCEPTION
            elif topic is None or not 0 <= part.index < topic.partitions:
                resp.error_code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            elif part.records is None or len(part.records) == 0:
                resp.error_code = ErrorCode.INVALID_RECORD
                resp.error_message = "no record batches"
            else:
                rules = topic.append_rules(broker.config)
                job = asyncio.ensure_future(
                    _append(ctx, topic_data.name, resp, part.records, rules, request)
                )
            jobs.append((topic_data.name, resp, job))
    pending = [j for _, _, j in jobs if j is not None]
    if pending:
        done, _ = await asyncio.wait(pending, timeout=timeout if request.acks != 0 else None)
        for _, resp, job in jobs:
            if job is not None and job not in done:
                resp.error_code = ErrorCode.REQUEST_TIMED_OUT
    if request.acks == 0:
        return None
    by_topic: dict[str, TopicProduceResponse] = {}
    for name, resp, _ in jobs:
        by_topic.setdefault(name, TopicProduceResponse(name=name)).partition_responses.append(resp)
    return ProduceResponse(responses=list(by_topic.values()), throttle_time_ms=0)


async def _append(
    ctx: RequestContext,
    topic: str,
    resp: PartitionProduceResponse,
    data: Buffer,
    rules: AppendRules,
    request: ProduceRequest,
) -> None:
    logs = ctx.broker.logs
    try:
        plog = await logs.get(topic, resp.index)  # NOT_LEADER_OR_FOLLOWER unless we own it
        applied = apply_rules(data, rules, int(time.time() * 1000))
        resp.base_offset = await logs.append(
            plog, applied.data, rules.max_batch_bytes, request.transactional_id
        )
        resp.log_append_time_ms = applied.log_append_time
        resp.log_start_offset = plog.log_start
    except TimestampError as e:
        resp.error_code = e.error_code
        resp.error_message = e.reason
        resp.record_errors = [
            BatchIndexAndErrorMessage(batch_index=i, batch_index_error_message=message)
            for i, message in e.record_errors
        ]
    except RecordError as e:
        resp.error_code = e.error_code
        resp.error_message = e.reason
    except FlushError as e:
        resp.error_code = e.code
        resp.error_message = str(e)
