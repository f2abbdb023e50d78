# AddOffsetsToTxn (key 25), versions 0-4 (all of Kafka 3.9's).
# - Only the transactional id's coordinator answers (NOT_COORDINATOR (16) elsewhere): the
#   group joins the ongoing transaction (starting one if none is), so the offsets its
#   TxnOffsetCommit stages are committed or dropped with the transaction.
# - Producer checks as AddPartitionsToTxn: INVALID_PRODUCER_ID_MAPPING (49), PRODUCER_FENCED
#   (90; v0-1: INVALID_PRODUCER_EPOCH (47)); a transaction being decided:
#   CONCURRENT_TRANSACTIONS (51).
from __future__ import annotations

from generated.add_offsets_to_txn_request import AddOffsetsToTxnRequest
from generated.add_offsets_to_txn_response import AddOffsetsToTxnResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.transactions import TxnError, answer_code


async def handle(ctx: RequestContext, request: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse:
    try:
        await ctx.broker.transactions.add_offsets(
            request.transactional_id, request.producer_id, request.producer_epoch, request.group_id
        )
    except TxnError as e:
        return AddOffsetsToTxnResponse(
            throttle_time_ms=0, error_code=answer_code(e.code, ctx.version, 2)
        )
    return AddOffsetsToTxnResponse(throttle_time_ms=0, error_code=0)
