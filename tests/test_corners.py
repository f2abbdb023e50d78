"""The corners of Kafka's message definitions (../shared/notes/kafka-protocol-corners.md), checked
on the generated model and on the wire, plus unit tests of the code generator's loader.

The model checks compare the generated ``_fields`` tables with an independent reading of the
JSON definitions (a few lines below, not the generator's code), so a generator bug cannot hide
behind the same bug in the test.
"""

from __future__ import annotations

import json
import keyword
import math
import struct
import uuid
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from codegen.model import MAX_VERSION, SpecError, Versions, build_message, snake_case
from codegen.specs import SpecFile, parse_spec, read_spec_files, strip_comments
from generated import registry
from kafscale.protocol.message import Struct, in_range
from kafscale.protocol.reference import reference_read, reference_write
from tests.conftest import shared_path
from tests.golden import Golden, all_golden, params

RELEASE = "3.9.1"
Range = tuple[int, int] | None  # None: the empty range
PRIMITIVES = {
    "bool",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "float64",
    "uuid",
    "string",
    "bytes",
    "records",
}
SHARE_GROUP_APIS = {
    "ShareGroupHeartbeat",
    "ShareGroupDescribe",
    "ShareFetch",
    "ShareAcknowledge",
    "InitializeShareGroupState",
    "ReadShareGroupState",
    "WriteShareGroupState",
    "DeleteShareGroupState",
    "ReadShareGroupStateSummary",
}


def cls_of(name: str) -> Any:
    """The class of a message by name (typed Any: each has its own fields)."""
    return registry.message_class(name)


def module_of(name: str) -> Any:
    return __import__(cls_of(name).__module__, fromlist=["x"])


# --- an independent reading of the definitions ------------------------------------------------


def specs_dir() -> Path:
    return shared_path("kafka-message-specs", RELEASE)


@cache
def definitions() -> dict[str, dict[str, Any]]:
    """name -> JSON of every definition (Kafka's files have whole-line ``//`` comments only)."""
    out = {}
    for path in sorted(specs_dir().glob("*.json")):
        lines = path.read_text(encoding="utf-8").splitlines()
        out[path.stem] = json.loads("\n".join(x for x in lines if not x.lstrip().startswith("//")))
    return out


def parse_range(text: str | None) -> Range:
    if text is None or text == "none":
        return None
    if text.endswith("+"):
        return (int(text[:-1]), MAX_VERSION)
    lo, _, hi = text.partition("-")
    return (int(lo), int(hi or lo))


def intersect(a: Range, b: Range) -> Range:
    if a is None or b is None:
        return None
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def norm(r: tuple[int, int] | None) -> Range:
    return None if r is None or r[0] > r[1] else r


def kafka_default(field: dict[str, Any]) -> Any:
    """Kafka's FieldSpec default rules; ``()`` stands for a fresh empty list / default struct."""
    ftype: str = field["type"]
    raw = field.get("default")
    element = ftype.removeprefix("[]")
    if ftype.startswith("[]") or element not in PRIMITIVES:
        return None if raw == "null" else ()
    if raw is None:
        return {
            "bool": False,
            "float64": 0.0,
            "uuid": uuid.UUID(int=0),
            "string": "",
            "bytes": b"",
            "records": None,
        }.get(element, 0)
    if raw == "null":
        return None
    if element == "bool":
        return raw in (True, "true")
    if element == "float64":
        return float(raw)
    if element == "string":
        return raw
    return int(str(raw).strip(), 0)


def fresh(value: Any, spec_struct: type[Struct] | None, is_array: bool) -> Any:
    if value == () and is_array:
        return []
    if value == () and spec_struct is not None:
        return spec_struct()
    return value


