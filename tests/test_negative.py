"""Bad input is refused with a :class:`ProtocolError` (exactly that type: never ``IndexError``,
``struct.error``, ``UnicodeDecodeError`` or a bare ``ValueError``) that names the message and,
where it can, the field and the byte offset.

Several cases here (wrong container types, non-bool bools, unusual memoryviews, out-of-range
varints, unknown tags out of order) were bugs found by these tests and fixed since.
"""

from __future__ import annotations

import array
import os
import struct
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generated import registry
from kafscale.protocol import accelerated, wire
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.message import Message
from kafscale.protocol.reference import reference_read, reference_write
from tests.conftest import shared_path
from tests.golden import Golden, all_golden, params
from tests.strategies import all_message_versions, filled_message, messages

GOLDEN = all_golden()
FUZZ_EXAMPLES = int(os.environ.get("KAFSCALE_FUZZ_EXAMPLES", "1000"))


def cls_of(name: str) -> Any:
    """The class of a message by name (typed Any: each has its own fields)."""
    return registry.message_class(name)


def refused(fn: Callable[[], object]) -> ProtocolError:
    """Run ``fn``; it must raise a ProtocolError, exactly that type."""
    with pytest.raises(ProtocolError) as info:
        fn()
    error = info.value
    assert type(error) is ProtocolError, f"{type(error).__name__} is not ProtocolError: {error}"
    return error


def decode_refused(name: str, data: bytes, version: int) -> ProtocolError:
    cls = cls_of(name)
    error = refused(lambda: cls.decode(data, version))
    assert error.message == f"{name} v{version}", error
    # The interpreted codec refuses the same bytes, at the same place.
    ref = refused(lambda: reference_read(cls, data, version))
    assert (ref.field, ref.offset) == (error.field, error.offset)
    return error


def encode_refused(obj: Message, version: int) -> ProtocolError:
    error = refused(lambda: obj.encode(version))
    assert error.message == f"{type(obj).NAME} v{version}", error
    ref = refused(lambda: reference_write(obj, version))
    assert ref.field == error.field
    return error


def assigned(obj: Any, attr: str, value: object) -> bool:
    """Set an ill-typed value for the encoder to refuse. A native class of the compiled build
    (``KAFSCALE_ACCELERATE``) refuses it at once with TypeError, as mypy does statically: then
    False (nothing to encode)."""
    if accelerated.active and type(obj).__module__ in accelerated.MODULES:
        with pytest.raises(TypeError):
            setattr(obj, attr, value)
        return False
    setattr(obj, attr, value)
    return True


# --- truncation and trailing bytes ------------------------------------------------------------


def built_samples() -> list[Any]:
    """Messages with every field set (unknown tags included), beyond the golden corpus."""
    out = []
    for name, version in [
        ("MetadataResponse", 12),
        ("FetchRequest", 15),
        ("FetchResponse", 16),
        ("ProduceRequest", 8),
        ("CreateTopicsResponse", 5),
        ("ConsumerGroupHeartbeatResponse", 0),
        ("DescribeClientQuotasResponse", 1),
        ("RequestHeader", 2),
    ]:
        obj = filled_message(cls_of(name), version, unknown=True)
        out.append(pytest.param(name, version, obj.encode(version), id=f"{name}-v{version}"))
    return out


def check_every_truncation(cls: type[Message], data: bytes, version: int) -> None:
    """No proper prefix of a valid message decodes, so the assertion holds at every cut with no
    exceptions: the decoder reads left to right and decides only from bytes it has read (its
    bounds checks only get more permissive on a longer buffer), so if ``data[:i]`` decoded,
    decoding ``data`` would take the same steps, stop at ``i`` and find trailing bytes, yet
    ``data`` is a valid message."""
    label = f"{cls.NAME} v{version}"
    for i in range(len(data)):
        with pytest.raises(ProtocolError) as info:
            cls.decode(data[:i], version)
        error = info.value
        assert type(error) is ProtocolError
        assert error.message == label
        assert error.field, f"no field named for the cut at {i}: {error}"
        assert error.offset is not None and 0 <= error.offset <= i, (i, str(error))
    # And a byte too many is refused too, at the end of the message.
    error = refused(lambda: cls.decode(data + b"\x00", version))
    assert (error.message, error.offset) == (label, len(data))
    assert "trailing" in error.reason


