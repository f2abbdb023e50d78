# SyncGroup (key 14), versions 0-5 (all of Kafka 3.9's).
# - The leader's request carries the assignment of every member; it is stored and handed to
#   each member unchanged (a member the leader left out gets an empty assignment; entries for
#   unknown member ids are ignored), and the group becomes Stable. Followers' requests park
#   until then. In a Stable group a member gets its current assignment at once.
# - Empty group id: INVALID_GROUP_ID (24); another broker coordinates the group:
#   NOT_COORDINATOR (16); unknown group or member: UNKNOWN_MEMBER_ID (25);
#   instance id of another member: FENCED_INSTANCE_ID (82); another generation:
#   ILLEGAL_GENERATION (22); v5 ProtocolType/ProtocolName not the group's:
#   INCONSISTENT_GROUP_PROTOCOL (23); a rebalance started: REBALANCE_IN_PROGRESS (27), also
#   for followers parked when it starts. Members that never send SyncGroup within the
#   rebalance timeout are removed and the group rebalances (Kafka 3.2+).
from __future__ import annotations

from generated.sync_group_request import SyncGroupRequest
from generated.sync_group_response import SyncGroupResponse
from kafscale.broker.handlers import RequestContext, coordinator_error


async def handle(ctx: RequestContext, request: SyncGroupRequest) -> SyncGroupResponse:
    if request.group_id and (error := await coordinator_error(ctx, request.group_id)):
        return SyncGroupResponse(throttle_time_ms=0, error_code=error, assignment=b"")
    result = await ctx.broker.groups.sync(
        request.group_id,
        member_id=request.member_id,
        instance_id=request.group_instance_id,
        generation=request.generation_id,
        protocol_type=request.protocol_type,
        protocol_name=request.protocol_name,
        assignments=[(a.member_id, bytes(a.assignment)) for a in request.assignments],
    )
    response = SyncGroupResponse(
        throttle_time_ms=0, error_code=result.error, assignment=result.assignment
    )
    if ctx.version >= 5:
        response.protocol_type = result.protocol_type
        response.protocol_name = result.protocol_name
    return response
