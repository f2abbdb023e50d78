"""A :class:`MetadataStore` on an etcd (v3) cluster, through aetcd's gRPC stubs.

Semantics are etcd's, which the sqlite backend copies: store-wide revisions, compare-and-swap
transactions (strict serializable), leases whose expiry deletes their keys, watches that can
start at a past revision until it is compacted. Keys are used as given (callers prefix them
with their namespace). Differences from sqlite worth knowing: a new etcd starts at revision 1,
not 0; lease TTLs are whole seconds (a fractional TTL is rounded up, and etcd raises it to its
minimum, about 1.5 election timeouts); history is kept until someone compacts it
(:meth:`EtcdMetadataStore.compact`, or etcd's ``--auto-compaction-retention``); a transaction
has at most 128 operations and 1.5 MiB (etcd's ``--max-txn-ops`` / ``--max-request-bytes``;
callers chunk).

Endpoints: ``"host:port,host:port"`` (or a list). Requests go to one endpoint at a time; on
a connection error, a timeout, or a member without a leader the store fails over to the next
one. Every request carries etcd's "require leader" flag, so a member cut off from its leader
answers "no leader" at once (and nothing was done) instead of waiting out a timeout; watches
on such a member are cancelled by the server and resumed elsewhere.

Errors and retries:

* Reads (``get``, ``range``, ``revision``), lease calls (grant, keep-alive, revoke) and
  watch set-up are retried with exponential backoff (50 ms doubling to 1 s, jittered), every
  endpoint in turn, until ``retry_timeout`` seconds have passed; then
  :class:`MetadataUnavailable`. The first attempt has a deadline of ``request_timeout``
  seconds, later ones end with the retry budget, so an operation gives up after about
  ``request_timeout + retry_timeout`` at most.
* Writes (``put``, ``txn``) are retried only after an error that proves the write was not
  applied: the connection could not be made, the member had no leader, the proposal was
  dropped or rejected before it reached the raft log. After any other failure (the connection
  broke or the deadline passed after the request was sent, or etcd's own "request timed
  out") the write may have applied, and it is not re-sent: :class:`TxnOutcomeUnknown` (a
  :class:`MetadataUnavailable`) says so. Recover by re-reading the keys the write guarded:
  see :class:`~kafscale.metadata.store.TxnOutcomeUnknown`. A write that exhausted its retries
  while certainly not applied raises plain :class:`MetadataUnavailable`.
* A put naming a lease that does not exist raises :class:`LeaseNotFound`; a request etcd
  rejects as malformed (e.g. too many operations) raises :class:`ValueError`; use after
  :meth:`close` raises :class:`StoreClosed`.

Leases are held with :meth:`MetadataStore.lease_hold` (a keep-alive task per lease, every
TTL/3, which marks the lease lost when it cannot be renewed in time; see
:class:`~kafscale.metadata.store.HeldLease`) or renewed by hand with :meth:`lease_keepalive`.

aetcd's high-level ``Client`` is not used, only its generated gRPC stubs (``aetcd.rpc``):
the client's prefix range end is wrong for an empty or all-0xff prefix (an empty or an empty
range), its range has no limit, its requests have no deadline by default and no "require
leader" flag, a lease has no keep-alive task (a refresh is one call, and a lost lease shows
only as TTL 0 in the raw reply), every watch shares one stream whose failure ends them all
without resuming, and every UNAVAILABLE becomes one ``ConnectionFailedError``, whether the
request was sent or not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import grpc  # type: ignore[import-untyped]
from aetcd import rpc  # type: ignore[import-untyped]

from kafscale.metadata.store import (
    Compare,
    Delete,
    KeyValue,
    LeaseNotFound,
    MetadataStore,
    MetadataUnavailable,
    Put,
    StoreClosed,
    TxnOutcomeUnknown,
    TxnResult,
    WatchCompacted,
    WatchEvent,
    check_compare,
    check_ops,
    check_ttl,
    prefix_end,
)

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_REQUEST_TIMEOUT: Final = 5.0
DEFAULT_RETRY_TIMEOUT: Final = 10.0
_BACKOFF_FIRST: Final = 0.05
_BACKOFF_MAX: Final = 1.0
RANGE_PAGE = 5000
"""Keys per range request; a larger prefix is read in pages at one revision."""

_REQUIRE_LEADER: Final = (("hasleader", "true"),)
"""etcd's metadata flag: fail with "no leader" at once rather than wait for a timeout."""

_CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    # Notice a dead peer on an idle watch stream (etcd accepts pings every 5 s or slower).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Reconnect to a restarted member within a second, not after gRPC's default 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# Error texts (gRPC's or etcd's) proving that a request was not applied.
_NOT_APPLIED: Final = (
    "failed to connect to all addresses",  # gRPC: no connection, nothing sent
    "Failed to connect to remote host",
    "etcdserver: no leader",  # rejected on arrival (require-leader flag)
    "etcdserver: not capable",
    "etcdserver: too many requests",  # rejected before proposing
    "raft proposal dropped",  # never entered the log
)

_COMPARE_TARGET: Final = {
    "mod_revision": rpc.Compare.MOD,
    "version": rpc.Compare.VERSION,
    "value": rpc.Compare.VALUE,
}
_COMPARE_RESULT: Final = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


class _Compacted(Exception):
    """A range at a fixed revision hit compaction (internal: the range starts over)."""


class _StreamEnded(Exception):
    """The server ended a stream without the answer we waited for (internal, retriable)."""


class _Security:
    """etcd over TLS (``cacert``, client ``cert``/``key``) and with a username/password: the
    password buys a token (Auth.Authenticate) sent as ``token`` metadata with every call,
    fetched again when etcd says it is no longer valid (its tokens expire)."""

    def __init__(
        self,
        cacert: str | None,
        cert: str | None,
        key: str | None,
        user: str | None,
        password: str | None,
    ) -> None:
        if bool(cert) != bool(key):
            raise ValueError("an etcd client certificate needs both cert and key")
        if bool(user) != bool(password):
            raise ValueError("etcd authentication needs both user and password")
        self.credentials: grpc.ChannelCredentials | None = None
        if cacert or cert:

            def read(path: str | None) -> bytes | None:
                return open(path, "rb").read() if path else None

            self.credentials = grpc.ssl_channel_credentials(
                root_certificates=read(cacert),
                private_key=read(key),
                certificate_chain=read(cert),
            )
        self.user = user
        self.password = password
        self.token: str | None = None
        self._lock: asyncio.Lock | None = None

    def interceptors(self, target: str) -> list[Any] | None:
        if not self.user:
            return None
        return [
            _TokenUnary(self, target),
            _TokenStream(self, target),
            _TokenStreamStream(self, target),
        ]

    async def metadata(self, target: str, details: Any) -> Any:
        """The call's details with the auth token added (fetched first if needed)."""
        if self.token is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self.token is None:
                    # A channel of its own without interceptors: the Authenticate call itself
                    # carries no token.
                    if self.credentials is not None:
                        channel = grpc.aio.secure_channel(target, self.credentials)
                    else:
                        channel = grpc.aio.insecure_channel(target)
                    try:
                        reply = await rpc.AuthStub(channel).Authenticate(
                            rpc.AuthenticateRequest(name=self.user, password=self.password),
                            timeout=DEFAULT_REQUEST_TIMEOUT,
                        )
                    finally:
                        await channel.close()
                    self.token = str(reply.token)
        metadata = [*(details.metadata or []), ("token", self.token)]
        return details._replace(metadata=grpc.aio.Metadata(*metadata))

    def invalid(self, error: BaseException) -> None:
        """Forget the token when etcd refused it (the next call fetches a new one)."""
        if isinstance(error, grpc.aio.AioRpcError) and "token" in (error.details() or ""):
            self.token = None


class _TokenUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, security: _Security, target: str) -> None:
        self.security, self.target = security, target

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self.security.metadata(self.target, details), request)


class _TokenStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, security: _Security, target: str) -> None:
        self.security, self.target = security, target

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(await self.security.metadata(self.target, details), request)


class _TokenStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, security: _Security, target: str) -> None:
        self.security, self.target = security, target

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        details = await self.security.metadata(self.target, details)
        return await continuation(details, request_iterator)


