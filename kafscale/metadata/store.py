"""The metadata-store interface the broker core uses; modelled on etcd's key-value API.

Every write is a transaction with compare-and-swap guards (never a lock): a partition's log end
offset only moves by a transaction that checks the revision it read, so two writers can never
both succeed. Revisions are store-wide and increase with every successful write, as in etcd.
Keys and values are bytes; callers encode JSON.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

_log = logging.getLogger(__name__)


# -- errors (every backend raises these) -------------------------------------------------------


class LeaseNotFound(LookupError):
    """A put named a lease that does not exist (never granted, revoked or expired)."""


class WatchCompacted(Exception):
    """The watch needs events older than the store keeps (compacted history)."""

    def __init__(self, start_revision: int, compact_revision: int) -> None:
        super().__init__(
            f"cannot watch after revision {start_revision}: history is compacted up to "
            f"revision {compact_revision}"
        )
        self.start_revision = start_revision
        self.compact_revision = compact_revision
        """Watches may start after this revision (not before)."""


class StoreClosed(RuntimeError):
    """The store was used after ``close()``."""


class MetadataUnavailable(Exception):
    """The store could not be reached, or has no leader or quorum, even after the backend's
    bounded retries. Retriable: try again later (another broker may be luckier).

    Raised by a write only when the write certainly did *not* apply, unless
    :attr:`outcome_unknown` is set (then it is a :class:`TxnOutcomeUnknown`)."""

    outcome_unknown: bool = False


class TxnOutcomeUnknown(MetadataUnavailable):
    """A write (``put``/``txn``) was sent but no answer came back: it may or may not have
    applied, and it is not re-sent (re-sending a write that did apply could apply it twice,
    e.g. a blind put over a newer value). Recover by re-reading: a compare-and-swap whose
    guarded key now has the value (and a mod_revision above the compared one) this write
    would have put did apply; otherwise it did not, and the caller may retry it with fresh
    compares."""

    outcome_unknown = True


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


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range end):
    drop trailing 0xff bytes and increment the last remaining byte. None if there is no such
    key (an empty or all-0xff prefix), meaning "no upper bound"."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def check_compare(c: Compare) -> None:
    """Reject a malformed compare (:class:`TypeError`, :class:`ValueError`) before sending."""
    if c.op not in ("==", "!=", "<", ">"):
        raise ValueError(f"unknown compare op {c.op!r}")
    if not isinstance(c.key, bytes):
        raise TypeError(f"compare key must be bytes, not {type(c.key).__name__}")
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise TypeError(f"a value compare needs bytes, not {type(c.value).__name__}")
    elif c.target in ("mod_revision", "version"):
        if not isinstance(c.value, int) or isinstance(c.value, bool):
            raise TypeError(f"a {c.target} compare needs an int, not {type(c.value).__name__}")
    else:
        raise ValueError(f"unknown compare target {c.target!r}")


def check_ops(ops: Sequence[Put | Delete]) -> None:
    """etcd's rules for one transaction branch: keys and values are bytes, put keys are
    non-empty and distinct, and no put key is also deleted by the branch."""
    puts: set[bytes] = set()
    deletes: list[Delete] = []
    for op in ops:
        if isinstance(op, Put):
            if not isinstance(op.key, bytes) or not isinstance(op.value, bytes):
                raise TypeError("put key and value must be bytes")
            if not op.key:
                raise ValueError("empty key")
            if op.lease < 0:
                raise ValueError(f"negative lease id {op.lease}")
            if op.key in puts:
                raise ValueError(f"key {op.key!r} is put twice in one transaction branch")
            puts.add(op.key)
        elif isinstance(op, Delete):
            if not isinstance(op.key, bytes):
                raise TypeError("delete key must be bytes")
            deletes.append(op)
        else:
            raise TypeError(f"not a Put or Delete: {op!r}")
    for d in deletes:
        for key in puts:
            if key.startswith(d.key) if d.prefix else key == d.key:
                raise ValueError(f"key {key!r} is both put and deleted in one branch")


def check_ttl(ttl_seconds: float) -> float:
    if not (ttl_seconds > 0 and ttl_seconds < float("inf")):
        raise ValueError(f"lease TTL must be positive and finite, not {ttl_seconds}")
    return float(ttl_seconds)


_REVOKED = "revoked by its holder"
_CLOSED = "the metadata store was closed"


class HeldLease:
    """A lease that :meth:`MetadataStore.lease_hold` keeps alive from a background task.

    The task renews the lease every third of its TTL. The lease is *lost* -- :attr:`lost` is
    set, :attr:`reason` says why, :attr:`alive` turns False, and it is never renewed again --
    when the store answers that it has expired (or was revoked elsewhere), when no renewal has
    been acknowledged for a whole TTL (the store may have expired it: keep-alives failing,
    the store unreachable, or this process stalled), when :meth:`revoke` is called, or when
    the store is closed. The whole-TTL rule is measured from when each successful keep-alive
    was *sent*, so this side gives the lease up no later than the store can expire it: a
    holder that stops acting as owner once :attr:`alive` is False never overlaps with the next
    owner (given clocks that run at the same rate). A deadline timer enforces it even if the
    renewing task is stuck or gone.
    """

    def __init__(self, store: MetadataStore, lease: int, ttl: float, granted_at: float) -> None:
        self.store = store
        self.id = lease
        self.ttl = ttl
        """The TTL asked for (a backend may grant more, e.g. etcd rounds up to whole seconds;
        the holder uses this one, which is the safe side)."""
        self.lost = asyncio.Event()
        self.reason: str | None = None
        self._loop = asyncio.get_running_loop()
        self._deadline = granted_at + ttl
        self._timer = self._loop.call_at(self._deadline, self._expire)
        self._task: asyncio.Task[None] | None = self._loop.create_task(
            self._keep(), name=f"kafscale-lease-{lease:x}"
        )

    @property
    def alive(self) -> bool:
        """Not lost, and renewed within the last TTL."""
        return not self.lost.is_set() and self._loop.time() < self._deadline

    @property
    def deadline(self) -> float:
        """Event-loop time (``loop.time()``) at which the lease counts as lost unless renewed."""
        return self._deadline

    async def revoke(self) -> None:
        """Stop renewing and revoke the lease now (its keys go at once)."""
        self._lose(_REVOKED)
        await self.store.lease_revoke(self.id)

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.reason = reason
        self.lost.set()
        self._timer.cancel()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.store._held_leases().discard(self)
        if reason not in (_REVOKED, _CLOSED):
            _log.warning("lease %x lost: %s", self.id, reason)

    def _expire(self) -> None:
        self._lose(f"no keep-alive acknowledged within its TTL ({self.ttl:g}s)")

    async def _keep(self) -> None:
        loop = self._loop
        interval = self.ttl / 3
        retry_interval = min(interval, 0.25)
        next_at = self._deadline - self.ttl + interval
        last_error: BaseException | None = None
        while not self.lost.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            sent = loop.time()
            remaining = self._deadline - sent
            if remaining <= 0:
                self._lose(f"not renewed within its TTL; last error: {last_error!r}")
                return
            try:
                async with asyncio.timeout(remaining):
                    renewed = await self.store.lease_keepalive(self.id)
            except StoreClosed:
                self._lose(_CLOSED)
                return
            except Exception as e:  # unavailable, timed out: retry until the deadline
                last_error = e
                next_at = loop.time() + retry_interval
                continue
            if not renewed:
                self._lose("the store says it expired (or was revoked elsewhere)")
                return
            if self.lost.is_set():
                return
            self._deadline = sent + self.ttl
            self._timer.cancel()
            self._timer = loop.call_at(self._deadline, self._expire)
            last_error = None
            next_at = sent + interval


class MetadataStore(ABC):
    """get, put, compare-and-swap transactions, range by prefix, leases, watch."""

    exclusive: bool = False
    """True when only one process can use the store at a time (the embedded sqlite file):
    a lease found in it at start belongs to a previous, dead run of that process."""

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

    async def lease_hold(self, ttl_seconds: float) -> HeldLease:
        """Grant a lease and keep it alive from a background task until it is lost (see
        :class:`HeldLease`: its :attr:`~HeldLease.lost` event is how a holder learns that its
        keys may be gone), revoked, or the store closes. Call from the event loop that uses
        the store."""
        ttl = check_ttl(ttl_seconds)
        granted_at = asyncio.get_running_loop().time()
        lease = await self.lease_grant(ttl)
        held = HeldLease(self, lease, ttl, granted_at)
        self._held_leases().add(held)
        return held

    def _held_leases(self) -> set[HeldLease]:
        held: set[HeldLease] | None = self.__dict__.get("_held")
        if held is None:
            held = self.__dict__["_held"] = set()
        return held

    def _lose_held_leases(self) -> None:
        """For ``close()``: stop renewing every held lease and mark it lost."""
        for held in list(self._held_leases()):
            held._lose(_CLOSED)

    @abstractmethod
    def watch(self, prefix: bytes, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys under ``prefix`` after ``start_revision`` (0: from now), in
        revision order, until the iterator is closed."""

    @abstractmethod
    async def revision(self) -> int:
        """The current store revision."""

    async def close(self) -> None:
        """Release resources; held leases stop being renewed and are marked lost."""
        self._lose_held_leases()