def check_struct(
    cls: type[Struct],
    fields: list[dict[str, Any]],
    parent: Range,
    doc: dict[str, Any],
    seen: set[str],
    path: str,
) -> int:
    """Compare ``cls._fields`` with the JSON ``fields``; returns the number of fields checked."""
    commons = {c["name"]: c for c in doc.get("commonStructs", [])}
    valid = parse_range(doc["validVersions"])
    assert [f.kafka_name for f in cls._fields] == [f["name"] for f in fields], path
    instance = cls()
    names = [f.name for f in cls._fields]
    assert len(set(names)) == len(names), f"{path}: two fields share a Python name"
    count = 0
    for spec, field in zip(cls._fields, fields, strict=True):
        where = f"{path}.{field['name']}"
        versions = intersect(parse_range(field["versions"]), parent)
        assert norm(spec.versions) == versions, where
        assert norm(spec.nullable) == intersect(
            parse_range(field.get("nullableVersions")), versions
        )
        assert norm(spec.tagged) == intersect(parse_range(field.get("taggedVersions")), versions)
        assert spec.tag == (None if "tag" not in field else int(field["tag"])), where
        assert spec.ignorable == bool(field.get("ignorable", False)), where
        assert spec.kafka_type == field["type"], where
        assert spec.name == snake_case(field["name"]), where
        assert spec.name.isidentifier() and not keyword.iskeyword(spec.name), where
        flexible = field.get("flexibleVersions")
        assert (spec.flexible is None) == (flexible is None), where
        if flexible is not None:
            assert norm(spec.flexible) == parse_range(flexible), where
        expected = kafka_default(field)
        assert spec.default == expected and type(spec.default) is type(expected), where
        element = field["type"].removeprefix("[]")
        actual = getattr(instance, spec.name)
        assert actual == fresh(expected, spec.struct, spec.is_array), where
        count += 1
        if element in PRIMITIVES:
            assert spec.struct is None, where
            continue
        assert spec.struct is not None and spec.struct.__name__ == element, where
        if "fields" in field:
            count += check_struct(spec.struct, field["fields"], versions, doc, seen, where)
        elif element not in seen:  # a common struct: its own versions, checked once
            seen.add(element)
            common = commons[element]
            own = intersect(parse_range(common["versions"]), valid)
            count += check_struct(spec.struct, common["fields"], own, doc, seen, element)
    return count


def count_fields(doc: dict[str, Any]) -> int:
    def count(fields: list[dict[str, Any]]) -> int:
        return sum(1 + count(f.get("fields", [])) for f in fields)

    return count(doc["fields"]) + sum(count(c["fields"]) for c in doc.get("commonStructs", []))


def test_generated_fields_match_the_definitions() -> None:
    """Every field of every struct of all 186 messages: names, types, effective versions
    (intersected with the parent's and the message's), nullable and tagged versions, tags
    (some are JSON strings), ignorable, defaults (every form) and the default instance."""
    docs = definitions()
    assert len(docs) == 186
    assert set(docs) == set(registry.MESSAGES)
    total = 0
    for name, doc in docs.items():
        cls = cls_of(name)
        assert (cls.NAME, cls.TYPE, cls.API_KEY) == (name, doc["type"], doc.get("apiKey"))
        valid = parse_range(doc["validVersions"])
        assert norm(cls.VALID_VERSIONS) == valid
        assert norm(cls.FLEXIBLE_VERSIONS) == parse_range(doc["flexibleVersions"])
        total += check_struct(cls, doc["fields"], valid, doc, set(), name)
    assert total == sum(count_fields(doc) for doc in docs.values())  # every one was compared


# --- values and versions ----------------------------------------------------------------------


def field_spec(cls: type[Struct], kafka_name: str) -> Any:
    return next(f for f in cls._fields if f.kafka_name == kafka_name)


def test_string_tag() -> None:
    # BrokerHeartbeatRequest.OfflineLogDirs has "tag": "0" (a JSON string).
    assert definitions()["BrokerHeartbeatRequest"]["fields"][-1]["tag"] == "0"
    cls = cls_of("BrokerHeartbeatRequest")
    spec = field_spec(cls, "OfflineLogDirs")
    assert spec.tag == 0 and type(spec.tag) is int
    dirs = [uuid.UUID(int=1), uuid.UUID(int=2)]
    data = cls(offline_log_dirs=dirs).encode(1)
    # Top-level tag section at the end: 1 field, tag 0, 33 bytes (count 3, two uuids).
    assert data.endswith(b"\x01\x00\x21\x03" + dirs[0].bytes + dirs[1].bytes)
    assert cls.decode(data, 1).offline_log_dirs == dirs


