"""S3ObjectStore: the :class:`ObjectStore` contract on any S3-compatible endpoint (aiobotocore).

Configuration is the bucket, an optional endpoint URL (MinIO, Ceph, R2, moto...), an optional
region and path-style addressing. Credentials come from the standard AWS chain (environment
variables, shared config/credentials files and profiles, web identity, container and instance
metadata); nothing here handles secrets.

Keys are validated exactly as :class:`~kafscale.storage.local.LocalObjectStore` validates them,
so a bucket and a local directory hold the same keys and either can be seeded from the other.
Keys with a segment starting with ``.tmp-`` are never listed (the local store's in-progress
writes; here, the conditional-write probe below).

Retries are ours, not botocore's (its retries are turned off, so the policy is one piece of
code and tested): a request is attempted at most ``max_attempts`` times. Retried: 5xx
answers except 501, 429, the throttling and transient codes (``SlowDown``,
``RequestTimeout``, ``InternalError``, ``ConditionalRequestConflict``, ``BadDigest``...),
connection errors, connect and read timeouts, bodies cut short, and bodies that fail
verification (below). Between attempts the store sleeps with exponential backoff and
jitter: retry *n* sleeps a uniformly random time in ``[c/2, c]`` with
``c = min(backoff_max, backoff_base * 2**(n-1))``. When the attempts are spent it raises
:class:`ObjectStoreUnavailable` (retriable: the broker answers with a retriable Kafka
error). Every other error (403, NoSuchBucket, 400...) raises :class:`ObjectStoreError` at
once. A backoff sleep does not hold a concurrency slot: at most
``max_concurrency`` requests are in flight (a semaphore; the HTTP pool has as many
connections). One thing below us still resends: aiohttp sends a GET, HEAD, PUT or DELETE a
second time when the server closes the connection without answering (meant for stale
keep-alive connections), so such a failure can cost two sends per attempt.

Reads are verified, so a truncated or corrupted body is retried and never returned:

- ``put`` and ``create`` compute the CRC32C of the object and store it as user metadata
  (``x-amz-meta-crc32c``, 8 hex digits). They also send it as ``x-amz-checksum-crc32c``, so S3
  itself rejects a body damaged on the way up (``BadDigest``, retried) instead of storing it
  (``upload_checksum=False`` omits the header for endpoints that reject it; moto ignores it).
  botocore's own checksums are set to "when required": its defaults (CRC32 trailers on every
  upload, aws-chunked encoding) break several S3-compatible servers, and ours work everywhere.
- ``get`` checks that the body has ``Content-Length`` bytes and that its CRC32C matches the
  stored one (objects written by other tools, without the metadata, get the length check only).
- ``get_range`` asks for ``bytes=start-(end-1)`` and checks ``Content-Range`` (it must start at
  ``start`` and end at ``min(end, size) - 1``, i.e. be short only at the object's end) and that
  the body has exactly that many bytes. A server that ignores ``Range`` and answers 200 with
  the whole object gets the whole-object checks and is sliced. The content of a range cannot be
  checked against the object's CRC; the segment format's record batches carry their own
  CRC32C (Kafka's), which consumers verify.
- Listings and headers carry no checksum in the S3 API; use HTTPS in production.

Conditional create sends ``If-None-Match: *`` (AWS S3 since 2024-08, MinIO, moto >= 5; the
answer for an existing key is ``412 PreconditionFailed``, which means False). Three details:

- A resent create is ambiguous: an earlier send may have created the object and its answer
  been lost, so the 412 may be our own write. Every create carries a random token in its
  metadata (``x-amz-meta-kafscale-create-token``); a 412 reads the object's metadata (HEAD)
  and answers True when the token is ours. This is done on every 412, not only after our own
  failed attempts, because aiohttp resends an "idempotent" request (PUT included) once by
  itself when the connection closes without an answer; only losers pay the HEAD.
- S3 answers ``409 ConditionalRequestConflict`` when conditional writes to one key race; it
  asks clients to retry, and the retry gets 412 (or our token).
- A server that ignores the header would let every creator "win", silently. Before its first
  create each store probes the endpoint once: it creates a ``.tmp-kafscale-probe-<uuid>`` key
  beside the key being created (so the same permissions apply) twice; unless the second is
  refused, ``create`` raises :class:`ObjectStoreError` (forever, for that store) rather than
  break the exactly-one-winner promise. The probe key is deleted (and never listed). Servers
  that reject the header (501) give the same error.

``put`` takes a buffer or a sequence of buffers; a sequence is joined into one body (one
copy; a body must be re-sendable for retries, and botocore takes no memoryviews). That body goes
out as it is: botocore's handler that wraps a ``bytes`` body of PutObject in a ``BytesIO`` is
removed from our client, since the wrapper made aiohttp copy the body out again in 64 KiB
reads and made botocore add ``Expect: 100-continue``, a round trip to the server before every
body (it only saves sending a body that the server refuses: the answer is the same).

The body is not hashed for the signature when ``upload_checksum`` is on (the default): requests
are signed with ``x-amz-content-sha256: UNSIGNED-PAYLOAD`` (botocore's ``payload_signing_enabled
= False``; valid for S3 over HTTPS and HTTP alike), because the signed ``x-amz-checksum-crc32c``
header already makes S3 refuse a body damaged on the way. What the SHA-256 would add is a
defence against someone who rewrites bodies on a plain-HTTP path, where they could also read
them and rewrite every answer; use HTTPS for that. Without ``upload_checksum`` botocore's
default stays (the body is hashed over plain HTTP), as the server then has nothing else to
check the body against; and so it does when the AWS configuration sets
``payload_signing_enabled`` (``s3 =`` section of the profile), for an S3-compatible server
that wants a hashed body on PUT.

The client (HTTP session and connection pool) is made by :meth:`open` (the broker calls it at
start: making it takes about 0.25 s, which the first produce would otherwise wait for) or on
first use, and released by :meth:`close`; a later call makes a new one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import crc32c
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.handlers import convert_body_to_file_like_object  # type: ignore[import-untyped]
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

from kafscale.protocol.wire import Buffer
from kafscale.storage.local import TEMP_PREFIX, validate_key
from kafscale.storage.objectstore import (
    NotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CRC_METADATA = "crc32c"
"""User-metadata name of the object's CRC32C (``x-amz-meta-crc32c``), 8 lower-case hex digits."""
TOKEN_METADATA = "kafscale-create-token"
"""User-metadata name of a conditional create's random token (see the module docstring)."""

_RETRIABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
        "BadDigest",
        "IncompleteBody",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

_sessions = threading.local()


def _session() -> Any:
    """This thread's botocore session (sessions are not thread-safe), shared by the stores of
    the thread: a client then reuses the loaded S3 model and the credential chain's result
    instead of paying ~0.1 s for each."""
    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = get_session()
    return session


def _payload_signing_configured() -> bool:
    """Whether the AWS configuration (``s3 = payload_signing_enabled = ...`` in the profile)
    decides payload signing: then it is left to it."""
    try:
        s3 = _session().get_config_variable("s3") or {}
    except Exception:  # a broken profile fails the client later, with botocore's message
        return False
    return "payload_signing_enabled" in s3


def _write_bodies_in_place() -> None:
    """Let aiohttp hand a request's headers and body to the transport as they are when the
    running loop is uvloop's, instead of joining them into a new ``bytes`` first.

    aiohttp joins them (a copy of every uploaded byte: ~8 % of the broker's CPU on produce)
    whenever Python is older than 3.12.9 or is 3.13.0-3.13.1, because asyncio's own socket
    transport's ``writelines`` is unsafe there (CVE-2024-12254, 3.12) or joins anyway (3.11).
    uvloop's transports write a sequence of buffers with one ``writev``, holding references,
    so the guard only costs a copy. The switch is aiohttp's, for the whole process: it is
    thrown only before Python 3.12, where asyncio's transports join in ``writelines``
    themselves (so any other loop of the process is as safe as before), never on the affected
    3.12s and 3.13s (3.12.9+ and 3.13.2+ do not need it)."""
    if (
        sys.version_info < (3, 12)
        and type(asyncio.get_running_loop()).__module__.partition(".")[0] == "uvloop"
    ):
        aiohttp.http_writer.SKIP_WRITELINES = False


