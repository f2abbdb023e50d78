# InitProducerId (key 22), versions 0-5 (all of Kafka 3.9's).
# - Idempotent producers (TransactionalId null): a new producer id, epoch 0, as Kafka's
#   TransactionCoordinator answers them whatever ProducerId/ProducerEpoch (v3+, KIP-360) they
#   send. Ids come from blocks reserved in the metadata store with a compare-and-swap
#   (kafscale/broker/producer_ids.py), so no two brokers ever hand out the same id.
# - Transactional producers (TransactionalId set): transactions are not supported:
#   TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), which clients treat as fatal — a clear error
#   rather than retrying forever (FindCoordinator for transaction keys answers the same).
# - The metadata store unavailable: COORDINATOR_NOT_AVAILABLE (15, retriable).
from __future__ import annotations

import logging

from generated.errors import ErrorCode
from generated.init_producer_id_request import InitProducerIdRequest
from generated.init_producer_id_response import InitProducerIdResponse
from kafscale.broker.handlers import RequestContext

log = logging.getLogger("kafscale.broker")


async def handle(ctx: RequestContext, request: InitProducerIdRequest) -> InitProducerIdResponse:
    if request.transactional_id is not None:
        return InitProducerIdResponse(
            throttle_time_ms=0,
            error_code=ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            producer_id=-1,
            producer_epoch=-1,
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
