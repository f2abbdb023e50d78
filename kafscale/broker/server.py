"""The asyncio server: connections, pipelined requests answered in order, limits.

Per connection, a reader loop takes frames off the socket (size checked before anything is
allocated) and starts a task per request; each request starts once the earlier requests whose
effects it could observe are done (:mod:`kafscale.broker.ordering`: Kafka's one request at a
time, except that reads overlap reads and produces overlap produces); a writer loop sends the
responses in request order. Two bounds stop reading a
socket: per connection, the bytes in flight (requests read and not yet answered, their answers,
and a reserve for each Fetch's answer; :data:`CONNECTION_IN_FLIGHT_BYTES`) and their number
(:data:`MAX_PIPELINE`, generous: a flood of tiny requests costs a task each); across
connections, a budget on request bytes being processed. librdkafka pipelines without limit
(with linger 1 ms, one small ProduceRequest per millisecond, each waiting for the next group
commit), so a count of a few dozen would cap what one flush can acknowledge. A malformed request
closes only its own connection, as Kafka does; a request whose handler fails is answered with
the API's error response (:mod:`kafscale.broker.error_response`) and the connection stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
import struct
import time
from collections.abc import Awaitable
from typing import Any

from generated.api_versions_response import ApiVersion, ApiVersionsResponse
from generated.errors import ErrorCode
from generated.registry import ADVERTISED_APIS, BROKER_APIS
from kafscale.broker import diagnostics, failpoints
from kafscale.broker.budget import ByteBudget
from kafscale.broker.cluster import Cluster
from kafscale.broker.compaction import Compactor
from kafscale.broker.config import BrokerConfig
from kafscale.broker.connection import ConnectionWriter, FrameProtocol
from kafscale.broker.coordinator import GroupCoordinator
from kafscale.broker.error_response import error_response
from kafscale.broker.group import GroupSettings
from kafscale.broker.handlers import HANDLERS, RequestContext
from kafscale.broker.health import HealthThresholds, ObjectStoreHealth, Readiness
from kafscale.broker.http import HttpServer
from kafscale.broker.instrumented import InstrumentedMetadataStore, InstrumentedObjectStore
from kafscale.broker.lag import ConsumerLag, PartitionStates
from kafscale.broker.log import LogManager
from kafscale.broker.metrics import BrokerCollector, BrokerMetrics, LagCollector
from kafscale.broker.offsets import Offsets
from kafscale.broker.ordering import ConnectionOrder
from kafscale.broker.producer_ids import ProducerIds
from kafscale.broker.security.acl import AclStore
from kafscale.broker.security.authorizer import Authorizer
from kafscale.broker.security.credentials import CredentialStore
from kafscale.broker.security.listeners import Listener
from kafscale.broker.security.rules import AuthorizationClose, authorized_handle
from kafscale.broker.security.sasl import Authenticator, Session, normalize_host
from kafscale.broker.security.tls import TlsServer, TlsSettings
from kafscale.broker.topics import Topics
from kafscale.broker.transactions import TransactionCoordinator
from kafscale.broker.txn_markers import MarkerWriter
from kafscale.metadata import MetadataStore, MetadataUnavailable
from kafscale.protocol import ProtocolError
from kafscale.protocol.framing import Request, decode_request, encode_response, peek_api
from kafscale.protocol.wire import Buffer
from kafscale.storage import ObjectStore

log = logging.getLogger("kafscale.broker")

_SIZE = struct.Struct(">i")
MAX_PIPELINE = 4096
"""Requests one connection may have in flight (read, answer not yet sent) before we stop
reading it. Generous: the byte bound below is the one that normally applies; this one keeps a
flood of tiny requests (a task and an answer each) from growing memory without limit."""
CONNECTION_IN_FLIGHT_BYTES = 64 * 1024 * 1024
"""Bytes one connection may have in flight before we stop reading it: its requests from being
read until their answers are sent, plus each answer's size (a Fetch reserves its limit while
it runs, at most half of this). A single request larger than this is read when nothing else
of its connection is in flight."""
FETCH = 1
# How long stop() waits for connections to send the answers they owe before dropping them.
STOP_GRACE_S = 5.0


class _Pipeline:
    """One connection's requests in flight (read, answer not yet sent): count and bytes."""

    __slots__ = ("_room", "bytes", "count", "max_bytes", "max_count", "peak_bytes", "peak_count")

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self.bytes = 0
        self.count = 0
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.peak_bytes = 0
        self.peak_count = 0
        self._room = asyncio.Event()

    async def admit(self, n: int) -> None:
        """Wait until a request of ``n`` bytes fits (always, when nothing is in flight)."""
        while self.count and (self.count >= self.max_count or self.bytes + n > self.max_bytes):
            self._room.clear()
            await self._room.wait()
        self.count += 1
        self.grow(n)

    def grow(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.peak_bytes:
            self.peak_bytes = self.bytes
        if self.count > self.peak_count:
            self.peak_count = self.count

    def done(self, n: int) -> None:
        """A request of (by now) ``n`` bytes is answered, or dropped."""
        self.bytes -= n
        self.count -= 1
        self._room.set()


class _InFlight:
    """A request being answered: its task, and what it holds of its connection's bound."""

    __slots__ = ("charge", "task")

    def __init__(self, charge: int) -> None:
        self.charge = charge
        self.task: asyncio.Task[list[Buffer] | None] | None = None


class Broker:
    """One KafScale broker: stores, topic table, logs, listener."""

    def __init__(self, config: BrokerConfig, objects: ObjectStore, meta: MetadataStore) -> None:
        self.config = config
        self.metrics = BrokerMetrics()
        self.health = ObjectStoreHealth(HealthThresholds.from_config(config))
        # Every component gets the instrumented stores: each request is counted and timed
        # wherever it comes from (and feeds the object store's health).
        self.objects: ObjectStore = InstrumentedObjectStore(objects, self.metrics, self.health)
        self.meta: MetadataStore = InstrumentedMetadataStore(meta, self.metrics)
        objects, meta = self.objects, self.meta
        self.topics = Topics(meta, config.namespace, config)
        self.cluster = Cluster(config, meta)
        self.logs = LogManager(config, objects, meta, self.topics)
        self.compactor = Compactor(self.logs)
        self.offsets = Offsets(meta, config.namespace)
        self.producer_ids = ProducerIds(meta, config.namespace)
        self.markers = MarkerWriter(meta, config.namespace, self.logs)
        self.transactions = TransactionCoordinator(
            config,
            meta,
            self.cluster,
            self.topics,
            self.offsets,
            self.producer_ids,
            self.markers.mirror,
            self.logs,
        )
        self.markers.listeners.append(self.transactions.markers_changed)
        self.transactions.write_marker = self.markers.write_now
        self.logs.verify_txn = self.transactions.verify
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
        self.listeners: list[Listener] = config.listener_list()
        self.credentials = CredentialStore(meta, config.namespace)
        self.acls = AclStore(meta, config.namespace)
        self.authorizer: Authorizer | None = None
        """The ACL authorizer (``authorizer.class.name`` set), else None: everything allowed."""
        if config.authorizer_class_name:
            self.authorizer = Authorizer(
                self.acls, config.super_users, config.allow_everyone_if_no_acl_found
            )
        mechanisms = [m.strip() for m in config.sasl_enabled_mechanisms.split(",") if m.strip()]
        self.authenticator = Authenticator(
            self.credentials,
            mechanisms,
            config.connections_max_reauth_ms,
            config.connection_failed_authentication_delay_ms,
        )
        self.tls: dict[str, TlsServer] = {}
        """The TLS context of each SSL/SASL_SSL listener (reloadable)."""
        self.servers: dict[str, asyncio.Server] = {}
        self.ports: dict[str, int] = {}
        """Each listener's bound port."""
        self.endpoints: dict[str, tuple[str, int]] = {}
        """Each listener's advertised (host, port)."""
        self.logs.cycle_listeners.append(self.metrics.flush_cycle)
        self.groups.transition_listeners.append(self.metrics.group_transition)
        self.partition_states = PartitionStates(self)
        self.lag = ConsumerLag(self, self.partition_states)
        self.offsets.listeners.append(self.lag.offsets_changed)
        self.readiness = Readiness(self, self.health)
        self.metrics.register(BrokerCollector(self))
        self.metrics.register_lag(LagCollector(self))
        self.http: HttpServer | None = None
        self.http_port: int | None = None
        """The HTTP port once started (None: no HTTP port)."""
        self.server: asyncio.Server | None = None
        self.port = config.listen_port
        self._connections: dict[asyncio.Task[None], ConnectionWriter] = {}
        self._pipelines: dict[asyncio.Task[None], _Pipeline] = {}
        # Only the request readers are cancelled at stop(): a cancelled connection task
        # would cut its cleanup short (the answers it still owes, closing its writer).
        self._readers: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def draining(self) -> bool:
        """Shutting down (SIGTERM): no longer ready, handing its partitions over."""
        return self._stopping.is_set()

    async def start(self, *, freeze_heap: bool = False) -> None:
        """Start every part, then serve the listeners. ``freeze_heap`` (``kafscale serve``,
        a process of its own): collect and freeze what exists just before serving (see
        :meth:`serve_forever`)."""
        # HTTP first: /healthz answers while the broker starts, /readyz says why it is not
        # ready yet, and a taken port fails the start before anything is claimed.
        address = self.config.http_address
        if address is not None:
            self.http = HttpServer(self, *address)
            self.http_port = await self.http.start()
        # The object store's client now, not on the first produce (S3: about 0.25 s).
        open_store = getattr(self.objects, "open", None)
        if open_store is not None:
            await open_store()
        await self.topics.follow()
        self.topics.listeners.append(self._topics_gone)
        await self.credentials.follow()
        if self.authorizer is not None:
            await self.acls.start()
        # Listen first, so that the advertised ports are known when we register.
        await self._listen()
        await self.cluster.start()
        self.logs.attach(self.cluster)
        self.cluster.lost_listeners.append(self.groups.forget_all)
        self.logs.start()
        self.compactor.start()
        self.logs.janitor.start()
        await self.groups.start()
        await self.markers.start()
        await self.transactions.start()
        if freeze_heap:
            # Before serving, so that no first request waits out the collection (60 ms).
            gc.collect()
            gc.freeze()
        for server in self.servers.values():
            await server.start_serving()
        for tls in self.tls.values():
            tls.start()
        for listener in self.listeners:
            log.info(
                "listening on %s://%s:%d (advertised %s:%d)",
                listener.name,
                listener.bind_host,
                self.ports[listener.name],
                *self.endpoints[listener.name],
            )
        log.info("data in %s", self.config.data_dir)

    def _tls_settings(self, listener: Listener) -> TlsSettings:
        c = self.config
        return TlsSettings(
            keystore_location=c.ssl_keystore_location,
            keystore_certificate_chain=c.ssl_keystore_certificate_chain,
            keystore_key=c.ssl_keystore_key,
            key_password=c.ssl_key_password,
            truststore_location=c.ssl_truststore_location,
            truststore_certificates=c.ssl_truststore_certificates,
            # As Kafka (KIP-684): a SASL_SSL listener authenticates with SASL, asking no
            # client certificate.
            client_auth=c.ssl_client_auth if listener.protocol == "SSL" else "none",
            principal_mapping_rules=c.ssl_principal_mapping_rules,
        )

    async def _listen(self) -> None:
        """Bind every listener (not serving yet) and work out what each advertises."""
        advertised = self.config.advertised_listener_map()
        for listener in self.listeners:
            context = None
            if listener.tls:
                tls = self.tls[listener.name] = TlsServer(
                    listener.name, self._tls_settings(listener)
                )
                context = tls.context
            # TLS delivers data in records of up to 16 KiB through a protocol whose pause and
            # resume are costly: a larger bound keeps a produce request's bytes flowing
            # without pausing the transport every 64 KiB.
            limit = 2**20 if listener.tls else 2**16
            connect = functools.partial(self._connection, listener=listener)
            server = await asyncio.get_running_loop().create_server(
                functools.partial(FrameProtocol, connect, limit),
                listener.bind_host,
                listener.port,
                ssl=context,
                ssl_handshake_timeout=10.0 if context is not None else None,
                start_serving=False,
            )
            self.servers[listener.name] = server
            port = server.sockets[0].getsockname()[1]
            self.ports[listener.name] = port
            if listener.name in advertised:
                self.endpoints[listener.name] = advertised[listener.name]
            elif not self.config.listeners:  # --listen / --advertised
                if not self.config.advertised_port:
                    self.config.advertised_port = port
                self.endpoints[listener.name] = self.config.advertised
            else:
                host = listener.host.removeprefix("[").removesuffix("]")
                if host in ("", "0.0.0.0", "::"):
                    host = self.config.advertised_host or socket.getfqdn()
                self.endpoints[listener.name] = (host, port)
        first = self.listeners[0].name
        self.server = self.servers[first]
        self.port = self.ports[first]
        if self.config.listeners:  # the registration's plain host/port: the first listener
            self.config.advertised_host, self.config.advertised_port = self.endpoints[first]
        self.cluster.endpoints = dict(self.endpoints)

    def reload_tls(self) -> None:
        """Load every TLS listener's certificates again (SIGHUP)."""
        for tls in self.tls.values():
            tls.reload()

    async def stop(self) -> None:
        """Stop accepting, flush what is pending, answer in-flight requests, close."""
        for server in self.servers.values():
            server.close()
        if self.server is not None:
            self.server.close()
        for tls in self.tls.values():
            await tls.close()
        self._stopping.set()
        # Stop reading requests; each connection still sends the answers it owes (its
        # cleanup waits for them), and those produce answers need the final flush below.
        for reading in self._readers:
            reading.cancel()
        await self.groups.close()  # parked JoinGroups are answered (NOT_COORDINATOR)
        await self.transactions.close()
        await self.markers.close()
        await self.compactor.close()
        await self.logs.janitor.close()
        await self.logs.close()
        # Drain: revoking the lease drops our registration and every partition and group we
        # held at once, so other brokers take them over without waiting for it to expire.
        await self.cluster.close(release=True)
        await self.topics.close()
        await self.credentials.close()
        await self.acls.close()
        if self._connections:
            await asyncio.wait(self._connections, timeout=STOP_GRACE_S)
        # A client that stops reading must not hold the broker up: drop what it did not take.
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(self._connections, timeout=STOP_GRACE_S)
        await self.meta.close()
        await self.objects.close()
        if self.http is not None:  # last: /readyz answers "draining" until the end
            await self.http.close()
        log.info("stopped")

    def _topics_gone(self, names: set[str]) -> None:
        for name in names:
            self.logs.forget_topic(name)
            self.metrics.forget_topic(name)
            self.partition_states.forget(name)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        loop.add_signal_handler(signal.SIGUSR1, diagnostics.dump)
        # What exists once started (the clients of the stores with botocore's service models,
        # the generated codecs, the topic table: hundreds of thousands of objects) lives as
        # long as the process: frozen out of the collector's sight, a full collection takes a
        # few milliseconds instead of 75-90 ms every second or so of steady produce, each of
        # them an event-loop stall every in-flight request waited out (the paced p99).
        await self.start(freeze_heap=True)
        await stop.wait()
        log.info("shutting down")
        await self.stop()

    # --- connections -----------------------------------------------------------------------

    async def _connection(
        self,
        reader: FrameProtocol,
        writer: ConnectionWriter,
        listener: Listener | None = None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        listener = listener or self.listeners[0]
        session = Session(
            listener,
            normalize_host(peer[0] if isinstance(peer, tuple) else ""),
            authenticated=not listener.sasl,
        )
        if listener.protocol == "SSL":
            try:
                session.principal = self.tls[listener.name].principal(
                    writer.get_extra_info("ssl_object")
                )
            except ValueError as e:  # no ssl.principal.mapping.rules rule matches
                log.info("closing connection from %s: %s", peer, e)
                self._connections.pop(task, None)
                writer.transport.abort()
                return
        # Not bounded itself: the pipeline's bounds are checked before a request is queued.
        responses: asyncio.Queue[_InFlight | None] = asyncio.Queue()
        pipeline = _Pipeline(CONNECTION_IN_FLIGHT_BYTES, MAX_PIPELINE)
        self._pipelines[task] = pipeline
        sender = asyncio.create_task(self._send(writer, responses, pipeline, session))
        reading = asyncio.create_task(
            self._read_requests(reader, responses, pipeline, peer, writer, session)
        )
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
            responses.put_nowait(None)  # the sender finishes what was queued, then stops
            with contextlib.suppress(Exception):
                await sender
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._connections.pop(task, None)
            self._pipelines.pop(task, None)

    async def _read_requests(
        self,
        reader: FrameProtocol,
        responses: asyncio.Queue[_InFlight | None],
        pipeline: _Pipeline,
        peer: Any,
        writer: ConnectionWriter | None = None,
        session: Session | None = None,
    ) -> None:
        idle = self.config.idle_timeout_ms / 1000
        limit = self.config.socket_request_max_bytes
        host = peer[0] if isinstance(peer, tuple) else ""
        order = ConnectionOrder()
        if session is not None and not session.authenticated:
            assert writer is not None
            await self._authenticate(reader, writer, session)
        while not self._stopping.is_set():
            head = await reader.readexactly(4, idle)
            size = _SIZE.unpack(head)[0]
            if size < 0 or size > limit:
                raise ProtocolError(f"request size {size} is outside 0..{limit}")
            await pipeline.admit(size)
            try:
                await self.budget.acquire(size)
            except BaseException:
                pipeline.done(size)
                raise
            try:
                # A client that sends a frame one byte at a time cannot hold it open forever.
                frame = await reader.readexactly(size, idle)
                if session is not None and session.expired and session.exchange is None:
                    # KIP-368: past the session's lifetime only a re-authentication is served.
                    if size < 2 or _KEY.unpack_from(frame)[0] != SASL_HANDSHAKE:
                        raise ProtocolError("the SASL session expired (connections.max.reauth.ms)")
                request = self.parse(frame)  # ProtocolError closes the connection
            except BaseException:
                await self.budget.release(size)
                pipeline.done(size)
                raise
            flight = _InFlight(size)
            if request.api.api_key == FETCH and request.body is not None:
                # Its answer may be up to the Fetch's limit: reserved while it runs, so that
                # pipelined Fetches cannot build more answers at once than the bound allows.
                asked = getattr(request.body, "max_bytes", 0)
                reserve = min(
                    asked if asked > 0 else 2**31 - 1,
                    self.config.fetch_max_bytes,
                    pipeline.max_bytes // 2,
                )
                flight.charge += reserve
                pipeline.grow(reserve)
            before = order.admit(request.api.api_key)
            flight.task = asyncio.create_task(
                self._handle(request, size, host, flight, pipeline, before, session)
            )
            order.started(flight.task)
            responses.put_nowait(flight)
            # A pipelined burst is read without waiting (its bytes are already here): let
            # the other connections and the requests just started run between two requests,
            # or one client's thousands of heartbeats hold every other client up.
            await asyncio.sleep(0)

    async def _authenticate(
        self, reader: FrameProtocol, writer: ConnectionWriter, session: Session
    ) -> None:
        """Serve a SASL listener's connection until it has authenticated, one request at a
        time (:mod:`kafscale.broker.security.sasl`): ApiVersions and SaslHandshake, then
        SaslAuthenticate (handshake v1) or raw tokens (v0). Anything else, a frame above
        ``sasl.server.max.receive.size`` or a failed exchange closes the connection (the
        failure answered first, after the failure delay). Raises ProtocolError to close."""
        idle = self.config.idle_timeout_ms / 1000
        limit = self.config.sasl_server_max_receive_size
        while not session.authenticated:
            head = await reader.readexactly(4, idle)
            size = _SIZE.unpack(head)[0]
            if size < 0 or size > limit:
                raise ProtocolError(f"a {size}-byte frame before authentication (limit {limit})")
            # Small, and a token the mechanisms keep and compare: bytes.
            frame = bytes(await reader.readexactly(size, idle))
            if session.handshake_version == 0:  # raw tokens, no Kafka header
                code, message, token, _ = await self.authenticator.authenticate(session, frame)
                if code:
                    await asyncio.sleep(session.failure_delay)
                    raise ProtocolError(f"SASL authentication failed: {message}")
                writer.write(_SIZE.pack(len(token)) + token)
                await writer.drain()
                continue
            api, _ = peek_api(frame)
            key = api.api_key if api is not None else None
            if session.handshake_version is None:
                allowed = {SASL_HANDSHAKE} | (
                    set() if session.api_versions_answered else {API_VERSIONS}
                )
            else:
                allowed = {SASL_AUTHENTICATE}
            request = self.parse(frame)  # ProtocolError closes the connection
            if key not in allowed:
                if session.handshake_version is None or request.body is None:
                    raise ProtocolError(
                        f"{api.name if api else 'an unknown API'} before SASL authentication"
                    )
                # After SaslHandshake v1 Kafka answers that API's error and closes.
                answer = error_response(
                    request.body,
                    request.api.response_type(),
                    request.version,
                    ErrorCode.ILLEGAL_SASL_STATE,
                    "unexpected request during SASL authentication",
                )
                session.close_after_answer = True
                session.failure_delay = self.authenticator.delays.failed(session.host)
                chunks: list[Buffer] | None = encode_response(
                    request.header.correlation_id, request.api, request.version, answer
                )
            else:
                chunks = await self._dispatch(request, session.host, session)
                if key == API_VERSIONS and is_served(request):
                    session.api_versions_answered = True  # an unsupported version may retry
            if session.close_after_answer:
                await asyncio.sleep(session.failure_delay)
            if chunks is not None:
                writer.writelines(chunks)
                await writer.drain()
            if session.close_after_answer:
                raise ProtocolError("SASL authentication failed")
        if session.principal:
            log.debug("authenticated %s from %s", session.principal, session.host)

    async def respond(self, frame: bytes) -> list[Buffer] | None:
        """Answer one request frame (without its size prefix), as a connection would: the
        response frame's chunks, or None when no response is sent (acks=0). Raises
        :class:`ProtocolError` where the connection would be closed. For tests and tools."""
        return await self._dispatch(self.parse(frame))

    @staticmethod
    def parse(frame: bytes | bytearray) -> Request:
        """Parse a request frame, refusing (before its body is read) an API or version this
        broker does not serve; ApiVersions is always parsed (KIP-511 fallback)."""
        api, version = peek_api(frame)
        if api is not None and api.api_key != API_VERSIONS:
            served = BROKER_APIS.get(api.api_key)
            if served is None or not served[0] <= version <= served[1]:
                # Kafka closes the connection on a request it does not serve.
                raise ProtocolError(f"{api.name} v{version} is not served")
        return decode_request(frame)

    async def _handle(
        self,
        request: Request,
        size: int,
        host: str,
        flight: _InFlight | None = None,
        pipeline: _Pipeline | None = None,
        before: Awaitable[object] | None = None,
        session: Session | None = None,
    ) -> list[Buffer] | None:
        started = time.perf_counter()
        try:
            if before is not None:  # the earlier requests whose effects this one must see
                await before
            chunks = await self._dispatch(request, host, session)
        except Exception:
            # Not answered (an acks=0 produce that failed): the connection closes.
            self.metrics.error(request.api.name, ErrorCode.UNKNOWN_SERVER_ERROR)
            raise
        finally:
            await self.budget.release(size)
            self.metrics.request(
                request.api.api_key,
                request.api.name,
                request.version,
                time.perf_counter() - started,
            )
        if chunks is not None and flight is not None and pipeline is not None:
            # The answer waits in memory until it is sent: count what it holds beyond the
            # request and any reserve.
            extra = sum(map(len, chunks)) - (flight.charge - size)
            if extra > 0:
                flight.charge += extra
                pipeline.grow(extra)
        return chunks

    async def _dispatch(
        self, request: Request, client_host: str = "", session: Session | None = None
    ) -> list[Buffer] | None:
        api, version, header = request.api, request.version, request.header
        if not is_served(request):  # only ApiVersions gets here (KIP-511 fallback)
            body = ApiVersionsResponse(
                error_code=ErrorCode.UNSUPPORTED_VERSION, api_keys=advertised_apis()
            )
            return encode_response(header.correlation_id, api, 0, body)
        handler = HANDLERS[api.api_key]
        assert request.body is not None
        ctx = RequestContext(self, header, version, client_host, session)
        try:
            if self.authorizer is not None:
                response = await authorized_handle(ctx, handler, request.body)
            else:
                response = await handler(ctx, request.body)
            if response is None:  # acks=0 produce: no response at all
                return None
            self.metrics.response(api.name, response)
            return encode_response(header.correlation_id, api, version, response)
        except Exception as e:
            if api.api_key == PRODUCE and getattr(request.body, "acks", None) == 0:
                raise  # nothing to answer with: closing tells the producer (as Kafka does)
            code, text = failure_code(e)
            what = (
                f"{api.name} v{version} (correlation id {header.correlation_id}, "
                f"client {header.client_id!r}, {client_host or '-'})"
            )
            # A bug: logged once, with the request and the trace.
            if code == ErrorCode.UNKNOWN_SERVER_ERROR:
                log.exception("%s failed; answering %d: %s", what, code, text)
            else:  # a refusal raised from deep inside (it carries its Kafka error)
                log.info("%s refused: %d: %s", what, code, text)
            answer = error_response(request.body, api.response_type(), version, code, text)
            self.metrics.response(api.name, answer)
            return encode_response(header.correlation_id, api, version, answer)

    async def _send(
        self,
        writer: ConnectionWriter,
        responses: asyncio.Queue[_InFlight | None],
        pipeline: _Pipeline,
        session: Session | None = None,
    ) -> None:
        """Write the answers in request order until the None that ends the connection. Once
        the connection is broken (a handler failed, or a write did: the client went away)
        the rest of the queue is still taken, unanswered, and each request leaves the
        connection's pipeline once it is answered or dropped."""
        broken = False
        while True:
            flight = await responses.get()
            if flight is None:
                return
            try:
                broken = await self._send_one(writer, flight, broken)
                if session is not None and session.close_after_answer and not broken:
                    writer.close()  # a failed re-authentication: its answer was the last
                    broken = True
            finally:
                pipeline.done(flight.charge)

    @staticmethod
    async def _send_one(writer: ConnectionWriter, flight: _InFlight, broken: bool) -> bool:
        """Send one answer (unless the connection is broken); whether it is broken now."""
        assert flight.task is not None
        try:
            chunks = await flight.task
        except AuthorizationClose as e:  # Kafka's answer to a refused acks=0 produce
            if not broken:
                log.info("closing connection: %s", e)
                writer.close()
            return True
        except Exception:
            if not broken:
                log.exception("request failed")
                writer.close()
            return True
        if chunks is None or broken:
            return broken
        try:
            if failpoints.armed("mid_response"):
                data = b"".join(chunks)
                writer.write(data[: len(data) // 2])
                writer.flush()  # on the wire before the failpoint ends the process
                await writer.drain()
                failpoints.hit("mid_response")
                chunks = [data[len(data) // 2 :]]
            writer.writelines(chunks)
            await writer.drain()
        except Exception as e:  # the connection is gone (reset, aborted by stop())
            log.info("closing connection: writing an answer failed: %r", e)
            writer.close()
            return True
        return False


API_VERSIONS = 18
PRODUCE = 0
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
_KEY = struct.Struct(">h")


def failure_code(error: Exception) -> tuple[int, str]:
    """The Kafka error code and message answering a request whose handler raised ``error``:
    the code it carries (a refusal such as :class:`FlushError`), REQUEST_TIMED_OUT (retriable)
    when the metadata store did not answer, else UNKNOWN_SERVER_ERROR."""
    code = getattr(error, "code", None)
    if isinstance(code, int) and not isinstance(code, bool) and -1 <= code < 2**15:
        return code, str(error) or type(error).__name__
    if isinstance(error, MetadataUnavailable):
        return ErrorCode.REQUEST_TIMED_OUT, f"the metadata store did not answer: {error}"
    return ErrorCode.UNKNOWN_SERVER_ERROR, f"unexpected server error: {type(error).__name__}"


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