@pytest.mark.parametrize("golden", params(GOLDEN))
def test_truncated_golden_refused_everywhere(golden: Golden | None) -> None:
    shared_path("protocol-golden")
    assert golden is not None
    check_every_truncation(golden.cls, golden.data, golden.version)


@pytest.mark.parametrize(("name", "version", "data"), built_samples())
def test_truncated_built_messages_refused_everywhere(name: str, version: int, data: bytes) -> None:
    assert len(data) > 30  # really filled
    check_every_truncation(cls_of(name), data, version)


def test_golden_sample_mix() -> None:
    """The corpus used above covers requests and responses, flexible and not."""
    shared_path("protocol-golden")
    kinds = {(g.kind, g.flexible) for g in GOLDEN}
    assert {("request", True), ("request", False), ("response", True), ("response", False)} <= kinds
    assert len(GOLDEN) > 1000


# --- oversized lengths and counts -------------------------------------------------------------

BIG = 2**31 - 1

OVERSIZED: list[tuple[str, int, bytes, str, int | None]] = [
    # (message, version, bytes, field, the declared length the error must quote): each
    # declares more than the buffer holds. Compact lengths are stored plus one.
    ("DescribeGroupsRequest", 0, struct.pack(">i", BIG) + bytes(16), "Groups", BIG),
    ("DescribeGroupsRequest", 5, wire.uvarint(BIG) + bytes(15), "Groups", BIG - 1),
    ("DescribeGroupsRequest", 5, wire.uvarint(2**32 - 1) + bytes(15), "Groups", 2**32 - 2),
    ("DescribeGroupsRequest", 0, struct.pack(">ih", 1, 0x7FFF) + bytes(14), "Groups[0]", 0x7FFF),
    ("DescribeGroupsRequest", 5, b"\x02" + wire.uvarint(BIG) + bytes(14), "Groups[0]", BIG - 1),
    ("SaslHandshakeRequest", 1, struct.pack(">h", 0x7FFF) + b"x" * 18, "Mechanism", 0x7FFF),
    ("SaslAuthenticateRequest", 0, struct.pack(">i", BIG) + bytes(16), "AuthBytes", BIG),
    ("SaslAuthenticateRequest", 2, wire.uvarint(BIG) + bytes(15), "AuthBytes", BIG - 1),
    (
        "ListTransactionsRequest",
        0,
        b"\x01" + wire.uvarint(BIG) + bytes(14),
        "ProducerIdFilters",
        BIG - 1,
    ),
    # 5 int64 announced, 2 present: the count passes the byte check, the third value does not.
    ("ListTransactionsRequest", 0, b"\x01\x06" + bytes(16), "ProducerIdFilters[2]", None),
]


def _produce_with_records_length(version: int, length: int) -> bytes:
    """ProduceRequest with one partition whose records claim ``length`` bytes (none follow)."""
    prq = cls_of("ProduceRequest")
    mod = __import__(prq.__module__, fromlist=["x"])
    obj = prq(
        topic_data=[
            mod.TopicProduceData(
                name="t", partition_data=[mod.PartitionProduceData(index=0, records=b"")]
            )
        ]
    )
    data: bytes = obj.encode(version)
    flexible = version >= 9
    # The records length is the last length before the trailing tag sections.
    tail = 3 if flexible else 0  # partition, topic and top-level empty tag sections
    empty = b"\x01" if flexible else struct.pack(">i", 0)
    assert data[len(data) - tail - len(empty) : len(data) - tail] == empty
    new = wire.uvarint(length + 1) if flexible else struct.pack(">i", length)
    return data[: len(data) - tail - len(empty)] + new + data[len(data) - tail :]


OVERSIZED += [
    (
        "ProduceRequest",
        v,
        _produce_with_records_length(v, BIG),
        "TopicData[0].PartitionData[0].Records",
        BIG,
    )
    for v in (3, 9)
]


