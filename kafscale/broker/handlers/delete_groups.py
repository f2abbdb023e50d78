# DeleteGroups (key 42), versions 0-2.
# - A group with at least one committed offset is an "Empty" group (membership is not served
#   yet, so NON_EMPTY_GROUP (68) never arises): all its committed offsets are deleted (stale
#   ones included; chunked transactions of at most 128 operations), error 0.
# - A group with no committed offsets: GROUP_ID_NOT_FOUND (69), as Kafka answers for a "Dead"
#   group. An empty group id is handled like any other, as Kafka 3.9 does ("for backwards
#   compatibility"; only a null id, impossible here, is INVALID_GROUP_ID (24)).
# - One result per distinct group id (the response is keyed by group id).
from __future__ import annotations

from generated.delete_groups_request import DeleteGroupsRequest
from generated.delete_groups_response import DeletableGroupResult, DeleteGroupsResponse
from kafscale.broker.handlers import RequestContext
from kafscale.broker.offsets import Offsets

GROUP_ID_NOT_FOUND = 69


async def handle(ctx: RequestContext, request: DeleteGroupsRequest) -> DeleteGroupsResponse:
    broker = ctx.broker
    offsets = Offsets(broker.meta, broker.config.namespace)
    results: dict[str, int] = {}
    for group in request.groups_names:
        if group not in results:
            deleted = await offsets.delete_group(group)
            results[group] = 0 if deleted else GROUP_ID_NOT_FOUND
    return DeleteGroupsResponse(
        throttle_time_ms=0,
        results=[DeletableGroupResult(group_id=g, error_code=e) for g, e in results.items()],
    )
