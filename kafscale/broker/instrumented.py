"""Thin wrappers that time every object-store and metadata-store request.

The broker wraps its stores once (``Broker.__init__``) and hands the wrappers to every
component, so each request is counted wherever it comes from (the flusher, reads, compaction,
the janitor, ownership) without touching the backends or the code that calls them. Anything
a wrapper does not define (``open``, ``compact``, ``bucket``...) is the backend's own.

An object-store request that raised a store failure (anything but :class:`NotFound`, a bad key,
or the caller cancelling it) is an error; its outcome and latency also feed the object store's
health (:class:`kafscale.broker.health.ObjectStoreHealth`). A metadata request that raised is a
failure; a transaction whose compares did not hold is a conflict (an answer, not a failure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from kafscale.broker.health import ObjectStoreHealth
from kafscale.broker.metrics import BrokerMetrics, StoreOperation
from kafscale.metadata import (
    Compare,
    Delete,
    HeldLease,
    KeyValue,
    MetadataStore,
    Put,
    TxnResult,
    WatchEvent,
)
from kafscale.protocol.wire import Buffer
from kafscale.storage import NotFound, ObjectStore

T = TypeVar("T")


class InstrumentedObjectStore(ObjectStore):
    """An :class:`ObjectStore` that counts and times every request of ``inner``."""

    def __init__(
        self, inner: ObjectStore, metrics: BrokerMetrics, health: ObjectStoreHealth
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self.health = health
        self._ops = {
            op: metrics.object_store(op)
            for op in ("put", "create", "get", "get_range", "list", "delete")
        }
        self._bytes = {
            op: metrics.object_bytes.labels(op) for op in ("put", "create", "get", "get_range")
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"Instrumented({self.inner!r})"

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        children = self._ops[op]
        children.requests.inc()
        started = time.perf_counter()
        failed = cancelled = False
        try:
            return await call
        except asyncio.CancelledError:
            cancelled = True  # the caller gave up (a read-ahead, a timeout): no outcome
            raise
        except (NotFound, ValueError):
            raise  # an answer, or a bad key: not the store's failure
        except Exception:
            failed = True
            children.errors.inc()
            raise
        finally:
            if not cancelled:
                seconds = time.perf_counter() - started
                children.seconds.observe(seconds)
                self.health.record(seconds, failed)

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        await self._timed("put", self.inner.put(key, data))
        self._bytes["put"].inc(_size(data))

    async def create(self, key: str, data: Buffer | Sequence[Buffer]) -> bool:
        created = await self._timed("create", self.inner.create(key, data))
        if created:
            self._bytes["create"].inc(_size(data))
        return created

    async def get(self, key: str) -> bytes:
        data = await self._timed("get", self.inner.get(key))
        self._bytes["get"].inc(len(data))
        return data

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        data = await self._timed("get_range", self.inner.get_range(key, start, end))
        self._bytes["get_range"].inc(len(data))
        return data

    async def list(self, prefix: str) -> list[str]:
        return await self._timed("list", self.inner.list(prefix))

    async def delete(self, key: str) -> None:
        await self._timed("delete", self.inner.delete(key))

    async def close(self) -> None:
        await self.inner.close()


def _size(data: Buffer | Sequence[Buffer]) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    return sum(len(chunk) for chunk in data)


class InstrumentedMetadataStore(MetadataStore):
    """A :class:`MetadataStore` that counts and times every request of ``inner`` (watches and
    lease keep-alives pass through: a watch is a stream, and a held lease renews itself
    through the backend)."""

    def __init__(self, inner: MetadataStore, metrics: BrokerMetrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.exclusive = inner.exclusive
        self._ops: dict[str, StoreOperation] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"Instrumented({self.inner!r})"

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        children = self._ops.get(op)
        if children is None:
            children = self._ops[op] = self.metrics.metadata_store(op)
        children.requests.inc()
        started = time.perf_counter()
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception:
            children.errors.inc()
            raise
        finally:
            children.seconds.observe(time.perf_counter() - started)

    async def get(self, key: bytes) -> KeyValue | None:
        return await self._timed("get", self.inner.get(key))

    # Optional arguments are passed on only when given, so the backend sees the call its
    # caller made (tests replace a backend's method with one of the caller's arity).

    async def range(self, prefix: bytes, limit: int = 0) -> list[KeyValue]:
        call = self.inner.range(prefix, limit) if limit else self.inner.range(prefix)
        return await self._timed("range", call)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        call = self.inner.put(key, value, lease) if lease else self.inner.put(key, value)
        return await self._timed("put", call)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        call = (
            self.inner.txn(compare, success, failure)
            if failure
            else self.inner.txn(compare, success)
        )
        result = await self._timed("txn", call)
        if not result.succeeded:
            self.metrics.metadata_conflicts.inc()
        return result

    async def lease_grant(self, ttl_seconds: float) -> int:
        return await self._timed("lease_grant", self.inner.lease_grant(ttl_seconds))

    async def lease_keepalive(self, lease: int) -> bool:
        return await self._timed("lease_keepalive", self.inner.lease_keepalive(lease))

    async def lease_revoke(self, lease: int) -> None:
        await self._timed("lease_revoke", self.inner.lease_revoke(lease))

    async def lease_hold(self, ttl_seconds: float) -> HeldLease:
        # The backend holds it (its keep-alive task renews through the backend, and closing
        # the backend loses it), as it would unwrapped.
        return await self._timed("lease_grant", self.inner.lease_hold(ttl_seconds))

    def watch(self, prefix: bytes, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start_revision)

    async def revision(self) -> int:
        return await self._timed("revision", self.inner.revision())

    async def close(self) -> None:
        await self.inner.close()
