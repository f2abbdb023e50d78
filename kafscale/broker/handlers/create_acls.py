# CreateAcls (key 30), versions 0-3 (pattern types from v1).
# - No authorizer configured (authorizer.class.name empty): SECURITY_DISABLED (54) on each
#   creation, as Kafka answers.
# - Needs ALTER on the cluster, else CLUSTER_AUTHORIZATION_FAILED (31) on every creation.
# - A creation holding a filter-only value (resource type ANY, pattern ANY/MATCH, operation
#   ANY, permission ANY, an unknown code) fails the whole request: UNKNOWN_SERVER_ERROR (-1) on
#   every creation (Kafka's binding constructor throws). Per creation: an empty name, a CLUSTER
#   resource not named kafka-cluster, a principal without "Type:" -> INVALID_REQUEST (42).
# - Stored in the metadata store (kafscale/broker/security/acl.py); an ACL that exists already
#   is a success that changes nothing. Every broker applies it within its watch's latency.
from __future__ import annotations

from generated.create_acls_request import CreateAclsRequest
from generated.create_acls_response import AclCreationResult, CreateAclsResponse
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclOperation,
    PatternType,
    ResourceType,
    creation_error,
    has_filter_values,
)


def _answer(count: int, code: int, message: str | None) -> CreateAclsResponse:
    return CreateAclsResponse(
        throttle_time_ms=0,
        results=[AclCreationResult(error_code=code, error_message=message) for _ in range(count)],
    )


async def handle(ctx: RequestContext, request: CreateAclsRequest) -> CreateAclsResponse:
    count = len(request.creations)
    if ctx.broker.authorizer is None:
        return _answer(count, ErrorCode.SECURITY_DISABLED, "No Authorizer is configured.")
    if not ctx.authorize(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return _answer(count, ErrorCode.CLUSTER_AUTHORIZATION_FAILED, None)
    bindings = [
        AclBinding(
            c.resource_type,
            c.resource_name,
            c.resource_pattern_type if ctx.version >= 1 else PatternType.LITERAL,
            c.principal,
            c.host,
            c.operation,
            c.permission_type,
        )
        for c in request.creations
    ]
    if any(has_filter_values(b) for b in bindings):
        return _answer(count, ErrorCode.UNKNOWN_SERVER_ERROR, None)
    results = []
    valid = []
    for binding in bindings:
        problem = creation_error(binding)
        if problem is None:
            valid.append(binding)
            results.append(AclCreationResult(error_code=0, error_message=None))
        else:
            results.append(
                AclCreationResult(error_code=ErrorCode.INVALID_REQUEST, error_message=problem)
            )
    await ctx.broker.acls.create(valid)
    return CreateAclsResponse(throttle_time_ms=0, results=results)