@pytest.mark.parametrize(
    ("name", "version", "data", "field", "declared"),
    [pytest.param(*case, id=f"{case[0]}-v{case[1]}-{i}") for i, case in enumerate(OVERSIZED)],
)
def test_oversized_lengths_refused_without_allocating(
    name: str, version: int, data: bytes, field: str, declared: int | None
) -> None:
    tracemalloc.start()
    try:
        error = decode_refused(name, data, version)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.field == field
    assert error.offset is not None
    assert peak < 1 << 20, f"decoding {len(data)} bytes allocated {peak} bytes"
    if declared is None:
        assert "needs" in error.reason, error
    else:
        assert "length" in error.reason and str(declared) in error.reason, error


def test_array_count_names_the_count() -> None:
    error = decode_refused("DescribeGroupsRequest", struct.pack(">i", BIG) + bytes(16), 0)
    assert str(BIG) in error.reason and "16" in error.reason
    assert error.offset == 4


def test_huge_tag_section_refused() -> None:
    # ApiVersionsRequest v3: two empty compact strings, then the tag section.
    base = b"\x01\x01"
    cls = cls_of("ApiVersionsRequest")
    assert cls.decode(base + b"\x00", 3) == cls()
    for tags in (
        wire.uvarint(BIG) + bytes(8),  # count
        b"\x01\x05" + wire.uvarint(BIG) + bytes(8),  # one field claiming 2**31-1 bytes
    ):
        error = decode_refused("ApiVersionsRequest", base + tags, 3)
        assert error.field == "<tags>"
        assert error.offset is not None and error.offset >= 2


# --- varints ------------------------------------------------------------------------------------


def test_overlong_varint_length_refused() -> None:
    # DescribeGroupsRequest v5: compact array count as a 6-byte varint.
    six = b"\x81\x80\x80\x80\x80\x00"
    error = decode_refused("DescribeGroupsRequest", six + b"\x00\x00", 5)
    assert error.field == "Groups" and error.offset == 0
    assert "varint" in error.reason
    # Five bytes is the limit, and accepted (Kafka does not insist on the shortest form).
    five = b"\x81\x80\x80\x80\x00"  # 1: an empty array
    cls = cls_of("DescribeGroupsRequest")
    assert cls.decode(five + b"\x00\x00", 5) == cls()


def test_overlong_varint_in_tags_refused() -> None:
    six = b"\x80\x80\x80\x80\x80\x00"
    for tags in (six, b"\x01" + six + b"\x00", b"\x01\x05" + six):
        error = decode_refused("ApiVersionsRequest", b"\x01\x01" + tags, 3)
        assert error.field == "<tags>"
        assert "varint" in error.reason


UVARINTS = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**31 - 1, b"\xff\xff\xff\xff\x07"),
    (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
]


@pytest.mark.parametrize(("value", "encoded"), UVARINTS)
def test_uvarint_known_values(value: int, encoded: bytes) -> None:
    assert wire.uvarint(value) == encoded
    assert wire.read_uvarint(encoded, 0) == (value, len(encoded))
    assert wire.uvarlong(value) == encoded
    assert wire.read_uvarlong(encoded, 0) == (value, len(encoded))
    # At an offset, and followed by other bytes.
    assert wire.read_uvarint(b"\xaa" + encoded + b"\xff", 1) == (value, 1 + len(encoded))


def test_uvarlong_limits() -> None:
    top = b"\xff" * 9 + b"\x01"
    assert wire.uvarlong(2**64 - 1) == top
    assert wire.read_uvarlong(top, 0) == (2**64 - 1, 10)
    assert wire.read_uvarlong(b"\x80" * 9 + b"\x00", 0) == (0, 10)  # 10 bytes is allowed
    error = refused(lambda: wire.read_uvarlong(b"\x80" * 10 + b"\x00", 0))
    assert error.offset == 0 and "10 bytes" in error.reason
    error = refused(lambda: wire.read_uvarlong(b"\x00" * 3 + b"\x80" * 10 + b"\x00", 3))
    assert error.offset == 3
    error = refused(lambda: wire.read_varlong(b"\x81" * 10 + b"\x00", 0))
    assert error.offset == 0
    assert wire.read_varlong(b"\x81" * 9 + b"\x00", 0)[1] == 10