def test_default_forms() -> None:
    fetch = cls_of("FetchRequest")()
    assert fetch.max_bytes == 0x7FFFFFFF  # "0x7fffffff"
    assert fetch.replica_id == -1  # "-1"
    assert fetch.cluster_id is None  # "null"
    assert fetch.session_epoch == -1
    assert fetch.rack_id == ""  # ""
    assert cls_of("MetadataRequest")().allow_auto_topic_creation is True  # "true"
    assert cls_of("BrokerHeartbeatResponse")().is_fenced is True
    assert cls_of("LeaderAndIsrRequest")().is_kraft_controller is False  # "false"
    assert cls_of("OffsetForLeaderEpochRequest")().replica_id == -2  # JSON int -2
    update = module_of("UpdateFeaturesRequest")
    assert update.FeatureUpdateKey().upgrade_type == 1  # JSON int 1
    assert cls_of("CreateTopicsRequest")().timeout_ms == 60000
    assert cls_of("ConsumerGroupHeartbeatResponse")().assignment is None  # null struct
    assert cls_of("FetchRequest")().replica_state == module_of("FetchRequest").ReplicaState()
    produce = module_of("ProduceRequest")
    assert produce.PartitionProduceData().records is None  # records: null by default


def test_absent_fields_decode_to_defaults() -> None:
    """FetchRequest v0 has none of the later fields: they come back as their defaults."""
    fetch = cls_of("FetchRequest")
    obj = fetch.decode(fetch(max_wait_ms=5).encode(0), 0)
    assert obj == fetch(max_wait_ms=5)
    assert (obj.max_bytes, obj.isolation_level, obj.session_epoch) == (0x7FFFFFFF, 0, -1)
    assert obj.cluster_id is None and obj.rack_id == "" and obj.forgotten_topics_data == []


@pytest.mark.parametrize("golden", params(all_golden()))
def test_golden_absent_fields_are_defaults(golden: Golden | None) -> None:
    shared_path("protocol-golden")
    assert golden is not None
    obj = golden.cls.decode(golden.data, golden.version)
    assert_absent_default(obj, golden.version)


def assert_absent_default(obj: Struct, version: int) -> None:
    for f in obj._fields:
        value = getattr(obj, f.name)
        if not in_range(version, f.versions):
            assert value == f.fresh_default(), f"{type(obj).__name__}.{f.name}"
        elif isinstance(value, Struct):
            assert_absent_default(value, version)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Struct):
                    assert_absent_default(item, version)


def test_version_ranges_intersect() -> None:
    fetch_response = module_of("FetchResponse")
    # SnapshotId's fields say 0+, the tagged SnapshotId field is 12+.
    snapshot = fetch_response.SnapshotId
    assert [f.versions for f in snapshot._fields] == [(12, 17), (12, 17)]
    assert field_spec(fetch_response.PartitionData, "SnapshotId").tagged == (12, 17)
    # nullableVersions 0+ on a 1+ field (CreateTopicsResponse Topics.ErrorMessage).
    result = module_of("CreateTopicsResponse").CreatableTopicResult
    spec = field_spec(result, "ErrorMessage")
    assert spec.versions[0] == 1 and spec.nullable[0] == 1
    rack = field_spec(module_of("UpdateMetadataRequest").UpdateMetadataBroker, "Rack")
    assert rack.versions[0] == rack.nullable[0] == 2
    # An empty intersection (FetchSnapshot-like case, built from JSON): never present.
    msg = build_message(
        {
            "apiKey": 999,
            "type": "request",
            "name": "XRequest",
            "validVersions": "0-3",
            "flexibleVersions": "2+",
            "fields": [
                {
                    "name": "Inner",
                    "type": "Inner",
                    "versions": "2+",
                    "fields": [
                        {"name": "Old", "type": "int32", "versions": "0-1"},
                        {"name": "All", "type": "int32", "versions": "0+"},
                    ],
                },
                {"name": "Late", "type": "string", "versions": "5+"},
            ],
        },
        "XRequest.json",
    )
    inner = msg.root.fields[0].struct
    assert inner is not None
    assert inner.fields[0].versions.empty
    assert inner.fields[1].versions == Versions(2, 3)
    assert msg.root.fields[1].versions.empty


def test_snake_case() -> None:
    assert snake_case("IsKRaftController") == "is_kraft_controller"
    assert snake_case("isKRaftController") == "is_kraft_controller"
    assert snake_case("KRaftVersionFeature") == "kraft_version_feature"
    assert snake_case("timeoutMs") == "timeout_ms"
    assert snake_case("ApiKeys") == "api_keys"
    assert snake_case("SASLAuthBytes") == "sasl_auth_bytes"
    assert snake_case("ProducerIdFilters") == "producer_id_filters"
    assert snake_case("Topics") == "topics"
    for name in ("LeaderAndIsrRequest", "StopReplicaRequest", "UpdateMetadataRequest"):
        assert field_spec(cls_of(name), "isKRaftController").name == "is_kraft_controller"
    assert field_spec(cls_of("CreateTopicsRequest"), "timeoutMs").name == "timeout_ms"
    assert cls_of("CreateTopicsRequest")(timeout_ms=5).timeout_ms == 5
    # Deterministic: the same answer every time, whatever was converted before.
    names = [f.kafka_name for f in cls_of("FetchRequest")._fields]
    assert [snake_case(n) for n in names] == [snake_case(n) for n in reversed(names)][::-1]


