"""Kafka framing and headers, sans-io: bytes in, requests out; responses in, chunks out.

A frame is an int32 size and that many bytes: the request header, then the body. The header
version depends on the API and version (see ``generated.registry`` and
``codegen/special_cases.py``), so the API key and version are read first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

from generated.registry import APIS, ApiSpec
from generated.request_header import RequestHeader
from generated.response_header import ResponseHeader
from kafscale.protocol import accelerated
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.message import Message
from kafscale.protocol.wire import Buffer

_SIZE = struct.Struct(">i")
_KEY_VERSION = struct.Struct(">hh")

DEFAULT_MAX_FRAME = 100 * 1024 * 1024
"""Kafka's socket.request.max.bytes default (100 MiB): a larger size prefix is refused before
anything is buffered, so a hostile client cannot make the broker allocate it."""


class FrameReader:
    """Splits a byte stream into frames. Feed it what the socket gave; get whole frames."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: Buffer) -> list[bytes]:
        """Add bytes; return every frame now complete (payloads, without the size prefix).

        Raises :class:`ProtocolError` for a negative or oversized size; the connection should
        then be closed, as Kafka does.
        """
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            size = _SIZE.unpack_from(buf, pos)[0]
            if size < 0 or size > self.max_frame:
                raise ProtocolError(f"frame size {size} is outside 0..{self.max_frame}", offset=pos)
            if len(buf) - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received that do not form a whole frame yet."""
        return len(self._buf)


@dataclass
class Request:
    """A parsed request frame."""

    header: RequestHeader
    api: ApiSpec
    version: int
    body: Message | None
    """None only when ``unsupported`` is set (the body was not parsed)."""
    unsupported: bool = False
    """The version is not one Kafka 3.9.1 defines for this API (KIP-511: the broker answers
    ApiVersions with UNSUPPORTED_VERSION and its API list, and drops other such requests)."""


def peek_api(frame: bytes | bytearray) -> tuple[ApiSpec | None, int]:
    """The API (None if the key is unknown) and version of a request frame, read before the
    rest so that a request the broker does not serve is refused without parsing its body."""
    if len(frame) < 4:
        raise ProtocolError("request header is truncated", message="RequestHeader", offset=0)
    key, version = _KEY_VERSION.unpack_from(frame, 0)
    return APIS.get(key), version


def decode_request(frame: bytes | bytearray) -> Request:
    """Parse a request frame payload (header + body): ``bytes``, or the ``bytearray`` the
    broker receives a frame into (the decoders only slice, ``.decode()`` and unpack it, which a
    bytearray does as bytes do; ``bytes`` fields are copied out as ``bytes``, records are
    memoryviews of the frame).

    An unknown API key is a :class:`ProtocolError` (Kafka closes the connection). A version
    this API does not define yields ``unsupported=True`` with the header parsed as far as it can
    be: an ApiVersions request of a newer version than ours must still be answered (KIP-511).
    """
    api, version = peek_api(frame)
    if api is None:
        key = _KEY_VERSION.unpack_from(frame, 0)[0]
        raise ProtocolError(f"unknown API key {key}", message="RequestHeader", offset=0)
    if isinstance(frame, bytearray) and accelerated.active:
        # The compiled decoders take bytes only (mypyc checks the type): one copy there.
        frame = bytes(frame)
    frame = cast(bytes, frame)  # the generated decoders are typed for bytes (see above)
    if not api.is_valid(version):
        # Header versions are only defined for known versions; a newer version of a flexible
        # API uses header v2, whose ClientId is still int16-length (KIP-482), so reading the
        # v1 part of it is always possible and is all an error answer needs.
        header, _ = RequestHeader.read(frame, 0, 1)
        return Request(header, api, version, None, unsupported=True)
    header, pos = RequestHeader.read(frame, 0, api.request_header_version(version))
    # Bytes after the body are ignored, as Kafka's broker ignores them: librdkafka 2.16 sends
    # three extra bytes after a Metadata v12 request, and Kafka answers it.
    body, _ = api.request_type().read(frame, pos, version)
    return Request(header, api, version, body)


def encode_response(correlation_id: int, api: ApiSpec, version: int, body: Message) -> list[Buffer]:
    """Frame a response: size prefix, response header, body chunks (records not copied)."""
    header = ResponseHeader(correlation_id=correlation_id)
    return _frame(header.encode_chunks(api.response_header_version(version)), body, version)


def encode_request(
    api: ApiSpec, version: int, correlation_id: int, client_id: str | None, body: Message
) -> list[Buffer]:
    """Frame a request (for tests and tools that talk to a broker)."""
    header = RequestHeader(
        request_api_key=api.api_key,
        request_api_version=version,
        correlation_id=correlation_id,
        client_id=client_id,
    )
    return _frame(header.encode_chunks(api.request_header_version(version)), body, version)


def _frame(chunks: list[Buffer], body: Message, version: int) -> list[Buffer]:
    chunks += body.encode_chunks(version)
    chunks.insert(0, _SIZE.pack(sum(len(c) for c in chunks)))
    return chunks
