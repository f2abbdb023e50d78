"""Connections over real sockets: a client that goes away while its pipeline of requests is
full must not leave its connection task behind (found by the etcd-leader fault scenario, where
flushes stalled for seconds, librdkafka pipelined more than MAX_PIPELINE produce requests and
then timed out and closed its connection). Pipelining is bounded per connection by bytes in
flight and by a generous count: a client may pipeline hundreds of requests (librdkafka with
linger 1 ms sends one per millisecond, each waiting for the next flush), and a client that
never reads its answers is still held to the bound."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.fetch_response import FetchResponse
from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.produce_response import ProduceResponse
from generated.registry import APIS
from kafscale.broker import server
from kafscale.broker.config import BrokerConfig
from kafscale.broker.server import Broker
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


def fetch_frame(correlation: int, topic: str, max_bytes: int) -> bytes:
    part = FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=max_bytes)
    body = FetchRequest(
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=max_bytes,
        topics=[FetchTopic(topic=topic, partitions=[part])],
    )
    return b"".join(encode_request(APIS[1], 12, correlation, "pipeline", body))


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


async def answers_in_order(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    """The next ``n`` answers (correlation id, header and body), checked to answer requests
    1 to ``n`` in order."""
    answers = [await asyncio.wait_for(read_answer(reader), 10) for _ in range(n)]
    ids = [struct.unpack(">i", answer[:4])[0] for answer in answers]
    assert ids == list(range(1, n + 1))
    return answers


def produced(answer: bytes) -> tuple[int, int]:
    """(error code, base offset) of a one-partition Produce v9 answer."""
    body = ProduceResponse.decode(answer[5:], 9)  # v9: flexible header, no tags
    part = body.responses[0].partition_responses[0]
    return part.error_code, part.base_offset


def with_broker(
    tmp_path: Path, scenario: Callable[[Broker, GatedStore], Awaitable[None]]
) -> list[str]:
    """Run ``scenario`` against a started broker on a gated store; the loop's problems."""
    problems: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: problems.append(str(context)))
        store = GatedStore(tmp_path / "objects")
        config = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
        broker = Broker(config, store, SqliteMetadataStore(tmp_path / "metadata.sqlite3"))
        await broker.start()
        try:
            await scenario(broker, store)
        finally:
            await asyncio.wait_for(broker.stop(), 15)

    asyncio.run(main())
    return problems


def pipeline_of(broker: Broker) -> server._Pipeline:
    (pipeline,) = broker._pipelines.values()
    return pipeline


async def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check()


def test_a_client_pipelining_hundreds_of_requests_gets_every_answer_in_order(
    tmp_path: Path,
) -> None:
    n = 1000  # far more than the old cap of 64 requests per connection

    async def scenario(broker: Broker, store: GatedStore) -> None:
        store.gate.set()
        client = Client(broker)
        await client.create("t")
        # Load the partition first: requests that arrive while a partition is first loaded
        # may be appended out of order (LogManager.get), which is not what this test is about.
        assert (await client.produce("t", build_batch([b"first"]))).base_offset == 0
        store.gate.clear()  # every produce now waits for the stalled flush
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        for i in range(n):
            writer.write(produce_frame(i + 1, "t"))
        await writer.drain()
        # The broker reads them all while the flush is stalled: nothing holds them back.
        await eventually(lambda: pipeline_of(broker).count == n)
        store.gate.set()
        answers = await answers_in_order(reader, n)
        offsets = [produced(answer) for answer in answers]
        assert offsets == [(0, i + 1) for i in range(n)]
        await eventually(lambda: pipeline_of(broker).count == 0)
        assert pipeline_of(broker).bytes == 0
        writer.close()

    problems = with_broker(tmp_path, scenario)
    assert not problems, problems


def test_pipelined_produces_to_a_partition_not_loaded_yet_keep_their_order(
    tmp_path: Path,
) -> None:
    """Kafka appends one connection's produce requests in the order they were sent. The first
    requests for a partition wait while it is loaded (or claimed); one that arrives as the load
    ends must not overtake them (it found the log loaded and appended at once: 63 of the first
    65 pipelined requests got shifted offsets)."""
    n = 200

    async def scenario(broker: Broker, store: GatedStore) -> None:
        store.gate.set()
        client = Client(broker)
        await client.create("t")
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        for i in range(n):
            writer.write(produce_frame(i + 1, "t"))
            if i % 10 == 0:
                await writer.drain()
                await asyncio.sleep(0)  # let some arrive while the partition loads
        await writer.drain()
        offsets = [produced(answer) for answer in await answers_in_order(reader, n)]
        assert offsets == [(0, i) for i in range(n)]
        writer.close()

    problems = with_broker(tmp_path, scenario)
    assert not problems, problems


