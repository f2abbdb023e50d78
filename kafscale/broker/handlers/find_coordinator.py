# FindCoordinator (key 10), versions 0-6.
# - Group keys (KeyType 0): this broker coordinates every group (one broker).
# - Transaction keys (KeyType 1): transactions are not supported yet: COORDINATOR_NOT_AVAILABLE
#   (15), as a cluster without a transaction coordinator answers.
# - v0-3 carry one key in the top-level fields; v4+ (KIP-699) a list of coordinators.
# - Listed from v0 because librdkafka only enables LZ4 once FindCoordinator v0 is advertised.
from __future__ import annotations

from generated.find_coordinator_request import FindCoordinatorRequest
from generated.find_coordinator_response import Coordinator, FindCoordinatorResponse
from kafscale.broker.handlers import RequestContext

GROUP, TRANSACTION = 0, 1
COORDINATOR_NOT_AVAILABLE = 15
INVALID_REQUEST = 42


async def handle(ctx: RequestContext, request: FindCoordinatorRequest) -> FindCoordinatorResponse:
    node = ctx.broker.config.broker_id
    host, port = ctx.broker.config.advertised
    if request.key_type == GROUP:
        error, message = 0, None
    elif request.key_type == TRANSACTION:
        error, message = COORDINATOR_NOT_AVAILABLE, "transactions are not supported"
    else:
        error, message = INVALID_REQUEST, f"unknown key type {request.key_type}"
    if ctx.version >= 4:
        return FindCoordinatorResponse(
            coordinators=[
                Coordinator(
                    key=key,
                    node_id=node if not error else -1,
                    host=host if not error else "",
                    port=port if not error else -1,
                    error_code=error,
                    error_message=message,
                )
                for key in request.coordinator_keys
            ]
        )
    return FindCoordinatorResponse(
        error_code=error,
        error_message=message,
        node_id=node if not error else -1,
        host=host if not error else "",
        port=port if not error else -1,
    )
