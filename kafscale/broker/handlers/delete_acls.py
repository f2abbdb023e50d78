# DeleteAcls (key 31), versions 0-3.
# - No authorizer configured: SECURITY_DISABLED (54) on each filter. Needs ALTER on the
#   cluster, else CLUSTER_AUTHORIZATION_FAILED (31) on each filter.
# - One result per filter, in order: the ACLs it matched (each with code 0 and its binding),
#   all deleted; none matched: 0 and an empty list; an ACL two filters match is listed under
#   both. A filter holding UNKNOWN: INVALID_REQUEST on that filter.
from __future__ import annotations

from generated.delete_acls_request import DeleteAclsRequest
from generated.delete_acls_response import (
    DeleteAclsFilterResult,
    DeleteAclsMatchingAcl,
    DeleteAclsResponse,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    AclOperation,
    PatternType,
    ResourceType,
)


def _results(count: int, code: int, message: str | None) -> DeleteAclsResponse:
    return DeleteAclsResponse(
        throttle_time_ms=0,
        filter_results=[
            DeleteAclsFilterResult(error_code=code, error_message=message, matching_acls=[])
            for _ in range(count)
        ],
    )


async def handle(ctx: RequestContext, request: DeleteAclsRequest) -> DeleteAclsResponse:
    count = len(request.filters)
    if ctx.broker.authorizer is None:
        return _results(count, ErrorCode.SECURITY_DISABLED, "No Authorizer is configured.")
    if not ctx.authorize(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return _results(count, ErrorCode.CLUSTER_AUTHORIZATION_FAILED, None)
    acls = ctx.broker.acls.acls()
    doomed: dict[AclBinding, None] = {}
    results = []
    for f in request.filters:
        wanted = AclFilter(
            f.resource_type_filter,
            f.resource_name_filter,
            f.pattern_type_filter if ctx.version >= 1 else PatternType.LITERAL,
            f.principal_filter,
            f.host_filter,
            f.operation,
            f.permission_type,
        )
        if wanted.invalid():
            results.append(
                DeleteAclsFilterResult(
                    error_code=ErrorCode.INVALID_REQUEST,
                    error_message="The filter holds an UNKNOWN value",
                    matching_acls=[],
                )
            )
            continue
        matched = [acl for acl in acls if wanted.matches(acl)]
        doomed.update(dict.fromkeys(matched))
        results.append(
            DeleteAclsFilterResult(
                error_code=0,
                error_message=None,
                matching_acls=[
                    DeleteAclsMatchingAcl(
                        error_code=0,
                        error_message=None,
                        resource_type=acl.resource_type,
                        resource_name=acl.resource_name,
                        pattern_type=acl.pattern_type,
                        principal=acl.principal,
                        host=acl.host,
                        operation=acl.operation,
                        permission_type=acl.permission,
                    )
                    for acl in matched
                ],
            )
        )
    await ctx.broker.acls.delete(list(doomed))
    return DeleteAclsResponse(throttle_time_ms=0, filter_results=results)
