# DescribeCluster (key 60), versions 0-1.
# - Every live broker (registered with a lease); the controller is the one with the lowest id.
# - v1 EndpointType: BROKER (1) is answered; CONTROLLER (2) -> MISMATCHED_ENDPOINT_TYPE (114),
#   anything else -> UNSUPPORTED_ENDPOINT_TYPE (115), as a Kafka broker answers.
# - Cluster authorized operations are not computed (-2147483648), as in Metadata.
from __future__ import annotations

from generated.describe_cluster_request import DescribeClusterRequest
from generated.describe_cluster_response import DescribeClusterBroker, DescribeClusterResponse
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext

BROKER_ENDPOINT, CONTROLLER_ENDPOINT = 1, 2


async def handle(ctx: RequestContext, request: DescribeClusterRequest) -> DescribeClusterResponse:
    config = ctx.broker.config
    if ctx.version >= 1 and request.endpoint_type != BROKER_ENDPOINT:
        if request.endpoint_type == CONTROLLER_ENDPOINT:
            code, message = (
                ErrorCode.MISMATCHED_ENDPOINT_TYPE,
                "The request was sent to an endpoint of type BROKER, but we wanted an endpoint "
                "of type CONTROLLER",
            )
        else:
            code = ErrorCode.UNSUPPORTED_ENDPOINT_TYPE
            message = f"Unsupported endpoint type {request.endpoint_type}"
        return DescribeClusterResponse(throttle_time_ms=0, error_code=code, error_message=message)
    live = ctx.broker.cluster.live()
    return DescribeClusterResponse(
        throttle_time_ms=0,
        error_code=0,
        error_message=None,
        endpoint_type=BROKER_ENDPOINT,
        cluster_id=config.cluster_id,
        controller_id=min(live, default=-1),
        brokers=[
            DescribeClusterBroker(broker_id=b.id, host=h, port=p, rack=None)
            for b in live.values()
            for h, p in [b.endpoint(ctx.listener_name)]
        ],
    )
