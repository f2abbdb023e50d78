# Heartbeat (key 12), versions 0-4 (all of Kafka 3.9's).
# - Keeps the member's session alive: NONE in Stable and CompletingRebalance,
#   REBALANCE_IN_PROGRESS (27) while the group rebalances (the member must rejoin).
# - Empty group id: INVALID_GROUP_ID (24); another broker coordinates the group:
#   NOT_COORDINATOR (16); unknown group or member, or an Empty group:
#   UNKNOWN_MEMBER_ID (25); instance id of another member: FENCED_INSTANCE_ID (82); another
#   generation: ILLEGAL_GENERATION (22). Memory only: a heartbeat never touches the stores.
from __future__ import annotations

from generated.heartbeat_request import HeartbeatRequest
from generated.heartbeat_response import HeartbeatResponse
from kafscale.broker.handlers import RequestContext, coordinator_error


async def handle(ctx: RequestContext, request: HeartbeatRequest) -> HeartbeatResponse:
    if request.group_id and (error := await coordinator_error(ctx, request.group_id)):
        return HeartbeatResponse(throttle_time_ms=0, error_code=error)
    error = ctx.broker.groups.heartbeat(
        request.group_id,
        member_id=request.member_id,
        instance_id=request.group_instance_id,
        generation=request.generation_id,
    )
    return HeartbeatResponse(throttle_time_ms=0, error_code=error)
