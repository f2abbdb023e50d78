#!/usr/bin/env python3
"""Benchmark KafScale's generated Kafka message codecs against kafka-python and kio.

For every benchmarked message the *same logical message* is built with each library,
the encodings are checked to be byte-identical, and then the median time per
operation is measured for

* decode: body bytes -> message object (all libraries decode the same bytes), and
* encode: message object -> body bytes.

For ProduceRequest and FetchResponse KafScale is timed with ``encode_chunks`` (what the
broker hands to ``writelines``: record buffers are not copied) and, in a separate row,
with plain ``encode``; the peers are always timed with their normal encode.

Run from the repository root: ``scripts/bench-codec [--quick] [--markdown]``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib
import io
import itertools
import os
import platform
import random
import statistics
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

KAFSCALE = "kafscale"
KAFSCALE_COMPILED = "kafscale-compiled"
"""The same generated modules compiled with mypyc (scripts/accelerate; KAFSCALE_ACCELERATE)."""
KAFKA_PYTHON = "kafka-python"
KIO = "kio"
PEERS = (KAFKA_PYTHON, KIO)
LIBRARIES = (KAFSCALE, KAFSCALE_COMPILED, *PEERS)
RATIOS = (
    (KAFKA_PYTHON, KAFSCALE),
    (KIO, KAFSCALE),
    (KAFSCALE, KAFSCALE_COMPILED),
    (KIO, KAFSCALE_COMPILED),
)
"""Ratio columns (numerator, denominator): > 1 means the denominator is faster."""

TIMES = "\N{MULTIPLICATION SIGN}"
KIB = 1024
MIB = 1024 * KIB

# Messages, in the order they are benchmarked.
METADATA = "MetadataResponse"
PRODUCE = "ProduceRequest"
FETCH = "FetchResponse"
API_VERSIONS = "ApiVersionsRequest"

KAFSCALE_MODULES = {
    METADATA: "generated.metadata_response",
    PRODUCE: "generated.produce_request",
    FETCH: "generated.fetch_response",
    API_VERSIONS: "generated.api_versions_request",
}


# --------------------------------------------------------------------------------------
# Library-neutral description of the benchmarked messages
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSpec:
    node_id: int
    host: str
    port: int
    rack: str | None


@dataclass(frozen=True)
class PartitionMetadataSpec:
    index: int
    leader_id: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class TopicMetadataSpec:
    name: str
    topic_id: uuid.UUID
    partitions: tuple[PartitionMetadataSpec, ...]


@dataclass(frozen=True)
class MetadataSpec:
    brokers: tuple[BrokerSpec, ...]
    cluster_id: str
    controller_id: int
    topics: tuple[TopicMetadataSpec, ...]


@dataclass(frozen=True)
class ProduceSpec:
    topic: str
    acks: int
    timeout_ms: int
    records: tuple[bytes, ...]  # one opaque record batch buffer per partition


@dataclass(frozen=True)
class FetchSpec:
    topic_id: uuid.UUID
    high_watermark: int
    records: tuple[bytes, ...]  # one opaque record batch buffer per partition


@dataclass(frozen=True)
class ApiVersionsSpec:
    client_software_name: str
    client_software_version: str


Spec = MetadataSpec | ProduceSpec | FetchSpec | ApiVersionsSpec


@dataclass(frozen=True)
class Scenario:
    message: str  # Kafka message name, e.g. "MetadataResponse"
    version: int
    detail: str
    spec: Spec

    @property
    def label(self) -> str:
        return f"{self.message} v{self.version} ({self.detail})"

    @property
    def has_records(self) -> bool:
        return isinstance(self.spec, ProduceSpec | FetchSpec)


def _random_buffers(rng: random.Random, count: int, size: int) -> tuple[bytes, ...]:
    return tuple(rng.randbytes(size) for _ in range(count))


def build_scenarios() -> list[Scenario]:
    rng = random.Random(20240601)
    brokers = tuple(
        BrokerSpec(node_id=n, host=f"broker-{n}.kafscale.local", port=9092, rack=f"rack-{n}")
        for n in range(3)
    )
    topics = tuple(
        TopicMetadataSpec(
            name=f"topic-{t:03d}",
            topic_id=uuid.UUID(int=rng.getrandbits(128) | 1),  # never the zero uuid
            partitions=tuple(
                PartitionMetadataSpec(
                    index=p,
                    leader_id=(t + p) % 3,
                    leader_epoch=7,
                    replicas=tuple((t + p + r) % 3 for r in range(3)),
                    isr=tuple((t + p + r) % 3 for r in range(3)),
                )
                for p in range(12)
            ),
        )
        for t in range(100)
    )
    metadata_spec = MetadataSpec(
        brokers=brokers, cluster_id="kafscale-bench-cluster", controller_id=0, topics=topics
    )
    fetch_topic_id = uuid.UUID(int=rng.getrandbits(128) | 1)

    scenarios = [Scenario(METADATA, 12, f"100 topics {TIMES} 12 partitions", metadata_spec)]
    produce = functools.partial(ProduceSpec, topic="topic-000", acks=-1, timeout_ms=30_000)
    fetch = functools.partial(FetchSpec, topic_id=fetch_topic_id, high_watermark=1_000_000)
    for message, version, make_spec in ((PRODUCE, 9, produce), (FETCH, 13, fetch)):
        for size, size_label in ((MIB, "1 MiB"), (64 * KIB, "64 KiB")):
            records = _random_buffers(rng, 10, size)
            detail = f"10 partitions {TIMES} {size_label}"
            scenarios.append(Scenario(message, version, detail, make_spec(records=records)))
    scenarios.append(
        Scenario(
            API_VERSIONS,
            3,
            "client kafscale-bench 1.0",
            ApiVersionsSpec(client_software_name="kafscale-bench", client_software_version="1.0"),
        )
    )
    return scenarios


# --------------------------------------------------------------------------------------
# Library adapters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A prepared call ``fn(*args)``; this is exactly what the timing loop executes."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def __call__(self) -> Any:
        return self.fn(*self.args)


class UnsupportedMessage(Exception):
    """Raised by an adapter for a message (version) its library cannot represent."""


class Library(ABC):
    """Builds, encodes and decodes benchmark messages with one library."""

    name: str

    @abstractmethod
    def build(self, scenario: Scenario) -> Any:
        """Build the scenario's message as this library's object."""

    @abstractmethod
    def encode_call(self, scenario: Scenario, obj: Any) -> Call:
        """A call returning the encoded body (bytes-like) of ``obj``."""

    @abstractmethod
    def decode_call(self, scenario: Scenario, data: bytes) -> Call:
        """A call decoding the body ``data``."""

    def decoded(self, result: Any) -> Any:
        """The message object from the result of a decode call."""
        return result

    def encode(self, scenario: Scenario, obj: Any) -> bytes:
        return bytes(self.encode_call(scenario, obj)())

    def decode(self, scenario: Scenario, data: bytes) -> Any:
        return self.decoded(self.decode_call(scenario, data)())


def build_from_schema(
    scenario: Scenario,
    struct: Callable[..., Any],
    extra_fields: dict[str, dict[str, Any]],
) -> Any:
    """Build the scenario's message with a library whose classes follow Kafka's JSON schemas.

    Ours and kafka-python share the schemas' field names and nesting, so one builder
    serves both. ``struct(scenario, *path)`` returns the class of the struct at ``path``
    below the message (``()``: the message itself); ``extra_fields`` adds the fields a
    library spells its own way, per struct name.
    """

    def new(*path: str, **fields: Any) -> Any:
        extra = extra_fields.get(path[-1], {}) if path else {}
        return struct(scenario, *path)(**fields, **extra)

    spec = scenario.spec
    if isinstance(spec, MetadataSpec):
        topic = "MetadataResponseTopic"
        return new(
            throttle_time_ms=0,
            brokers=[
                new(
                    "MetadataResponseBroker",
                    node_id=b.node_id,
                    host=b.host,
                    port=b.port,
                    rack=b.rack,
                )
                for b in spec.brokers
            ],
            cluster_id=spec.cluster_id,
            controller_id=spec.controller_id,
            topics=[
                new(
                    topic,
                    error_code=0,
                    name=t.name,
                    topic_id=t.topic_id,
                    is_internal=False,
                    partitions=[
                        new(
                            topic,
                            "MetadataResponsePartition",
                            error_code=0,
                            partition_index=p.index,
                            leader_id=p.leader_id,
                            leader_epoch=p.leader_epoch,
                            replica_nodes=list(p.replicas),
                            isr_nodes=list(p.isr),
                            offline_replicas=[],
                        )
                        for p in t.partitions
                    ],
                )
                for t in spec.topics
            ],
        )
    if isinstance(spec, ProduceSpec):
        topic = "TopicProduceData"
        return new(
            transactional_id=None,
            acks=spec.acks,
            timeout_ms=spec.timeout_ms,
            topic_data=[
                new(
                    topic,
                    name=spec.topic,
                    partition_data=[
                        new(topic, "PartitionProduceData", index=i, records=records)
                        for i, records in enumerate(spec.records)
                    ],
                )
            ],
        )
    if isinstance(spec, FetchSpec):
        topic = "FetchableTopicResponse"
        return new(
            throttle_time_ms=0,
            error_code=0,
            session_id=0,
            responses=[
                new(
                    topic,
                    topic_id=spec.topic_id,
                    partitions=[
                        new(
                            topic,
                            "PartitionData",
                            partition_index=i,
                            error_code=0,
                            high_watermark=spec.high_watermark,
                            last_stable_offset=spec.high_watermark,
                            log_start_offset=0,
                            aborted_transactions=None,
                            preferred_read_replica=-1,
                            records=records,
                        )
                        for i, records in enumerate(spec.records)
                    ],
                )
            ],
        )
    return new(
        client_software_name=spec.client_software_name,
        client_software_version=spec.client_software_version,
    )


class KafScale(Library):
    """Our generated codecs (``generated.<snake_case message name>``), pure or compiled."""

    name = KAFSCALE
    EXTRA_FIELDS: ClassVar[dict[str, dict[str, Any]]] = {
        "MetadataResponseTopic": {"topic_authorized_operations": -(2**31)},
    }

    def __init__(self, modules: dict[str, ModuleType], name: str = KAFSCALE) -> None:
        self._modules = modules
        self.name = name

    def _struct(self, scenario: Scenario, *path: str) -> Any:
        # Every struct is a top-level class of the message's module.
        return getattr(self._modules[scenario.message], path[-1] if path else scenario.message)

    def build(self, scenario: Scenario) -> Any:
        return build_from_schema(scenario, self._struct, self.EXTRA_FIELDS)

    def encode_call(self, scenario: Scenario, obj: Any) -> Call:
        return Call(obj.encode, (scenario.version,))

    def encode_chunks_call(self, scenario: Scenario, obj: Any) -> Call:
        return Call(obj.encode_chunks, (scenario.version,))

    def decode_call(self, scenario: Scenario, data: bytes) -> Call:
        return Call(self._struct(scenario).decode, (data, scenario.version))

    @staticmethod
    def records_of(scenario: Scenario, obj: Any) -> list[Any]:
        """The ``records`` field of every partition of a Produce/Fetch message."""
        if scenario.message == PRODUCE:
            return [p.records for t in obj.topic_data for p in t.partition_data]
        return [p.records for t in obj.responses for p in t.partitions]


class KafkaPython(Library):
    """kafka-python 3.x: ``Message[version](...)``, ``obj.encode()``, ``Message.decode``.

    Its message classes are built at import time from Kafka's JSON schemas; nested
    structs are classes attached to their parent (``MetadataResponse.MetadataResponseTopic``)
    and encode/decode are compiled per version into Python functions.
    """

    name = KAFKA_PYTHON
    EXTRA_FIELDS: ClassVar[dict[str, dict[str, Any]]] = {
        # kafka-python models TopicAuthorizedOperations as a set of bit numbers; None is
        # the spec default -2147483648 (only bit 31).
        "MetadataResponseTopic": {"authorized_operations": None},
    }

    @staticmethod
    def _message_class(message: str) -> Any:
        from kafka.protocol.consumer import FetchResponse  # type: ignore[import-untyped]
        from kafka.protocol.metadata import ApiVersionsRequest, MetadataResponse  # type: ignore[import-untyped]
        from kafka.protocol.producer import ProduceRequest  # type: ignore[import-untyped]

        classes: dict[str, Any] = {
            METADATA: MetadataResponse,
            PRODUCE: ProduceRequest,
            FETCH: FetchResponse,
            API_VERSIONS: ApiVersionsRequest,
        }
        return classes[message]

    def _struct(self, scenario: Scenario, *path: str) -> Any:
        msg_cls = self._message_class(scenario.message)
        if path:
            return functools.reduce(getattr, path, msg_cls)
        lo, hi = msg_cls.valid_versions
        if not lo <= scenario.version <= hi:
            raise UnsupportedMessage(f"{scenario.message} supports versions {lo}-{hi} only")
        return msg_cls[scenario.version]

    def build(self, scenario: Scenario) -> Any:
        return build_from_schema(scenario, self._struct, self.EXTRA_FIELDS)

    def encode_call(self, scenario: Scenario, obj: Any) -> Call:
        # The version is bound to the object (built via Message[version], or set by
        # decode). Passing version= to encode() fails on decoded objects in 3.0.12
        # (they have no _header slot), so use the version-less form throughout.
        return Call(obj.encode, ())

    def decode_call(self, scenario: Scenario, data: bytes) -> Call:
        return Call(self._message_class(scenario.message).decode, (data, scenario.version))


class Kio(Library):
    """kio: frozen dataclasses per message *and* version (``kio.schema.<api>.v<N>.<kind>``),
    serialized by ``kio.serial.entity_writer(cls)(buffer, obj)`` into a binary stream and
    parsed by ``kio.serial.entity_reader(cls)(data, offset) -> (obj, size)`` (native)."""

    name = KIO

    _APIS: ClassVar[dict[str, tuple[str, str]]] = {
        METADATA: ("metadata", "response"),
        PRODUCE: ("produce", "request"),
        FETCH: ("fetch", "response"),
        API_VERSIONS: ("api_versions", "request"),
    }

    @classmethod
    def _module(cls, scenario: Scenario) -> ModuleType:
        api, kind = cls._APIS[scenario.message]
        name = f"kio.schema.{api}.v{scenario.version}.{kind}"
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise UnsupportedMessage(f"kio has no module {name}") from exc

    @classmethod
    def _entity_type(cls, scenario: Scenario) -> type[Any]:
        entity_type: type[Any] = getattr(cls._module(scenario), scenario.message)
        return entity_type

    def build(self, scenario: Scenario) -> Any:
        from kio.schema.errors import ErrorCode
        from kio.schema.types import BrokerId, TopicName
        from kio.static.primitive import Records, i16, i32, i32Timedelta, i64

        mod: Any = self._module(scenario)
        no_throttle = i32Timedelta.parse(datetime.timedelta(0))
        spec = scenario.spec
        if isinstance(spec, MetadataSpec):
            return mod.MetadataResponse(
                throttle_time=no_throttle,
                brokers=tuple(
                    mod.MetadataResponseBroker(
                        node_id=BrokerId(b.node_id), host=b.host, port=i32(b.port), rack=b.rack
                    )
                    for b in spec.brokers
                ),
                cluster_id=spec.cluster_id,
                controller_id=BrokerId(spec.controller_id),
                topics=tuple(
                    mod.MetadataResponseTopic(
                        error_code=ErrorCode.none,
                        name=TopicName(t.name),
                        topic_id=t.topic_id,
                        is_internal=False,
                        partitions=tuple(
                            mod.MetadataResponsePartition(
                                error_code=ErrorCode.none,
                                partition_index=i32(p.index),
                                leader_id=BrokerId(p.leader_id),
                                leader_epoch=i32(p.leader_epoch),
                                replica_nodes=tuple(BrokerId(n) for n in p.replicas),
                                isr_nodes=tuple(BrokerId(n) for n in p.isr),
                                offline_replicas=(),
                            )
                            for p in t.partitions
                        ),
                        topic_authorized_operations=i32(-(2**31)),
                    )
                    for t in spec.topics
                ),
            )
        if isinstance(spec, ProduceSpec):
            return mod.ProduceRequest(
                transactional_id=None,
                acks=i16(spec.acks),
                timeout=i32Timedelta.parse(datetime.timedelta(milliseconds=spec.timeout_ms)),
                topic_data=(
                    mod.TopicProduceData(
                        name=TopicName(spec.topic),
                        partition_data=tuple(
                            mod.PartitionProduceData(index=i32(i), records=Records(records))
                            for i, records in enumerate(spec.records)
                        ),
                    ),
                ),
            )
        if isinstance(spec, FetchSpec):
            return mod.FetchResponse(
                throttle_time=no_throttle,
                error_code=ErrorCode.none,
                session_id=i32(0),
                responses=(
                    mod.FetchableTopicResponse(
                        topic_id=spec.topic_id,
                        partitions=tuple(
                            mod.PartitionData(
                                partition_index=i32(i),
                                error_code=ErrorCode.none,
                                high_watermark=i64(spec.high_watermark),
                                last_stable_offset=i64(spec.high_watermark),
                                log_start_offset=i64(0),
                                aborted_transactions=None,
                                preferred_read_replica=BrokerId(-1),
                                records=Records(records),
                            )
                            for i, records in enumerate(spec.records)
                        ),
                    ),
                ),
            )
        return mod.ApiVersionsRequest(
            client_software_name=spec.client_software_name,
            client_software_version=spec.client_software_version,
        )

    def encode_call(self, scenario: Scenario, obj: Any) -> Call:
        from kio.serial import entity_writer

        write = entity_writer(self._entity_type(scenario))  # cached by kio; hoisted anyway

        def encode(entity: Any) -> bytes:
            buffer = io.BytesIO()
            write(buffer, entity)
            return buffer.getvalue()

        return Call(encode, (obj,))

    def decode_call(self, scenario: Scenario, data: bytes) -> Call:
        from kio.serial import entity_reader

        return Call(entity_reader(self._entity_type(scenario)), (data, 0))

    def decoded(self, result: Any) -> Any:
        entity, _size = result
        return entity


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    min_time_s: float  # minimum duration of one timed batch
    repeats: int  # timed batches per measurement; the median is reported
    warmup_s: float


def settle_allocator() -> None:
    """Put the C allocator into the state a long-running process reaches.

    glibc raises its mmap (and trim) threshold the first time a large mmap-ed block is
    freed (capped at 32 MiB). Until that happens multi-MiB buffers are mmap-ed and
    page-faulted on every allocation, afterwards they are reused from the heap, which
    changes encode/decode times of 10 MiB messages by up to ~10x depending on which
    library happened to run first. Freeing one ~31 MiB block up front makes the results
    independent of run order. Harmless on other allocators.
    """
    block = bytearray(31 * MIB)
    del block


def _run_batch(call: Call, loops: int) -> int:
    fn, args = call.fn, call.args
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, loops):
        fn(*args)
    return time.perf_counter_ns() - start


def measure(call: Call, settings: Settings) -> float:
    """Median nanoseconds per call over ``settings.repeats`` batches.

    A warmup phase runs the call for ``warmup_s`` and estimates its cost; each batch
    then runs enough calls to last at least ``min_time_s``. The garbage collector is
    disabled while a batch runs (as ``timeit`` does).
    """
    gc_was_enabled = gc.isenabled()
    try:
        gc.collect()
        gc.disable()
        loops, elapsed = 1, 0
        warmup_ns = settings.warmup_s * 1e9
        while True:
            elapsed = _run_batch(call, loops)
            if elapsed >= warmup_ns:
                break
            loops *= 2 if elapsed > warmup_ns / 10 else 10
        per_call_ns = elapsed / loops
        loops = max(1, int(settings.min_time_s * 1e9 / max(per_call_ns, 1.0)) + 1)
        samples = []
        for _ in range(settings.repeats):
            gc.collect()
            samples.append(_run_batch(call, loops) / loops)
        return statistics.median(samples)
    finally:
        if gc_was_enabled:
            gc.enable()


# --------------------------------------------------------------------------------------
# Running scenarios
# --------------------------------------------------------------------------------------

OP_DECODE = "decode"
OP_ENCODE = "encode"
OP_ENCODE_CHUNKS = "encode_chunks"
DIFFERS_MARK = "*"


@dataclass
class Row:
    message: str
    op: str
    times_ns: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(LIBRARIES))
    # Per-library cell annotation: replaces a missing time, or is appended to a time.
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def describe_difference(reference: bytes, other: bytes, ref_name: str, other_name: str) -> str:
    """Say how ``other`` (produced by ``other_name``) differs from ``reference``."""
    common = min(len(reference), len(other))
    offset = next((i for i in range(common) if reference[i] != other[i]), common)
    if offset == common:
        longer, extra = (
            (other_name, len(other) - common)
            if len(other) > common
            else (ref_name, len(reference) - common)
        )
        return f"{longer} output has {extra} extra trailing byte(s) after byte {common}"
    lengths = (
        f"same length ({common} bytes)"
        if len(reference) == len(other)
        else f"{other_name} {len(other)} bytes vs {ref_name} {len(reference)} bytes"
    )
    return (
        f"{lengths}; first difference at byte {offset}: "
        f"{other_name} {other[offset : offset + 8].hex()} vs "
        f"{ref_name} {reference[offset : offset + 8].hex()}"
    )


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _buffer_base(buffer: object) -> object:
    """The object owning a buffer's memory (``memoryview.obj`` for views)."""
    return buffer.obj if isinstance(buffer, memoryview) else buffer


