"""The asyncio server: connections, pipelined requests answered in order, limits.

Per connection, a reader loop takes frames off the socket (size checked before anything is
allocated) and starts a task per request, so a client's pipelined requests (up to 5 in flight
for the Java client) are processed concurrently; a writer loop sends the responses in request
order. A global budget on request bytes in flight stops reading sockets when full. A malformed
request closes only its own connection, as Kafka does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct
from typing import Any

from generated.api_versions_response import ApiVersion, ApiVersionsResponse
from generated.registry import ADVERTISED_APIS, BROKER_APIS
from kafscale.broker import failpoints
from kafscale.broker.cluster import Cluster
from kafscale.broker.config import BrokerConfig
from kafscale.broker.coordinator import GroupCoordinator
from kafscale.broker.group import GroupSettings
from kafscale.broker.handlers import HANDLERS, RequestContext
from kafscale.broker.log import LogManager
from kafscale.broker.offsets import Offsets
from kafscale.broker.producer_ids import ProducerIds
from kafscale.broker.topics import Topics
from kafscale.metadata import MetadataStore
from kafscale.protocol import ProtocolError
from kafscale.protocol.framing import Request, decode_request, encode_response, peek_api
from kafscale.protocol.wire import Buffer
from kafscale.storage import ObjectStore

log = logging.getLogger("kafscale.broker")

_SIZE = struct.Struct(">i")
MAX_PIPELINE = 64
# How long stop() waits for connections to send the answers they owe before dropping them.
STOP_GRACE_S = 5.0
"""Requests one connection may have in flight before we stop reading it."""


class ByteBudget:
    """Bytes of requests being processed, across connections (back-pressure, not an error)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        n = min(n, self.capacity)  # one huge (but allowed) request may use the whole budget
        async with self._freed:
            await self._freed.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n

    async def release(self, n: int) -> None:
        n = min(n, self.capacity)
        async with self._freed:
            self.used -= n
            self._freed.notify_all()


