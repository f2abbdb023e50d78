# DescribeGroups (key 15), versions 0-5 (all of Kafka 3.9's).
# - A group with at least one committed offset is an "Empty" classic group with no members
#   (membership is not served yet): error 0, GroupState "Empty", ProtocolType "" and
#   ProtocolData "" (Kafka keeps no protocol for a group that never had members), Members [].
# - A group with no committed offsets does not exist: error 0 and GroupState "Dead", everything
#   else empty, as Kafka 3.9 answers (GROUP_ID_NOT_FOUND is for ConsumerGroupDescribe, not
#   this API). An empty group id is described like any other, as Kafka does ("for backwards
#   compatibility"; only a null id, impossible here, is INVALID_GROUP_ID).
# - AuthorizedOperations (v3+) is always -2147483648 ("not provided"), even when
#   IncludeAuthorizedOperations asks for it: there are no ACLs to report yet.
from __future__ import annotations

from generated.describe_groups_request import DescribeGroupsRequest
from generated.describe_groups_response import DescribedGroup, DescribeGroupsResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.offsets import Offsets

AUTHORIZED_OPERATIONS_OMITTED = -2147483648


async def handle(ctx: RequestContext, request: DescribeGroupsRequest) -> DescribeGroupsResponse:
    broker = ctx.broker
    offsets = Offsets(broker.meta, broker.config.namespace)
    out: list[DescribedGroup] = []
    for group in request.groups:
        state = "Empty" if await offsets.exists(group) else "Dead"
        out.append(
            DescribedGroup(
                error_code=0,
                group_id=group,
                group_state=state,
                protocol_type="",
                protocol_data="",
                members=[],
                authorized_operations=AUTHORIZED_OPERATIONS_OMITTED,
            )
        )
    return DescribeGroupsResponse(throttle_time_ms=0, groups=out)