def test_a_client_that_never_reads_its_answers_is_held_to_the_byte_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 1024 * 1024
    monkeypatch.setattr(server, "CONNECTION_IN_FLIGHT_BYTES", cap)
    value = b"x" * 100_000
    sent = 400  # 400 answers of 100 kB: 40 MB if nothing held the client back

    async def scenario(broker: Broker, store: GatedStore) -> None:
        store.gate.set()
        client = Client(broker)
        await client.create("t")
        assert (await client.produce("t", build_batch([value]))).error_code == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        frames = b"".join(fetch_frame(i + 1, "t", 1 << 20) for i in range(sent))
        writer.write(frames)  # and never read: the broker's writes fill the socket buffers
        pipeline = pipeline_of(broker)

        def answered() -> bool:  # answers arrive (we take none)
            return bool(reader._buffer)  # type: ignore[attr-defined]

        await eventually(answered)
        await asyncio.sleep(0.5)
        # It stopped reading: each Fetch reserves cap / 2, so two or three are in flight; the
        # rest of what we wrote waits in the socket buffers, and so do some answers.
        assert 0 < pipeline.count <= 3, pipeline.count
        # In flight: below the bound, plus at most one Fetch's reserve (cap / 2) and one answer.
        assert 0 < pipeline.peak_bytes <= cap + cap // 2 + 2 * len(value), pipeline.peak_bytes
        assert pipeline.bytes <= cap + cap // 2 + 2 * len(value)
        # Reading the answers lets it go on, and every one comes in order.
        answers = await answers_in_order(reader, sent)
        body = FetchResponse.decode(answers[0][5:], 12)  # v12: flexible header, no tags
        records = body.responses[0].partitions[0].records
        assert records is not None and bytes(value) in bytes(records)
        assert pipeline.peak_bytes <= cap + cap // 2 + 2 * len(value), pipeline.peak_bytes
        writer.close()

    problems = with_broker(tmp_path, scenario)
    assert not problems, problems


def test_a_flood_of_tiny_requests_is_held_to_the_count_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_PIPELINE", 100)

    async def scenario(broker: Broker, store: GatedStore) -> None:
        store.gate.set()
        await Client(broker).create("t")
        store.gate.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        for i in range(300):
            writer.write(produce_frame(i + 1, "t"))
        await writer.drain()
        await eventually(lambda: pipeline_of(broker).count == 100)
        await asyncio.sleep(0.3)
        assert pipeline_of(broker).peak_count == 100
        store.gate.set()
        await answers_in_order(reader, 300)
        assert pipeline_of(broker).peak_count == 100
        writer.close()

    problems = with_broker(tmp_path, scenario)
    assert not problems, problems


def test_a_client_gone_with_a_full_pipeline_leaves_no_connection_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_PIPELINE", 64)  # the count bound fills quickly

    async def scenario(broker: Broker, store: GatedStore) -> None:
        await Client(broker).create("t")
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        # More requests than the pipeline holds: the broker stops reading at MAX_PIPELINE
        # (every one waits for the stalled flush).
        for i in range(server.MAX_PIPELINE + 8):
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

    problems = with_broker(tmp_path, scenario)
    assert not problems, problems


def test_the_broker_opens_its_object_store_at_start(tmp_path: Path) -> None:
    """An object store with an ``open`` (S3: its client, ~0.25 s to make) is opened before the
    broker listens, not on the first produce."""

    class Opened(LocalObjectStore):
        opened = 0

        async def open(self) -> None:
            self.opened += 1

    async def main() -> None:
        store = Opened(tmp_path / "objects")
        config = BrokerConfig(data_dir=tmp_path, listen_port=0)
        broker = Broker(config, store, SqliteMetadataStore(tmp_path / "metadata.sqlite3"))
        await broker.start()
        try:
            assert store.opened == 1
        finally:
            await asyncio.wait_for(broker.stop(), 15)

    asyncio.run(main())
