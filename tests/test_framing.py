"""Framing and headers: splitting a byte stream, parsing request headers, KIP-511 fallback."""

from __future__ import annotations

import struct

import pytest

from generated.api_versions_request import ApiVersionsRequest
from generated.api_versions_response import ApiVersion, ApiVersionsResponse
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.registry import APIS
from kafscale.protocol import ProtocolError
from kafscale.protocol.framing import (
    FrameReader,
    decode_request,
    encode_request,
    encode_response,
)


def _bytes(chunks: list) -> bytes:
    return b"".join(chunks)


def test_frames_split_across_feeds_and_joined_in_one() -> None:
    body = ApiVersionsRequest(client_software_name="t", client_software_version="1")
    one = _bytes(encode_request(APIS[18], 3, 7, "c", body))
    two = _bytes(encode_request(APIS[18], 3, 8, "c", body))
    stream = one + two
    reader = FrameReader()
    frames = []
    for i in range(len(stream)):  # one byte at a time
        frames += reader.feed(stream[i : i + 1])
    assert [decode_request(f).header.correlation_id for f in frames] == [7, 8]
    assert reader.buffered == 0
    assert len(FrameReader().feed(stream)) == 2


@pytest.mark.parametrize("size", [-1, 1001])
def test_bad_frame_size_refused_before_buffering(size: int) -> None:
    reader = FrameReader(max_frame=1000)
    with pytest.raises(ProtocolError, match="frame size"):
        reader.feed(struct.pack(">i", size) + b"x")


def test_request_round_trip_with_flexible_header() -> None:
    body = MetadataRequest(topics=[MetadataRequestTopic(name="a")], allow_auto_topic_creation=True)
    frame = _bytes(encode_request(APIS[3], 12, 42, "client-1", body))[4:]
    req = decode_request(frame)
    assert (req.api.api_key, req.version, req.unsupported) == (3, 12, False)
    assert req.header.correlation_id == 42
    assert req.header.client_id == "client-1"
    assert req.body == body


def test_a_frame_received_into_a_bytearray_decodes_as_bytes_do() -> None:
    """The broker receives frames into bytearrays (kafscale.broker.connection): the pure
    decoders and the compiled ones (this test runs against both in CI) read them alike, and
    bytes fields stay bytes."""
    body = MetadataRequest(topics=[MetadataRequestTopic(name="a")], allow_auto_topic_creation=True)
    frame = _bytes(encode_request(APIS[3], 12, 42, "client-1", body))[4:]
    req = decode_request(bytearray(frame))
    assert req.header.client_id == "client-1" and req.body == body
    assert decode_request(bytearray(frame)).body == decode_request(frame).body


def test_unknown_api_key_is_a_protocol_error() -> None:
    frame = struct.pack(">hhi", 999, 0, 1) + b"\x00\x00"
    with pytest.raises(ProtocolError, match="unknown API key 999"):
        decode_request(frame)


def test_newer_api_versions_request_is_answerable_kip_511() -> None:
    # An ApiVersions v99 request from a future client: header v2 with tags, body unknown to us.
    header = struct.pack(">hhih", 18, 99, 5, 3) + b"cli" + b"\x00"
    req = decode_request(header + b"\x01\x02\x03 future body")
    assert req.unsupported and req.body is None
    assert req.header.correlation_id == 5
    assert req.header.client_id == "cli"
    # The answer is an ApiVersionsResponse v0 with UNSUPPORTED_VERSION, header v0.
    answer = ApiVersionsResponse(error_code=35, api_keys=[ApiVersion(api_key=18, max_version=4)])
    out = _bytes(encode_response(5, req.api, 0, answer))
    assert out[4:8] == struct.pack(">i", 5)  # correlation id right after the size
    assert ApiVersionsResponse.decode(out[8:], 0) == answer


def test_api_versions_response_header_is_v0_even_when_flexible() -> None:
    out = _bytes(encode_response(9, APIS[18], 3, ApiVersionsResponse()))
    # size, correlation id, then the body directly: no tag byte of a v1 header.
    assert out[8:] == ApiVersionsResponse().encode(3)
    assert struct.unpack(">i", out[:4])[0] == len(out) - 4


def test_truncated_request_header() -> None:
    with pytest.raises(ProtocolError):
        decode_request(b"\x00\x12")
    with pytest.raises(ProtocolError):
        decode_request(struct.pack(">hhi", 3, 12, 1) + b"\x00")  # client id cut off


def test_trailing_bytes_after_request_body_are_ignored_as_kafka_does() -> None:
    # librdkafka 2.16's Metadata v12 "all topics" request, as captured: 3 bytes after the body.
    frame = bytes.fromhex("0003000c00000003000772646b61666b610000000000010000")
    req = decode_request(frame)
    assert (req.api.api_key, req.version, req.header.client_id) == (3, 12, "rdkafka")
    assert isinstance(req.body, MetadataRequest) and req.body.topics is None
