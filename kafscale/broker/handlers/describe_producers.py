# DescribeProducers (key 61), version 0 (Kafka 3.9's only).
# - For each partition this broker owns: the idempotent producers it remembers (committed
#   state: producer id, epoch, last sequence, last write time) and CurrentTxnStartOffset,
#   the first offset of its transaction ongoing in the partition (-1: none); CoordinatorEpoch
#   is -1 (the coordinator is fenced through the metadata store, not by epochs). Owned
#   elsewhere: NOT_LEADER_OR_FOLLOWER (6); unknown topic or partition:
#   UNKNOWN_TOPIC_OR_PARTITION (3).
from __future__ import annotations

from generated.describe_producers_request import DescribeProducersRequest
from generated.describe_producers_response import (
    DescribeProducersResponse,
    PartitionResponse,
    ProducerState,
    TopicResponse,
)
from kafscale.broker.handlers import RequestContext, owned_log


async def handle(
    ctx: RequestContext, request: DescribeProducersRequest
) -> DescribeProducersResponse:
    out: list[TopicResponse] = []
    for wanted in request.topics:
        result = TopicResponse(name=wanted.name)
        out.append(result)
        for index in wanted.partition_indexes:
            part = PartitionResponse(partition_index=index)
            result.partitions.append(part)
            plog = await owned_log(ctx, wanted.name, index)
            if isinstance(plog, int):
                part.error_code = plog
                continue
            part.active_producers = [
                ProducerState(
                    producer_id=pid,
                    producer_epoch=entry.epoch,
                    last_sequence=entry.batches[-1].last_seq if entry.batches else -1,
                    last_timestamp=entry.last_ms,
                    coordinator_epoch=-1,
                    current_txn_start_offset=-1 if entry.txn_first is None else entry.txn_first,
                )
                for pid, entry in sorted(plog.producers.items())
            ]
    return DescribeProducersResponse(throttle_time_ms=0, topics=out)
