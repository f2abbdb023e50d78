"""A fault-injecting HTTP proxy to put in front of an S3 server (tests only).

Point the S3 client's endpoint at the proxy; it forwards every request to the upstream server
unchanged (``Host`` included, so signatures stay valid) until told otherwise::

    async with FaultProxy(server.endpoint_url) as proxy:
        store = S3ObjectStore(bucket, endpoint_url=proxy.url, path_style=True)
        proxy.inject(slow_down(), count=3)                 # the next 3 requests get 503
        proxy.inject(truncate(), method="GET", seconds=1)  # GET bodies cut for 1 s
        proxy.inject(stall())                              # every request hangs, until clear()
        proxy.clear()
        proxy.seen                                         # requests so far, with their fault

A rule applies to matching requests (``method``; ``path_contains``, a substring of the path
and query, e.g. ``"/bucket/key"`` or ``"continuation-token"``), for the next
``count`` of them, or for ``seconds`` from now (``from_first=True``: from the first request
it matches, so a test that stalls before its request still meets the fault), or (neither) until
:meth:`FaultProxy.clear`; the first live rule that matches wins. Faults:

- :func:`error` (:func:`slow_down`, :func:`internal_error`): an S3 error answer; the request is
  not forwarded.
- :func:`reset`: the connection is dropped without an answer; not forwarded.
- :func:`stall`: no answer (for ``seconds``, or until the client gives up); not forwarded.
- :func:`delay`: forwarded after ``seconds`` (a slow server).
- :func:`drop_response`: forwarded and executed, then the connection is dropped without the
  answer (the write happened; the client cannot know).
- :func:`truncate`: the answer's body is cut to ``keep`` of its length, then the connection
  is closed; ``fix_length=True`` also rewrites ``Content-Length`` so the short answer looks
  complete to HTTP.
- :func:`corrupt`: one byte of the answer's body is flipped.
- :func:`strip_header`: the request is forwarded without a header (a server that ignores it,
  e.g. ``If-None-Match`` or ``Range``).

Each client connection carries one request (answers say ``Connection: close``). The proxy runs
on the caller's event loop (``start``/``stop`` or ``async with``), or in a thread of its own
(``start_in_thread``/``stop_thread``) for synchronous tests; ``inject`` and ``clear`` may be
called from any thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 0
    code: str = ""
    seconds: float | None = None
    keep: float = 0.5
    fix_length: bool = False
    header: str = ""

    def __str__(self) -> str:
        detail = self.code or self.header
        return f"{self.kind}({detail})" if detail else self.kind


def error(status: int = 503, code: str = "SlowDown") -> Fault:
    return Fault("error", status=status, code=code)


def slow_down() -> Fault:
    return error(503, "SlowDown")


def internal_error() -> Fault:
    return error(500, "InternalError")


def reset() -> Fault:
    return Fault("reset")


def stall(seconds: float | None = None) -> Fault:
    return Fault("stall", seconds=seconds)


def delay(seconds: float) -> Fault:
    return Fault("delay", seconds=seconds)


def drop_response() -> Fault:
    return Fault("drop_response")


def truncate(keep: float = 0.5, fix_length: bool = False) -> Fault:
    return Fault("truncate", keep=keep, fix_length=fix_length)


def corrupt() -> Fault:
    return Fault("corrupt")


def strip_header(name: str) -> Fault:
    return Fault("strip_header", header=name)


@dataclass
class Rule:
    fault: Fault
    method: str | None = None
    path_contains: str | None = None
    remaining: int | None = None
    until: float | None = None
    window: float | None = None
    """Seconds the rule lasts from its first match (``until`` is set then)."""
    hits: int = 0

    def live(self, now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.until is None or now < self.until

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and method != self.method.upper():
            return False
        return self.path_contains is None or self.path_contains in target


@dataclass
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    """Path and query."""
    headers: dict[str, str] = field(repr=False)
    """Request headers as received (before any stripping), names lower-cased."""
    fault: str | None
    """The fault applied to it (``str(Fault)``), or None if passed through."""
    status: int | None = None
    """Status of the answer the client got (None: none, or not yet)."""


class _Request:
    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def encode(self, without: str = "") -> bytes:
        drop = {"connection", "proxy-connection", "keep-alive", "expect", without.lower()}
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in drop]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._in_flight = 0
        self.max_in_flight = 0
        """The most requests the proxy held at once since start (or reset_stats)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # -- control -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def inject(
        self,
        fault: Fault,
        *,
        count: int | None = None,
        seconds: float | None = None,
        from_first: bool = False,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> Rule:
        """Apply ``fault`` to the next ``count`` matching requests, or to those of the next
        ``seconds`` (counted from now, or from the first match with ``from_first``), or
        (neither given) until :meth:`clear`."""
        rule = Rule(
            fault,
            method=method,
            path_contains=path_contains,
            remaining=count,
            until=None if seconds is None or from_first else time.monotonic() + seconds,
            window=seconds if from_first else None,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule: requests pass through again."""
        with self._lock:
            self._rules.clear()

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def reset_stats(self) -> None:
        with self._lock:
            self._seen.clear()
            self.max_in_flight = self._in_flight

    def _pick(self, request: _Request) -> tuple[Fault | None, Seen]:
        now = time.monotonic()
        with self._lock:
            fault = None
            for rule in self._rules:
                if rule.live(now) and rule.matches(request.method, request.target):
                    rule.hits += 1
                    if rule.window is not None and rule.until is None:
                        rule.until = now + rule.window
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    fault = rule.fault
                    break
            headers = {k.lower(): v for k, v in request.headers}
            name = None if fault is None else str(fault)
            seen = Seen(request.method, request.target, headers, name)
            self._seen.append(seen)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return fault, seen

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Run the proxy on an event loop in a daemon thread (for synchronous callers)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]

    def stop_thread(self) -> None:
        if self._thread is not None and self._thread_loop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(10)
            self._thread = None

    # -- serving -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        counted = False
        try:
            request = await _read_request(reader, writer)
            if request is None:
                return
            fault, seen = self._pick(request)
            counted = True
            seen.status = await self._serve(request, fault, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            if counted:
                with self._lock:
                    self._in_flight -= 1
            writer.close()
            self._tasks.discard(task)

    async def _serve(
        self,
        request: _Request,
        fault: Fault | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> int | None:
        """Answer ``request``; the status the client got, or None."""
        kind = fault.kind if fault is not None else "pass"
        if fault is not None and kind == "error":
            writer.write(_error_response(request, fault))
            await writer.drain()
            return fault.status
        if kind == "reset":
            writer.transport.abort()
            return None
        if fault is not None and kind == "stall":
            try:
                # Until the client hangs up (EOF) or the stall ends.
                await asyncio.wait_for(reader.read(), fault.seconds)
            except TimeoutError:
                pass
            writer.transport.abort()
            return None
        if fault is not None and kind == "delay":
            await asyncio.sleep(fault.seconds or 0)
        raw = await self._forward(request, fault.header if kind == "strip_header" else "")
        if kind == "drop_response":
            writer.transport.abort()
            return None
        head, body = _split_response(raw, request.method)
        status = int(head.split(b" ", 2)[1])
        if fault is not None and kind == "truncate" and body:
            body = body[: int(len(body) * fault.keep)]
            if fault.fix_length:
                head = _set_header(head, "Content-Length", str(len(body)))
        elif kind == "corrupt" and body:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0xFF
            body = bytes(flipped)
        # Then closed (every answer says Connection: close): a truncated body ends short of
        # its Content-Length unless fix_length rewrote it.
        writer.write(head + body)
        await writer.drain()
        return status

    async def _forward(self, request: _Request, without: str) -> bytes:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            up_writer.write(request.encode(without))
            await up_writer.drain()
            return await up_reader.read()  # the upstream closes after its answer
        finally:
            up_writer.close()


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # connected and left
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    request = _Request(method.upper(), target, headers, b"")
    if (request.header("Expect") or "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # answered here; not forwarded
        await writer.drain()
    if (request.header("Transfer-Encoding") or "").lower() == "chunked":
        request.body = await _read_chunked(reader)  # forwarded as it came, still chunked
    else:
        request.body = await reader.readexactly(int(request.header("Content-Length") or 0))
    return request


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    raw = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line
                line = await reader.readuntil(b"\r\n")
                raw += line
                if line == b"\r\n":
                    return bytes(raw)
        raw += await reader.readexactly(size + 2)


def _dechunk(raw: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";", 1)[0].strip(), 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def _split_response(raw: bytes, method: str) -> tuple[bytes, bytes]:
    """(head with ``Connection: close`` and a Content-Length framing, body)."""
    end = raw.index(b"\r\n\r\n") + 4
    head, body = raw[:end], raw[end:]
    if _get_header(head, "Transfer-Encoding").lower() == "chunked":
        body = _dechunk(body)
        head = _set_header(_del_header(head, "Transfer-Encoding"), "Content-Length", str(len(body)))
    elif method != "HEAD" and not _get_header(head, "Content-Length"):
        head = _set_header(head, "Content-Length", str(len(body)))
    return _set_header(head, "Connection", "close"), body


def _get_header(head: bytes, name: str) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return ""


def _del_header(head: bytes, name: str) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    kept = [lines[0]] + [
        line for line in lines[1:] if line.partition(":")[0].strip().lower() != name.lower()
    ]
    return "\r\n".join(kept).encode("latin-1")


def _set_header(head: bytes, name: str, value: str) -> bytes:
    lines = _del_header(head, name).decode("latin-1").rstrip("\r\n").split("\r\n")
    lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error_response(request: _Request, fault: Fault) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>injected by the test fault proxy</Message>"
        "<RequestId>kafscale-fault-proxy</RequestId></Error>"
    ).encode()
    if request.method == "HEAD":
        body = b""
    head = (
        f"HTTP/1.1 {fault.status} {fault.code}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
