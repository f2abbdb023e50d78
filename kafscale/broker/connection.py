"""A client connection's transport: request frames read straight into their own buffers.

asyncio's streams copy every byte received three times (the transport's read buffer into a
``bytes``, that into the ``StreamReader``'s buffer, then out of it for ``readexactly``) and
move what follows each read to the front of the buffer. For a broker whose requests are
mostly large produce requests that is a good part of the CPU a produced megabyte costs. Here
the transport (a :class:`asyncio.BufferedProtocol`) receives into the buffer of the frame
being read whenever enough of it is missing, so a produce request's records are written to
memory once, by the kernel; small reads (a frame's size, a small request) go through a
scratch buffer and are copied once.

:class:`FrameProtocol` is the reader (``readexactly``, as ``StreamReader``'s) and
:class:`ConnectionWriter` the writer (the part of ``StreamWriter`` the broker uses).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

from kafscale.protocol.wire import Buffer

log = logging.getLogger("kafscale.broker")

SCRATCH_BYTES = 64 * 1024
"""The scratch buffer for reads not worth receiving in place."""
DIRECT_MIN_BYTES = 16 * 1024
"""A frame read receives in place while at least this much of it is missing."""


class ConnectionWriter:
    """The writing side of a connection: what the broker uses of ``asyncio.StreamWriter``.

    What is written during one turn of the event loop goes out in one system call at its
    end: the answers a flush cycle completes at once (a producer's requests to several
    partitions) leave together, not one ``send`` each (on loopback each costs the sender the
    receiver's TCP processing and wake-up too).
    """

    def __init__(self, transport: asyncio.Transport, protocol: FrameProtocol) -> None:
        self.transport = transport
        self._protocol = protocol
        self._pending: list[Buffer] = []

    def write(self, data: Buffer) -> None:
        self.writelines((data,))

    def writelines(self, chunks: Iterable[Buffer]) -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the connection is closing")
        if not self._pending:
            self._protocol.loop.call_soon(self.flush)
        self._pending.extend(chunks)

    def flush(self) -> None:
        """Send what was written now, not at the end of this turn of the event loop."""
        chunks, self._pending = self._pending, []
        if not chunks or self.transport.is_closing():
            return
        try:
            self.transport.writelines(chunks)
        except Exception as e:  # the peer went away meanwhile: as a failed write would
            log.info("closing connection: writing an answer failed: %r", e)
            self.transport.abort()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark; raises
        ConnectionResetError once the connection is lost."""
        await self._protocol.drained()

    def close(self) -> None:
        """Close once what was written is sent."""
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    async def wait_closed(self) -> None:
        await self._protocol.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


class FrameProtocol(asyncio.BufferedProtocol):
    """One connection's reading side; ``on_connect(reader, writer)`` runs as its task.

    Bytes that arrive while no read waits for them (pipelined requests) are kept, up to
    ``limit`` bytes beyond which the transport stops reading until they are taken (TCP
    back-pressure, as ``StreamReader`` applies it).
    """

    def __init__(
        self,
        on_connect: Callable[[FrameProtocol, ConnectionWriter], Coroutine[Any, Any, None]],
        limit: int = 2**16,
    ) -> None:
        self._on_connect = on_connect
        self._limit = limit
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._over_ssl = False
        self.task: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._scratch = bytearray(SCRATCH_BYTES)
        self._surplus = bytearray()  # received, not yet read
        self._target: bytearray | None = None  # the buffer of the read waiting for data
        self._in_place = False  # the last get_buffer handed out the target's free part
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.copied = 0
        """Bytes received through the scratch buffer (copied once more): the rest were
        received in place."""

    # --- asyncio.BufferedProtocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are the same thing.
        self._transport = cast(asyncio.Transport, transport)
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        self.task = self.loop.create_task(
            self._on_connect(self, ConnectionWriter(self._transport, self))
        )
        self.task.add_done_callback(_log_failure)

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self._target
        # In place while enough of the frame is missing (and nothing received before it
        # waits to go first); else into the scratch buffer.
        self._in_place = (
            target is not None
            and not self._surplus
            and len(target) - self._filled >= DIRECT_MIN_BYTES
        )
        if self._in_place:
            assert target is not None
            return memoryview(target)[self._filled :]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        target = self._target
        if self._in_place:  # as get_buffer, just before, decided
            self._filled += nbytes
        else:
            data = memoryview(self._scratch)[:nbytes]
            self.copied += nbytes
            if target is not None and not self._surplus:
                take = min(nbytes, len(target) - self._filled)
                target[self._filled : self._filled + take] = data[:take]
                self._filled += take
                data = data[take:]
            if data:
                self._surplus += data
                if len(self._surplus) >= self._limit and not self._reading_paused:
                    self._reading_paused = True
                    assert self._transport is not None
                    self._transport.pause_reading()
        if target is not None and self._filled == len(target):
            self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # As asyncio's streams: keep the transport open, so that answers still owed can be
        # written after the client's half-close (the broker closes it when done); TLS
        # cannot (and warns when asked to).
        return not self._over_ssl

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # --- reading ------------------------------------------------------------------------------

    async def readexactly(self, n: int, timeout: float | None = None) -> bytearray:
        """The next ``n`` bytes, in a buffer of their own (request data may keep views of
        it). Raises :class:`TimeoutError` when they took longer than ``timeout`` seconds
        (as ``asyncio.wait_for`` would, without a task per read),
        :class:`asyncio.IncompleteReadError` at the end of the stream, or the error that broke
        the connection."""
        buf = bytearray(n)
        filled = 0
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                filled += self._take(buf, filled)
                if filled == n:
                    return buf
                if self._error is not None:
                    raise self._error
                if self._eof:
                    raise asyncio.IncompleteReadError(bytes(buf[:filled]), n)
                if timeout is not None and timer is None:
                    timer = self.loop.call_later(timeout, self._expire)
                self._target, self._filled = buf, filled
                self._waiter = self.loop.create_future()
                try:
                    await self._waiter
                finally:
                    filled = self._filled
                    self._target = self._waiter = None
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def _take(self, buf: bytearray, filled: int) -> int:
        """Move what was received before it was asked for into ``buf`` (from ``filled``);
        how much. Reading resumes once little enough is left."""
        take = min(len(buf) - filled, len(self._surplus))
        if take:
            buf[filled : filled + take] = memoryview(self._surplus)[:take]
            del self._surplus[:take]
        if self._reading_paused and len(self._surplus) < self._limit:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        return take

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- writing ------------------------------------------------------------------------------

    async def drained(self) -> None:
        if self.closed.done():
            raise ConnectionResetError("Connection lost")
        if not self._writing_paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("connection handler failed", exc_info=task.exception())
