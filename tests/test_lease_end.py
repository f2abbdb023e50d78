"""A claim still in flight when the broker's lease ends (a drain revokes it; a lost lease
expires) must write nothing: its Put names the ended lease and fails, and the request gets
NOT_LEADER_OR_FOLLOWER (or NOT_COORDINATOR), never a traceback.

Found by the 3-broker conformance tests (tests/conformance/test_cluster.py): at a SIGTERM, a
parked Fetch woken by the drain looked its partition up, claimed it (the partition had just
been handed back to this broker) and its claim's transaction met the revoked lease
(LeaseNotFound: "request failed" with a traceback). Worse, ``Cluster.close()`` set the lease
id to 0 right after revoking, and a Put with lease 0 has no lease at all: a claim that
resumed after that wrote an owner key that outlived the broker, and the partition answered
NOT_LEADER_OR_FOLLOWER forever, to every broker including this one once restarted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kafscale.broker.cluster import NotCoordinator
from kafscale.broker.config import BrokerConfig
from kafscale.broker.log import FlushError
from kafscale.broker.server import Broker
from kafscale.metadata import KeyValue
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client

NOT_LEADER_OR_FOLLOWER = 6


def new_broker(tmp_path: Path) -> tuple[Broker, SqliteMetadataStore]:
    config = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
    meta = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
    return Broker(config, LocalObjectStore(tmp_path / "objects"), meta), meta


def test_a_partition_claim_in_flight_when_the_lease_ends_writes_no_owner_key(
    tmp_path: Path,
) -> None:
    async def drained() -> None:
        broker, meta = new_broker(tmp_path)
        await broker.start()
        logs = broker.logs
        assert logs._ownership is not None  # no ownership rounds: the test claims itself
        logs._ownership.cancel()
        logs._ownership = None
        try:
            await Client(broker).create("t")
            await logs.get("t", 0)
            await logs.release("t", 0)  # free again, and ours to claim
            assert broker.cluster.owner("t", 0) is None

            # A request claims the partition; the drain revokes the lease while the claim
            # reads the partition state.
            reading, drained = asyncio.Event(), asyncio.Event()
            real_get = meta.get

            async def slow_get(key: bytes) -> KeyValue | None:
                if key == logs.topics.partition_key("t", 0):
                    reading.set()
                    await drained.wait()
                return await real_get(key)

            meta.get = slow_get  # type: ignore[method-assign]
            claim = asyncio.create_task(logs.get("t", 0))
            await reading.wait()
            await broker.cluster.close(release=True)
            drained.set()
            with pytest.raises(FlushError) as info:
                await claim
            assert info.value.code == NOT_LEADER_OR_FOLLOWER
            meta.get = real_get  # type: ignore[method-assign]
            assert await meta.get(broker.cluster.owner_key("t", 0)) is None
        finally:
            await broker.stop()

    async def restarted() -> None:
        broker, _ = new_broker(tmp_path)
        await broker.start()
        try:
            answer = await Client(broker).produce("t", build_batch([b"after"]))
            assert answer.error_code == 0
        finally:
            await broker.stop()

    asyncio.run(drained())
    asyncio.run(restarted())


def test_a_group_claim_after_the_lease_ended_writes_no_coordinator_key(tmp_path: Path) -> None:
    async def main() -> None:
        broker, meta = new_broker(tmp_path)
        await broker.start()
        cluster = broker.cluster
        try:
            registration = await meta.get(cluster.broker_key)
            assert registration is not None
            await cluster.close(release=True)
            # With etcd the drain's deletion of our registration reaches the mirror through a
            # watch, later (or never: close() ends the watch): until then we still look live.
            cluster.brokers.note(registration.key[len(cluster.brokers.prefix) :], registration)
            assert cluster.coordinator("g") is not None
            assert cluster.coordinator("g").id == cluster.me  # type: ignore[union-attr]
            with pytest.raises(NotCoordinator):
                await cluster.hold_group("g")
            assert await meta.get(cluster.group_key("g")) is None
        finally:
            await broker.stop()

    asyncio.run(main())


def test_the_lease_id_stays_after_close(tmp_path: Path) -> None:
    """Not 0 (no lease): a late write must name the ended lease."""

    async def main() -> None:
        broker, meta = new_broker(tmp_path)
        await broker.start()
        try:
            lease = broker.cluster.lease
            assert lease != 0
            await broker.cluster.close(release=True)
            assert broker.cluster.lease == lease
            assert lease not in {kv.lease for kv in await meta.range(b"/")}
        finally:
            await broker.stop()

    asyncio.run(main())