def test_common_structs_in_any_order() -> None:
    # AddPartitionsToTxnResponse: AddPartitionsToTxnTopicResult refers to
    # AddPartitionsToTxnPartitionResult, which is defined after it.
    commons = [c["name"] for c in definitions()["AddPartitionsToTxnResponse"]["commonStructs"]]
    assert commons.index("AddPartitionsToTxnTopicResult") < commons.index(
        "AddPartitionsToTxnPartitionResult"
    )
    mod = module_of("AddPartitionsToTxnResponse")
    spec = field_spec(mod.AddPartitionsToTxnTopicResult, "ResultsByPartition")
    assert spec.struct is mod.AddPartitionsToTxnPartitionResult
    # Built from JSON with the common structs in either order: the same model.
    doc: dict[str, Any] = {
        "apiKey": 999,
        "type": "response",
        "name": "XResponse",
        "validVersions": "0",
        "flexibleVersions": "none",
        "fields": [{"name": "Outer", "type": "[]A", "versions": "0+"}],
        "commonStructs": [
            {
                "name": "A",
                "versions": "0+",
                "fields": [{"name": "Bs", "type": "[]B", "versions": "0+"}],
            },
            {
                "name": "B",
                "versions": "0+",
                "fields": [{"name": "X", "type": "int8", "versions": "0"}],
            },
        ],
    }
    forward = build_message(doc, "XResponse.json")
    doc["commonStructs"] = list(reversed(doc["commonStructs"]))
    backward = build_message(doc, "XResponse.json")
    for msg in (forward, backward):
        a = msg.root.fields[0].struct
        assert a is not None and a.name == "A"
        assert a.fields[0].struct is not None and a.fields[0].struct.name == "B"


# --- tagged fields ----------------------------------------------------------------------------


def tag_section(data: bytes, start: int) -> list[tuple[int, bytes]]:
    """Parse a tag section at ``start`` that runs to the end of ``data``."""
    from kafscale.protocol.wire import read_uvarint

    count, pos = read_uvarint(data, start)
    out = []
    for _ in range(count):
        tag, pos = read_uvarint(data, pos)
        size, pos = read_uvarint(data, pos)
        out.append((tag, data[pos : pos + size]))
        pos += size
    assert pos == len(data)
    return out


def test_tagged_fields_omitted_at_default() -> None:
    fetch = cls_of("FetchRequest")
    mod = module_of("FetchRequest")
    # Kafka's bytes (special-cases golden): ReplicaState equal to its default is not written.
    assert fetch().encode(15).hex() == "00000000000000007fffffff0000000000ffffffff01010100"
    explicit = fetch(replica_state=mod.ReplicaState(replica_id=-1, replica_epoch=-1))
    assert explicit.encode(15) == fetch().encode(15)
    base = len(fetch().encode(15)) - 1
    data = fetch(replica_state=mod.ReplicaState(replica_epoch=7)).encode(15)
    assert tag_section(data, base) == [(1, struct.pack(">iq", -1, 7) + b"\x00")]
    data = fetch(cluster_id="c").encode(12)
    assert data.hex() == "ffffffff00000000000000007fffffff0000000000ffffffff0101010100020263"
    # A default struct with an unknown tag of its own is not a default any more.
    state = mod.ReplicaState()
    state._unknown_tags = [(3, b"z")]
    data = fetch(replica_state=state).encode(15)
    assert tag_section(data, base) == [(1, struct.pack(">iq", -1, -1) + b"\x01\x03\x01z")]
    assert fetch.decode(data, 15).replica_state == state


