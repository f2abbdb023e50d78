# JoinGroup (key 11), versions 0-9 (all of Kafka 3.9's).
# Kafka's classic group protocol (kafscale/broker/group.py has the rules, each as Kafka 3.9's
# GroupCoordinator): the request parks until the rebalance completes — every known member has
# rejoined, or the rebalance timeout passed (an Empty group's first rebalance also waits
# group.initial.rebalance.delay.ms for more members) — and then every member gets the
# generation, the chosen protocol and the leader; the leader also gets each member's metadata
# for that protocol, passed through unparsed, so that it computes the assignment.
# - Empty group id: INVALID_GROUP_ID (24). Another broker coordinates the group:
#   NOT_COORDINATOR (16). Session timeout outside
#   group.min/max.session.timeout.ms: INVALID_SESSION_TIMEOUT (26).
# - v4+ first join without a member id (and without a group instance id): MEMBER_ID_REQUIRED
#   (79) carrying the new member id (KIP-394); the client joins again with it.
# - Protocol type or protocols the group cannot share: INCONSISTENT_GROUP_PROTOCOL (23); an
#   empty protocol type or no protocols cannot create a group either.
# - Unknown member id: UNKNOWN_MEMBER_ID (25). A static member (v5+ GroupInstanceId, KIP-345)
#   rejoining without its member id replaces its old incarnation, whose parked requests get
#   FENCED_INSTANCE_ID (82); a member id not matching the instance id: FENCED_INSTANCE_ID.
# - v0 has no RebalanceTimeoutMs: the session timeout is used. v7+ returns ProtocolType and a
#   nullable ProtocolName; v9 SkipAssignment is set for a static leader rejoining a Stable
#   group without a change (KIP-814): it gets the members but must not reassign.
# - Member metadata over MAX_PROTOCOL_METADATA bytes in total: INVALID_REQUEST (42) — a DoS
#   limit of ours (Kafka has none but the request size): the coordinator keeps it in memory
#   for the group's life.
from __future__ import annotations

from generated.errors import ErrorCode
from generated.join_group_request import JoinGroupRequest
from generated.join_group_response import JoinGroupResponse, JoinGroupResponseMember
from kafscale.broker.handlers import RequestContext, coordinator_error

MAX_PROTOCOL_METADATA = 1024 * 1024


async def handle(ctx: RequestContext, request: JoinGroupRequest) -> JoinGroupResponse:
    version = ctx.version
    if request.group_id and (error := await coordinator_error(ctx, request.group_id, claim=True)):
        return _response(version, error, request.member_id)
    protocols = [(p.name, bytes(p.metadata)) for p in request.protocols]
    if sum(len(name) + len(metadata) for name, metadata in protocols) > MAX_PROTOCOL_METADATA:
        return _response(version, ErrorCode.INVALID_REQUEST, request.member_id)
    result = await ctx.broker.groups.join(
        request.group_id,
        member_id=request.member_id,
        instance_id=request.group_instance_id,
        protocol_type=request.protocol_type,
        protocols=protocols,
        session_timeout_ms=request.session_timeout_ms,
        rebalance_timeout_ms=(
            request.rebalance_timeout_ms if version >= 1 else request.session_timeout_ms
        ),
        client_id=ctx.header.client_id or "",
        client_host=f"/{ctx.client_host}",
        version=version,
    )
    response = _response(version, result.error, result.member_id)
    if result.error:
        return response
    response.generation_id = result.generation
    response.leader = result.leader
    if version >= 7:
        response.protocol_type = result.protocol_type
        response.protocol_name = result.protocol_name
    else:
        response.protocol_name = result.protocol_name or ""
    if version >= 9:
        response.skip_assignment = result.skip_assignment
    response.members = [
        JoinGroupResponseMember(
            member_id=member_id,
            group_instance_id=instance_id if version >= 5 else None,
            metadata=metadata,
        )
        for member_id, instance_id, metadata in result.members
    ]
    return response


def _response(version: int, error: int, member_id: str) -> JoinGroupResponse:
    """An answer without a generation (errors): generation -1, no leader, no protocol."""
    return JoinGroupResponse(
        throttle_time_ms=0,
        error_code=error,
        generation_id=-1,
        protocol_name=None if version >= 7 else "",
        leader="",
        member_id=member_id,
        members=[],
    )
