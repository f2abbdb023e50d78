"""kafscale.broker.connection: frames received into their own buffers, as asyncio's streams
would deliver them (order, pipelining, back-pressure, the end of the stream)."""

from __future__ import annotations

import asyncio
import os
import random
import struct

import pytest
import uvloop

from kafscale.broker.connection import (
    DIRECT_MIN_BYTES,
    SCRATCH_BYTES,
    ConnectionWriter,
    FrameProtocol,
)

_SIZE = struct.Struct(">i")


class FakeTransport(asyncio.Transport):
    """Records what the protocol asks of its transport (unit tests only)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.written: list[bytes] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def deliver(protocol: FrameProtocol, data: bytes, step: int) -> None:
    """Feed ``data`` as the transport would: ask for a buffer, fill part of it."""
    pos = 0
    while pos < len(data):
        buf = protocol.get_buffer(-1)
        n = min(len(buf), step, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        protocol.buffer_updated(n)
        pos += n


async def _connected(limit: int = 2**16) -> tuple[FrameProtocol, FakeTransport]:
    started = asyncio.Event()

    async def on_connect(reader: FrameProtocol, writer: ConnectionWriter) -> None:
        started.set()

    protocol = FrameProtocol(on_connect, limit)
    transport = FakeTransport()
    protocol.connection_made(transport)
    await started.wait()
    return protocol, transport


@pytest.mark.parametrize("step", [1, 7, 4096, 200_000])
def test_frames_arrive_whole_and_in_order_however_the_bytes_are_split(step: int) -> None:
    rng = random.Random(step)
    sizes = [0, 1, 5, DIRECT_MIN_BYTES - 1, DIRECT_MIN_BYTES, 100_000, 1_000_003, 3]
    frames = [rng.randbytes(n) for n in sizes]
    stream = b"".join(_SIZE.pack(len(f)) + f for f in frames)

    async def scenario() -> None:
        protocol, _ = await _connected(limit=2**30)
        deliver(protocol, stream, step)  # all of it before anyone reads (pipelined)
        for frame in frames:
            size = _SIZE.unpack(await protocol.readexactly(4))[0]
            assert bytes(await protocol.readexactly(size)) == frame

    asyncio.run(scenario())


def test_a_large_frame_read_while_it_arrives_is_received_in_place() -> None:
    frame = os.urandom(1_000_000)

    async def scenario() -> None:
        protocol, _ = await _connected()
        reading = asyncio.ensure_future(protocol.readexactly(len(frame)))
        await asyncio.sleep(0)  # the read waits: the frame's buffer is handed out
        deliver(protocol, frame, 65_536)
        assert bytes(await reading) == frame
        # Only the tail shorter than DIRECT_MIN_BYTES went through the scratch buffer.
        assert protocol.copied < DIRECT_MIN_BYTES, protocol.copied

    asyncio.run(scenario())


def test_reading_pauses_at_the_limit_and_resumes_once_taken() -> None:
    limit = 10_000

    async def scenario() -> None:
        protocol, transport = await _connected(limit)
        deliver(protocol, b"a" * (limit - 1), SCRATCH_BYTES)
        assert not transport.paused
        deliver(protocol, b"b" * 5, SCRATCH_BYTES)
        assert transport.paused  # nobody reads: TCP back-pressure
        assert bytes(await protocol.readexactly(limit - 1)) == b"a" * (limit - 1)
        assert not transport.paused
        assert bytes(await protocol.readexactly(5)) == b"bbbbb"

    asyncio.run(scenario())


def test_the_end_of_the_stream_mid_frame_is_an_incomplete_read_with_what_came() -> None:
    async def scenario() -> None:
        protocol, _ = await _connected()
        reading = asyncio.ensure_future(protocol.readexactly(10))
        await asyncio.sleep(0)
        deliver(protocol, b"abc", 3)
        assert protocol.eof_received() is True  # half-close: answers can still be written
        with pytest.raises(asyncio.IncompleteReadError) as e:
            await reading
        assert e.value.partial == b"abc" and e.value.expected == 10
        with pytest.raises(asyncio.IncompleteReadError) as e:  # and every read after it
            await protocol.readexactly(1)
        assert e.value.partial == b""

    asyncio.run(scenario())


def test_a_lost_connection_fails_the_waiting_read_and_drain() -> None:
    async def scenario() -> None:
        protocol, transport = await _connected()
        writer = ConnectionWriter(transport, protocol)
        protocol.pause_writing()
        draining = asyncio.ensure_future(writer.drain())
        reading = asyncio.ensure_future(protocol.readexactly(4))
        await asyncio.sleep(0)
        protocol.connection_lost(ConnectionResetError("reset by peer"))
        with pytest.raises(ConnectionResetError, match="reset by peer"):
            await reading
        with pytest.raises(ConnectionResetError):
            await draining
        await writer.wait_closed()  # returns once lost

    asyncio.run(scenario())


def test_drain_waits_while_the_transport_is_over_its_high_water_mark() -> None:
    async def scenario() -> None:
        protocol, transport = await _connected()
        writer = ConnectionWriter(transport, protocol)
        await writer.drain()  # not paused: at once
        protocol.pause_writing()
        draining = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.01)
        assert not draining.done()
        protocol.resume_writing()
        await asyncio.wait_for(draining, 1)

    asyncio.run(scenario())


def test_over_real_sockets_on_uvloop_a_pipelined_burst_echoes_back() -> None:
    """The protocol behind a real uvloop server: a client sends frames of many sizes in one
    burst; the server echoes each frame it reads, the client gets them back in order."""
    rng = random.Random(7)
    frames = [rng.randbytes(rng.choice([0, 3, 900, 20_000, 70_000, 1_500_000])) for _ in range(40)]

    async def serve(reader: FrameProtocol, writer: ConnectionWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(_SIZE.unpack(head)[0])
                writer.writelines([head, body])
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FrameProtocol(serve), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(_SIZE.pack(len(f)) + f for f in frames))
        await writer.drain()
        for frame in frames:
            size = _SIZE.unpack(await reader.readexactly(4))[0]
            assert await reader.readexactly(size) == frame
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    uvloop.run(scenario())


def test_a_read_that_takes_longer_than_its_timeout_fails() -> None:
    async def scenario() -> None:
        protocol, _ = await _connected()
        with pytest.raises(TimeoutError):
            await protocol.readexactly(4, timeout=0.02)  # nothing came
        deliver(protocol, b"ab", 2)
        with pytest.raises(TimeoutError):
            await protocol.readexactly(4, timeout=0.02)  # a frame one byte at a time
        # In time (or already there): no timer gets in the way.
        deliver(protocol, b"cdef", 4)
        assert bytes(await protocol.readexactly(4, timeout=0.02)) == b"cdef"

    asyncio.run(scenario())


def test_what_is_written_in_one_turn_of_the_loop_goes_out_in_one_write() -> None:
    async def scenario() -> None:
        protocol, transport = await _connected()
        writer = ConnectionWriter(transport, protocol)
        writer.writelines([b"a", b"b"])
        writer.write(b"c")
        assert transport.written == []  # not yet: at the end of this turn
        await asyncio.sleep(0)
        assert transport.written == [b"abc"]
        writer.write(b"d")
        writer.flush()  # at once when asked
        assert transport.written == [b"abc", b"d"]
        writer.write(b"e")
        writer.close()  # what was written goes before the close
        assert transport.written == [b"abc", b"d", b"e"] and transport.closing
        with pytest.raises(ConnectionResetError):
            writer.write(b"f")

    asyncio.run(scenario())
