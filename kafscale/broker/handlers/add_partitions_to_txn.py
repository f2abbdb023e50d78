# AddPartitionsToTxn (key 24), versions 0-5.
# - v0-3 (clients): one transaction. Only the transactional id's coordinator answers
#   (NOT_COORDINATOR (16) elsewhere). The partitions join the ongoing transaction (the first
#   one added after the last transaction ended starts a new one, and its timeout); committed
#   in the metadata store before the answer.
# - v4-5 (KIP-890, sent by brokers): several transactions, each answered on its own;
#   VerifyOnly answers, without adding anything, whether each partition is in the
#   transaction (INVALID_TXN_STATE (48) where it is not). Our own partition owners verify by
#   reading the coordinator's state from the metadata store instead (kafscale/broker/log.py).
# - The producer id must be the id's current one (INVALID_PRODUCER_ID_MAPPING (49)) and the
#   epoch its current one (PRODUCER_FENCED (90); v0-1: INVALID_PRODUCER_EPOCH (47)).
# - The last transaction still being decided (markers being written): CONCURRENT_TRANSACTIONS
#   (51), the client retries.
# - A partition that does not exist: UNKNOWN_TOPIC_OR_PARTITION (3) for it and
#   OPERATION_NOT_ATTEMPTED (55) for the others; nothing is added.
# - Errors of a whole transaction are answered for each of its partitions, as Kafka does.
from __future__ import annotations

from generated.add_partitions_to_txn_request import AddPartitionsToTxnRequest
from generated.add_partitions_to_txn_response import (
    AddPartitionsToTxnPartitionResult,
    AddPartitionsToTxnResponse,
    AddPartitionsToTxnResult,
    AddPartitionsToTxnTopicResult,
)
from kafscale.broker.handlers import RequestContext
from kafscale.broker.transactions import TxnError, answer_code


async def handle(
    ctx: RequestContext, request: AddPartitionsToTxnRequest
) -> AddPartitionsToTxnResponse:
    if ctx.version >= 4:
        results = [
            AddPartitionsToTxnResult(
                transactional_id=txn.transactional_id,
                topic_results=_results(
                    await _add(
                        ctx,
                        txn.transactional_id,
                        txn.producer_id,
                        txn.producer_epoch,
                        [(t.name, p) for t in txn.topics for p in t.partitions],
                        txn.verify_only,
                    )
                ),
            )
            for txn in request.transactions
        ]
        return AddPartitionsToTxnResponse(throttle_time_ms=0, results_by_transaction=results)
    errors = await _add(
        ctx,
        request.v3_and_below_transactional_id,
        request.v3_and_below_producer_id,
        request.v3_and_below_producer_epoch,
        [(t.name, p) for t in request.v3_and_below_topics for p in t.partitions],
        False,
    )
    return AddPartitionsToTxnResponse(
        throttle_time_ms=0, results_by_topic_v3_and_below=_results(errors)
    )


async def _add(
    ctx: RequestContext,
    tid: str,
    producer_id: int,
    epoch: int,
    wanted: list[tuple[str, int]],
    verify_only: bool,
) -> dict[tuple[str, int], int]:
    coordinator = ctx.broker.transactions
    try:
        if verify_only:
            return await coordinator.verify_partitions(tid, producer_id, epoch, wanted)
        return await coordinator.add_partitions(tid, producer_id, epoch, wanted)
    except TxnError as e:
        return dict.fromkeys(wanted, answer_code(e.code, ctx.version, 2))


def _results(errors: dict[tuple[str, int], int]) -> list[AddPartitionsToTxnTopicResult]:
    by_topic: dict[str, AddPartitionsToTxnTopicResult] = {}
    for (topic, partition), error in errors.items():
        result = by_topic.setdefault(topic, AddPartitionsToTxnTopicResult(name=topic))
        result.results_by_partition.append(
            AddPartitionsToTxnPartitionResult(partition_index=partition, partition_error_code=error)
        )
    return list(by_topic.values())
