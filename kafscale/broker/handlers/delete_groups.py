# DeleteGroups (key 42), versions 0-2.
# - A group with members (any state but Empty): NON_EMPTY_GROUP (68), nothing deleted.
# - An Empty group (in the coordinator's memory, or known by its committed offsets): all its
#   committed offsets are deleted (stale ones included; chunked transactions of at most 128
#   operations) and the group is forgotten, error 0.
# - Neither: GROUP_ID_NOT_FOUND (69), as Kafka answers for a "Dead" group. An empty group id
#   is handled like any other, as Kafka 3.9 does ("for backwards compatibility"; only a null
#   id, impossible here, is INVALID_GROUP_ID (24)).
# - A group another broker coordinates: NOT_COORDINATOR (16).
# - One result per distinct group id (the response is keyed by group id).
from __future__ import annotations

from generated.delete_groups_request import DeleteGroupsRequest
from generated.delete_groups_response import DeletableGroupResult, DeleteGroupsResponse
from generated.errors import ErrorCode
from kafscale.broker.group import EMPTY
from kafscale.broker.handlers import RequestContext, coordinator_error


async def handle(ctx: RequestContext, request: DeleteGroupsRequest) -> DeleteGroupsResponse:
    broker = ctx.broker
    results: dict[str, int] = {}
    for group_id in request.groups_names:
        if group_id in results:
            continue
        if error := await coordinator_error(ctx, group_id, claim=True):
            results[group_id] = error
            continue
        group = broker.groups.get(group_id)
        if group is not None and group.state != EMPTY:
            results[group_id] = ErrorCode.NON_EMPTY_GROUP
            continue
        if group is not None:
            broker.groups.forget(group_id)  # Dead before the await, as Kafka under its lock
        deleted = await broker.offsets.delete_group(group_id)
        results[group_id] = 0 if deleted or group is not None else ErrorCode.GROUP_ID_NOT_FOUND
    return DeleteGroupsResponse(
        throttle_time_ms=0,
        results=[DeletableGroupResult(group_id=g, error_code=e) for g, e in results.items()],
    )
