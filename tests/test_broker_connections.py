"""Connections over real sockets: a client that goes away while its pipeline of requests is
full must not leave its connection task behind (found by the etcd-leader fault scenario, where
flushes stalled for seconds, librdkafka pipelined more than MAX_PIPELINE produce requests and
then timed out and closed its connection)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.registry import APIS
from kafscale.broker.config import BrokerConfig
from kafscale.broker.server import MAX_PIPELINE, Broker
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.framing import encode_request
from kafscale.protocol.records import build_batch
from kafscale.storage.local import LocalObjectStore
from tests.broker_harness import Client


class GatedStore(LocalObjectStore):
    """Uploads wait until the gate opens (a stalled object store or metadata store)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()

    async def put(self, key: str, data: Any) -> None:
        await self.gate.wait()
        await super().put(key, data)


def produce_frame(correlation: int, topic: str) -> bytes:
    body = ProduceRequest(
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            TopicProduceData(
                name=topic,
                partition_data=[PartitionProduceData(index=0, records=build_batch([b"v"]))],
            )
        ],
    )
    return b"".join(encode_request(APIS[0], 9, correlation, "pipeline", body))


def test_a_client_gone_with_a_full_pipeline_leaves_no_connection_behind(tmp_path: Path) -> None:
    problems: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: problems.append(str(context)))
        store = GatedStore(tmp_path / "objects")
        config = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
        broker = Broker(config, store, SqliteMetadataStore(tmp_path / "metadata.sqlite3"))
        await broker.start()
        try:
            await Client(broker).create("t")
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            # More requests than the pipeline holds: the broker stops reading at MAX_PIPELINE
            # (every one waits for the stalled flush).
            for i in range(MAX_PIPELINE + 8):
                writer.write(produce_frame(i + 1, "t"))
            await writer.drain()
            await asyncio.sleep(0.5)
            assert len(broker._connections) == 1
            writer.transport.abort()  # the client gives up (reset), the broker does not know
            await asyncio.sleep(0.1)
            store.gate.set()  # the flush completes: its answers go to a closed connection
            for _ in range(50):
                if not broker._connections:
                    break
                await asyncio.sleep(0.1)
            assert not broker._connections, "the connection task never finished"
            # A new client is served as usual.
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.write(produce_frame(1, "t"))
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            answer = await reader.readexactly(size)
            assert struct.unpack(">i", answer[:4])[0] == 1  # its correlation id
            writer.close()
        finally:
            await asyncio.wait_for(broker.stop(), 15)

    asyncio.run(main())
    assert not problems, problems
