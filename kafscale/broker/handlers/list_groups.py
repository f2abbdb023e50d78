# ListGroups (key 16), versions 0-5 (all of Kafka 3.9's).
# - Lists the groups in the coordinator's memory with their state and protocol type, and the
#   groups known only by their committed offsets (a simple consumer's, or from before a
#   restart) as Kafka lists such a group: ProtocolType "" and GroupState "Empty". GroupType
#   (v5+) is always "classic". Commits for a since-deleted topic still count until the group
#   is deleted.
# - In a cluster each broker lists the groups it coordinates (or would, for a group known only
#   by its offsets), as Kafka's brokers do: admin clients ask every broker.
# - StatesFilter (v4+) / TypesFilter (v5+): only groups whose state / type is listed; an empty
#   filter lists all. Matched case-insensitively, as Kafka's new coordinator does (the classic
#   one compares exactly; clients send "Empty" / "classic", which match either way).
from __future__ import annotations

from generated.list_groups_request import ListGroupsRequest
from generated.list_groups_response import ListedGroup, ListGroupsResponse
from kafscale.broker.group import EMPTY
from kafscale.broker.handlers import RequestContext

GROUP_TYPE = "classic"


async def handle(ctx: RequestContext, request: ListGroupsRequest) -> ListGroupsResponse:
    broker = ctx.broker
    states = {s.lower() for s in request.states_filter} if ctx.version >= 4 else set()
    types = {t.lower() for t in request.types_filter} if ctx.version >= 5 else set()
    found: dict[str, tuple[str, str]] = {}  # group id -> (state, protocol type)
    me = broker.cluster.me
    for group_id in await broker.offsets.groups():
        coordinator = broker.cluster.coordinator(group_id)
        if coordinator is not None and coordinator.id == me:
            found[group_id] = (EMPTY, "")
    for group_id, group in list(broker.groups.groups.items()):
        found[group_id] = (group.state, group.protocol_type or "")
    out: list[ListedGroup] = []
    if types and GROUP_TYPE not in types:
        found.clear()
    for group_id, (state, protocol_type) in sorted(found.items()):
        if states and state.lower() not in states:
            continue
        listed = ListedGroup(group_id=group_id, protocol_type=protocol_type)
        if ctx.version >= 4:
            listed.group_state = state
        if ctx.version >= 5:
            listed.group_type = GROUP_TYPE
        out.append(listed)
    return ListGroupsResponse(throttle_time_ms=0, error_code=0, groups=out)