def test_unknown_tags_kept_and_written_in_ascending_order() -> None:
    fetch = cls_of("FetchRequest")
    mod = module_of("FetchRequest")
    obj = fetch(cluster_id="c", replica_state=mod.ReplicaState(replica_id=4))
    obj._unknown_tags = [(9, b"nine"), (4, b"four")]
    data = obj.encode(15)
    base = len(fetch().encode(15)) - 1
    assert [tag for tag, _ in tag_section(data, base)] == [0, 1, 4, 9]
    assert reference_write(obj, 15) == data
    decoded = fetch.decode(data, 15)
    assert decoded._unknown_tags == [(4, b"four"), (9, b"nine")]
    assert decoded.cluster_id == "c" and decoded.replica_state.replica_id == 4
    assert decoded.encode(15) == data


def test_unknown_tags_inside_array_elements_survive() -> None:
    # CreateTopicsResponse v5 (special-cases golden): topic 't' with the tagged
    # TopicConfigErrorCode=42; add an unknown tag 5 next to it in the element's tag section.
    cls = cls_of("CreateTopicsResponse")
    golden = bytes.fromhex("00000000020274000001ffffffffffff01010002002a00")
    obj = cls.decode(golden, 5)
    assert obj.topics[0].topic_config_error_code == 42
    assert obj.encode(5) == golden
    element_tags = bytes.fromhex("010002002a")
    assert golden.count(element_tags) == 1
    extended = golden.replace(element_tags, bytes.fromhex("020002002a0501ff"))
    obj = cls.decode(extended, 5)
    assert obj.topics[0].topic_config_error_code == 42
    assert obj.topics[0]._unknown_tags == [(5, b"\xff")]
    assert obj.encode(5) == extended
    assert reference_read(cls, extended, 5)[0] == obj


def test_nested_tags_in_fetch_and_produce_responses() -> None:
    fetch = module_of("FetchResponse")
    plain = fetch.PartitionData(partition_index=1)
    tagged = fetch.PartitionData(
        partition_index=1,
        diverging_epoch=fetch.EpochEndOffset(epoch=3, end_offset=30),
        current_leader=fetch.LeaderIdAndEpoch(leader_id=2, leader_epoch=5),
        snapshot_id=fetch.SnapshotId(end_offset=100, epoch=9),
    )
    response = fetch.FetchResponse
    for version in (12, 16):
        for partition in (plain, tagged):
            obj = response(responses=[fetch.FetchableTopicResponse(partitions=[partition])])
            data = obj.encode(version)
            assert response.decode(data, version) == obj
            assert reference_write(obj, version) == data
        bare = response(responses=[fetch.FetchableTopicResponse(partitions=[plain])])
        full = response(responses=[fetch.FetchableTopicResponse(partitions=[tagged])])
        # Three tagged fields: count, then (tag, size, payload) each; the payloads are
        # EpochEndOffset (4+8+1), LeaderIdAndEpoch (4+4+1), SnapshotId (8+4+1).
        assert len(full.encode(version)) - len(bare.encode(version)) == 3 * 2 + 13 + 9 + 13
    produce = module_of("ProduceResponse")
    partition = produce.PartitionProduceResponse(
        current_leader=produce.LeaderIdAndEpoch(leader_id=1, leader_epoch=2)
    )
    obj = produce.ProduceResponse(
        responses=[produce.TopicProduceResponse(partition_responses=[partition])]
    )
    assert produce.ProduceResponse.decode(obj.encode(10), 10) == obj
    with pytest.raises(Exception, match="CurrentLeader"):
        obj.encode(9)  # tagged 10+ and not ignorable


# --- nullable structs and scalar types --------------------------------------------------------


def test_nullable_struct() -> None:
    cls = cls_of("ConsumerGroupHeartbeatResponse")
    null = bytes.fromhex("00000000000000000000000000000000ff00")
    present = bytes.fromhex("0000000000000000000000000000000001010000")
    assert cls.decode(null, 0).assignment is None
    assert cls().encode(0) == null
    obj = cls.decode(present, 0)
    assert obj.assignment == module_of("ConsumerGroupHeartbeatResponse").Assignment()
    assert obj.encode(0) == present
    # Kafka reads the marker as "negative means null": -2 is null too.
    assert cls.decode(null.replace(b"\xff\x00", b"\xfe\x00"), 0).assignment is None
    # DescribeTopicPartitionsRequest.Cursor (special-cases golden).
    req = cls_of("DescribeTopicPartitionsRequest")
    assert req.decode(bytes.fromhex("01000007d0ff00"), 0).cursor is None
    cursor = req.decode(bytes.fromhex("01000007d0010274000000030000"), 0).cursor
    assert (cursor.topic_name, cursor.partition_index) == ("t", 3)


