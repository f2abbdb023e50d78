# LeaveGroup (key 13), versions 0-5 (all of Kafka 3.9's).
# - v0-2 name one member (MemberId); v3+ a batch (KIP-345), each with its own error, and a
#   member may be named by its GroupInstanceId alone (member id "": administrative removal of
#   a static member). A leaving member's parked requests get UNKNOWN_MEMBER_ID and the group
#   rebalances without it (or completes the rebalance it was holding up).
# - Empty group id: INVALID_GROUP_ID (24) for the request; another broker coordinates the
#   group: NOT_COORDINATOR (16) for the request. Unknown group: UNKNOWN_MEMBER_ID
#   (25) for each member; unknown member: UNKNOWN_MEMBER_ID; instance id of another member:
#   FENCED_INSTANCE_ID (82). v0-2 answer the member's error as the request's error.
# - v5 Reason is accepted and not kept.
from __future__ import annotations

from generated.leave_group_request import LeaveGroupRequest
from generated.leave_group_response import LeaveGroupResponse, MemberResponse
from kafscale.broker.handlers import RequestContext, coordinator_error


async def handle(ctx: RequestContext, request: LeaveGroupRequest) -> LeaveGroupResponse:
    leaving: list[tuple[str, str | None]]
    if ctx.version < 3:
        leaving = [(request.member_id, None)]
    else:
        leaving = [(m.member_id, m.group_instance_id) for m in request.members]
    if request.group_id and (error := await coordinator_error(ctx, request.group_id)):
        return LeaveGroupResponse(throttle_time_ms=0, error_code=error)
    error, errors = ctx.broker.groups.leave(request.group_id, leaving)
    if ctx.version < 3:
        return LeaveGroupResponse(throttle_time_ms=0, error_code=error or errors[0])
    if error:
        return LeaveGroupResponse(throttle_time_ms=0, error_code=error)
    return LeaveGroupResponse(
        throttle_time_ms=0,
        error_code=0,
        members=[
            MemberResponse(member_id=m, group_instance_id=i, error_code=e)
            for (m, i), e in zip(leaving, errors, strict=True)
        ],
    )