def test_uvarint_limits() -> None:
    assert wire.read_uvarint(b"\x80\x80\x80\x80\x00", 0) == (0, 5)
    error = refused(lambda: wire.read_uvarint(b"\x80\x80\x80\x80\x80\x00", 0))
    assert error.offset == 0 and "5 bytes" in error.reason
    error = refused(lambda: wire.read_uvarint(b"\x00\x00" + b"\xff" * 6, 2))
    assert error.offset == 2
    error = refused(lambda: wire.read_varint(b"\x81" * 5 + b"\x00", 0))
    assert error.offset == 0


def test_uvarint_value_must_fit_32_bits() -> None:
    for read, data, limit in (
        (wire.read_uvarint, b"\xff\xff\xff\xff\x7f", 2**32 - 1),
        (wire.read_uvarlong, b"\xff" * 9 + b"\x7f", 2**64 - 1),
    ):
        try:
            value, _ = read(data, 0)
        except ProtocolError:
            continue
        assert value <= limit, f"{read.__name__} returned {value}"


ZIGZAG32 = [(0, 0), (-1, 1), (1, 2), (-2, 3), (2**31 - 1, 2**32 - 2), (-(2**31), 2**32 - 1)]
ZIGZAG64 = [(0, 0), (-1, 1), (1, 2), (2**63 - 1, 2**64 - 2), (-(2**63), 2**64 - 1)]


@pytest.mark.parametrize(("value", "raw"), ZIGZAG32)
def test_varint_zigzag(value: int, raw: int) -> None:
    encoded = wire.varint(value)
    assert encoded == wire.uvarint(raw)
    assert wire.read_varint(encoded, 0) == (value, len(encoded))
    assert wire.varlong(value) == wire.uvarlong(raw)
    assert wire.read_varlong(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize(("value", "raw"), ZIGZAG64)
def test_varlong_zigzag(value: int, raw: int) -> None:
    encoded = wire.varlong(value)
    assert encoded == wire.uvarlong(raw)
    assert wire.read_varlong(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize(
    ("encoder", "value"),
    [
        (wire.uvarint, -1),
        (wire.uvarint, 2**32),
        (wire.uvarlong, -1),
        (wire.uvarlong, 2**64),
        (wire.varint, 2**31),
        (wire.varint, -(2**31) - 1),
        (wire.varlong, 2**63),
        (wire.varlong, -(2**63) - 1),
    ],
)
def test_varint_encoders_refuse_out_of_range(encoder: Callable[[int], bytes], value: int) -> None:
    error = refused(lambda: encoder(value))
    assert str(value) in error.reason


@given(st.integers(0, 2**32 - 1))
def test_uvarint_round_trip(value: int) -> None:
    encoded = wire.uvarint(value)
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
    assert wire.read_uvarint(encoded, 0) == (value, len(encoded))


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1))
def test_varint_varlong_round_trip(small: int, large: int) -> None:
    encoded = wire.varint(small)
    assert wire.read_varint(encoded, 0) == (small, len(encoded))
    encoded = wire.varlong(large)
    assert wire.read_varlong(encoded, 0) == (large, len(encoded))
    encoded = wire.uvarlong(large + 2**63)
    assert wire.read_uvarlong(encoded, 0) == (large + 2**63, len(encoded))