class _BadBody(Exception):
    """A response body failed verification (length, range or CRC32C): retried."""


class _Retry(Exception):
    """Internal: retry this attempt (e.g. the object vanished between two requests)."""


# Failures after which the request is sent again. BotoCoreError's other subclasses
# (credentials, parameter validation, bad endpoint) are configuration errors.
_TRANSIENT: tuple[type[BaseException], ...] = (
    HTTPClientError,  # connection closed, read timeout, response streaming errors
    BotoConnectionError,  # endpoint unreachable, connect timeout, proxy and TLS errors
    IncompleteReadError,
    ResponseParserError,  # a mangled response document
    aiohttp.ClientError,  # payload not completed, server disconnected
    OSError,  # includes TimeoutError and ConnectionError
    _BadBody,
    _Retry,
)


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code") or "")


def _retriable(error: ClientError) -> bool:
    status = _status(error)
    if _code(error) in _RETRIABLE_CODES:
        return True
    if status == 501:  # NotImplemented: the endpoint lacks the feature; asking again won't help
        return False
    return status >= 500 or status == 429


def _is_not_found(error: ClientError) -> bool:
    # NoSuchBucket is a 404 too, but a configuration error, not a missing object.
    return _status(error) == 404 and _code(error) in _NOT_FOUND_CODES


def _describe(error: BaseException | None) -> str:
    if isinstance(error, ClientError):
        return f"{_status(error)} {_code(error)}: {error}"
    return f"{type(error).__name__}: {error}"


def _body(data: Buffer | Sequence[Buffer]) -> bytes | bytearray:
    """One re-sendable request body from a buffer or a sequence of buffers."""
    if isinstance(data, bytes | bytearray):
        return data
    if isinstance(data, memoryview):
        return data.tobytes()
    return b"".join(data)


def _crc_hex(value: int) -> str:
    return f"{value:08x}"


def _hidden(key: str) -> bool:
    return key.startswith(TEMP_PREFIX) or f"/{TEMP_PREFIX}" in key


def _validate_prefix(prefix: str) -> None:
    """The checks :meth:`LocalObjectStore.list` makes, so both backends accept the same."""
    if not isinstance(prefix, str):
        raise TypeError(f"object key prefix must be str, not {type(prefix).__name__}")
    if "\\" in prefix or "\0" in prefix or prefix.startswith("/"):
        raise ValueError(f"bad object key prefix: {prefix!r}")
    directory, _, _ = prefix.rpartition("/")
    if directory:
        validate_key(directory)


def _verify_whole(key: str, response: dict[str, Any], body: bytes) -> None:
    """Raise :class:`_BadBody` unless ``body`` is the whole object the headers describe."""
    length = response.get("ContentLength")
    if length is not None and len(body) != length:
        raise _BadBody(f"{key}: body has {len(body)} bytes, Content-Length says {length}")
    stored = (response.get("Metadata") or {}).get(CRC_METADATA)
    if stored is not None and _crc_hex(crc32c.crc32c(body)) != stored.lower():
        raise _BadBody(f"{key}: CRC32C of the body is not the stored {stored}")


