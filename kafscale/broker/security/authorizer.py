"""The authorizer: Kafka's StandardAuthorizer decision over the stored ACLs.

On when ``authorizer.class.name`` is set (any non-empty value, as Kafka: the embedded default
stays open). A decision for (principal, host, operation, resource type, name):

1. a principal listed in ``super.users`` (``;``-separated ``User:name``) is allowed;
2. the candidate ACLs are those of the resource type whose pattern covers the name: LITERAL
   with the same name, LITERAL ``*``, PREFIXED with a prefix of the name;
3. an ACL applies when its principal is the caller's or ``User:*``, its host ``*`` or the
   caller's address, and its operation the one asked, ALL, or (ALLOW only) one implying it:
   READ, WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS;
4. any applying DENY denies; else any applying ALLOW allows; else, if any candidate ACL
   exists, denied; only when none exists does ``allow.everyone.if.no.acl.found`` decide.

The ACLs are indexed per resource type (literal names in a dict, prefixes in a dict probed
with each prefix of the name), rebuilt when the store's mirror changes.
"""

from __future__ import annotations

from collections import defaultdict

from kafscale.broker.security.acl import (
    WILDCARD,
    AclBinding,
    AclOperation,
    AclPermission,
    AclStore,
    PatternType,
    ResourceType,
)

_IMPLIED: dict[int, frozenset[int]] = {
    AclOperation.DESCRIBE: frozenset(
        {AclOperation.READ, AclOperation.WRITE, AclOperation.DELETE, AclOperation.ALTER}
    ),
    AclOperation.DESCRIBE_CONFIGS: frozenset({AclOperation.ALTER_CONFIGS}),
}


def parse_super_users(text: str) -> frozenset[str]:
    """``super.users``: principals separated by ``;`` (names may hold commas)."""
    return frozenset(part.strip() for part in text.split(";") if part.strip())


class Authorizer:
    """Decisions over an :class:`AclStore` (see the module docstring)."""

    def __init__(self, store: AclStore, super_users: str, allow_if_no_acl: bool) -> None:
        self.store = store
        self.super_users = parse_super_users(super_users)
        self.allow_if_no_acl = allow_if_no_acl
        self._version = -1
        self._literal: dict[tuple[int, str], list[AclBinding]] = {}
        self._prefixed: dict[int, dict[str, list[AclBinding]]] = {}

    def _index(self) -> None:
        if self._version == self.store.version:
            return
        literal: dict[tuple[int, str], list[AclBinding]] = defaultdict(list)
        prefixed: dict[int, dict[str, list[AclBinding]]] = defaultdict(lambda: defaultdict(list))
        for acl in self.store.acls():
            if acl.pattern_type == PatternType.LITERAL:
                literal[(acl.resource_type, acl.resource_name)].append(acl)
            elif acl.pattern_type == PatternType.PREFIXED:
                prefixed[acl.resource_type][acl.resource_name].append(acl)
        self._literal = dict(literal)
        self._prefixed = {k: dict(v) for k, v in prefixed.items()}
        self._version = self.store.version

    def candidates(self, resource_type: int, name: str) -> list[AclBinding]:
        """The ACLs whose pattern covers ``name`` (step 2)."""
        self._index()
        out = list(self._literal.get((resource_type, name), ()))
        if name != WILDCARD:
            out += self._literal.get((resource_type, WILDCARD), ())
        prefixes = self._prefixed.get(resource_type)
        if prefixes:
            for i in range(1, len(name) + 1):
                out += prefixes.get(name[:i], ())
        return out

    def authorize(
        self, principal: str, host: str, operation: int, resource_type: int, name: str
    ) -> bool:
        """Whether ``principal`` from ``host`` may perform ``operation`` on the resource
        (the procedure of the module docstring)."""
        if principal in self.super_users:
            return True
        acls = self.candidates(resource_type, name)
        if not acls:
            return self.allow_if_no_acl
        allowed = False
        implied_by = _IMPLIED.get(operation, frozenset())
        for acl in acls:
            if acl.principal != principal and acl.principal != "User:*":
                continue
            if acl.host != WILDCARD and acl.host != host:
                continue
            if acl.permission == AclPermission.DENY:
                if acl.operation in (operation, AclOperation.ALL):
                    return False
            elif acl.permission == AclPermission.ALLOW and (
                acl.operation in (operation, AclOperation.ALL) or acl.operation in implied_by
            ):
                allowed = True
        return allowed

    def authorize_any(self, principal: str, host: str, operation: int, resource_type: int) -> bool:
        """Whether ``operation`` is allowed on some resource of the type (Kafka's
        ``authorizeByResourceType``: InitProducerId lets a principal that may WRITE some
        topic be idempotent). Exact operation or ALL; no implications."""
        if self.authorize(principal, host, operation, resource_type, "hardcode"):
            return True
        self._index()
        denied_literal: set[str] = set()
        denied_prefixes: list[str] = []
        allowed_literal: list[str] = []
        allowed_prefixes: list[str] = []
        for acl in self.store.acls():
            if acl.resource_type != resource_type:
                continue
            if acl.principal not in (principal, "User:*") or acl.host not in (WILDCARD, host):
                continue
            if acl.operation not in (operation, AclOperation.ALL):
                continue
            literal = acl.pattern_type == PatternType.LITERAL
            if acl.permission == AclPermission.DENY:
                if literal and acl.resource_name == WILDCARD:
                    return False
                (
                    denied_literal.add(acl.resource_name)
                    if literal
                    else denied_prefixes.append(acl.resource_name)
                )
            elif acl.permission == AclPermission.ALLOW:
                (allowed_literal if literal else allowed_prefixes).append(acl.resource_name)
        for name in allowed_literal:
            if name == WILDCARD:
                return True
            if name not in denied_literal and not any(name.startswith(p) for p in denied_prefixes):
                return True
        return any(not any(p.startswith(d) for d in denied_prefixes) for p in allowed_prefixes)


SUPPORTED_OPERATIONS: dict[int, tuple[int, ...]] = {
    ResourceType.TOPIC: (3, 4, 5, 8, 6, 7, 10, 11),
    ResourceType.GROUP: (3, 8, 6),
    ResourceType.CLUSTER: (5, 9, 10, 11, 12, 7, 8),
    ResourceType.TRANSACTIONAL_ID: (8, 4),
}
