"""Kafka's ACL model: bindings, filters, and their storage in the metadata store.

An ACL binding is a resource pattern (resource type, name, LITERAL or PREFIXED) and an entry
(principal ``Type:name``, host, operation, ALLOW or DENY). Codes are Kafka's
(``ResourceType``, ``PatternType``, ``AclOperation``, ``AclPermissionType``). Filters
(DescribeAcls, DeleteAcls) add ANY for every field and MATCH for the pattern type (every ACL
that would apply to that literal name: the same LITERAL name, LITERAL ``*``, PREFIXED
prefixes of it).

Storage: one key per binding, ``/{ns}/acls/{type}/{pattern}/{name}/{digest}`` (the name
URL-quoted, the digest of the entry), whose value is the binding as JSON: creating an ACL
that exists rewrites the same key (nothing duplicated), deleting is deleting keys, and each
broker keeps a mirror of the prefix current through a watch (a change applies everywhere
within the watch's latency).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import quote

from kafscale.broker.cluster import Mirror
from kafscale.metadata import Delete, KeyValue, MetadataStore, Put

CLUSTER_NAME = "kafka-cluster"


class ResourceType(IntEnum):
    """Kafka's ResourceType codes."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    """Kafka's PatternType codes (ANY and MATCH in filters only)."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):
    """Kafka's AclOperation codes (ANY in filters only)."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class AclPermission(IntEnum):
    """Kafka's AclPermissionType codes (ANY in filters only)."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


WILDCARD = "*"


@dataclass(frozen=True)
class AclBinding:
    """One ACL."""

    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int

    def key(self, prefix: bytes) -> bytes:
        """The binding's metadata-store key under ``prefix`` (one key per ACL)."""
        entry = f"{self.principal}\0{self.host}\0{self.operation}\0{self.permission}"
        digest = hashlib.sha256(entry.encode()).hexdigest()[:32]
        name = quote(self.resource_name, safe="")
        return prefix + f"{self.resource_type}/{self.pattern_type}/{name}/{digest}".encode()

    def to_json(self) -> bytes:
        """The stored value."""
        return json.dumps(
            {
                "resource_type": self.resource_type,
                "resource_name": self.resource_name,
                "pattern_type": self.pattern_type,
                "principal": self.principal,
                "host": self.host,
                "operation": self.operation,
                "permission": self.permission,
            }
        ).encode()

    @classmethod
    def from_json(cls, value: bytes) -> AclBinding:
        """The binding of a stored value."""
        d = json.loads(value)
        return cls(
            int(d["resource_type"]),
            str(d["resource_name"]),
            int(d["pattern_type"]),
            str(d["principal"]),
            str(d["host"]),
            int(d["operation"]),
            int(d["permission"]),
        )


def creation_error(binding: AclBinding) -> str | None:
    """Why Kafka refuses to create ``binding`` (None: valid). Filter-only values (ANY,
    MATCH, UNKNOWN) are refused by the caller for the whole request, as Kafka does."""
    if not binding.resource_name:
        return "Invalid empty resource name"
    if binding.resource_type == ResourceType.CLUSTER and binding.resource_name != CLUSTER_NAME:
        return f"The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
    if ":" not in binding.principal:
        return (
            f"Could not parse principal from `{binding.principal}` (no colon is present "
            "separating the principal type from the principal name)"
        )
    return None


def has_filter_values(binding: AclBinding) -> bool:
    """Whether the binding holds a value only filters may hold (ANY, MATCH, UNKNOWN)."""
    return (
        binding.resource_type in (ResourceType.UNKNOWN, ResourceType.ANY)
        or binding.resource_type not in ResourceType.__members__.values()
        or binding.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED)
        or binding.operation in (AclOperation.UNKNOWN, AclOperation.ANY)
        or binding.operation not in AclOperation.__members__.values()
        or binding.permission not in (AclPermission.ALLOW, AclPermission.DENY)
    )