def _check_zero_copy(
    scenario: Scenario, kafscale: KafScale, obj: Any, data: bytes, report: Report
) -> None:
    """Record whether KafScale's decode/encode_chunks avoid copying record buffers."""
    assert isinstance(scenario.spec, ProduceSpec | FetchSpec)
    decoded_records = kafscale.records_of(scenario, kafscale.decode(scenario, data))
    decode_ok = all(
        isinstance(r, memoryview) and r.obj is data for r in decoded_records if r is not None
    )
    chunks = kafscale.encode_chunks_call(scenario, obj)()
    chunk_bases = {id(_buffer_base(chunk)) for chunk in chunks}
    encode_ok = all(id(records) in chunk_bases for records in scenario.spec.records)
    if decode_ok and encode_ok:
        report.checks.append(
            f"ok    {scenario.label}: {kafscale.name} decode and encode_chunks do not copy records"
        )
    if not decode_ok:
        report.warnings.append(
            f"{scenario.label}: {kafscale.name} decode copies records "
            "(expected memoryview slices of the input)"
        )
    if not encode_ok:
        report.warnings.append(
            f"{scenario.label}: {kafscale.name} encode_chunks copies records "
            "(expected each records buffer, or a view of it, as its own chunk)"
        )


def run_scenario(
    scenario: Scenario, libraries: Sequence[Library], settings: Settings, report: Report
) -> None:
    label = scenario.label
    decode_row = Row(label, OP_DECODE)
    chunks_row = Row(label, f"{OP_ENCODE_CHUNKS} ¹")
    encode_row = Row(label, OP_ENCODE)
    rows = (
        [decode_row, chunks_row, encode_row] if scenario.has_records else [decode_row, encode_row]
    )
    report.rows += rows

    def note(lib_name: str, text: str, *only: Row) -> None:
        for row in only or rows:
            row.notes[lib_name] = text

    # 1. Build the message with every library and encode it.
    objects: dict[str, Any] = {}
    encodings: dict[str, bytes] = {}
    ours: list[KafScale] = []
    for lib in libraries:
        if isinstance(lib, KafScale):
            # Our own codec: any failure here is a bug and must be loud.
            ours.append(lib)
            obj = lib.build(scenario)
            encoded = lib.encode(scenario, obj)
            if scenario.has_records:
                chunks = lib.encode_chunks_call(scenario, obj)()
                assert b"".join(chunks) == encoded, f"{label}: encode_chunks != encode"
            again = lib.encode(scenario, lib.decode(scenario, encoded))
            assert again == encoded, f"{label}: kafscale decode+encode does not round-trip"
        else:
            try:
                obj = lib.build(scenario)
                encoded = lib.encode(scenario, obj)
            except Exception as exc:  # the peer cannot represent this message
                report.warnings.append(
                    f"{label}: {lib.name} cannot represent this message "
                    f"({type(exc).__name__}: {exc}); not timed"
                )
                note(lib.name, "unsupported")
                continue
        objects[lib.name] = obj
        encodings[lib.name] = encoded
    if not encodings:
        return

    # 2. All encodings must be byte-identical to the reference: ours, or the first
    #    peer's when kafscale is not benchmarked.
    ref_name, reference = next(iter(encodings.items()))
    identical = [name for name, encoded in encodings.items() if encoded == reference]
    for name, encoded in encodings.items():
        if encoded != reference:
            report.warnings.append(
                f"{label}: {name} encoding differs from {ref_name}: "
                f"{describe_difference(reference, encoded, ref_name, name)}"
            )
            note(name, DIFFERS_MARK)
    report.checks.append(
        f"ok    {label}: byte-identical encodings ({len(reference):,} bytes) "
        f"from {', '.join(identical)}"
    )

    # 3. Every library decodes the reference bytes, which must round-trip exactly.
    decodable: list[str] = []
    for lib in libraries:
        if lib.name not in objects:
            continue
        try:
            again = lib.encode(scenario, lib.decode(scenario, reference))
        except Exception as exc:
            report.warnings.append(
                f"{label}: {lib.name} cannot decode the {ref_name} encoding "
                f"({type(exc).__name__}: {exc}); decode not timed"
            )
            note(lib.name, "decode failed", decode_row)
            continue
        if again != reference:
            report.warnings.append(
                f"{label}: {lib.name} decode+encode does not round-trip: "
                f"{describe_difference(reference, again, ref_name, lib.name)}"
            )
            note(lib.name, DIFFERS_MARK, decode_row)
        decodable.append(lib.name)

    if scenario.has_records:
        for kafscale in ours:
            _check_zero_copy(scenario, kafscale, objects[kafscale.name], reference, report)

    # 4. Time it.
    def timed(lib_name: str, op: str, call: Call) -> float:
        _progress(f"  {label:<52} {op:<14} {lib_name}")
        return measure(call, settings)

    for lib in libraries:
        if lib.name in decodable:
            decode_row.times_ns[lib.name] = timed(
                lib.name, OP_DECODE, lib.decode_call(scenario, reference)
            )
        if lib.name not in objects:
            continue
        obj = objects[lib.name]
        encode_ns = timed(lib.name, OP_ENCODE, lib.encode_call(scenario, obj))
        encode_row.times_ns[lib.name] = encode_ns
        if isinstance(lib, KafScale):
            if scenario.has_records:
                chunks_row.times_ns[lib.name] = timed(
                    lib.name, OP_ENCODE_CHUNKS, lib.encode_chunks_call(scenario, obj)
                )
        else:
            # Peers have a single encode; it is shown against both of ours.
            chunks_row.times_ns[lib.name] = encode_ns


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def format_ns(ns: float | None) -> str:
    if ns is None:
        return "n/a"
    unit, value = "ns", ns
    for scale_unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            unit, value = scale_unit, ns / scale
            break
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def format_ratio(peer_ns: float | None, ours_ns: float | None) -> str:
    if peer_ns is None or ours_ns is None or ours_ns <= 0:
        return "n/a"
    ratio = peer_ns / ours_ns
    digits = 2 if ratio < 10 else 1 if ratio < 100 else 0
    return f"{ratio:.{digits}f}{TIMES}"


