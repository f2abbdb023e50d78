"""Malformed input over real sockets (../shared/notes/correctness-and-faults.md): each case
closes only its own connection, and the broker keeps answering a well-behaved one."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from generated.api_versions_request import ApiVersionsRequest
from generated.api_versions_response import ApiVersionsResponse
from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.fetch_response import FetchResponse
from generated.registry import APIS
from kafscale.broker.config import BrokerConfig
from kafscale.broker.server import Broker
from kafscale.metadata.sqlite import SqliteMetadataStore
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Message
from kafscale.storage.local import LocalObjectStore

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def request(key: int, version: int, body: Message, correlation: int = 1) -> bytes:
    return b"".join(encode_request(APIS[key], version, correlation, "t", body))


async def read_response(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


async def api_versions_works(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(18, 3, ApiVersionsRequest(), correlation=99))
    body = await asyncio.wait_for(read_response(reader), 5)
    assert struct.unpack_from(">i", body)[0] == 99
    assert ApiVersionsResponse.decode(body[4:], 3).error_code == 0
    writer.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the broker closed the connection (EOF) within 5 s, sending nothing."""
    data = await asyncio.wait_for(reader.read(1 << 16), 5)
    return data == b""


def run(tmp_path: Path, scenario: Callable[[Broker], Awaitable[None]], **config: object) -> None:
    async def main() -> None:
        cfg = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5, **config)  # type: ignore[arg-type]
        broker = Broker(
            cfg, LocalObjectStore(tmp_path / "o"), SqliteMetadataStore(tmp_path / "m.sqlite3")
        )
        await broker.start()
        try:
            await scenario(broker)
            await api_versions_works(broker.port)  # still serving
        finally:
            await broker.stop()

    asyncio.run(main())


TLS_CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct.pack(">i", -1), id="size--1"),
        pytest.param(struct.pack(">i", 0x7FFFFFFF), id="size-2GiB"),
        pytest.param(struct.pack(">i", 10_001), id="size-above-socket.request.max.bytes"),
        pytest.param(struct.pack(">i", 0), id="size-0"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-on-kafka-port"),
        pytest.param(TLS_CLIENT_HELLO, id="tls-client-hello"),
        pytest.param(struct.pack(">ihhi", 8, 999, 0, 1), id="unknown-api-key"),
        pytest.param(struct.pack(">ihhih", 10, 3, 99, 1, -1), id="unsupported-metadata-version"),
        pytest.param(struct.pack(">ihhih", 12, 11, 5, 1, -1) + b"\x00\x01", id="not-served-api"),
        pytest.param(
            struct.pack(">ihhihi", 14, 3, 4, 1, -1, 0x7FFFFFFF), id="huge-array-in-tiny-frame"
        ),
    ],
)
def test_malformed_frames_close_only_their_connection(tmp_path: Path, payload: bytes) -> None:
    async def scenario(broker: Broker) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(payload)
        await writer.drain()
        assert await closed(reader)
        writer.close()

    run(tmp_path, scenario, socket_request_max_bytes=10_000)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x00\x01\x00", id="truncated-body"),
        pytest.param(b"\x0effff" + b"\xff\xfe", id="non-utf8-client-software-name"),
        pytest.param(b"\xff\xff\xff\xff\xff\x01", id="overlong-varint"),
    ],
)
def test_bad_api_versions_bodies_close_the_connection(tmp_path: Path, body: bytes) -> None:
    header = struct.pack(">hhih", 18, 3, 1, 1) + b"c" + b"\x00"
    frame = struct.pack(">i", len(header + body)) + header + body

    async def scenario(broker: Broker) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(frame)
        assert await closed(reader)
        writer.close()

    run(tmp_path, scenario)


def test_disconnect_mid_frame_and_slow_loris(tmp_path: Path) -> None:
    async def scenario(broker: Broker) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(struct.pack(">i", 100) + b"\x00\x12")  # then hang up mid-frame
        writer.close()
        # One byte at a time, slower than the idle timeout allows: the broker gives up.
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        frame = request(18, 3, ApiVersionsRequest())
        for byte in frame[:6]:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert await closed(reader)
        writer.close()

    run(tmp_path, scenario, idle_timeout_ms=300)


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario(broker: Broker) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        # A long-polling fetch first, then quick ApiVersions requests behind it.
        fetch = FetchRequest(
            max_wait_ms=300,
            min_bytes=1,
            topics=[FetchTopic(topic="none", partitions=[FetchPartition(partition=0)])],
        )
        writer.write(request(1, 12, fetch, correlation=1))
        for c in range(2, 6):
            writer.write(request(18, 3, ApiVersionsRequest(), correlation=c))
        order = []
        for _ in range(5):
            body = await asyncio.wait_for(read_response(reader), 5)
            order.append(struct.unpack_from(">i", body)[0])
        assert order == [1, 2, 3, 4, 5]
        writer.close()

    run(tmp_path, scenario)


