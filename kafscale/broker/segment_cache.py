"""The segment cache: recently written or read segment bytes, LRU within a memory budget.

Entries are read whole segments, chunks of them, and the pieces a flush cycle just wrote. A
piece is cached as it was uploaded, the chunks it is made of (its header and footer, and views
of the Produce requests' frames holding its batches), not as a copy: the broker's produce path
then copies a byte only where its object store must (S3: one request body; the local store
writes the chunks as they are). A read of a range of it copies just that range out of the
chunks, the one copy a read of a ``bytes`` entry makes too (a slice).

Only chunks of :data:`MIN_CHUNK_BYTES` or more on average are kept as they are: each view is
an object the garbage collector walks at every full collection, and a full collection stops
the event loop (at 2,000 one-record requests a second, views of every batch made the broker's
full collections ten times as frequent and up to 35 ms long within 10 s). Smaller chunks are
joined, a copy of little data.

The budget counts memory, not entry sizes: the buffers an entry's chunks view (a frame of
several partitions' batches, say) are counted once, at their full size, for as long as any
cached entry views them; so the cache never holds more than ``capacity`` bytes of buffers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kafscale.protocol.wire import Buffer

MIN_CHUNK_BYTES = 64 * 1024
"""The mean chunk size from which an entry's chunks are cached as they are (else joined)."""


def _base(chunk: Buffer) -> object:
    """The object whose memory ``chunk`` is (a view's exporter, else the chunk itself)."""
    return chunk.obj if isinstance(chunk, memoryview) else chunk


def _size(buffer: object) -> int:
    return memoryview(buffer).nbytes  # type: ignore[arg-type]


def _bases(chunks: tuple[Buffer, ...]) -> dict[int, object]:
    """The distinct buffers ``chunks`` are views of (or are), by id."""
    return {id(b): b for b in map(_base, chunks)}


class SegmentCache:
    """Recently written or read segment bytes under keys, LRU by the memory they hold."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        """Bytes of memory the entries hold (shared buffers counted once)."""
        self.items: OrderedDict[str, bytes | tuple[Buffer, ...]] = OrderedDict()
        self._held: dict[int, list[int]] = {}
        """id(buffer) -> [entries viewing it, its size], for buffers of chunked entries (the
        entries' views keep the buffers alive, so the ids are not reused meanwhile)."""
        self.hits = 0
        """Reads served from the cache, or by joining a read in progress (metrics)."""
        self.misses = 0
        """Reads that started an object-store read (read-aheads included)."""

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        """Drop every entry (as after a restart)."""
        self.items.clear()
        self._held.clear()
        self.used = 0

    def get(self, key: str) -> bytes | None:
        """The bytes under ``key`` (joined now if they were cached as chunks), or None."""
        data = self.items.get(key)
        if data is None:
            return None
        if not isinstance(data, bytes):
            joined = b"".join(data)
            self._release(data)
            self.items[key] = joined
            self.used += len(joined)
            data = joined
        self.items.move_to_end(key)
        self._evict()
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` of the entry under ``key`` (a copy of just those), or None
        when it is not cached."""
        data = self.items.get(key)
        if data is None:
            return None
        self.items.move_to_end(key)
        if isinstance(data, bytes):
            return data[start:end]
        parts: list[Buffer] = []
        pos = 0
        for chunk in data:
            size = len(chunk)
            if pos + size > start and pos < end:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                parts.append(view[max(start - pos, 0) : min(end - pos, size)])
            pos += size
            if pos >= end:
                break
        return b"".join(parts)

    def put(self, key: str, data: bytes | Sequence[Buffer]) -> None:
        """Cache ``data`` (bytes, or the chunks that joined are the bytes) under ``key``,
        replacing what was there; what does not fit the capacity is not cached."""
        old = self.items.pop(key, None)
        if old is not None:
            self._drop(old)
        if isinstance(data, bytes):
            if len(data) > self.capacity:
                return
            self.items[key] = data
            self.used += len(data)
        elif sum(map(len, data)) < MIN_CHUNK_BYTES * len(data):
            self.put(key, b"".join(data))  # small chunks: a copy costs less than their views
            return
        else:
            chunks = tuple(data)
            if self._cost(chunks) > self.capacity:
                # Views of buffers too large to hold whole: a copy of just these bytes.
                joined = b"".join(chunks)
                if len(joined) <= self.capacity:
                    self.items[key] = joined
                    self.used += len(joined)
                return
            self._hold(chunks)
            self.items[key] = chunks
        self._evict()

    def _evict(self) -> None:
        while self.used > self.capacity and self.items:
            _, evicted = self.items.popitem(last=False)
            self._drop(evicted)

    def _drop(self, data: bytes | tuple[Buffer, ...]) -> None:
        if isinstance(data, bytes):
            self.used -= len(data)
        else:
            self._release(data)

    def _cost(self, chunks: tuple[Buffer, ...]) -> int:
        """The memory caching ``chunks`` would add: the buffers they view not held yet."""
        return sum(_size(b) for i, b in _bases(chunks).items() if i not in self._held)

    def _hold(self, chunks: tuple[Buffer, ...]) -> None:
        for i, b in _bases(chunks).items():
            held = self._held.get(i)
            if held is None:
                size = _size(b)
                self._held[i] = [1, size]
                self.used += size
            else:
                held[0] += 1

    def _release(self, chunks: tuple[Buffer, ...]) -> None:
        for i in _bases(chunks):
            held = self._held[i]
            held[0] -= 1
            if held[0] == 0:
                del self._held[i]
                self.used -= held[1]