# --- strings, nulls, versions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "data", "field", "offset"),
    [
        ("DescribeGroupsRequest", 0, b"\x00\x00\x00\x01\x00\x02\xff\xfe", "Groups[0]", 6),
        ("DescribeGroupsRequest", 5, b"\x02\x03a\xc3\x00\x00", "Groups[0]", 3),
        ("SaslHandshakeRequest", 0, b"\x00\x03ab\x80", "Mechanism", 4),
        # UTF-8-encoded surrogate (CESU-style): not valid UTF-8.
        ("SaslHandshakeRequest", 0, b"\x00\x03\xed\xa0\x80", "Mechanism", 2),
        # Overlong encoding of "/".
        ("SaslHandshakeRequest", 0, b"\x00\x02\xc0\xaf", "Mechanism", 2),
        # A tagged string: FetchRequest v12 ClusterId (tag 0).
        ("FetchRequest", 12, None, "ClusterId", None),
    ],
)
def test_invalid_utf8_names_the_field(
    name: str, version: int, data: bytes | None, field: str, offset: int | None
) -> None:
    if data is None:
        good = cls_of(name)(cluster_id="abc").encode(version)
        assert good.count(b"abc") == 1
        data = good.replace(b"abc", b"a\xffc")
    error = decode_refused(name, data, version)
    assert error.field == field
    assert "UTF-8" in error.reason
    if offset is not None:
        assert error.offset == offset


@pytest.mark.parametrize(
    ("name", "version", "data", "field"),
    [
        ("SaslHandshakeRequest", 0, b"\xff\xff", "Mechanism"),  # int16 -1
        ("HeartbeatRequest", 4, b"\x00" + bytes(4) + b"\x01\x00\x00", "GroupId"),  # compact 0
        ("DescribeGroupsRequest", 0, b"\xff\xff\xff\xff", "Groups"),  # int32 -1
        ("DescribeGroupsRequest", 5, b"\x00\x00\x00", "Groups"),  # compact 0
        ("DescribeGroupsRequest", 0, b"\x00\x00\x00\x01\xff\xff", "Groups[0]"),  # element
        ("SaslAuthenticateRequest", 0, b"\xff\xff\xff\xff", "AuthBytes"),
        ("SaslAuthenticateRequest", 2, b"\x00\x00", "AuthBytes"),
    ],
)
def test_null_where_not_nullable(name: str, version: int, data: bytes, field: str) -> None:
    error = decode_refused(name, data, version)
    assert error.field == field
    assert "null" in error.reason


def test_negative_lengths_other_than_minus_one_refused() -> None:
    # MetadataRequest v1: Topics is a nullable array (-1 is null), -2 is garbage.
    cls = cls_of("MetadataRequest")
    assert cls.decode(b"\xff\xff\xff\xff", 1).topics is None
    error = decode_refused("MetadataRequest", b"\xff\xff\xff\xfe", 1)
    assert error.field == "Topics" and "-2" in error.reason
    # A nullable string (InitProducerIdRequest TransactionalId): int16 -2.
    error = decode_refused("InitProducerIdRequest", b"\xff\xfe" + bytes(4), 0)
    assert error.field == "TransactionalId"


@pytest.mark.parametrize("name", ["MetadataRequest", "FetchResponse", "RequestHeader"])
def test_invalid_version_refused(name: str) -> None:
    cls = cls_of(name)
    lo, hi = cls.VALID_VERSIONS
    for v in (lo - 1, hi + 1, 2**15, -(2**15)):
        for fn in (
            lambda v=v: cls.decode(b"", v),
            lambda v=v: cls.read(b"\x00" * 64, 0, v),
            lambda v=v: cls().encode(v),
            lambda v=v: cls().encode_chunks(v),
            lambda v=v: reference_read(cls, b"", v),
            lambda v=v: reference_write(cls(), v),
        ):
            error = refused(fn)
            assert error.message == name
            assert str(v) in error.reason


# --- encoding errors ------------------------------------------------------------------------


def fetch_module() -> Any:
    return __import__(cls_of("FetchRequest").__module__, fromlist=["x"])


def test_non_ignorable_field_at_a_version_without_it() -> None:
    fetch = cls_of("FetchRequest")
    # ReplicaId: versions 0-14, not ignorable (moved into ReplicaState by KIP-903).
    error = encode_refused(fetch(replica_id=5), 15)
    assert error.field == "ReplicaId"
    assert fetch(replica_id=-1).encode(15) == fetch().encode(15)  # the default is fine
    # MetadataRequest.AllowAutoTopicCreation: versions 4+, default true, not ignorable.
    error = encode_refused(cls_of("MetadataRequest")(allow_auto_topic_creation=False), 3)
    assert error.field == "AllowAutoTopicCreation"
    # Nested: FetchPartition.LastFetchedEpoch (12+, not ignorable) at v11.
    m = fetch_module()
    obj = fetch(topics=[m.FetchTopic(partitions=[m.FetchPartition(last_fetched_epoch=3)])])
    error = encode_refused(obj, 11)
    assert error.field == "Topics[0].Partitions[0].LastFetchedEpoch"


