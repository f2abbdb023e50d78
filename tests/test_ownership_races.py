"""A partition handed over while a request was loading its log, then owned again: the log
used afterwards must be the one loaded under the new claim (found by the failpoint fault
scenario: librdkafka's offset validation got "no such epoch" and reset to the beginning, and
kafka-python got OFFSET_OUT_OF_RANGE below the high watermark, from a broker answering with a
log left over from an earlier ownership)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kafscale.broker.config import BrokerConfig
from kafscale.broker.log import FlushError, PartitionLog
from kafscale.broker.server import Broker
from kafscale.metadata import Delete, TxnOutcomeUnknown
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client


@contextlib.contextmanager
def caplog_errors() -> Iterator[list[str]]:
    """Warnings and errors logged with a traceback while the block runs."""
    logged: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.levelno >= logging.WARNING:
                logged.append(record.getMessage())

    handler = Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield logged
    finally:
        root.removeHandler(handler)


@contextlib.asynccontextmanager
async def without_ownership_rounds(
    tmp_path: Path,
) -> AsyncIterator[tuple[Broker, SqliteMetadataStore]]:
    """A started broker (and its store) whose ownership rounds are stopped: the test drives
    hand-overs and claims itself."""
    config = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
    meta = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
    broker = Broker(config, LocalObjectStore(tmp_path / "objects"), meta)
    await broker.start()
    logs = broker.logs
    assert logs._ownership is not None
    logs._ownership.cancel()
    logs._ownership = None
    try:
        yield broker, meta
    finally:
        await asyncio.wait_for(broker.stop(), 15)


def test_a_log_loaded_during_a_hand_over_is_not_reused_by_the_next_claim(tmp_path: Path) -> None:
    async def main() -> None:
        async with without_ownership_rounds(tmp_path) as (broker, meta):
            logs = broker.logs
            client = Client(broker)
            await client.create("t")
            assert (await client.produce("t", build_batch([b"a", b"b"]))).error_code == 0
            first = await logs.get("t", 0)
            epoch, hw = first.epoch, first.hw
            # Forget the loaded log (as after a restart), keeping the claim.
            logs.drop(first, FlushError(6, "test"))

            # A request loads the log while the partition is being handed over: the load
            # finishes while the hand-over's delete of the owner key is in flight.
            loading, load_done, deleting = asyncio.Event(), asyncio.Event(), asyncio.Event()
            real_load, real_txn = logs._load, meta.txn

            async def slow_load(topic: str, partition: int) -> PartitionLog:
                loading.set()
                plog = await real_load(topic, partition)
                await deleting.wait()
                return plog

            async def slow_txn(compares: Any, ops: Any) -> Any:
                if any(isinstance(op, Delete) for op in ops):
                    deleting.set()
                    await load_done.wait()
                return await real_txn(compares, ops)

            logs._load = slow_load  # type: ignore[method-assign]
            meta.txn = slow_txn  # type: ignore[method-assign]
            request = asyncio.create_task(logs.get("t", 0))
            await loading.wait()
            handing_over = asyncio.create_task(logs.release("t", 0))
            await request  # loaded under the old claim, just before the hand-over ended
            load_done.set()
            await handing_over
            logs._load = real_load  # type: ignore[method-assign]
            meta.txn = real_txn  # type: ignore[method-assign]

            # Owned again (a new claim, a new leader epoch): the log is the new claim's.
            plog = await logs.get("t", 0)
            assert plog.claim is logs.claims[("t", 0)]
            assert plog.epoch == epoch + 1, (plog.epoch, epoch)
            assert plog.epochs[-1] == (epoch + 1, hw)
            assert plog.end_offset_for_epoch(epoch) == (epoch, hw)
            assert (await client.produce("t", build_batch([b"c"]))).base_offset == hw

    asyncio.run(main())


def test_a_hand_over_whose_delete_failed_is_tried_again(tmp_path: Path) -> None:
    """The owner key's delete fails (the metadata store unreachable, or the outcome unknown,
    as when the etcd leader is killed): the key is still ours, on our live lease, and nobody
    else can claim the partition while it is. The broker must stay the owner and hand the
    partition over again, not forget it (which left the partition without a usable owner for
    as long as this broker lived)."""

    async def main() -> None:
        async with without_ownership_rounds(tmp_path) as (broker, meta):
            logs = broker.logs
            client = Client(broker)
            await client.create("t")
            assert (await client.produce("t", build_batch([b"a"]))).error_code == 0
            real_txn = meta.txn

            async def failing_txn(compares: Any, ops: Any) -> Any:
                if any(isinstance(op, Delete) for op in ops):
                    raise TxnOutcomeUnknown("test: no answer; it may or may not have applied")
                return await real_txn(compares, ops)

            meta.txn = failing_txn  # type: ignore[method-assign]
            with pytest.raises(TxnOutcomeUnknown):
                await logs.release("t", 0)
            meta.txn = real_txn  # type: ignore[method-assign]
            # Still the owner, and serving.
            claim = logs.claims.get(("t", 0))
            assert claim is not None and not claim.releasing
            assert broker.cluster.owner("t", 0) == (broker.cluster.me, claim.epoch)
            assert (await client.produce("t", build_batch([b"b"]))).base_offset == 1
            # The next attempt hands it over.
            await logs.release("t", 0)
            assert ("t", 0) not in logs.claims
            assert await meta.get(claim.owner_key) is None

    asyncio.run(main())
