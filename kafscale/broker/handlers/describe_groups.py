# DescribeGroups (key 15), versions 0-5 (all of Kafka 3.9's).
# - A group in the coordinator's memory: its state (Empty, PreparingRebalance,
#   CompletingRebalance, Stable), protocol type and members (member id, v4+ group instance
#   id, client id, client host). Only a Stable group reports its protocol (ProtocolData) and
#   each member's metadata for it and assignment; otherwise those are empty, as Kafka's
#   GroupMetadata.summary.
# - A group known only by its committed offsets (a simple consumer's, or one from before a
#   restart) is an "Empty" classic group: ProtocolType "" and ProtocolData "", Members [].
# - Neither: error 0 and GroupState "Dead", everything else empty, as Kafka 3.9 answers
#   (GROUP_ID_NOT_FOUND is for ConsumerGroupDescribe, not this API). An empty group id is
#   described like any other, as Kafka does ("for backwards compatibility").
# - A group another broker coordinates: NOT_COORDINATOR (16) for it.
# - AuthorizedOperations (v3+) is always -2147483648 ("not provided"), even when
#   IncludeAuthorizedOperations asks for it: there are no ACLs to report yet.
from __future__ import annotations

from generated.describe_groups_request import DescribeGroupsRequest
from generated.describe_groups_response import (
    DescribedGroup,
    DescribedGroupMember,
    DescribeGroupsResponse,
)
from kafscale.broker.group import DEAD, EMPTY, STABLE
from kafscale.broker.handlers import RequestContext, coordinator_error

AUTHORIZED_OPERATIONS_OMITTED = -2147483648


async def handle(ctx: RequestContext, request: DescribeGroupsRequest) -> DescribeGroupsResponse:
    broker = ctx.broker
    out: list[DescribedGroup] = []
    for group_id in request.groups:
        described = DescribedGroup(
            error_code=0,
            group_id=group_id,
            group_state=DEAD,
            protocol_type="",
            protocol_data="",
            members=[],
            authorized_operations=AUTHORIZED_OPERATIONS_OMITTED,
        )
        out.append(described)
        if error := await coordinator_error(ctx, group_id):
            described.error_code, described.group_state = error, ""
            continue
        group = broker.groups.get(group_id)
        if group is None:
            if await broker.offsets.exists(group_id):
                described.group_state = EMPTY
            continue
        described.group_state = group.state
        described.protocol_type = group.protocol_type or ""
        stable = group.state == STABLE and group.protocol_name is not None
        described.protocol_data = (group.protocol_name or "") if stable else ""
        for member in group.members.values():
            described.members.append(
                DescribedGroupMember(
                    member_id=member.member_id,
                    group_instance_id=member.instance_id if ctx.version >= 4 else None,
                    client_id=member.client_id,
                    client_host=member.client_host,
                    member_metadata=member.metadata(group.protocol_name or "") if stable else b"",
                    member_assignment=member.assignment if stable else b"",
                )
            )
    return DescribeGroupsResponse(throttle_time_ms=0, groups=out)
