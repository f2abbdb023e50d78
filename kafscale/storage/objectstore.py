"""The object-store interface the broker core uses; backends implement it unchanged.

Keys are S3 object keys (``{namespace}/{topic}/{partition}/segment-....kfs``). Objects are
immutable once written: the broker never rewrites a key, it creates new ones. Every method is
a coroutine so a network backend (S3 via aiobotocore) fits without changing callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from kafscale.protocol.wire import Buffer


class NotFound(KeyError):
    """The object does not exist."""


class ObjectStoreError(Exception):
    """A backend failure (bad keys raise ValueError, missing objects NotFound). Raised as
    itself, the store refused the request for good (access denied, no such bucket, a feature
    the endpoint lacks): retrying will not help, the configuration or the store must change."""


class ObjectStoreUnavailable(ObjectStoreError):
    """Transient failures (5xx, throttling, timeouts, broken connections, bodies that failed
    verification) outlasted the backend's bounded retries. Nothing is known to be wrong with the
    request: the broker answers with a retriable Kafka error and the client tries again.

    ``attempts`` is how many times the request was tried; ``__cause__`` is the last failure.
    A write that raised this may or may not have happened.
    """

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class ObjectStore(ABC):
    """Put, conditional create, get, ranged get, list, delete."""

    @abstractmethod
    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        """Store ``data`` (one buffer or chunks, written in order) under ``key``, replacing
        any object there. Durable when it returns."""

    @abstractmethod
    async def create(self, key: str, data: Buffer | Sequence[Buffer]) -> bool:
        """Store only if ``key`` does not exist (S3 ``If-None-Match: *``). Returns False, and
        changes nothing, when it exists. Durable when it returns True."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole object; :class:`NotFound` if absent."""

    @abstractmethod
    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (shorter at its end); :class:`NotFound`."""

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (network backends)."""
