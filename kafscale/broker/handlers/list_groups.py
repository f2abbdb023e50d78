# ListGroups (key 16), versions 0-5.
# - Lists every group with at least one committed offset (kafscale/broker/offsets.py). Group
#   membership is not served yet, so each is what Kafka 3.9 calls an "Empty" classic group
#   created by commits alone (assign() + commit, or the admin client): ProtocolType "" (Kafka
#   keeps none for a group that never had members), GroupState "Empty" (v4+), GroupType
#   "classic" (v5+). Commits for a since-deleted topic still count until the group is deleted.
# - StatesFilter (v4+) / TypesFilter (v5+): only groups whose state / type is listed; an empty
#   filter lists all. Matched case-insensitively, as Kafka's new coordinator does (the classic
#   one compares exactly; clients send "Empty" / "classic", which match either way).
from __future__ import annotations

from generated.list_groups_request import ListGroupsRequest
from generated.list_groups_response import ListedGroup, ListGroupsResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.offsets import Offsets

STATE = "Empty"
GROUP_TYPE = "classic"


async def handle(ctx: RequestContext, request: ListGroupsRequest) -> ListGroupsResponse:
    broker = ctx.broker
    states = {s.lower() for s in request.states_filter} if ctx.version >= 4 else set()
    types = {t.lower() for t in request.types_filter} if ctx.version >= 5 else set()
    out: list[ListedGroup] = []
    if (not states or STATE.lower() in states) and (not types or GROUP_TYPE in types):
        for group in await Offsets(broker.meta, broker.config.namespace).groups():
            listed = ListedGroup(group_id=group, protocol_type="")
            if ctx.version >= 4:
                listed.group_state = STATE
            if ctx.version >= 5:
                listed.group_type = GROUP_TYPE
            out.append(listed)
    return ListGroupsResponse(throttle_time_ms=0, error_code=0, groups=out)
