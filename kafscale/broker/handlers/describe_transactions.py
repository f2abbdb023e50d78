# DescribeTransactions (key 65), version 0 (Kafka 3.9's only).
# - For each transactional id this broker coordinates: its state (Kafka's names: Empty,
#   Ongoing, PrepareCommit, PrepareAbort, CompleteCommit, CompleteAbort), timeout, start time
#   (-1 when none is ongoing), producer id and epoch, and the partitions of the ongoing
#   transaction, read from the metadata store. Coordinated elsewhere: NOT_COORDINATOR (16);
#   never initialised: TRANSACTIONAL_ID_NOT_FOUND (105).
from __future__ import annotations

from generated.describe_transactions_request import DescribeTransactionsRequest
from generated.describe_transactions_response import (
    DescribeTransactionsResponse,
    TopicData,
    TransactionState,
)
from kafscale.broker.handlers import RequestContext
from kafscale.broker.transactions import TxnError


async def handle(
    ctx: RequestContext, request: DescribeTransactionsRequest
) -> DescribeTransactionsResponse:
    out: list[TransactionState] = []
    for tid in request.transactional_ids:
        state = TransactionState(
            transactional_id=tid,
            transaction_state="",
            transaction_timeout_ms=0,
            transaction_start_time_ms=-1,
            producer_id=-1,
            producer_epoch=-1,
        )
        out.append(state)
        try:
            meta = await ctx.broker.transactions.describe(tid)
        except TxnError as e:
            state.error_code = e.code
            continue
        state.transaction_state = meta.state
        state.transaction_timeout_ms = meta.timeout_ms
        state.transaction_start_time_ms = meta.start_ms
        state.producer_id = meta.producer_id
        state.producer_epoch = meta.epoch
        topics: dict[str, TopicData] = {}
        for topic, partition in meta.partitions:
            topics.setdefault(topic, TopicData(topic=topic)).partitions.append(partition)
        state.topics = list(topics.values())
    return DescribeTransactionsResponse(throttle_time_ms=0, transaction_states=out)
