# DescribeAcls (key 29), versions 0-3.
# - No authorizer configured: SECURITY_DISABLED (54). Needs DESCRIBE on the cluster, else
#   CLUSTER_AUTHORIZATION_FAILED (31) with no resources.
# - The filter as Kafka matches it (kafscale/broker/security/acl.py: ANY, MATCH, LITERAL,
#   PREFIXED; null name/principal/host match anything); v0 has no pattern type (LITERAL).
#   Matches are grouped by resource (type, name, pattern type).
from __future__ import annotations

from generated.describe_acls_request import DescribeAclsRequest
from generated.describe_acls_response import (
    AclDescription,
    DescribeAclsResource,
    DescribeAclsResponse,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.security.acl import (
    CLUSTER_NAME,
    AclFilter,
    AclOperation,
    PatternType,
    ResourceType,
)


async def handle(ctx: RequestContext, request: DescribeAclsRequest) -> DescribeAclsResponse:
    if ctx.broker.authorizer is None:
        return DescribeAclsResponse(
            error_code=ErrorCode.SECURITY_DISABLED,
            error_message="No Authorizer is configured.",
            resources=[],
        )
    if not ctx.authorize(AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return DescribeAclsResponse(
            error_code=ErrorCode.CLUSTER_AUTHORIZATION_FAILED, error_message=None, resources=[]
        )
    pattern = request.pattern_type_filter if ctx.version >= 1 else PatternType.LITERAL
    wanted = AclFilter(
        request.resource_type_filter,
        request.resource_name_filter,
        pattern,
        request.principal_filter,
        request.host_filter,
        request.operation,
        request.permission_type,
    )
    if wanted.invalid():
        return DescribeAclsResponse(
            error_code=ErrorCode.INVALID_REQUEST,
            error_message="The filter holds an UNKNOWN value",
            resources=[],
        )
    grouped: dict[tuple[int, str, int], list[AclDescription]] = {}
    for acl in ctx.broker.acls.acls():
        if wanted.matches(acl):
            grouped.setdefault((acl.resource_type, acl.resource_name, acl.pattern_type), []).append(
                AclDescription(
                    principal=acl.principal,
                    host=acl.host,
                    operation=acl.operation,
                    permission_type=acl.permission,
                )
            )
    return DescribeAclsResponse(
        error_code=0,
        error_message=None,
        resources=[
            DescribeAclsResource(resource_type=rt, resource_name=name, pattern_type=pt, acls=acls)
            for (rt, name, pt), acls in sorted(grouped.items())
        ],
    )