@dataclass
class _Endpoint:
    host: str
    port: int
    channel: Any = None
    kv: Any = None
    lease: Any = None
    watch: Any = None
    security: _Security | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> None:
        """Create the channel and stubs (no I/O: gRPC connects on the first request)."""
        if self.channel is None:
            security = self.security
            interceptors = security.interceptors(self.target) if security is not None else None
            if security is not None and security.credentials is not None:
                self.channel = grpc.aio.secure_channel(
                    self.target,
                    security.credentials,
                    options=_CHANNEL_OPTIONS,
                    interceptors=interceptors,
                )
            else:
                self.channel = grpc.aio.insecure_channel(
                    self.target, options=_CHANNEL_OPTIONS, interceptors=interceptors
                )
            self.kv = rpc.KVStub(self.channel)
            self.lease = rpc.LeaseStub(self.channel)
            self.watch = rpc.WatchStub(self.channel)

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()


def parse_endpoints(endpoints: str | Sequence[str], tls: bool = False) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` (or a list of ``host:port``; an ``http://`` prefix is
    accepted, ``https://`` with ``tls``) as (host, port) pairs."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[tuple[str, int]] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        if text.startswith("https://") and not tls:
            raise ValueError(f"etcd endpoint {text!r}: https needs etcd.cacert (TLS settings)")
        text = text.removeprefix("https://").removeprefix("http://").rstrip("/")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {item.strip()!r}: expected host:port")
        result.append((host, int(port)))
    if not result:
        raise ValueError("no etcd endpoints given")
    return result


def _classify(error: BaseException) -> Literal["not_applied", "unknown", "fatal"]:
    """How a failed request ended: certainly not applied (any request may be retried), maybe
    applied (only reads and idempotent requests may be retried), or an error to raise."""
    if isinstance(error, _StreamEnded | TimeoutError):
        return "unknown"
    if not isinstance(error, grpc.aio.AioRpcError):
        return "fatal"
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in details:
        return "not_applied"  # an expired token: refused before anything ran; a new one next
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    ):
        if any(text in details for text in _NOT_APPLIED):
            return "not_applied"
        return "unknown"
    return "fatal"


def _fatal(error: BaseException) -> BaseException:
    """The exception of ours to raise for an error :func:`_classify` calls fatal."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return error
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFound(details)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return _Compacted(details)
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    ):
        return ValueError(f"etcd rejected the request: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionError(f"etcd: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # e.g. "database space exceeded"
        return MetadataUnavailable(f"etcd: {details}")
    return RuntimeError(f"etcd: {code.name}: {details}")


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


def _range_bounds(prefix: bytes) -> tuple[bytes, bytes]:
    """etcd's (key, range_end) for "every key starting with prefix": range_end b"\\0" means
    no upper bound, and the key b"\\0" with it means every key (etcd has no empty key)."""
    end = prefix_end(prefix)
    return (prefix or b"\0", b"\0" if end is None else end)


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.mod_revision, kv.version, kv.lease)


def _ops(ops: Sequence[Put | Delete]) -> list[Any]:
    requests = []
    for op in ops:
        if isinstance(op, Put):
            request = rpc.PutRequest(key=op.key, value=op.value, lease=op.lease)
            requests.append(rpc.RequestOp(request_put=request))
        elif op.prefix:
            key, end = _range_bounds(op.key)
            request = rpc.DeleteRangeRequest(key=key, range_end=end)
            requests.append(rpc.RequestOp(request_delete_range=request))
        elif op.key:  # the empty key cannot exist: deleting it does nothing
            request = rpc.DeleteRangeRequest(key=op.key)
            requests.append(rpc.RequestOp(request_delete_range=request))
    return requests


def _compare(c: Compare) -> Any:
    message = rpc.Compare(key=c.key, target=_COMPARE_TARGET[c.target], result=_COMPARE_RESULT[c.op])
    if c.target == "mod_revision":
        message.mod_revision = c.value
    elif c.target == "version":
        message.version = c.value
    else:
        message.value = c.value
    return message


@dataclass(eq=False)
class _Watch:
    """One watch: its current gRPC stream (replaced when it fails over)."""

    prefix: bytes
    call: Any = None
    endpoint: int = 0
    """Index of the endpoint the stream is on."""
    closed: bool = False
    opening: asyncio.Task[tuple[Any, int]] | None = field(default=None, repr=False)

    def cancel(self) -> None:
        self.closed = True
        if self.call is not None:
            self.call.cancel()
        if self.opening is not None:
            self.opening.cancel()


class EtcdMetadataStore(MetadataStore):
    """:class:`MetadataStore` on etcd at ``endpoints`` (``"host:port,..."`` or a list).

    Construction does no I/O; connections open on first use, in the event loop that uses the
    store (use it from one loop). ``request_timeout`` bounds each request (seconds);
    ``retry_timeout`` bounds the retries of one operation (see the module docstring).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not (request_timeout > 0 and retry_timeout >= 0):
            raise ValueError("request_timeout must be positive, retry_timeout not negative")
        security = None
        if cacert or cert or key or user or password:
            security = _Security(cacert, cert, key, user, password)
        self._security = security
        self._endpoints = [
            _Endpoint(host, port, security=security)
            for host, port in parse_endpoints(endpoints, tls=bool(cacert or cert))
        ]
        self._current = 0
        self._request_timeout = request_timeout
        self._retry_timeout = retry_timeout
        self._closed = False
        self._watches: set[_Watch] = set()
        self._opening: set[asyncio.Task[tuple[Any, int]]] = set()
        """Watches "from now" being created: writes wait for them (see :meth:`watch`)."""

    @property
    def endpoints(self) -> list[str]:
        return [e.target for e in self._endpoints]

    @property
    def current_endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self._endpoints[self._current].target

    def __repr__(self) -> str:
        return f"EtcdMetadataStore({','.join(self.endpoints)!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the metadata store is closed")

    def _endpoint(self) -> tuple[int, _Endpoint]:
        index = self._current
        endpoint = self._endpoints[index]
        endpoint.connect()
        return index, endpoint

    def _fail_over(self, index: int) -> None:
        """Move to the next endpoint, unless another request already moved on from
        ``index``."""
        if self._current == index and len(self._endpoints) > 1:
            self._current = (index + 1) % len(self._endpoints)
            _log.info(
                "etcd: failing over from %s to %s",
                self._endpoints[index].target,
                self._endpoints[self._current].target,
            )

    async def _call(
        self,
        what: str,
        request: Callable[[_Endpoint, float], Awaitable[_T]],
        *,
        write: bool,
    ) -> _T:
        """``request(endpoint, timeout)`` with failover and bounded retries (module
        docstring). ``write``: retry only errors that prove nothing was applied."""
        self._check_open()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._retry_timeout
        delay = _BACKOFF_FIRST
        attempts = 0
        while True:
            index, endpoint = self._endpoint()
            attempts += 1
            timeout = self._request_timeout
            if attempts > 1:  # later attempts end with the retry budget
                timeout = max(min(timeout, give_up - loop.time()), 0.1)
            try:
                return await request(endpoint, timeout)
            except asyncio.CancelledError:
                # gRPC raises CancelledError from a call that close() cancelled.
                if self._closed and not _being_cancelled():
                    raise StoreClosed("the metadata store was closed") from None
                raise
            except (grpc.aio.AioRpcError, _StreamEnded, TimeoutError) as e:
                if self._closed:
                    raise StoreClosed("the metadata store is closed") from e
                if self._security is not None:
                    self._security.invalid(e)
                kind = _classify(e)
                if kind == "fatal":
                    raise _fatal(e) from None
                if kind == "unknown" and write:
                    raise TxnOutcomeUnknown(
                        f"etcd {what} via {endpoint.target}: no answer ({_describe(e)}); it may "
                        "or may not have applied"
                    ) from e
                error: BaseException = e
            self._fail_over(index)
            now = loop.time()
            if now < give_up and attempts % len(self._endpoints):
                continue  # try the next endpoint at once; back off once per round
            if now + delay >= give_up:
                raise MetadataUnavailable(
                    f"etcd {what} failed {attempts} times in {self._retry_timeout:g}s "
                    f"(endpoints {','.join(self.endpoints)}): {_describe(error)}"
                ) from error
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _write_barrier(self) -> None:
        """Let watches created "from now" before this write be registered first."""
        if self._opening:
            await asyncio.wait(list(self._opening))

    async def close(self) -> None:
        """Stop held leases (marked lost; not revoked), end every watch iteration, close the
        connections. Later operations raise :class:`StoreClosed`."""
        if self._closed:
            return
        self._closed = True
        self._lose_held_leases()
        for watch in list(self._watches):
            watch.cancel()
        self._watches.clear()
        for endpoint in self._endpoints:
            await endpoint.close()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        self._check_open()
        if not key:
            return None

        async def request(endpoint: _Endpoint, timeout: float) -> KeyValue | None:
            response = await endpoint.kv.Range(
                rpc.RangeRequest(key=key), timeout=timeout, metadata=_REQUIRE_LEADER
            )
            return _kv(response.kvs[0]) if response.kvs else None

        return await self._call("get", request, write=False)

    async def range(self, prefix: bytes, limit: int = 0) -> list[KeyValue]:
        """Keys starting with ``prefix`` (``b""``: every key), sorted bytewise, at most
        ``limit`` unless 0. Read in pages of 5000 keys, all at the revision of the first page
        (so the result is one consistent snapshot)."""
        if not isinstance(prefix, bytes):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        if limit < 0:
            raise ValueError(f"negative limit {limit}")
        for _ in range(5):
            try:
                return await self._range(prefix, limit)
            except _Compacted:
                continue  # compacted between two pages: read a newer snapshot
        raise MetadataUnavailable("etcd range: compacted under every attempt")

    async def _range(self, prefix: bytes, limit: int) -> list[KeyValue]:
        start, end = _range_bounds(prefix)
        result: list[KeyValue] = []
        revision = 0
        while True:
            page = RANGE_PAGE if not limit else min(RANGE_PAGE, limit - len(result))
            message = rpc.RangeRequest(key=start, range_end=end, limit=page, revision=revision)

            async def request(endpoint: _Endpoint, timeout: float, message: Any = message) -> Any:
                return await endpoint.kv.Range(message, timeout=timeout, metadata=_REQUIRE_LEADER)

            response = await self._call("range", request, write=False)
            result.extend(_kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs or (limit and len(result) >= limit):
                return result
            revision = revision or response.header.revision
            start = response.kvs[-1].key + b"\0"

    async def revision(self) -> int:
        """The current store revision (a linearizable read)."""

        async def request(endpoint: _Endpoint, timeout: float) -> int:
            response = await endpoint.kv.Range(
                rpc.RangeRequest(key=b"\0", count_only=True),
                timeout=timeout,
                metadata=_REQUIRE_LEADER,
            )
            return int(response.header.revision)

        return await self._call("revision", request, write=False)

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Unconditional write; the new store revision. May raise
        :class:`TxnOutcomeUnknown` (see the module docstring)."""
        check_ops((Put(key, value, lease),))
        self._check_open()
        await self._write_barrier()
        message = rpc.PutRequest(key=key, value=value, lease=lease)

        async def request(endpoint: _Endpoint, timeout: float) -> int:
            response = await endpoint.kv.Put(message, timeout=timeout, metadata=_REQUIRE_LEADER)
            return int(response.header.revision)

        return await self._call("put", request, write=True)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        """One etcd transaction. Validated first (:class:`ValueError`, :class:`TypeError`),
        as the sqlite backend does. Sent once unless it certainly did not apply: an unknown
        outcome raises :class:`TxnOutcomeUnknown` (re-read, then decide)."""
        for c in compare:
            check_compare(c)
        check_ops(success)
        check_ops(failure)
        self._check_open()
        await self._write_barrier()
        message = rpc.TxnRequest(
            compare=[_compare(c) for c in compare], success=_ops(success), failure=_ops(failure)
        )

        async def request(endpoint: _Endpoint, timeout: float) -> TxnResult:
            response = await endpoint.kv.Txn(message, timeout=timeout, metadata=_REQUIRE_LEADER)
            return TxnResult(bool(response.succeeded), int(response.header.revision))

        return await self._call("txn", request, write=True)

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Drop the history before ``revision``: later watches may start after
        ``revision - 1`` at the earliest (etcd-specific; etcd can also do it by itself,
        ``--auto-compaction-retention``). Compacting an already compacted revision does
        nothing."""

        async def request(endpoint: _Endpoint, timeout: float) -> None:
            await endpoint.kv.Compact(
                rpc.CompactionRequest(revision=revision, physical=physical),
                timeout=timeout,
                metadata=_REQUIRE_LEADER,
            )

        try:
            await self._call("compact", request, write=False)
        except ValueError as e:
            if "compacted" not in str(e):
                raise
        except _Compacted:
            pass

    # -- leases ------------------------------------------------------------------------------

    async def lease_grant(self, ttl_seconds: float) -> int:
        """A new lease. etcd TTLs are whole seconds: ``ttl_seconds`` is rounded up (and etcd
        may raise it to its minimum). Retried like a read: a grant whose answer was lost
        leaves an unused lease that expires by itself."""
        ttl = math.ceil(check_ttl(ttl_seconds))

        async def request(endpoint: _Endpoint, timeout: float) -> int:
            response = await endpoint.lease.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl), timeout=timeout, metadata=_REQUIRE_LEADER
            )
            if response.error:
                raise RuntimeError(f"etcd lease grant: {response.error}")
            return int(response.ID)

        return await self._call("lease grant", request, write=False)

    async def lease_keepalive(self, lease: int) -> bool:
        """Renew once; False if the lease no longer exists (expired or revoked)."""

        async def request(endpoint: _Endpoint, timeout: float) -> bool:
            call = endpoint.lease.LeaseKeepAlive(timeout=timeout, metadata=_REQUIRE_LEADER)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                await call.done_writing()
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise _StreamEnded("lease keep-alive stream ended without an answer")
                return int(response.TTL) > 0  # etcd answers TTL 0 for an unknown lease
            finally:
                call.cancel()

        return await self._call("lease keep-alive", request, write=False)

    async def lease_revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys; an unknown lease is a no-op (so a retry of
        a revoke that did apply is harmless)."""
        self._check_open()
        await self._write_barrier()

        async def request(endpoint: _Endpoint, timeout: float) -> None:
            await endpoint.lease.LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=lease), timeout=timeout, metadata=_REQUIRE_LEADER
            )

        try:
            await self._call("lease revoke", request, write=False)
        except LeaseNotFound:
            pass

    async def lease_ids(self) -> list[int]:
        """Every live lease of the cluster (etcd-specific)."""

        async def request(endpoint: _Endpoint, timeout: float) -> list[int]:
            response = await endpoint.lease.LeaseLeases(
                rpc.LeaseLeasesRequest(), timeout=timeout, metadata=_REQUIRE_LEADER
            )
            return [int(status.ID) for status in response.leases]

        return await self._call("lease list", request, write=False)

    # -- watch -------------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys starting with ``prefix`` with a revision above ``start_revision``
        (0: from now), in revision order, until the iterator is closed or the store is.

        Call it in the event loop that iterates, and iterate or close the result. The etcd
        watch is created at once (in a task): writes made through this store after the call
        wait for it, so "from now" includes every one of them, as with sqlite. When its
        stream breaks (member down, member without leader) the watch resumes on another
        endpoint from the last revision it delivered, without gaps or repeats; if no member
        can serve it for ``retry_timeout``, the iteration raises
        :class:`MetadataUnavailable` (resume with a new watch after the last revision seen).
        A start before the compacted history raises :class:`WatchCompacted`.
        """
        if start_revision < 0:
            raise ValueError(f"negative start revision {start_revision}")
        if not isinstance(prefix, bytes):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        self._check_open()
        watch = _Watch(prefix)
        first = start_revision + 1 if start_revision else 0
        opening = asyncio.get_running_loop().create_task(self._open_watch(watch, first))
        opening.add_done_callback(_retrieve)
        watch.opening = opening
        self._watches.add(watch)
        if not start_revision:
            self._opening.add(opening)
            opening.add_done_callback(self._opening.discard)
        return self._iterate(watch, start_revision, opening)

    async def _open_watch(self, watch: _Watch, first: int) -> tuple[Any, int]:
        """A watch stream for events from revision ``first`` (inclusive; 0: from now), and the
        store revision it was created at."""
        key, end = _range_bounds(watch.prefix)
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(key=key, range_end=end, start_revision=first)
        )

        async def request(endpoint: _Endpoint, timeout: float) -> tuple[Any, int]:
            call = endpoint.watch.Watch(metadata=_REQUIRE_LEADER)
            watch.call = call
            watch.endpoint = self._endpoints.index(endpoint)
            try:
                async with asyncio.timeout(timeout):
                    await call.write(create)
                    response = await call.read()
                if response is grpc.aio.EOF:
                    raise _StreamEnded("watch stream ended before it was created")
                if response.compact_revision:
                    raise WatchCompacted(max(first - 1, 0), response.compact_revision - 1)
                if not response.created or response.canceled:
                    raise _StreamEnded(f"watch not created: {response.cancel_reason!r}")
            except BaseException:
                call.cancel()
                raise
            return call, int(response.header.revision)

        return await self._call("watch", request, write=False)

    async def _iterate(
        self, watch: _Watch, start_revision: int, opening: asyncio.Task[tuple[Any, int]]
    ) -> AsyncIterator[WatchEvent]:
        loop = asyncio.get_running_loop()
        last_revision = 0  # of the last event yielded
        yielded_at_last = 0  # events yielded with that revision
        try:
            try:
                call, created = await opening
            except StoreClosed:
                return
            except asyncio.CancelledError:
                if watch.closed and not _being_cancelled():
                    return
                raise
            watch.opening = None
            first_wanted = start_revision + 1 if start_revision else created + 1
            skip = 0  # events of last_revision to pass over (already yielded) after a resume
            trouble_since: float | None = None
            while True:
                reason: str
                try:
                    response = await call.read()
                except asyncio.CancelledError:
                    # gRPC raises CancelledError from a call we cancelled (closing).
                    if (watch.closed or self._closed) and not _being_cancelled():
                        return
                    raise
                except grpc.aio.AioRpcError as e:
                    if watch.closed or self._closed:
                        return
                    if _classify(e) == "fatal":
                        raise _fatal(e) from None
                    reason = _describe(e)
                else:
                    if response is grpc.aio.EOF:
                        reason = "the server ended the stream"
                    elif response.compact_revision:
                        resume = last_revision or first_wanted
                        raise WatchCompacted(resume - 1, response.compact_revision - 1)
                    elif response.canceled:
                        reason = f"cancelled by the server: {response.cancel_reason!r}"
                    else:
                        trouble_since = None
                        for event in response.events:
                            kv = event.kv
                            revision = kv.mod_revision
                            if revision < max(first_wanted, last_revision):
                                continue
                            if revision == last_revision and skip:
                                skip -= 1  # delivered before the stream was resumed
                                continue
                            if revision != last_revision:
                                last_revision, yielded_at_last, skip = revision, 0, 0
                            yielded_at_last += 1
                            if event.type == rpc.Event.DELETE:
                                yield WatchEvent("delete", KeyValue(kv.key, b"", revision, 0))
                            else:
                                yield WatchEvent("put", _kv(kv))
                        continue
                # The stream failed: resume elsewhere from the last revision delivered.
                call.cancel()
                if watch.closed or self._closed:
                    return
                now = loop.time()
                trouble_since = trouble_since or now
                if now - trouble_since > self._retry_timeout:
                    raise MetadataUnavailable(f"etcd watch of {watch.prefix!r}: {reason}")
                _log.info("etcd watch of %r: %s; resuming", watch.prefix, reason)
                self._fail_over(watch.endpoint)
                skip = yielded_at_last
                try:
                    call, _ = await self._open_watch(watch, last_revision or first_wanted)
                except StoreClosed:
                    return
        finally:
            watch.cancel()
            self._watches.discard(watch)


def _being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (not just a gRPC call of ours)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as seen (its awaiter, if any, still gets it)."""
    if not task.cancelled():
        task.exception()