def _verify_range(key: str, response: dict[str, Any], body: bytes, start: int, end: int) -> None:
    """Raise :class:`_BadBody` unless ``body`` is bytes ``[start, min(end, size))``."""
    header = response.get("ContentRange") or ""
    match = _CONTENT_RANGE.fullmatch(header)
    if match is None:
        raise _BadBody(f"{key}: 206 answer with Content-Range {header!r}")
    first, last, total = int(match[1]), int(match[2]), match[3]
    if total == "*":  # size unknown to the server: only "not more than asked" can be checked
        bad = first != start or last > end - 1
    else:
        bad = first != start or last != min(end, int(total)) - 1
    if bad:
        raise _BadBody(f"{key}: asked bytes {start}-{end - 1}, Content-Range is {header!r}")
    length = response.get("ContentLength")
    if len(body) != last - first + 1 or (length is not None and len(body) != length):
        raise _BadBody(
            f"{key}: body has {len(body)} bytes for Content-Range {header!r}"
            f" (Content-Length {length})"
        )


class S3ObjectStore(ObjectStore):
    """:class:`ObjectStore` on the S3 bucket ``bucket`` (see the module docstring).

    ``endpoint_url``: e.g. ``http://127.0.0.1:9000`` for a local server; None for AWS.
    ``region``: None takes it from the AWS configuration (``AWS_REGION``, the profile).
    ``path_style``: ``endpoint/bucket/key`` addressing (most non-AWS servers need it); False
    keeps botocore's default (virtual-hosted ``bucket.endpoint/key`` where possible).
    ``max_concurrency``: requests in flight at once. ``max_attempts``: attempts per request.
    ``backoff_base``/``backoff_max``: seconds, see the module docstring.
    ``connect_timeout``/``read_timeout``: seconds per connection attempt and per socket read.
    ``sse``: server-side encryption of every object written, ``AES256`` (SSE-S3) or
    ``aws:kms`` (SSE-KMS, with ``sse_kms_key_id`` or the bucket's default key).
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        max_concurrency: int = 32,
        max_attempts: int = 6,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        upload_checksum: bool = True,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty")
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff times must not be negative")
        self._bucket = bucket
        self._endpoint_url = endpoint_url or None
        self._region = region or None
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._upload_checksum = upload_checksum
        if sse not in (None, "AES256", "aws:kms"):
            raise ValueError(f"sse must be AES256 or aws:kms, got {sse!r}")
        if sse_kms_key_id and sse != "aws:kms":
            raise ValueError("sse_kms_key_id needs sse='aws:kms'")
        # Server-side encryption, sent with every PUT (S3 encrypts each object on its own:
        # nothing else needs it; GETs decrypt transparently).
        self._sse: dict[str, str] = {}
        if sse is not None:
            self._sse["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = sse_kms_key_id
        s3_options: dict[str, Any] = {"addressing_style": "path" if path_style else "auto"}
        if upload_checksum and not _payload_signing_configured():
            # S3 checks the body against the signed CRC32C header: no SHA-256 of every body.
            s3_options["payload_signing_enabled"] = False
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_concurrency,
            s3=s3_options,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client_lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._s3: Any = None
        self._probe_lock = asyncio.Lock()
        self._conditional_writes: bool | None = None

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self._bucket!r}, endpoint_url={self._endpoint_url!r})"

    @property
    def bucket(self) -> str:
        return self._bucket

    # -- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Make the client (HTTP session, S3 model, endpoint rules) now rather than on the
        first request; :meth:`close` releases it."""
        await self._client()

    async def _client(self) -> Any:
        if self._s3 is None:
            async with self._client_lock:
                if self._s3 is None:
                    _write_bodies_in_place()
                    stack = AsyncExitStack()
                    client = await stack.enter_async_context(
                        _session().create_client(
                            "s3",
                            endpoint_url=self._endpoint_url,
                            region_name=self._region,
                            config=self._config,
                        )
                    )
                    # A bytes body is sent as it is (see the module docstring).
                    client.meta.events.unregister(
                        "before-parameter-build.s3.PutObject", convert_body_to_file_like_object
                    )
                    self._s3, self._stack = client, stack
        return self._s3

    def backoff(self, retry: int) -> float:
        """Seconds to sleep before retry number ``retry`` (1 for the second attempt)."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _request(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """``op(client)`` under the retry policy; ``what`` names it in errors."""
        last: BaseException | None = None
        for attempt in range(1, self._max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff(attempt - 1))
            async with self._slots:
                client = await self._client()
                try:
                    return await op(client)
                except ClientError as e:
                    if not _retriable(e):
                        raise ObjectStoreError(f"{what}: {_describe(e)}") from e
                    last = e
                except _TRANSIENT as e:
                    last = e
                except BotoCoreError as e:  # credentials, parameters: configuration errors
                    raise ObjectStoreError(f"{what}: {_describe(e)}") from e
            log.info(
                "%s: attempt %d of %d failed: %s",
                what,
                attempt,
                self._max_attempts,
                _describe(last),
            )
        log.warning("%s: giving up after %d attempts: %s", what, self._max_attempts, last)
        raise ObjectStoreUnavailable(
            f"{what}: failed {self._max_attempts} times, last: {_describe(last)}",
            self._max_attempts,
        ) from last

    def _url(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    async def _put_object(
        self,
        client: Any,
        key: str,
        body: bytes | bytearray,
        crc: int,
        token: str | None = None,
    ) -> None:
        metadata = {CRC_METADATA: _crc_hex(crc)}
        kwargs: dict[str, Any] = {}
        if token is not None:
            metadata[TOKEN_METADATA] = token
            kwargs["IfNoneMatch"] = "*"
        if self._upload_checksum:
            kwargs["ChecksumCRC32C"] = base64.b64encode(crc.to_bytes(4, "big")).decode()
        kwargs.update(self._sse)
        await client.put_object(
            Bucket=self._bucket, Key=key, Body=body, Metadata=metadata, **kwargs
        )

    async def _head(self, client: Any, key: str) -> dict[str, Any]:
        try:
            return dict(await client.head_object(Bucket=self._bucket, Key=key))
        except ClientError as e:
            if _is_not_found(e):
                raise NotFound(key) from None
            raise

    # -- writes ------------------------------------------------------------------------------

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        """Store ``data`` under ``key``, replacing any object there; durable on return."""
        validate_key(key)
        body = _body(data)
        crc = crc32c.crc32c(body)

        async def op(client: Any) -> None:
            await self._put_object(client, key, body, crc)

        await self._request(f"PUT {self._url(key)}", op)

    async def create(self, key: str, data: Buffer | Sequence[Buffer]) -> bool:
        """Store ``data`` only if ``key`` does not exist (``If-None-Match: *``); False, and
        nothing written, if it does. Exactly one of concurrent creators gets True, across
        processes and retries (see the module docstring)."""
        validate_key(key)
        body = _body(data)
        if not await self._conditional_writes_work(key):
            raise ObjectStoreError(
                f"{self._endpoint_url or 'S3'} does not honour If-None-Match: * on PUT "
                "(conditional writes); create() cannot promise a single winner there"
            )
        return await self._create(key, body)

    async def _create(self, key: str, body: bytes | bytearray) -> bool:
        crc = crc32c.crc32c(body)
        token = uuid.uuid4().hex

        async def op(client: Any) -> bool:
            try:
                await self._put_object(client, key, body, crc, token)
                return True
            except ClientError as e:
                if _status(e) != 412:
                    raise
            # Refused: but an earlier send may have created the object and lost its answer,
            # so look whose object it is. (Not only after our own failed attempts: aiohttp
            # resends a PUT once by itself when the connection drops without an answer.)
            try:
                head = await self._head(client, key)
            except NotFound:
                raise _Retry(f"{key} was deleted between a refused create and HEAD") from None
            return bool((head.get("Metadata") or {}).get(TOKEN_METADATA) == token)

        return await self._request(f"create {self._url(key)}", op)

    async def _conditional_writes_work(self, near: str) -> bool:
        if self._conditional_writes is None:
            async with self._probe_lock:
                if self._conditional_writes is None:
                    self._conditional_writes = await self._probe(near)
        return self._conditional_writes

    async def _probe(self, near: str) -> bool:
        # Beside the key being created: a policy that lets us write there lets the probe.
        directory, slash, _ = near.rpartition("/")
        key = f"{directory}{slash}{TEMP_PREFIX}kafscale-probe-{uuid.uuid4().hex}"
        try:
            if not await self._create(key, b""):
                raise ObjectStoreError(f"conditional-write probe: fresh key {key} already existed")
        except ObjectStoreError as e:
            if isinstance(e, ObjectStoreUnavailable) or _status_of(e) != 501:
                raise
            log.error("%s rejects conditional writes: %s", self._endpoint_url or "S3", e)
            return False
        try:
            second = await self._create(key, b"")
        finally:
            try:
                await self._delete(key)
            except ObjectStoreError as e:
                log.warning("could not delete the conditional-write probe %s: %s", key, e)
        if second:
            log.error(
                "%s ignores If-None-Match: * (a second create of %s succeeded)",
                self._endpoint_url or "S3",
                key,
            )
        return not second

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """The whole object, verified (length and CRC32C); :class:`NotFound` if absent."""
        validate_key(key)

        async def op(client: Any) -> bytes:
            try:
                response = await client.get_object(Bucket=self._bucket, Key=key)
            except ClientError as e:
                if _is_not_found(e):
                    raise NotFound(key) from None
                raise
            async with response["Body"] as stream:
                body: bytes = await stream.read()
            _verify_whole(key, response, body)
            return body

        return await self._request(f"GET {self._url(key)}", op)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, shorter (possibly empty) past its end,
        verified against ``Content-Range``; :class:`NotFound` if absent, :class:`ValueError`
        if ``start < 0`` or ``end < start``."""
        if start < 0 or end < start:
            raise ValueError(f"bad byte range [{start}, {end})")
        validate_key(key)
        if start == end:
            # No Range header names zero bytes; still answer NotFound for a missing object.
            async def head(client: Any) -> bytes:
                await self._head(client, key)
                return b""

            return await self._request(f"HEAD {self._url(key)}", head)

        async def op(client: Any) -> bytes:
            try:
                response = await client.get_object(
                    Bucket=self._bucket, Key=key, Range=f"bytes={start}-{end - 1}"
                )
            except ClientError as e:
                if _is_not_found(e):
                    raise NotFound(key) from None
                if _status(e) == 416:  # start is at or past the end of the object
                    return b""
                raise
            async with response["Body"] as stream:
                body: bytes = await stream.read()
            if response["ResponseMetadata"]["HTTPStatusCode"] == 200:
                # The server ignored Range and sent the whole object.
                _verify_whole(key, response, body)
                return body[start:end]
            _verify_range(key, response, body, start, end)
            return body

        return await self._request(f"GET {self._url(key)} [{start}, {end})", op)

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted (S3's UTF-8 byte order); every page of the
        listing, each page retried on its own."""
        _validate_prefix(prefix)
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
            if token is not None:
                kwargs["ContinuationToken"] = token

            async def op(client: Any, kwargs: dict[str, Any] = kwargs) -> Any:
                return await client.list_objects_v2(**kwargs)

            page = await self._request(f"LIST {self._url(prefix)}", op)
            keys.extend(item["Key"] for item in page.get("Contents") or ())
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                raise ObjectStoreError(f"LIST {self._url(prefix)}: truncated page without a token")
        return sorted(key for key in keys if not _hidden(key))

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""
        validate_key(key)
        await self._delete(key)

    async def _delete(self, key: str) -> None:
        async def op(client: Any) -> None:
            await client.delete_object(Bucket=self._bucket, Key=key)

        await self._request(f"DELETE {self._url(key)}", op)

    async def close(self) -> None:
        """Close the HTTP session and its connections (a later call opens new ones)."""
        stack, self._stack, self._s3 = self._stack, None, None
        if stack is not None:
            await stack.aclose()


def _status_of(error: BaseException) -> int:
    cause = error.__cause__
    return _status(cause) if isinstance(cause, ClientError) else 0