class Broker:
    """One KafScale broker: stores, topic table, logs, listener."""

    def __init__(self, config: BrokerConfig, objects: ObjectStore, meta: MetadataStore) -> None:
        self.config = config
        self.objects = objects
        self.meta = meta
        self.topics = Topics(meta, config.namespace)
        self.cluster = Cluster(config, meta)
        self.logs = LogManager(config, objects, meta, self.topics)
        self.offsets = Offsets(meta, config.namespace)
        self.producer_ids = ProducerIds(meta, config.namespace)
        self.groups = GroupCoordinator(
            self.offsets,
            GroupSettings(config.group_initial_rebalance_delay_ms, config.group_max_size),
            session_timeout_bounds_ms=(
                config.group_min_session_timeout_ms,
                config.group_max_session_timeout_ms,
            ),
            offsets_retention_ms=config.offsets_retention_minutes * 60_000,
            retention_check_interval_ms=config.offsets_retention_check_interval_ms,
        )
        self.budget = ByteBudget(config.in_flight_bytes)
        self.server: asyncio.Server | None = None
        self.port = config.listen_port
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        # Only the request readers are cancelled at stop(): a cancelled connection task would
        # make asyncio's stream callback log a traceback, and its cleanup would be cut short.
        self._readers: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.topics.follow()
        self.topics.listeners.append(self._topics_gone)
        # Listen first, so that the advertised port is known when we register.
        self.server = await asyncio.start_server(
            self._connection,
            self.config.listen_host,
            self.config.listen_port,
            limit=2**16,
            start_serving=False,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        if not self.config.advertised_port:
            self.config.advertised_port = self.port
        await self.cluster.start()
        self.logs.attach(self.cluster)
        self.cluster.lost_listeners.append(self.groups.forget_all)
        self.logs.start()
        await self.groups.start()
        await self.server.start_serving()
        log.info(
            "listening on %s:%d (advertised %s:%d), data in %s",
            self.config.listen_host,
            self.port,
            *self.config.advertised,
            self.config.data_dir,
        )

    async def stop(self) -> None:
        """Stop accepting, flush what is pending, answer in-flight requests, close."""
        if self.server is not None:
            self.server.close()
        self._stopping.set()
        # Stop reading requests; each connection still sends the answers it owes (its
        # cleanup waits for them), and those produce answers need the final flush below.
        for reading in self._readers:
            reading.cancel()
        await self.groups.close()  # parked JoinGroups are answered (NOT_COORDINATOR)
        await self.logs.close()
        # Drain: revoking the lease drops our registration and every partition and group we
        # held at once, so other brokers take them over without waiting for it to expire.
        await self.cluster.close(release=True)
        await self.topics.close()
        if self._connections:
            await asyncio.wait(self._connections, timeout=STOP_GRACE_S)
        # A client that stops reading must not hold the broker up: drop what it did not take.
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(self._connections, timeout=STOP_GRACE_S)
        await self.meta.close()
        await self.objects.close()
        log.info("stopped")

    def _topics_gone(self, names: set[str]) -> None:
        for name in names:
            self.logs.forget_topic(name)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down")
        await self.stop()

    # --- connections -----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        responses: asyncio.Queue[asyncio.Task[list[Buffer] | None] | None] = asyncio.Queue(
            MAX_PIPELINE
        )
        sender = asyncio.create_task(self._send(writer, responses))
        reading = asyncio.create_task(self._read_requests(reader, responses, peer))
        self._readers.add(reading)
        try:
            await reading
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, TimeoutError) as e:
            if not isinstance(e, asyncio.IncompleteReadError) or e.partial:
                log.info("closing connection from %s: %s", peer, e)
        except asyncio.CancelledError:
            if not reading.cancelled():
                raise  # this connection task itself was cancelled: not by stop()
        finally:
            self._readers.discard(reading)
            reading.cancel()
            await responses.put(None)  # the sender finishes what was queued, then stops
            with contextlib.suppress(Exception):
                await sender
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._connections.pop(task, None)

    async def _read_requests(
        self,
        reader: asyncio.StreamReader,
        responses: asyncio.Queue[asyncio.Task[list[Buffer] | None] | None],
        peer: Any,
    ) -> None:
        idle = self.config.idle_timeout_ms / 1000
        limit = self.config.socket_request_max_bytes
        while not self._stopping.is_set():
            head = await asyncio.wait_for(reader.readexactly(4), idle)
            size = _SIZE.unpack(head)[0]
            if size < 0 or size > limit:
                raise ProtocolError(f"request size {size} is outside 0..{limit}")
            await self.budget.acquire(size)
            try:
                # A client that sends a frame one byte at a time cannot hold it open forever.
                frame = await asyncio.wait_for(reader.readexactly(size), idle)
            except BaseException:
                await self.budget.release(size)
                raise
            try:
                request = self.parse(frame)  # ProtocolError closes the connection
            except BaseException:
                await self.budget.release(size)
                raise
            host = peer[0] if isinstance(peer, tuple) else ""
            await responses.put(asyncio.create_task(self._handle(request, size, host)))

    async def respond(self, frame: bytes) -> list[Buffer] | None:
        """Answer one request frame (without its size prefix), as a connection would: the
        response frame's chunks, or None when no response is sent (acks=0). Raises
        :class:`ProtocolError` where the connection would be closed. For tests and tools."""
        return await self._dispatch(self.parse(frame))

    @staticmethod
    def parse(frame: bytes) -> Request:
        """Parse a request frame, refusing (before its body is read) an API or version this
        broker does not serve; ApiVersions is always parsed (KIP-511 fallback)."""
        api, version = peek_api(frame)
        if api is not None and api.api_key != API_VERSIONS:
            served = BROKER_APIS.get(api.api_key)
            if served is None or not served[0] <= version <= served[1]:
                # Kafka closes the connection on a request it does not serve.
                raise ProtocolError(f"{api.name} v{version} is not served")
        return decode_request(frame)

    async def _handle(self, request: Request, size: int, host: str) -> list[Buffer] | None:
        try:
            return await self._dispatch(request, host)
        finally:
            await self.budget.release(size)

    async def _dispatch(self, request: Request, client_host: str = "") -> list[Buffer] | None:
        api, version, header = request.api, request.version, request.header
        if not is_served(request):  # only ApiVersions gets here (KIP-511 fallback)
            body = ApiVersionsResponse(error_code=35, api_keys=advertised_apis())
            return encode_response(header.correlation_id, api, 0, body)
        handler = HANDLERS[api.api_key]
        assert request.body is not None
        ctx = RequestContext(self, header, version, client_host)
        response = await handler(ctx, request.body)
        if response is None:  # acks=0 produce: no response at all
            return None
        return encode_response(header.correlation_id, api, version, response)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        responses: asyncio.Queue[asyncio.Task[list[Buffer] | None] | None],
    ) -> None:
        """Write the answers in request order until the None that ends the connection. Once
        the connection is broken (a handler failed, or a write did: the client went away)
        the rest of the queue is still taken, unanswered: the connection's final put(None)
        must find room, or it would wait forever on a full queue."""
        broken = False
        while True:
            task = await responses.get()
            if task is None:
                return
            try:
                chunks = await task
            except Exception:
                if not broken:
                    log.exception("request failed")
                    broken = True
                    writer.close()
                continue
            if chunks is None or broken:
                continue
            try:
                if failpoints.armed("mid_response"):
                    data = b"".join(chunks)
                    writer.write(data[: len(data) // 2])
                    await writer.drain()
                    failpoints.hit("mid_response")
                    chunks = [data[len(data) // 2 :]]
                writer.writelines(chunks)
                await writer.drain()
            except Exception as e:  # the connection is gone (reset, aborted by stop())
                log.info("closing connection: writing an answer failed: %r", e)
                broken = True
                writer.close()


API_VERSIONS = 18


def is_served(request: Request) -> bool:
    served = BROKER_APIS.get(request.api.api_key)
    return (
        not request.unsupported
        and served is not None
        and served[0] <= request.version <= served[1]
        and request.api.api_key in HANDLERS
    )


def advertised_apis() -> list[ApiVersion]:
    """What ApiVersions advertises (protocol_specs/broker-apis.yaml): the served versions, and
    for Produce also v0-2, which are listed but refused (KAFKA-18659)."""
    return [
        ApiVersion(api_key=k, min_version=lo, max_version=hi)
        for k, (lo, hi) in ADVERTISED_APIS.items()
        if k in HANDLERS
    ]