@dataclass(frozen=True)
class AclFilter:
    """A DescribeAcls/DeleteAcls filter: None (principal, host, name) or ANY match anything."""

    resource_type: int
    resource_name: str | None
    pattern_type: int
    principal: str | None
    host: str | None
    operation: int
    permission: int

    def matches(self, acl: AclBinding) -> bool:
        """Whether the filter selects ``acl`` (Kafka's AclBindingFilter.matches)."""
        if self.resource_type != ResourceType.ANY and acl.resource_type != self.resource_type:
            return False
        if not self._pattern_matches(acl):
            return False
        if self.principal is not None and acl.principal != self.principal:
            return False
        if self.host is not None and acl.host != self.host:
            return False
        if self.operation != AclOperation.ANY and acl.operation != self.operation:
            return False
        return self.permission == AclPermission.ANY or acl.permission == self.permission

    def _pattern_matches(self, acl: AclBinding) -> bool:
        name = self.resource_name
        if self.pattern_type == PatternType.ANY:
            return name is None or acl.resource_name == name
        if self.pattern_type == PatternType.MATCH:
            if name is None:
                return True
            if acl.pattern_type == PatternType.LITERAL:
                return acl.resource_name in (name, WILDCARD)
            return acl.pattern_type == PatternType.PREFIXED and name.startswith(acl.resource_name)
        if acl.pattern_type != self.pattern_type:
            return False
        return name is None or acl.resource_name == name

    def invalid(self) -> bool:
        """Holds UNKNOWN somewhere (Kafka fails such a request)."""
        return (
            PatternType.UNKNOWN in (self.pattern_type,)
            or AclOperation.UNKNOWN == self.operation
            or (
                self.permission == AclPermission.UNKNOWN
                or self.resource_type == ResourceType.UNKNOWN
            )
        )


class AclStore:
    """The ACLs of one namespace: an in-memory mirror, and changes through the store."""

    def __init__(self, meta: MetadataStore, namespace: str) -> None:
        self.meta = meta
        self.prefix = f"/{namespace}/acls/".encode()
        self.mirror = Mirror(meta, self.prefix)
        self._acls: tuple[int, list[AclBinding]] = (-1, [])
        """(the mirror's version, the ACLs parsed from it)."""

    async def start(self) -> None:
        """Load the ACLs and follow their changes."""
        await self.mirror.start()

    async def close(self) -> None:
        """Stop following."""
        await self.mirror.close()

    @property
    def version(self) -> int:
        """Changes whenever the ACLs may have (the authorizer rebuilds its index then)."""
        return self.mirror.version

    def acls(self) -> list[AclBinding]:
        """Every ACL (from the mirror; parsed again only after it changed)."""
        version, acls = self._acls
        if version != self.mirror.version:
            acls = []
            for kv in self.mirror.items.values():
                try:
                    acls.append(AclBinding.from_json(kv.value))
                except (ValueError, KeyError, TypeError):
                    continue
            self._acls = (self.mirror.version, acls)
        return acls

    async def create(self, bindings: list[AclBinding]) -> None:
        """Store ``bindings`` (one transaction of at most 64 puts at a time)."""
        for i in range(0, len(bindings), 64):
            chunk = bindings[i : i + 64]
            ops: list[Put | Delete] = [Put(b.key(self.prefix), b.to_json()) for b in chunk]
            result = await self.meta.txn([], ops)
            for b in chunk:
                self._note(b.key(self.prefix), b.to_json(), result.revision)

    async def delete(self, bindings: list[AclBinding]) -> None:
        """Remove ``bindings`` (one transaction of at most 64 deletions at a time)."""
        for i in range(0, len(bindings), 64):
            chunk = bindings[i : i + 64]
            result = await self.meta.txn([], [Delete(b.key(self.prefix)) for b in chunk])
            for b in chunk:
                self._note(b.key(self.prefix), None, result.revision)

    def _note(self, key: bytes, value: bytes | None, revision: int) -> None:
        relative = key[len(self.prefix) :]
        self.mirror.note(relative, None if value is None else KeyValue(key, value, revision, 1))
