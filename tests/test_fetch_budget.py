"""A Fetch over many small segments that are not cached answers in bounded time (found by
scripts/soak: after 19 broker restarts in 60 s the final reader got nothing in 60 s, since one
Fetch read every segment of the partition -- a ranged GET and an index GET each, one after
the other -- up to its byte limit, and took longer than the client's request timeout, so the
client resent it forever)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from kafscale.broker.log import READ_BUDGET_S, SegmentCache
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client, run, values

SEGMENTS = 120
GET_SECONDS = 0.02


class SlowReads(LocalObjectStore):
    """Every read takes GET_SECONDS (an object store across a network)."""

    async def get(self, key: str) -> bytes:
        await asyncio.sleep(GET_SECONDS)
        return await super().get(key)

    async def get_range(self, key: str, start: int, end: int) -> Any:
        await asyncio.sleep(GET_SECONDS)
        return await super().get_range(key, start, end)


def test_a_fetch_over_many_uncached_segments_answers_in_bounded_time(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        await client.create("t")
        for i in range(SEGMENTS):  # one flush each: one small segment each
            assert (await client.produce("t", build_batch([b"%d" % i]))).base_offset == i
        logs = client.broker.logs
        logs.cache = SegmentCache(logs.cache.capacity)  # as after a restart
        logs.indexes.clear()
        started = time.monotonic()
        part = await client.fetch("t", 0, max_bytes=1 << 20)
        elapsed = time.monotonic() - started
        got = values(part.records)
        # Every segment costs two reads: all of them would take SEGMENTS * 2 * GET_SECONDS
        # (4.8 s); the answer comes after about READ_BUDGET_S.
        assert READ_BUDGET_S < 1
        assert elapsed < 2, elapsed
        assert 1 <= len(got) < SEGMENTS
        assert got == [(i, b"%d" % i) for i in range(len(got))]  # a prefix, in order
        # The next fetches go on from there, and the whole partition is read.
        offset = len(got)
        while offset < SEGMENTS:
            part = await client.fetch("t", offset, max_bytes=1 << 20)
            more = values(part.records)
            assert more and more[0][0] == offset
            offset = more[-1][0] + 1

    run(tmp_path, scenario, objects=SlowReads(tmp_path / "objects"))
