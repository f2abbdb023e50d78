"""The metadata-store interface the broker core uses; modelled on etcd's key-value API.

Every write is a transaction with compare-and-swap guards (never a lock): a partition's log end
offset only moves by a transaction that checks the revision it read, so two writers can never
both succeed. Revisions are store-wide and increase with every successful write, as in etcd.
Keys and values are bytes; callers encode JSON.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    """Store revision of the write that last changed this key."""
    version: int
    """Number of writes to this key since it was created (1 = just created)."""
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """``target`` of ``key`` ``op`` ``value``. A missing key has mod_revision 0, version 0 and
    no value (a value comparison with a missing key is false)."""

    key: bytes
    target: Literal["mod_revision", "version", "value"]
    op: Literal["==", "!=", "<", ">"]
    value: int | bytes


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0
    """Attach to a lease: the key disappears when the lease expires or is revoked."""


@dataclass(frozen=True)
class Delete:
    key: bytes
    prefix: bool = False
    """Delete every key starting with ``key``."""


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    """Store revision after the transaction (unchanged if nothing was written)."""


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue
    """For a delete, ``value`` is empty and ``mod_revision`` is the revision of the delete."""


class MetadataStore(ABC):
    """get, put, compare-and-swap transactions, range by prefix, leases, watch."""

    @abstractmethod
    async def get(self, key: bytes) -> KeyValue | None: ...

    @abstractmethod
    async def range(self, prefix: bytes, limit: int = 0) -> list[KeyValue]:
        """Keys starting with ``prefix``, sorted by key (``limit`` 0 = all)."""

    @abstractmethod
    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns the new store revision."""

    @abstractmethod
    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds, apply ``success``, else ``failure``. Durable
        (fsynced / quorum-committed) when it returns."""

    @abstractmethod
    async def lease_grant(self, ttl_seconds: float) -> int:
        """A new lease id (> 0) that expires ``ttl_seconds`` after its last keep-alive."""

    @abstractmethod
    async def lease_keepalive(self, lease: int) -> bool:
        """Renew; False if the lease has already expired (its keys are gone)."""

    @abstractmethod
    async def lease_revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys."""

    @abstractmethod
    def watch(self, prefix: bytes, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys under ``prefix`` after ``start_revision`` (0: from now), in
        revision order, until the iterator is closed."""

    @abstractmethod
    async def revision(self) -> int:
        """The current store revision."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
