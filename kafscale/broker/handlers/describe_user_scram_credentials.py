# DescribeUserScramCredentials (key 50), version 0 (KIP-554).
# - Needs DESCRIBE on the cluster (when an authorizer is configured), else
#   CLUSTER_AUTHORIZATION_FAILED (31) at the top and on one result per requested user.
# - Users null or empty: every user with credentials, each with its (mechanism, iterations);
#   salts and keys are never returned. A user without credentials: RESOURCE_NOT_FOUND (91); a
#   user named twice: DUPLICATE_RESOURCE (92) once for that user.
from __future__ import annotations

from generated.describe_user_scram_credentials_request import (
    DescribeUserScramCredentialsRequest,
)
from generated.describe_user_scram_credentials_response import (
    CredentialInfo,
    DescribeUserScramCredentialsResponse,
    DescribeUserScramCredentialsResult,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from kafscale.broker.security.credentials import UserCredentials
from kafscale.broker.security.scram import MECHANISM_TYPES

_TYPES = {name: code for code, name in MECHANISM_TYPES.items()}


def _infos(creds: UserCredentials) -> list[CredentialInfo]:
    return [
        CredentialInfo(mechanism=_TYPES[m], iterations=c.iterations)
        for m, c in sorted(creds.items())
        if m in _TYPES
    ]


async def handle(
    ctx: RequestContext, request: DescribeUserScramCredentialsRequest
) -> DescribeUserScramCredentialsResponse:
    names = [u.name for u in request.users or []]
    if not ctx.authorize(AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        denied = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        return DescribeUserScramCredentialsResponse(
            error_code=denied,
            error_message=None,
            results=[
                DescribeUserScramCredentialsResult(
                    user="", error_code=denied, error_message=None, credential_infos=[]
                )
                for _ in names
            ],
        )
    users = ctx.broker.credentials.all_users()
    results = []
    code: int
    message: str | None
    infos: list[CredentialInfo]
    if not names:
        for user, creds in sorted(users.items()):
            results.append(
                DescribeUserScramCredentialsResult(
                    user=user, error_code=0, error_message=None, credential_infos=_infos(creds)
                )
            )
    else:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            if names.count(name) > 1:
                code, message, infos = (
                    ErrorCode.DUPLICATE_RESOURCE,
                    "Cannot describe SCRAM credentials for the same user twice in a single "
                    f"request: {name}",
                    [],
                )
            elif name not in users or not _infos(users[name]):
                code, message, infos = (
                    ErrorCode.RESOURCE_NOT_FOUND,
                    f"Attempt to describe a user credential that does not exist: {name}",
                    [],
                )
            else:
                code, message, infos = 0, None, _infos(users[name])
            results.append(
                DescribeUserScramCredentialsResult(
                    user=name, error_code=code, error_message=message, credential_infos=infos
                )
            )
    return DescribeUserScramCredentialsResponse(error_code=0, error_message=None, results=results)
