# FindCoordinator (key 10), versions 0-6.
# - Group keys (KeyType 0): the group's one coordinator — the live broker holding its
#   coordinator key, else the broker that will take it on the group's first request
#   (kafscale/broker/cluster.py); no live broker: COORDINATOR_NOT_AVAILABLE (15). The first
#   group lookup creates the (empty) internal topic __consumer_offsets, as Kafka creates it
#   then (kafscale/broker/internal_topics.py); unlike Kafka, the lookup is answered at once,
#   not with COORDINATOR_NOT_AVAILABLE (the offsets are not kept in that topic).
# - Transaction keys (KeyType 1): the transactional id's one coordinator — the live broker
#   holding its coordinator key, else the broker that will take it
#   (kafscale/broker/transactions.py); no live broker: COORDINATOR_NOT_AVAILABLE (15).
#   __transaction_state is never created (the state lives in the metadata store).
# - v0-3 carry one key in the top-level fields; v4+ (KIP-699) a list of coordinators.
# - Listed from v0 because librdkafka only enables LZ4 once FindCoordinator v0 is advertised.
from __future__ import annotations

from generated.errors import ErrorCode
from generated.find_coordinator_request import FindCoordinatorRequest
from generated.find_coordinator_response import Coordinator, FindCoordinatorResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.internal_topics import ensure_offsets_topic

GROUP, TRANSACTION = 0, 1


async def handle(ctx: RequestContext, request: FindCoordinatorRequest) -> FindCoordinatorResponse:
    keys = request.coordinator_keys if ctx.version >= 4 else [request.key]
    found = [_find(ctx, request.key_type, key) for key in keys]
    if request.key_type == GROUP and any(error == 0 for error, *_ in found):
        await ensure_offsets_topic(ctx.broker.topics)
    if ctx.version >= 4:
        return FindCoordinatorResponse(
            coordinators=[
                Coordinator(
                    key=key, node_id=node, host=host, port=port, error_code=error, error_message=msg
                )
                for key, (error, msg, node, host, port) in zip(keys, found, strict=True)
            ]
        )
    error, message, node, host, port = found[0]
    return FindCoordinatorResponse(
        error_code=error, error_message=message, node_id=node, host=host, port=port
    )


def _find(ctx: RequestContext, key_type: int, key: str) -> tuple[int, str | None, int, str, int]:
    """(error, message, node id, host, port) for one key."""
    if key_type == GROUP:
        coordinator = ctx.broker.cluster.coordinator(key)
        if coordinator is not None:
            return 0, None, coordinator.id, *coordinator.endpoint(ctx.listener_name)
        error, message = ErrorCode.COORDINATOR_NOT_AVAILABLE, "no live broker"
    elif key_type == TRANSACTION:
        coordinator = ctx.broker.transactions.coordinator(key)
        if coordinator is not None:
            return 0, None, coordinator.id, *coordinator.endpoint(ctx.listener_name)
        error, message = ErrorCode.COORDINATOR_NOT_AVAILABLE, "no live broker"
    else:
        error, message = ErrorCode.INVALID_REQUEST, f"unknown key type {key_type}"
    return error, message, -1, "", -1