def test_uuid_fields() -> None:
    fetch = cls_of("FetchRequest")
    mod = module_of("FetchRequest")
    topic_id = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    data = fetch(topics=[mod.FetchTopic(topic_id=topic_id)]).encode(13)
    assert topic_id.bytes in data
    decoded = fetch.decode(data, 13).topics[0].topic_id
    assert isinstance(decoded, uuid.UUID)
    assert decoded == topic_id and hash(decoded) == hash(topic_id) and str(decoded) == str(topic_id)
    assert decoded.version == topic_id.version
    zero = fetch.decode(fetch(topics=[mod.FetchTopic()]).encode(13), 13).topics[0].topic_id
    assert zero == uuid.UUID(int=0)


@pytest.mark.parametrize("value", [0.0, -0.0, 0.1, -1e300, 5e-324, math.inf, -math.inf])
def test_float64(value: float) -> None:
    req = module_of("AlterClientQuotasRequest")
    obj = req.AlterClientQuotasRequest(
        entries=[req.EntryData(ops=[req.OpData(key="k", value=value)])]
    )
    data = obj.encode(1)
    assert struct.pack(">d", value) in data
    back = req.AlterClientQuotasRequest.decode(data, 1).entries[0].ops[0].value
    assert back == value and math.copysign(1, back) == math.copysign(1, value)
    resp = module_of("DescribeClientQuotasResponse")
    obj = resp.DescribeClientQuotasResponse(
        entries=[resp.EntryData(values=[resp.ValueData(key="k", value=value)])]
    )
    assert resp.DescribeClientQuotasResponse.decode(obj.encode(0), 0) == obj


def test_float64_nan_decodes() -> None:
    req = module_of("AlterClientQuotasRequest")
    obj = req.AlterClientQuotasRequest(entries=[req.EntryData(ops=[req.OpData(value=1.0)])])
    data = obj.encode(0)
    nan = data.replace(struct.pack(">d", 1.0), struct.pack(">d", math.nan))
    value = req.AlterClientQuotasRequest.decode(nan, 0).entries[0].ops[0].value
    assert math.isnan(value)


def test_uint16_is_unsigned() -> None:
    mod = module_of("BeginQuorumEpochRequest")
    obj = mod.BeginQuorumEpochRequest(
        leader_endpoints=[mod.LeaderEndpoint(name="n", host="h", port=65535)]
    )
    data = obj.encode(1)
    assert b"\x02h\xff\xff" in data
    assert mod.BeginQuorumEpochRequest.decode(data, 1).leader_endpoints[0].port == 65535


def test_bool_reads_any_nonzero_byte_as_true() -> None:
    # MetadataRequest v4: Topics (null), AllowAutoTopicCreation.
    cls = cls_of("MetadataRequest")
    assert cls.decode(b"\xff\xff\xff\xff\x00", 4).allow_auto_topic_creation is False
    assert cls.decode(b"\xff\xff\xff\xff\x01", 4).allow_auto_topic_creation is True
    obj = cls.decode(b"\xff\xff\xff\xff\x02", 4)  # Kafka: readByte() != 0
    assert obj.allow_auto_topic_creation is True
    assert obj.encode(4) == b"\xff\xff\xff\xff\x01"


# --- records: zero copy -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 8, 9, 11])
def test_records_are_a_zero_copy_slice(version: int) -> None:
    mod = module_of("ProduceRequest")
    records = b"\x00" * 12 + b"a record batch" + bytes(range(256))
    obj = mod.ProduceRequest(
        topic_data=[
            mod.TopicProduceData(
                name="t", partition_data=[mod.PartitionProduceData(index=1, records=records)]
            )
        ]
    )
    data = obj.encode(version)
    decoded = mod.ProduceRequest.decode(data, version)
    view = decoded.topic_data[0].partition_data[0].records
    assert isinstance(view, memoryview)
    assert view.obj is data  # a slice of the input buffer itself: nothing copied
    assert view == records
    # A memoryview over the whole input is used as it is, too.
    whole = memoryview(data)
    again = mod.ProduceRequest.decode(whole, version).topic_data[0].partition_data[0].records
    assert again.obj is data
    # Encoding hands the records object itself over as a chunk.
    chunks = obj.encode_chunks(version)
    assert any(chunk is records for chunk in chunks)
    chunks = decoded.encode_chunks(version)
    assert any(chunk is view for chunk in chunks)
    assert b"".join(chunks) == data


