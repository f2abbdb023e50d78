# InitProducerId (key 22), versions 0-5 (all of Kafka 3.9's).
# - Idempotent producers (TransactionalId null): a new producer id, epoch 0, as Kafka's
#   TransactionCoordinator answers them whatever ProducerId/ProducerEpoch (v3+, KIP-360) they
#   send. Ids come from blocks reserved in the metadata store with a compare-and-swap
#   (kafscale/broker/producer_ids.py), so no two brokers ever hand out the same id.
# - Transactional producers (TransactionalId set): the id's transaction coordinator
#   (kafscale/broker/transactions.py; elsewhere NOT_COORDINATOR (16)) answers its producer id
#   at the next epoch, fencing older producers of the id; the first init gets a new producer
#   id at epoch 0. An ongoing transaction is aborted first (epoch fenced) and a deciding one
#   finished: CONCURRENT_TRANSACTIONS (51, the client retries). ProducerId/ProducerEpoch (v3+,
#   KIP-360) other than -1 must be the current ones, else PRODUCER_FENCED (90; v0-3:
#   INVALID_PRODUCER_EPOCH (47)). TransactionTimeoutMs outside (0, transaction.max.timeout.ms]:
#   INVALID_TRANSACTION_TIMEOUT (50). An epoch about to overflow gets a new producer id.
# - The metadata store unavailable: COORDINATOR_NOT_AVAILABLE (15, retriable).
from __future__ import annotations

import logging

from generated.errors import ErrorCode
from generated.init_producer_id_request import InitProducerIdRequest
from generated.init_producer_id_response import InitProducerIdResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.transactions import TxnError, answer_code

log = logging.getLogger("kafscale.broker")


async def handle(ctx: RequestContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    if request.transactional_id is not None:
        try:
            producer_id, epoch = await ctx.broker.transactions.init_producer_id(
                request.transactional_id,
                request.transaction_timeout_ms,
                request.producer_id if ctx.version >= 3 else -1,
                request.producer_epoch if ctx.version >= 3 else -1,
            )
        except TxnError as e:
            return InitProducerIdResponse(
                throttle_time_ms=0,
                error_code=answer_code(e.code, ctx.version, 4),
                producer_id=-1,
                producer_epoch=-1,
            )
        return InitProducerIdResponse(
            throttle_time_ms=0, error_code=0, producer_id=producer_id, producer_epoch=epoch
        )
    try:
        producer_id = await ctx.broker.producer_ids.next()
    except Exception as e:  # the metadata store failed: the client retries
        log.warning("allocating a producer id failed: %s", e)
        return InitProducerIdResponse(
            throttle_time_ms=0,
            error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE,
            producer_id=-1,
            producer_epoch=-1,
        )
    return InitProducerIdResponse(
        throttle_time_ms=0, error_code=0, producer_id=producer_id, producer_epoch=0
    )