def test_ignorable_field_is_dropped() -> None:
    fetch = cls_of("FetchRequest")
    # ClusterId (12+, ignorable), MaxBytes (3+), IsolationLevel (4+), RackId (11+).
    obj = fetch(cluster_id="c", max_bytes=5, isolation_level=1, rack_id="r")
    assert obj.encode(2) == fetch().encode(2)
    assert reference_write(obj, 2) == fetch().encode(2)
    assert fetch.decode(obj.encode(11), 11).cluster_id is None  # dropped, not tagged
    assert fetch.decode(obj.encode(12), 12).cluster_id == "c"


@pytest.mark.parametrize(
    ("name", "version", "attr", "field"),
    [
        ("SaslHandshakeRequest", 1, "mechanism", "Mechanism"),  # string
        ("HeartbeatRequest", 4, "group_id", "GroupId"),  # compact string
        ("DescribeGroupsRequest", 0, "groups", "Groups"),  # array
        ("DescribeGroupsRequest", 5, "groups", "Groups"),  # compact array
        ("SaslAuthenticateRequest", 0, "auth_bytes", "AuthBytes"),  # bytes
        ("GetTelemetrySubscriptionsRequest", 0, "client_instance_id", "ClientInstanceId"),  # uuid
        ("HeartbeatRequest", 0, "generation_id", "GenerationId"),  # int32
        ("FetchRequest", 15, "replica_state", "ReplicaState"),  # tagged struct
        ("UpdateRaftVoterRequest", 0, "kraft_version_feature", "KRaftVersionFeature"),  # struct
        ("ProduceRequest", 3, "timeout_ms", "TimeoutMs"),  # int32 beside a nullable string
    ],
)
def test_none_in_non_nullable_field(name: str, version: int, attr: str, field: str) -> None:
    obj = cls_of(name)()
    if assigned(obj, attr, None):
        error = encode_refused(obj, version)
        assert error.field == field


@pytest.mark.parametrize("value", [None, 2, "x"])
def test_non_bool_in_bool_field(value: object) -> None:
    obj = cls_of("MetadataRequest")()
    if assigned(obj, "allow_auto_topic_creation", value):
        error = encode_refused(obj, 4)
        assert error.field == "AllowAutoTopicCreation"


@pytest.mark.parametrize(
    ("name", "version", "attr", "value", "field"),
    [
        ("ProduceRequest", 3, "acks", 2**15, "Acks"),  # int16
        ("ProduceRequest", 3, "acks", -(2**15) - 1, "Acks"),
        ("HeartbeatRequest", 0, "generation_id", 2**31, "GenerationId"),  # int32
        ("InitProducerIdRequest", 3, "producer_id", 2**63, "ProducerId"),  # int64
        ("InitProducerIdRequest", 3, "producer_epoch", -(2**15) - 1, "ProducerEpoch"),
        ("FindCoordinatorRequest", 1, "key_type", 128, "KeyType"),  # int8
        ("HeartbeatRequest", 0, "generation_id", 1.5, "GenerationId"),  # not an int
        ("HeartbeatRequest", 0, "generation_id", "1", "GenerationId"),
    ],
)
def test_int_out_of_range(name: str, version: int, attr: str, value: object, field: str) -> None:
    obj = cls_of(name)()
    setattr(obj, attr, value)
    error = encode_refused(obj, version)
    assert error.field == field


def test_uint16_range() -> None:
    cls = cls_of("BeginQuorumEpochRequest")
    mod = __import__(cls.__module__, fromlist=["x"])
    for port, ok in ((0, True), (65535, True), (-1, False), (65536, False)):
        obj = cls(leader_endpoints=[mod.LeaderEndpoint(name="n", host="h", port=port)])
        if ok:
            assert cls.decode(obj.encode(1), 1) == obj
        else:
            error = encode_refused(obj, 1)
            assert error.field == "LeaderEndpoints[0].Port"