def test_fetch_response_is_capped_by_the_server(tmp_path: Path) -> None:
    async def scenario(broker: Broker) -> None:
        from kafscale.protocol.records import build_batch

        await broker.topics.create("t", 1, {})
        plog = await broker.logs.get("t", 0)
        for _ in range(6):
            await broker.logs.append(plog, build_batch([b"x" * 1000]), 1 << 20)
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        fetch = FetchRequest(
            max_bytes=0x7FFFFFFF,
            topics=[
                FetchTopic(
                    topic="t",
                    partitions=[FetchPartition(partition=0, partition_max_bytes=0x7FFFFFFF)],
                )
            ],
        )
        writer.write(request(1, 12, fetch))
        body = await asyncio.wait_for(read_response(reader), 5)
        resp = FetchResponse.decode(body[5:], 12)
        records = bytes(resp.responses[0].partitions[0].records)
        # fetch.max.bytes = 3000: two ~1.07 KB batches fit, the rest waits for the next fetch.
        assert 2000 < len(records) <= 3000
        writer.close()

    run(tmp_path, scenario, fetch_max_bytes=3000)


def test_stop_answers_in_flight_produce_and_does_not_wait_for_idle_clients(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        from generated.produce_request import (
            PartitionProduceData,
            ProduceRequest,
            TopicProduceData,
        )
        from generated.produce_response import ProduceResponse
        from kafscale.protocol.records import build_batch

        cfg = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=60_000)
        broker = Broker(
            cfg, LocalObjectStore(tmp_path / "o"), SqliteMetadataStore(tmp_path / "m.sqlite3")
        )
        await broker.start()
        await broker.topics.create("t", 1, {})
        _, idle_writer = await asyncio.open_connection("127.0.0.1", broker.port)  # idle client
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        produce = ProduceRequest(
            acks=-1,
            timeout_ms=30_000,
            topic_data=[
                TopicProduceData(
                    name="t",
                    partition_data=[PartitionProduceData(index=0, records=build_batch([b"v"]))],
                )
            ],
        )
        writer.write(request(0, 9, produce, correlation=5))
        await writer.drain()
        await asyncio.sleep(0.1)  # the produce now waits for a flush 60 s away
        started = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(broker.stop())
        body = await asyncio.wait_for(read_response(reader), 5)
        await asyncio.wait_for(stopping, 5)
        assert asyncio.get_running_loop().time() - started < 3
        resp = ProduceResponse.decode(body[5:], 9)
        part = resp.responses[0].partition_responses[0]
        assert (part.error_code, part.base_offset) == (0, 0)  # flushed on the way out
        idle_writer.close()
        writer.close()

    asyncio.run(main())


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005])
def test_stop_while_connections_are_reset_logs_no_traceback(tmp_path: Path, delay: float) -> None:
    """A stop() racing with clients that reset their connections (CI saw this): every
    connection task ends normally, so asyncio's stream callback reports nothing."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        cfg = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
        broker = Broker(
            cfg, LocalObjectStore(tmp_path / "o"), SqliteMetadataStore(tmp_path / "m.sqlite3")
        )
        await broker.start()
        writers = [(await asyncio.open_connection("127.0.0.1", broker.port))[1] for _ in range(40)]
        for writer in writers[::2]:
            writer.write(request(18, 3, ApiVersionsRequest()))
        await asyncio.sleep(0.02)
        for writer in writers:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST, as a killed client does
        await asyncio.sleep(delay)
        await asyncio.wait_for(broker.stop(), 10)
        await asyncio.sleep(0.05)
        assert not unhandled, unhandled
        assert not broker._connections

    asyncio.run(main())


def test_stop_is_not_held_up_by_a_client_that_never_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelined requests from a client that never reads fill the socket buffers and the
    response queue; stop() waits its grace period for them, then drops the connection."""
    monkeypatch.setattr("kafscale.broker.server.STOP_GRACE_S", 0.5)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        cfg = BrokerConfig(data_dir=tmp_path, listen_port=0, flush_interval_ms=5)
        broker = Broker(
            cfg, LocalObjectStore(tmp_path / "o"), SqliteMetadataStore(tmp_path / "m.sqlite3")
        )
        await broker.start()
        sock = socket.create_connection(("127.0.0.1", broker.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        one = request(18, 3, ApiVersionsRequest())
        sent = 0
        for _ in range(200):  # until the broker stops reading (its queue and buffers are full)
            try:
                sent += sock.send(one * 200)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(0)
        assert sent > 0
        started = loop.time()
        await asyncio.wait_for(broker.stop(), 10)
        assert loop.time() - started < 3
        assert not broker._connections
        assert not unhandled, unhandled
        sock.close()

    asyncio.run(main())
