# AlterUserScramCredentials (key 51), version 0 (KIP-554).
# - Needs ALTER on the cluster (when an authorizer is configured), else
#   CLUSTER_AUTHORIZATION_FAILED (31) for each user, sorted.
# - An upsertion carries the salt and the salted password (the client salts; the password
#   never travels); the broker keeps StoredKey and ServerKey (kafscale/broker/security/scram.py)
#   in the metadata store, one key per user changed by compare-and-swap, so every broker
#   accepts the new credential at once.
# - Per user, one result: empty name -> UNACCEPTABLE_CREDENTIAL (93) "Username must not be
#   empty"; mechanism not 1 or 2 -> UNSUPPORTED_SASL_MECHANISM (33); iterations below 4096 or
#   above 16384 -> 93; two alterations for one user -> DUPLICATE_RESOURCE (92); deleting a
#   credential that does not exist -> RESOURCE_NOT_FOUND (91). Sessions already authenticated
#   are not disconnected.
from __future__ import annotations

from generated.alter_user_scram_credentials_request import (
    AlterUserScramCredentialsRequest,
    ScramCredentialDeletion,
    ScramCredentialUpsertion,
)
from generated.alter_user_scram_credentials_response import (
    AlterUserScramCredentialsResponse,
    AlterUserScramCredentialsResult,
)
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from kafscale.broker.security.scram import (
    MAX_ITERATIONS,
    MECHANISM_TYPES,
    MIN_ITERATIONS,
    ScramCredential,
    credential_from_salted,
)


async def handle(
    ctx: RequestContext, request: AlterUserScramCredentialsRequest
) -> AlterUserScramCredentialsResponse:
    names = [d.name for d in request.deletions] + [u.name for u in request.upsertions]
    if not ctx.authorize(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return AlterUserScramCredentialsResponse(
            results=[
                AlterUserScramCredentialsResult(
                    user=name, error_code=ErrorCode.CLUSTER_AUTHORIZATION_FAILED, error_message=None
                )
                for name in sorted(set(names))
            ]
        )
    errors: dict[str, tuple[int, str]] = {}
    for name in names:
        if names.count(name) > 1:
            errors[name] = (
                ErrorCode.DUPLICATE_RESOURCE,
                "A user credential cannot be altered twice in the same request",
            )
    items: list[ScramCredentialDeletion | ScramCredentialUpsertion] = [
        *request.deletions,
        *request.upsertions,
    ]
    for item in items:
        if item.name in errors:
            continue
        if not item.name:
            errors[item.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Username must not be empty")
        elif item.mechanism not in MECHANISM_TYPES:
            errors[item.name] = (ErrorCode.UNSUPPORTED_SASL_MECHANISM, "Unknown SCRAM mechanism")
    for up in request.upsertions:
        if up.name in errors:
            continue
        if up.iterations < MIN_ITERATIONS:
            errors[up.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Too few iterations")
        elif up.iterations > MAX_ITERATIONS:
            errors[up.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Too many iterations")
        elif not bytes(up.salt) or not bytes(up.salted_password):
            errors[up.name] = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Salt and password must be set")
    store = ctx.broker.credentials
    results = []
    for name in sorted(set(names)):
        if name in errors:
            code, message = errors[name]
            results.append(
                AlterUserScramCredentialsResult(user=name, error_code=code, error_message=message)
            )
            continue
        upserts: dict[str, ScramCredential] = {}
        deletions: set[str] = set()
        for up in request.upsertions:
            if up.name == name:
                mechanism = MECHANISM_TYPES[up.mechanism]
                upserts[mechanism] = credential_from_salted(
                    mechanism, bytes(up.salted_password), bytes(up.salt), up.iterations
                )
        for d in request.deletions:
            if d.name == name:
                deletions.add(MECHANISM_TYPES[d.mechanism])
        try:
            await store.change(name, upserts, deletions)
        except KeyError:
            results.append(
                AlterUserScramCredentialsResult(
                    user=name,
                    error_code=ErrorCode.RESOURCE_NOT_FOUND,
                    error_message="Attempt to delete a user credential that does not exist",
                )
            )
            continue
        results.append(AlterUserScramCredentialsResult(user=name, error_code=0, error_message=None))
    return AlterUserScramCredentialsResponse(results=results)