def test_string_too_long_for_int16_length() -> None:
    cls = cls_of("SaslHandshakeRequest")
    assert cls.decode(cls(mechanism="m" * 0x7FFF).encode(1), 1).mechanism == "m" * 0x7FFF
    error = encode_refused(cls(mechanism="é" * 0x4000), 1)  # 32768 bytes
    assert error.field == "Mechanism"
    # Compact strings have no such limit.
    hb = cls_of("HeartbeatRequest")
    assert hb.decode(hb(group_id="g" * 40000).encode(4), 4).group_id == "g" * 40000


def test_unencodable_string() -> None:
    error = encode_refused(cls_of("SaslHandshakeRequest")(mechanism="\ud800"), 1)
    assert error.field == "Mechanism"


@pytest.mark.parametrize(
    ("name", "version", "attr", "value", "field"),
    [
        ("SaslAuthenticateRequest", 0, "auth_bytes", "text", "AuthBytes"),
        ("SaslAuthenticateRequest", 2, "auth_bytes", [1, 2], "AuthBytes"),
        ("DescribeGroupsRequest", 0, "groups", "abc", "Groups"),
    ],
)
def test_wrong_container_types_refused(
    name: str, version: int, attr: str, value: object, field: str
) -> None:
    obj = cls_of(name)()
    setattr(obj, attr, value)
    with pytest.raises(ProtocolError) as chunks_error:
        obj.encode_chunks(version)  # not only encode(): the chunk list must not hold a str
    assert chunks_error.value.field == field
    error = encode_refused(obj, version)
    assert error.field == field


@pytest.mark.parametrize(
    "view",
    [
        pytest.param(memoryview(array.array("i", [1, 2])), id="itemsize-4"),
        pytest.param(memoryview(b"abcdef")[::2], id="non-contiguous"),
    ],
)
def test_unusual_memoryview_bytes_value(view: memoryview) -> None:
    cls = cls_of("SaslAuthenticateRequest")
    obj = cls(auth_bytes=view)
    try:
        data = obj.encode(0)
    except ProtocolError:
        return  # refusing it would be fine too
    assert cls.decode(data, 0).auth_bytes == view.tobytes()


def test_tagged_fields_in_non_flexible_version_refused() -> None:
    obj = cls_of("FetchRequest")()
    obj._unknown_tags = [(7, b"x")]
    error = encode_refused(obj, 11)
    assert "flexible" in error.reason


def test_unknown_tag_that_the_struct_defines_refused() -> None:
    fetch = cls_of("FetchRequest")
    for tag in (0, 1):  # ClusterId, ReplicaState
        obj = fetch()
        obj._unknown_tags = [(tag, b"\x00")]
        for version in (12, 15):
            error = encode_refused(obj, version)
            assert error.field == "<tags>"


def test_known_tag_in_a_version_where_it_is_not_tagged() -> None:
    """FetchRequest tag 1 (ReplicaState) exists from v15; in v12-14 it is an error on the wire
    (Kafka: "Tag 1 is not valid for version 12"), not an unknown tag to keep."""
    fetch = cls_of("FetchRequest")
    # One tagged field: tag 1, 13 bytes: ReplicaState(ReplicaId=1, ReplicaEpoch=2), no tags.
    tags = b"\x01" + b"\x01" + b"\x0d" + struct.pack(">iq", 1, 2) + b"\x00"
    v15, v12 = fetch().encode(15), fetch().encode(12)
    assert v15.endswith(b"\x00") and v12.endswith(b"\x00")
    state = fetch.decode(v15[:-1] + tags, 15).replica_state
    assert (state.replica_id, state.replica_epoch) == (1, 2)  # fine in v15
    bad = v12[:-1] + tags
    error = decode_refused("FetchRequest", bad, 12)
    assert error.field == "<tags>"
    assert "1" in error.reason
    # A nested one: FetchPartition tag 0 (ReplicaDirectoryId) exists only in v17.
    m = fetch_module()
    obj = fetch(topics=[m.FetchTopic(partitions=[m.FetchPartition()])])
    v16 = obj.encode(16)
    # The partition's empty tag section is followed by the topic's and then two top-level
    # bytes (forgotten topics, rack id) and the top-level tag section.
    cut = len(v16) - 5
    assert v16[cut:] == b"\x00\x00\x01\x01\x00"
    bad = v16[:cut] + b"\x01\x00\x10" + uuid.uuid4().bytes + v16[cut + 1 :]
    assert fetch.decode(bad, 17).topics[0].partitions[0].replica_directory_id != uuid.UUID(int=0)
    error = decode_refused("FetchRequest", bad, 16)
    assert error.field is not None and error.field.startswith("Topics[0].Partitions[0]")