def format_cell(row: Row, lib: str) -> str:
    ns, note = row.times_ns[lib], row.notes.get(lib, "")
    if ns is None:
        return note or "n/a"
    return f"{format_ns(ns)}{note}"


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["message", "op", *(f"{lib} median" for lib in LIBRARIES)]
    header += [f"{a}/{b}" for a, b in RATIOS]
    body = []
    for row in report.rows:
        cells = [row.message, row.op, *(format_cell(row, lib) for lib in LIBRARIES)]
        cells += [format_ratio(row.times_ns[a], row.times_ns[b]) for a, b in RATIOS]
        body.append(cells)
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for cells in body:
        shown = ["" if cells[0] == previous else cells[0], *cells[1:]]
        previous = cells[0]
        lines.append(line(shown))
    return lines


def render_markdown(header: list[str], body: list[list[str]]) -> list[str]:
    align = ["---", "---", *["---:"] * (len(header) - 2)]
    return ["| " + " | ".join(cells) + " |" for cells in [header, align, *body]]


def environment_lines(settings: Settings, peers_only: bool) -> list[str]:
    def version_of(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    impl = platform.python_implementation()
    lines = [
        f"Python {platform.python_version()} ({impl}) — {sys.version.splitlines()[0]}",
        f"Machine: {platform.platform()}, {platform.machine()}, "
        f"{platform.processor() or 'unknown processor'}",
        f"Peers: kafka-python {version_of('kafka-python')}, kio {version_of('kio')}",
        f"Timing: median of {settings.repeats} batch(es), each ≥ {settings.min_time_s:g} s "
        f"after ≥ {settings.warmup_s:g} s warmup; time.perf_counter_ns; GC off during batches; "
        "allocator settled (see settle_allocator)",
    ]
    if peers_only:
        lines.append("kafscale: not benchmarked (--peers-only)")
    return lines


def print_report(
    report: Report, settings: Settings, peers_only: bool, markdown: bool, compiled: str
) -> None:
    header, body = table(report)
    notes = [
        f"¹ The {KAFSCALE} columns time `encode_chunks` (what the broker passes to writelines; "
        f"record buffers are not copied); the {' and '.join(PEERS)} columns repeat their "
        "normal encode timing from the encode row.",
        f"{KAFSCALE}: the pure Python modules (the default); {KAFSCALE_COMPILED}: {compiled}.",
        "Ratios are a / b of the medians: > 1 means b is faster.",
    ]
    if any(DIFFERS_MARK in note for row in report.rows for note in row.notes.values()):
        notes.append(f"{DIFFERS_MARK} Output differs from the reference encoding; see warnings.")
    env = environment_lines(settings, peers_only)
    blocks: list[list[str]]
    if markdown:
        blocks = [
            [f"- {line}" for line in env],
            render_markdown(header, body),
            [f"- {note}" for note in notes],
            [f"> **Warning:** {warning}  " for warning in report.warnings],
        ]
    else:
        blocks = [
            env,
            report.checks,
            [f"WARNING {warning}" for warning in report.warnings],
            render_text(header, body),
            notes,
        ]
    print("\n\n".join("\n".join(block) for block in blocks if block))


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def load_kafscale(pure: bool) -> tuple[dict[str, ModuleType], list[str]]:
    """The benchmarked modules: as this process imports them (compiled when the accelerated
    build is in use), or ``pure`` private copies of them."""
    from kafscale.protocol import accelerated

    modules: dict[str, ModuleType] = {}
    errors: list[str] = []
    for message, module_name in KAFSCALE_MODULES.items():
        try:
            if pure:
                modules[message] = accelerated.load_pure(module_name)
            else:
                modules[message] = importlib.import_module(module_name)
        except Exception as exc:  # not generated yet, or broken generated code
            errors.append(f"{module_name}: {type(exc).__name__}: {exc}")
    return modules, errors


def use_compiled(wanted: bool) -> str:
    """Ask for the accelerated build before anything imports a codec; says what it is."""
    from kafscale.protocol import accelerated

    if not wanted:
        return "not benchmarked (--pure-only)"
    try:
        accelerated.check()
    except ValueError as e:
        return f"not benchmarked: {e}"
    os.environ[accelerated.ENV] = "require"
    accelerated.install()
    return f"mypyc-compiled {', '.join(accelerated.MODULES)} ({accelerated.build_dir()})"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark KafScale's generated codecs against kafka-python and kio."
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--quick", action="store_true", help=f"fewer and shorter repeats (3 {TIMES} ≥0.1 s)"
    )
    parser.add_argument("--repeats", type=int, help="timed batches per measurement")
    parser.add_argument("--min-time", type=float, help="minimum seconds per timed batch")
    parser.add_argument(
        "--pure-only",
        action="store_true",
        help="do not benchmark the compiled build (default: when scripts/accelerate built it)",
    )
    parser.add_argument(
        "--peers-only",
        action="store_true",
        help="benchmark kafka-python and kio only (e.g. before generated/ exists)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = (
        Settings(min_time_s=0.1, repeats=3, warmup_s=0.02)
        if args.quick
        else Settings(min_time_s=0.5, repeats=7, warmup_s=0.1)
    )
    if args.repeats is not None:
        settings = replace(settings, repeats=args.repeats)
    if args.min_time is not None:
        settings = replace(settings, min_time_s=args.min_time)
    if settings.repeats < 1 or settings.min_time_s <= 0:
        print("error: --repeats must be ≥ 1 and --min-time > 0", file=sys.stderr)
        return 2

    libraries: list[Library] = []
    compiled = use_compiled(not (args.pure_only or args.peers_only))
    if not args.peers_only:
        modules, errors = load_kafscale(pure=True)
        if compiled.startswith("mypyc") and not errors:
            compiled_modules, errors = load_kafscale(pure=False)
        if errors:
            print(
                "error: KafScale's generated codecs are not importable:\n  "
                + "\n  ".join(errors)
                + "\nRun the code generator to produce generated/ first, or pass "
                "--peers-only to benchmark kafka-python and kio alone.",
                file=sys.stderr,
            )
            return 2
        libraries.append(KafScale(modules))
        if compiled.startswith("mypyc"):
            libraries.append(KafScale(compiled_modules, KAFSCALE_COMPILED))
    libraries += [KafkaPython(), Kio()]

    settle_allocator()
    report = Report()
    for scenario in build_scenarios():
        run_scenario(scenario, libraries, settings, report)
    print_report(report, settings, args.peers_only, args.markdown, compiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