def test_bytes_values_are_chunks_of_their_own() -> None:
    cls = cls_of("SaslAuthenticateRequest")
    payload = b"secret" * 100
    for version in (0, 2):
        assert any(chunk is payload for chunk in cls(auth_bytes=payload).encode_chunks(version))


# --- headers and the API table ----------------------------------------------------------------


def test_registry_has_every_api_of_the_definitions() -> None:
    docs = definitions()
    requests = {d["apiKey"]: d for d in docs.values() if d["type"] == "request"}
    responses = {d["apiKey"]: d for d in docs.values() if d["type"] == "response"}
    assert set(registry.APIS) == set(requests) == set(responses) == set(range(88))
    for key, spec in registry.APIS.items():
        req, resp = requests[key], responses[key]
        assert spec.api_key == key
        assert spec.name == req["name"].removesuffix("Request")
        assert spec.request_type().NAME == req["name"]
        assert spec.response_type().NAME == resp["name"]
        assert spec.request_type().API_KEY == spec.response_type().API_KEY == key
        assert norm(spec.valid_versions) == parse_range(req["validVersions"])
        assert norm(spec.valid_versions) == parse_range(resp["validVersions"])
        assert norm(spec.flexible_versions) == parse_range(req["flexibleVersions"])
        assert norm(spec.deprecated_versions) == parse_range(req.get("deprecatedVersions"))
        assert spec.listeners == tuple(req["listeners"])
        assert spec.latest_version_unstable == bool(req.get("latestVersionUnstable", False))
        assert registry.api(key) is spec
        assert registry.api(spec.name.lower()) is spec
        assert registry.api(req["name"]) is spec


def test_latest_version_unstable_share_group_apis() -> None:
    unstable = {s.name for s in registry.APIS.values() if s.latest_version_unstable}
    assert unstable == SHARE_GROUP_APIS


def test_header_versions_follow_the_rules() -> None:
    docs = definitions()
    checked = 0
    for key, spec in registry.APIS.items():
        req = docs[spec.request_type().NAME]
        resp = docs[spec.response_type().NAME]
        lo, hi = spec.valid_versions
        for v in range(lo, hi + 1):
            req_flexible = in_range(v, parse_range(req["flexibleVersions"]))
            resp_flexible = in_range(v, parse_range(resp["flexibleVersions"]))
            if key == 7 and v == 0:  # ControlledShutdown v0
                expected_request = 0
            else:
                expected_request = 2 if req_flexible else 1
            expected_response = 0 if key == 18 else (1 if resp_flexible else 0)  # KIP-511
            assert spec.request_header_version(v) == expected_request, (spec.name, v)
            assert spec.response_header_version(v) == expected_response, (spec.name, v)
            checked += 1
    assert checked == sum(
        s.valid_versions[1] - s.valid_versions[0] + 1 for s in registry.APIS.values()
    )
    api_versions = registry.APIS[18]
    assert api_versions.response_header_version(api_versions.valid_versions[1]) == 0
    assert in_range(api_versions.valid_versions[1], api_versions.flexible_versions)
    assert registry.APIS[7].request_header_version(0) == 0
    assert registry.APIS[7].request_header_version(1) == 1


def test_request_header_v2_client_id_is_not_compact() -> None:
    header = cls_of("RequestHeader")
    spec = field_spec(header, "ClientId")
    assert spec.flexible is not None and norm(spec.flexible) is None  # "flexibleVersions": "none"
    golden = bytes.fromhex("00120003000000070002616200")  # special-cases golden, header v2
    obj = header.decode(golden, 2)
    assert (obj.request_api_key, obj.request_api_version, obj.correlation_id) == (18, 3, 7)
    assert obj.client_id == "ab"
    assert obj.encode(2) == golden
    assert obj.encode(1) == golden[:-1]  # v1: the same without the tag section
    assert header(client_id=None).encode(2).endswith(b"\xff\xff\x00")  # null: int16 -1
    assert header.decode(header(client_id=None).encode(2), 2).client_id is None
    assert header(request_api_key=7).encode(0) == b"\x00\x07\x00\x00\x00\x00\x00\x00"


# --- the code generator's loader ----------------------------------------------------------------