# --- fuzzing ------------------------------------------------------------------------------------


def assert_decode_contained(cls: type[Message], data: bytes, version: int) -> None:
    """Decoding never raises anything but ProtocolError; when it succeeds, the reference codec
    reads the same object and the object encodes again (or refuses with a ProtocolError)."""
    try:
        obj = cls.decode(data, version)
    except ProtocolError as error:
        assert type(error) is ProtocolError
        assert error.message == f"{cls.NAME} v{version}"
        assert error.offset is not None
        with pytest.raises(ProtocolError):
            ref, end = reference_read(cls, data, version)
            if end != len(data):
                raise ProtocolError("trailing bytes") from None
        return
    ref, end = reference_read(cls, data, version)
    assert end == len(data)
    assert ref == obj
    try:
        again = obj.encode(version)
    except ProtocolError as error:
        assert type(error) is ProtocolError
        return
    assert type(cls.decode(again, version)) is cls


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 overwrite, 1 delete, 2 insert."""
    out = bytearray(data)
    for kind, where, value in edits:
        if not out and kind != 2:
            continue
        i = where % (len(out) + (kind == 2)) if out or kind == 2 else 0
        if kind == 0:
            out[i] = value
        elif kind == 1:
            del out[i]
        else:
            out.insert(i, value)
    return bytes(out)


INTERESTING = st.one_of(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]), st.integers(0, 255))
EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 10_000), INTERESTING), min_size=1, max_size=4
)
PAIRS = all_message_versions()


@settings(max_examples=FUZZ_EXAMPLES)
@given(pair=st.sampled_from(PAIRS), data=st.binary(max_size=64))
def test_fuzz_random_bytes(pair: tuple[str, int], data: bytes) -> None:
    name, version = pair
    assert_decode_contained(cls_of(name), data, version)


@settings(max_examples=FUZZ_EXAMPLES)
@given(index=st.integers(0, max(len(GOLDEN) - 1, 0)), edits=EDITS)
def test_fuzz_mutated_golden(index: int, edits: list[tuple[int, int, int]]) -> None:
    shared_path("protocol-golden")
    golden = GOLDEN[index]
    assert_decode_contained(golden.cls, mutate(golden.data, edits), golden.version)


@settings(max_examples=FUZZ_EXAMPLES)
@given(pair=st.sampled_from(PAIRS), data=st.data(), edits=EDITS)
def test_fuzz_mutated_random_messages(
    pair: tuple[str, int], data: st.DataObject, edits: list[tuple[int, int, int]]
) -> None:
    name, version = pair
    cls = cls_of(name)
    obj = data.draw(messages(cls, version))
    assert_decode_contained(cls, mutate(obj.encode(version), edits), version)


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param(b"\x02" + b"\x09\x01a" + b"\x05\x01b", id="descending"),
        pytest.param(b"\x02" + b"\x05\x01a" + b"\x05\x01b", id="repeated"),
    ],
)
def test_decoded_unknown_tags_are_canonical(tags: bytes) -> None:
    cls = cls_of("ApiVersionsRequest")
    data = b"\x01\x01" + tags
    try:
        obj = cls.decode(data, 3)
    except ProtocolError:
        return  # refusing is a fix
    again = obj.encode(3)
    assert cls.decode(again, 3) == obj
