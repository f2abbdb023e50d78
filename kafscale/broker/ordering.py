"""One connection's order of effects: every request observes what the earlier ones did.

Kafka handles a connection's requests one at a time, and clients rely on it: confluent's admin
client sends DeleteRecords and then ListOffsets on one connection and expects the new low
watermark. We still run a connection's requests concurrently where that cannot be observed:

- ``ordered`` requests (the default) start once every earlier request of the connection is
  done;
- ``read`` requests (no effects: Metadata, Fetch, ListOffsets, ...) also start alongside the
  reads they directly follow, since reads cannot see each other;
- ``append`` requests (Produce) start alongside the appends they directly follow: the log
  appends them in the order they were sent, so their uploads and commits overlap (group
  commit: a connection with many produces in flight is what fills a flush cycle).

So a run of requests of one kind forms a *group* that starts together once the group before
it is done; an ordered request is a group of its own. Answers are sent in request order
anyway (the server's writer loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from generated.registry import API_EFFECTS

ORDERED = "ordered"


def effects(api_key: int) -> str:
    """``ordered``, ``read`` or ``append`` (protocol_specs/broker-apis.yaml)."""
    return API_EFFECTS.get(api_key, ORDERED)


class ConnectionOrder:
    """Tells each new request of a connection what it must wait for before it starts."""

    __slots__ = ("_before", "_group", "_kind")

    def __init__(self) -> None:
        self._kind = ORDERED
        self._group: set[asyncio.Future[Any]] = set()
        """The requests of the current group not yet done."""
        self._before: asyncio.Future[Any] | None = None
        """Done when every request of the previous groups is; None when they all were."""

    def admit(self, api_key: int) -> Awaitable[object] | None:
        """What a new request of ``api_key`` must await before it starts (None: nothing).
        Call :meth:`started` with its task right after."""
        kind = effects(api_key)
        if kind == ORDERED or kind != self._kind:
            # A new group: it waits for the one before, which waited for its own before.
            if self._group:
                self._before = _all_done(self._group)
            elif self._before is not None and self._before.done():
                self._before = None
            self._group = set()
            self._kind = kind
        return self._before

    def started(self, task: asyncio.Future[Any]) -> None:
        """``task`` handles the request just admitted."""
        if not task.done():
            self._group.add(task)
            task.add_done_callback(self._group.discard)


def _all_done(tasks: set[asyncio.Future[Any]]) -> asyncio.Future[Any]:
    """A future done once all of ``tasks`` are (whether they failed or not)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    left = set(tasks)

    def finished(task: asyncio.Future[Any]) -> None:
        left.discard(task)
        if not left and not done.done():
            done.set_result(None)

    for task in tasks:
        task.add_done_callback(finished)
    return done