def test_strip_comments_keeps_slashes_in_strings() -> None:
    text = (
        "// Licensed to the Apache Software Foundation\n"
        "{\n"
        "  // Version 1 adds X.\n"
        '  "about": "see http://kafka.apache.org // not a comment",\n'
        '  "quote": "a \\" // still a string",\n'
        '  "name": "A" // trailing comment\n'
        "}\n"
    )
    bare, history = strip_comments(text)
    data = json.loads(bare)
    assert data["about"] == "see http://kafka.apache.org // not a comment"
    assert data["quote"] == 'a " // still a string'
    assert data["name"] == "A"
    assert history == ["Version 1 adds X.", "trailing comment"]


def write_spec(directory: Path, name: str, edit: Any) -> None:
    """Copy a 3.9.1 definition into ``directory`` after ``edit(json) -> json``."""
    lines = (specs_dir() / f"{name}.json").read_text().splitlines()
    doc = json.loads("\n".join(x for x in lines if not x.lstrip().startswith("//")))
    (directory / f"{name}.json").write_text(json.dumps(edit(doc), indent=2))


@pytest.mark.parametrize(
    ("edit", "key", "where"),
    [
        (lambda d: {**d, "headerVersions": "0+"}, "headerVersions", "(top level)"),
        (
            lambda d: {**d, "fields": [{**d["fields"][0], "newKey": True}, *d["fields"][1:]]},
            "newKey",
            "fields/0",
        ),
    ],
)
def test_unknown_key_fails_generation(tmp_path: Path, edit: Any, key: str, where: str) -> None:
    from codegen.__main__ import main
    from codegen.specs import load_messages

    write_spec(tmp_path, "ApiVersionsRequest", lambda d: d)
    assert [m.name for m in load_messages(tmp_path)] == ["ApiVersionsRequest"]
    write_spec(tmp_path, "ApiVersionsRequest", edit)
    with pytest.raises(SpecError) as info:
        load_messages(tmp_path)
    text = str(info.value)
    assert "ApiVersionsRequest.json" in text and key in text and where in text
    out = tmp_path / "out"
    assert main(["--specs", str(tmp_path), "--out", str(out)]) == 2
    assert not out.exists()


def test_spec_errors_name_the_file() -> None:
    good = (specs_dir() / "SaslHandshakeRequest.json").read_text()
    with pytest.raises(SpecError, match=r"Other\.json"):
        parse_spec(SpecFile("Other.json", good))  # file name and definition name differ
    with pytest.raises(SpecError, match=r"Broken\.json: invalid JSON"):
        parse_spec(SpecFile("Broken.json", good.replace("{", "[", 1)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0+", (0, MAX_VERSION)),
        ("12+", (12, MAX_VERSION)),
        ("3", (3, 3)),
        ("1-4", (1, 4)),
        ("0-0", (0, 0)),
        ("none", None),
        (None, None),
    ],
)
def test_versions_parse(text: str | None, expected: Range) -> None:
    parsed = Versions.parse(text)
    assert (None if parsed.empty else parsed.as_tuple()) == expected
    if expected is not None:
        assert Versions.parse(str(parsed)) == parsed  # str() gives the spec's spelling back


@pytest.mark.parametrize("text", ["4-2", "x", "-1", "1+2", "1-", "+", ""])
def test_versions_parse_refuses(text: str) -> None:
    with pytest.raises(SpecError):
        Versions.parse(text)


def test_versions_operations() -> None:
    a, b = Versions(0, 5), Versions(3, MAX_VERSION)
    assert a & b == Versions(3, 5)
    assert (Versions(0, 1) & Versions(2, 3)).empty
    assert 4 in a and 6 not in a and "4" not in a
    assert str(Versions(12, MAX_VERSION)) == "12+" and str(Versions(1, 0)) == "none"


def test_jar_input(tmp_path: Path) -> None:
    directory = read_spec_files(specs_dir())
    assert len(directory) == 186
    jar = tmp_path / "kafka-clients-3.9.1.jar"
    with zipfile.ZipFile(jar, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        z.writestr("org/apache/kafka/common/message/FetchRequestData.class", b"\xca\xfe")
        z.writestr("common/message/README.md", "not a definition")
        for f in reversed(directory):
            z.writestr(f"common/message/{f.name}", f.text)
    from_jar = read_spec_files(jar)
    assert [(f.name, f.sha256) for f in from_jar] == [(f.name, f.sha256) for f in directory]
    empty = tmp_path / "empty.jar"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    with pytest.raises(SpecError, match="no Kafka message definitions"):
        read_spec_files(empty)
    with pytest.raises(SpecError, match="not a directory"):
        read_spec_files(tmp_path / "missing")
