"""Producer ids for idempotent producers, unique across every broker of the cluster.

Each broker reserves a block of ids at a time by moving the counter ``/{ns}/producer-ids``
forward with a compare-and-swap, then hands them out from memory. An id is never given twice
(the counter only moves forward, by transactions that fail for anyone who read a stale
value); ids of a block a broker did not use before it stopped are simply skipped.
"""

from __future__ import annotations

import asyncio

from kafscale.metadata import Compare, MetadataStore, Put

BLOCK = 1000


class ProducerIds:
    def __init__(self, meta: MetadataStore, namespace: str, block: int = BLOCK) -> None:
        self.meta = meta
        self.key = f"/{namespace}/producer-ids".encode()
        self.block = block
        self._next = 0
        self._end = 0
        self._lock = asyncio.Lock()

    async def next(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                self._next, self._end = await self._reserve()
            producer_id = self._next
            self._next += 1
            return producer_id

    async def _reserve(self) -> tuple[int, int]:
        while True:
            kv = await self.meta.get(self.key)
            start = int(kv.value) if kv is not None else 0
            guard = (
                Compare(self.key, "mod_revision", "==", kv.mod_revision)
                if kv is not None
                else Compare(self.key, "version", "==", 0)
            )
            end = start + self.block
            result = await self.meta.txn([guard], [Put(self.key, str(end).encode())])
            if result.succeeded:
                return start, end
