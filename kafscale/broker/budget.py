"""A byte budget shared by concurrent work: each piece of work waits until its bytes fit."""

from __future__ import annotations

import asyncio


class ByteBudget:
    """A bound on bytes in use at once (back-pressure, not an error): the bytes of requests
    being processed across connections (``server.py``), of compactions in progress
    (``compaction.py``). Whoever asks for more than the capacity gets the whole of it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed = asyncio.Condition()
        self._waiting = 0

    async def acquire(self, n: int) -> None:
        n = min(n, self.capacity)  # one huge (but allowed) request may use the whole budget
        if not self._waiting and self.used + n <= self.capacity:
            self.used += n  # the common case: no lock, no wait (nobody queues before us)
            return
        self._waiting += 1
        try:
            async with self._freed:
                await self._freed.wait_for(lambda: self.used + n <= self.capacity)
                self.used += n
        finally:
            self._waiting -= 1

    async def release(self, n: int) -> None:
        self.used -= min(n, self.capacity)
        if self._waiting:
            async with self._freed:
                self._freed.notify_all()
