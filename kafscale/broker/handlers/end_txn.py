# EndTxn (key 26), versions 0-4 (all of Kafka 3.9's).
# - Only the transactional id's coordinator answers (NOT_COORDINATOR (16) elsewhere).
# - Ongoing: the decision (PrepareCommit / PrepareAbort and a marker request per partition)
#   is committed in the metadata store, then the partitions' owners write the markers and the
#   transaction's offsets are committed (kafscale/broker/transactions.py); answered once the
#   transaction is complete, or after 10 s once the decision is durable (as Kafka answers
#   after its PrepareCommit is written; the next AddPartitionsToTxn then gets
#   CONCURRENT_TRANSACTIONS until the markers are written).
# - A retry of the EndTxn that completed the transaction: NONE. Being decided the same way:
#   CONCURRENT_TRANSACTIONS (51); the other way, or nothing ongoing: INVALID_TXN_STATE (48).
# - INVALID_PRODUCER_ID_MAPPING (49); an epoch other than the current one (a zombie, or a
#   producer whose transaction timed out and was aborted with its epoch fenced):
#   PRODUCER_FENCED (90; v0-1: INVALID_PRODUCER_EPOCH (47)).
from __future__ import annotations

from generated.end_txn_request import EndTxnRequest
from generated.end_txn_response import EndTxnResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.transactions import TxnError, answer_code


async def handle(ctx: RequestContext, request: EndTxnRequest) -> EndTxnResponse:
    try:
        await ctx.broker.transactions.end_txn(
            request.transactional_id, request.producer_id, request.producer_epoch, request.committed
        )
    except TxnError as e:
        return EndTxnResponse(throttle_time_ms=0, error_code=answer_code(e.code, ctx.version, 2))
    return EndTxnResponse(throttle_time_ms=0, error_code=0)
