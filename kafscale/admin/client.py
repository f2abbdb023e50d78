"""A small synchronous Kafka client for the admin commands, on KafScale's own codecs.

It speaks to any Kafka-compatible broker: every request is built with the generated classes
(``generated/``) and framed by :mod:`kafscale.protocol.framing`; nothing here depends on
KafScale's own behaviour.

* **Connections** (:class:`Connection`): one socket per broker, one request at a time. The
  first request is ApiVersions; each later request uses the highest version that both the
  broker and our codecs serve, within the range this client's code handles
  (:data:`CLIENT_VERSIONS`).
* **Routing** (:class:`Client`): Metadata from the bootstrap broker tells the partition
  leaders and the controller; FindCoordinator tells a group's coordinator. Requests for a
  partition go to its leader, group requests to the coordinator, topic creation and deletion to
  the controller.
* **Retries**: an answer with a retriable error (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE,
  COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR, ...) is sent again, with fresh metadata and a
  growing pause, at most ``attempts`` times. Connection failures are not retried: a broker that
  cannot be reached is reported at once.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from generated.api_versions_request import ApiVersionsRequest
from generated.api_versions_response import ApiVersionsResponse
from generated.create_partitions_request import CreatePartitionsRequest, CreatePartitionsTopic
from generated.create_topics_request import (
    CreatableTopic,
    CreatableTopicConfig,
    CreateTopicsRequest,
)
from generated.delete_groups_request import DeleteGroupsRequest
from generated.delete_topics_request import DeleteTopicsRequest, DeleteTopicState
from generated.describe_configs_request import DescribeConfigsRequest, DescribeConfigsResource
from generated.describe_groups_request import DescribeGroupsRequest
from generated.errors import ErrorCode
from generated.fetch_request import FetchPartition, FetchRequest, FetchTopic
from generated.find_coordinator_request import FindCoordinatorRequest
from generated.incremental_alter_configs_request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from generated.list_groups_request import ListGroupsRequest
from generated.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from generated.metadata_request import MetadataRequest, MetadataRequestTopic
from generated.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from generated.offset_fetch_request import OffsetFetchRequest, OffsetFetchRequestGroup
from generated.produce_request import PartitionProduceData, ProduceRequest, TopicProduceData
from generated.registry import APIS
from generated.response_header import ResponseHeader
from kafscale import __version__ as _kafscale_version
from kafscale.admin.errors import (
    BrokerUnreachable,
    KafkaError,
    UnsupportedApi,
    UsageError,
    check,
)
from kafscale.protocol.errors import ProtocolError
from kafscale.protocol.framing import encode_request
from kafscale.protocol.message import Message

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_PORT = 9092
CLIENT_ID = "kafscale-cli"
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection."""
REQUEST_TIMEOUT = 30.0
"""Seconds to wait for an answer (above any broker-side timeout we send)."""
BROKER_TIMEOUT_MS = 15_000
"""The timeout_ms sent with CreateTopics, DeleteTopics and Produce."""

_SIZE = struct.Struct(">i")
_CORRELATION = struct.Struct(">i")
_INT16 = struct.Struct(">h")
_ZERO_UUID = uuid.UUID(int=0)
_NOT_WRITTEN = frozenset({ErrorCode.LEADER_NOT_AVAILABLE, ErrorCode.NOT_LEADER_OR_FOLLOWER})
"""Produce errors that say the records were not written: sending them again adds no copy."""
_COORDINATOR_MOVED = frozenset(
    {
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.NOT_COORDINATOR,
    }
)

# API keys
PRODUCE, FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH = 0, 1, 2, 3, 8, 9
FIND_COORDINATOR, DESCRIBE_GROUPS, LIST_GROUPS, API_VERSIONS = 10, 15, 16, 18
CREATE_TOPICS, DELETE_TOPICS, DESCRIBE_CONFIGS, DELETE_GROUPS = 19, 20, 32, 42
INCREMENTAL_ALTER_CONFIGS, CREATE_PARTITIONS = 44, 37

CLIENT_VERSIONS: dict[int, tuple[int, int]] = {
    PRODUCE: (3, 11),  # record batch v2 (magic 2) needs Produce v3+
    FETCH: (4, 17),  # v4+: isolation level and record batch v2; v13+ by topic id
    LIST_OFFSETS: (1, 9),  # v1+: one offset per partition
    METADATA: (1, 12),  # v1+: a null topic list asks for every topic
    OFFSET_COMMIT: (2, 9),  # v2+: offsets kept in Kafka, generation -1 for a standalone commit
    OFFSET_FETCH: (2, 9),  # v2+: a null topic list asks for every partition; v8+: batched groups
    FIND_COORDINATOR: (0, 6),  # v4+: batched keys
    DESCRIBE_GROUPS: (0, 5),
    LIST_GROUPS: (0, 5),  # v4+: the group state
    API_VERSIONS: (0, 4),
    CREATE_TOPICS: (0, 7),
    DELETE_TOPICS: (0, 6),  # v6+: topics by name or id
    DESCRIBE_CONFIGS: (1, 4),  # v1+: config source
    DELETE_GROUPS: (0, 2),
    INCREMENTAL_ALTER_CONFIGS: (0, 1),
    CREATE_PARTITIONS: (0, 3),
}
"""Per API, the versions this client's code handles (every one our codecs have, from the
first whose semantics the commands need)."""

EARLIEST = -2
"""ListOffsets timestamp: the log start offset."""
LATEST = -1
"""ListOffsets timestamp: the high watermark."""

RESOURCE_TOPIC = 2
"""DescribeConfigs / IncrementalAlterConfigs resource type of a topic."""

T = TypeVar("T")
R = TypeVar("R", bound=tuple[Any, ...])


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; a missing port is 9092) as a (host, port) pair."""
    text = text.strip()
    if not text:
        raise UsageError("empty broker address in --bootstrap")
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"bad broker address {text!r}: no closing ]")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad broker address {text!r}")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(text, port_text)
    if not host:
        raise UsageError(f"bad broker address {text!r}: no host")
    return host, port


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad broker address {text!r}: {port!r} is not a port")
    return int(port)


# --- one connection ----------------------------------------------------------------------------


class Connection:
    """One TCP connection to one broker; requests are sent one at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = CLIENT_ID,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.timeout = timeout
        self._correlation = 0
        try:
            self._sock: socket.socket | None = socket.create_connection(
                (host, port), timeout=CONNECT_TIMEOUT
            )
        except OSError as error:
            raise BrokerUnreachable(
                f"cannot connect to {self.address}: {_os_reason(error)}"
            ) from None
        self._sock.settimeout(timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.versions: dict[int, tuple[int, int]] = {}
        """The broker's served versions per API key, from ApiVersions."""
        try:
            self._negotiate()
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def version(self, api_key: int) -> int:
        """The highest version of ``api_key`` that the broker serves and this client handles.

        Raises :class:`UnsupportedApi` when there is none.
        """
        ours = CLIENT_VERSIONS[api_key]
        served = self.versions.get(api_key)
        name = APIS[api_key].name
        if served is None:
            raise UnsupportedApi(f"the broker at {self.address} does not serve {name}")
        lo, hi = max(ours[0], served[0]), min(ours[1], served[1])
        if lo > hi:
            raise UnsupportedApi(
                f"the broker at {self.address} serves {name} v{served[0]}-{served[1]}, "
                f"this client needs v{ours[0]}-{ours[1]}"
            )
        return hi

    def call(
        self, api_key: int, build: Callable[[int], Message], *, version: int | None = None
    ) -> tuple[int, Any]:
        """Send the request ``build(version)`` (at the negotiated version unless one is given)
        and return (version, the decoded response body)."""
        v = self.version(api_key) if version is None else version
        return v, self._roundtrip(api_key, v, build(v))

    def send_only(self, api_key: int, version: int, body: Message) -> None:
        """Send a request that gets no answer (Produce with acks=0)."""
        self._send(api_key, version, body)

    # --- internals ---

    def _negotiate(self) -> None:
        """ApiVersions at our highest version; a broker that does not know it answers
        UNSUPPORTED_VERSION in the v0 layout with its own range (KIP-511): then again at the
        highest version both know."""
        ours = CLIENT_VERSIONS[API_VERSIONS][1]
        data = self._exchange(API_VERSIONS, ours, self._api_versions_body())
        code = _INT16.unpack_from(data, 0)[0] if len(data) >= 2 else 0
        if code == ErrorCode.UNSUPPORTED_VERSION:
            v0 = self._decode(API_VERSIONS, 0, data)
            theirs = next((k for k in v0.api_keys if k.api_key == API_VERSIONS), None)
            if theirs is None:
                raise UnsupportedApi(f"the broker at {self.address} does not serve ApiVersions")
            version = min(ours, theirs.max_version)
            data = self._exchange(API_VERSIONS, version, self._api_versions_body())
        else:
            version = ours
        resp: ApiVersionsResponse = self._decode(API_VERSIONS, version, data)
        check(resp.error_code, f"ApiVersions at {self.address}")
        self.versions = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}

    @staticmethod
    def _api_versions_body() -> ApiVersionsRequest:
        return ApiVersionsRequest(
            client_software_name="kafscale-cli", client_software_version=_kafscale_version
        )

    def _roundtrip(self, api_key: int, version: int, body: Message) -> Any:
        return self._decode(api_key, version, self._exchange(api_key, version, body))

    def _exchange(self, api_key: int, version: int, body: Message) -> bytes:
        """Send one request; the response body's bytes (header checked and removed)."""
        correlation = self._send(api_key, version, body)
        frame = self._read_frame()
        got = _CORRELATION.unpack_from(frame, 0)[0] if len(frame) >= 4 else None
        if got != correlation:
            self.close()
            raise BrokerUnreachable(
                f"{self.address} answered correlation id {got}, expected {correlation}"
            )
        api = APIS[api_key]
        try:
            _, pos = ResponseHeader.read(frame, 0, api.response_header_version(version))
        except ProtocolError as error:
            self.close()
            raise BrokerUnreachable(f"bad response header from {self.address}: {error}") from None
        return frame[pos:]

    def _decode(self, api_key: int, version: int, data: bytes) -> Any:
        api = APIS[api_key]
        try:
            # Bytes after the body are ignored, as Kafka's clients ignore them.
            return api.response_type().read(data, 0, version)[0]
        except ProtocolError as error:
            self.close()
            raise BrokerUnreachable(
                f"cannot decode {api.name} v{version} from {self.address}: {error}"
            ) from None

    def _send(self, api_key: int, version: int, body: Message) -> int:
        if self._sock is None:
            raise BrokerUnreachable(f"the connection to {self.address} is closed")
        self._correlation += 1
        chunks = encode_request(APIS[api_key], version, self._correlation, self.client_id, body)
        try:
            self._sock.sendall(b"".join(chunks))
        except OSError as error:
            self.close()
            raise BrokerUnreachable(f"{self.address}: {_os_reason(error)}") from None
        return self._correlation

    def _read_frame(self) -> bytes:
        size = _SIZE.unpack(self._recv(4))[0]
        if size < 4:
            self.close()
            raise BrokerUnreachable(f"{self.address} sent a frame of {size} bytes")
        return self._recv(size)

    def _recv(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        try:
            while len(buf) < n:
                chunk = self._sock.recv(min(n - len(buf), 1 << 20))
                if not chunk:
                    self.close()
                    raise BrokerUnreachable(f"{self.address} closed the connection")
                buf += chunk
        except TimeoutError:
            self.close()
            raise BrokerUnreachable(
                f"{self.address} did not answer within {self.timeout:g}s"
            ) from None
        except OSError as error:
            self.close()
            raise BrokerUnreachable(f"{self.address}: {_os_reason(error)}") from None
        return bytes(buf)


def _os_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host ({error.strerror})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return error.strerror or str(error)


# --- cluster metadata --------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int
    rack: str | None


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline: tuple[int, ...]
    error_code: int


@dataclass(frozen=True)
class TopicInfo:
    name: str
    topic_id: uuid.UUID
    internal: bool
    error_code: int
    partitions: dict[int, PartitionInfo]


@dataclass(frozen=True)
class ClusterInfo:
    """A Metadata answer."""

    cluster_id: str | None
    controller_id: int
    brokers: dict[int, BrokerInfo]
    topics: dict[str, TopicInfo]


@dataclass(frozen=True)
class OffsetAnswer:
    """One partition's ListOffsets answer (offset -1: none at or after the timestamp)."""

    offset: int
    timestamp: int


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    value: str | None
    source: int
    """Kafka's ConfigSource: 1 dynamic topic config, 5 default, 4 static broker, ... (-1
    unknown)."""
    read_only: bool
    sensitive: bool

    @property
    def is_default(self) -> bool:
        return self.source == 5


CONFIG_SOURCES = {
    -1: "UNKNOWN",
    1: "DYNAMIC_TOPIC_CONFIG",
    2: "DYNAMIC_BROKER_CONFIG",
    3: "DYNAMIC_DEFAULT_BROKER_CONFIG",
    4: "STATIC_BROKER_CONFIG",
    5: "DEFAULT_CONFIG",
    6: "DYNAMIC_BROKER_LOGGER_CONFIG",
    7: "CLIENT_METRICS_CONFIG",
    8: "GROUP_CONFIG",
}
"""Kafka's DescribeConfigs ConfigSource names."""


@dataclass
class GroupMember:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    assignment: dict[str, list[int]]
    """The member's partitions, decoded when the group speaks the consumer protocol."""


@dataclass
class GroupDescription:
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: list[GroupMember] = field(default_factory=list)


@dataclass(frozen=True)
class ListedGroup:
    group_id: str
    protocol_type: str
    state: str
    coordinator: int


@dataclass(frozen=True)
class FetchedPartition:
    """One partition's Fetch answer: its records' bytes (possibly a partial last batch)."""

    topic: str
    partition: int
    error_code: int
    high_watermark: int
    log_start_offset: int
    records: bytes


# --- the client --------------------------------------------------------------------------------


class Client:
    """Connections to a cluster, found from ``bootstrap`` (``host:port[,host:port...]``)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = CLIENT_ID,
        timeout: float = REQUEST_TIMEOUT,
        attempts: int = 5,
        backoff: float = 0.2,
    ) -> None:
        self.bootstrap = [parse_address(a) for a in bootstrap.split(",") if a.strip()]
        if not self.bootstrap:
            raise UsageError("--bootstrap names no broker")
        self.client_id = client_id
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._any: Connection | None = None
        self._nodes: dict[int, Connection] = {}
        self._brokers: dict[int, BrokerInfo] = {}
        self._coordinators: dict[str, int] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection."""
        for conn in {id(c): c for c in [self._any, *self._nodes.values()] if c}.values():
            conn.close()
        self._any = None
        self._nodes.clear()

    # --- connections ---

    def any_broker(self) -> Connection:
        """The bootstrap connection (the first bootstrap address that accepts one)."""
        if self._any is not None and self._any._sock is not None:
            return self._any
        failures = []
        for host, port in self.bootstrap:
            try:
                self._any = Connection(host, port, client_id=self.client_id, timeout=self.timeout)
                return self._any
            except BrokerUnreachable as error:
                failures.append(str(error))
        raise BrokerUnreachable("; ".join(failures))

    def node(self, node_id: int) -> Connection:
        """A connection to broker ``node_id`` (its address from the last Metadata)."""
        conn = self._nodes.get(node_id)
        if conn is not None and conn._sock is not None:
            return conn
        info = self._brokers.get(node_id)
        if info is None:
            self.metadata([])
            info = self._brokers.get(node_id)
        if info is None:
            raise KafkaError(
                ErrorCode.BROKER_NOT_AVAILABLE, f"broker {node_id}", "not in the cluster's metadata"
            )
        boot = self.any_broker()
        if (boot.host, boot.port) == (info.host, info.port):
            conn = boot  # one connection when the bootstrap broker is this node
        else:
            conn = Connection(info.host, info.port, client_id=self.client_id, timeout=self.timeout)
        self._nodes[node_id] = conn
        return conn

    def retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, again after a retriable Kafka error (fresh routing, growing pause),
        at most ``attempts`` times; the last error is raised."""
        for i in range(self.attempts):
            try:
                return attempt()
            except KafkaError as error:
                if not error.retriable or i == self.attempts - 1:
                    raise
                self._coordinators.clear()
                time.sleep(min(self.backoff * 2**i, 2.0))
        raise AssertionError("unreachable")

    # --- metadata ---

    def metadata(self, topics: Sequence[str] | None = None) -> ClusterInfo:
        """Metadata for ``topics`` (None: every topic; []: none, just the brokers)."""

        def build(v: int) -> MetadataRequest:
            req = MetadataRequest(allow_auto_topic_creation=False)
            req.topics = None if topics is None else [MetadataRequestTopic(name=t) for t in topics]
            return req

        _, resp = self.any_broker().call(METADATA, build)
        brokers = {b.node_id: BrokerInfo(b.node_id, b.host, b.port, b.rack) for b in resp.brokers}
        self._brokers = brokers
        out: dict[str, TopicInfo] = {}
        for t in resp.topics:
            partitions = {
                p.partition_index: PartitionInfo(
                    p.partition_index,
                    p.leader_id,
                    p.leader_epoch,
                    tuple(p.replica_nodes),
                    tuple(p.isr_nodes),
                    tuple(p.offline_replicas),
                    p.error_code,
                )
                for p in t.partitions
            }
            name = t.name or ""
            out[name] = TopicInfo(name, t.topic_id, t.is_internal, t.error_code, partitions)
        return ClusterInfo(resp.cluster_id, resp.controller_id, brokers, out)

    def topic(self, name: str) -> TopicInfo:
        """One topic's metadata; :class:`KafkaError` when the broker reports an error for it
        (retriable ones, such as LEADER_NOT_AVAILABLE right after creation, are retried)."""

        def attempt() -> TopicInfo:
            info = self.metadata([name]).topics.get(name)
            if info is None:
                raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {_q(name)}")
            check(info.error_code, f"topic {_q(name)}")
            return info

        return self.retrying(attempt)

    def controller(self) -> Connection:
        """The controller (where Kafka wants CreateTopics and DeleteTopics), else any broker."""
        controller = self.metadata([]).controller_id
        return self.node(controller) if controller >= 0 else self.any_broker()

    # --- topics ---

    def create_topics(
        self,
        names: Sequence[str],
        partitions: int,
        replication_factor: int,
        configs: Sequence[tuple[str, str]],
        *,
        validate_only: bool = False,
    ) -> dict[str, tuple[int, str | None, int]]:
        """CreateTopics; per topic (error code, error message, partitions created)."""

        def attempt() -> dict[str, tuple[int, str | None, int]]:
            conn = self.controller()
            version = conn.version(CREATE_TOPICS)
            # -1 (the broker's default) is understood from v4 (KIP-464).
            fallback = 1 if version < 4 else -1
            topics = [
                CreatableTopic(
                    name=name,
                    num_partitions=partitions if partitions > 0 else fallback,
                    replication_factor=replication_factor if replication_factor > 0 else fallback,
                    configs=[CreatableTopicConfig(name=k, value=v) for k, v in configs],
                )
                for name in names
            ]
            _, resp = conn.call(
                CREATE_TOPICS,
                lambda v: CreateTopicsRequest(
                    topics=topics, timeout_ms=BROKER_TIMEOUT_MS, validate_only=validate_only
                ),
            )
            results = {
                r.name: (r.error_code, r.error_message, r.num_partitions) for r in resp.topics
            }
            return _controller_answered(results)

        return self.retrying(attempt)

    def create_partitions(
        self, counts: dict[str, int], *, validate_only: bool = False
    ) -> dict[str, tuple[int, str | None]]:
        """CreatePartitions: grow each topic to its new total count (the broker places the new
        partitions); per topic (error code, error message)."""
        topics = [
            CreatePartitionsTopic(name=n, count=c, assignments=None) for n, c in counts.items()
        ]

        def attempt() -> dict[str, tuple[int, str | None]]:
            _, resp = self.controller().call(
                CREATE_PARTITIONS,
                lambda v: CreatePartitionsRequest(
                    topics=topics, timeout_ms=BROKER_TIMEOUT_MS, validate_only=validate_only
                ),
            )
            results = {r.name: (r.error_code, r.error_message) for r in resp.results}
            return _controller_answered(results)

        return self.retrying(attempt)

    def delete_topics(self, names: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """DeleteTopics by name; per topic (error code, error message)."""

        def build(v: int) -> DeleteTopicsRequest:
            req = DeleteTopicsRequest(timeout_ms=BROKER_TIMEOUT_MS)
            if v >= 6:
                req.topics = [DeleteTopicState(name=n) for n in names]
            else:
                req.topic_names = list(names)
            return req

        def attempt() -> dict[str, tuple[int, str | None]]:
            _, resp = self.controller().call(DELETE_TOPICS, build)
            results = {r.name: (r.error_code, r.error_message) for r in resp.responses}
            return _controller_answered(results)

        return self.retrying(attempt)

    def describe_topic_configs(self, topic: str) -> list[ConfigEntry]:
        """DescribeConfigs of one topic: every config, with its source."""

        def build(v: int) -> DescribeConfigsRequest:
            resource = DescribeConfigsResource(
                resource_type=RESOURCE_TOPIC, resource_name=topic, configuration_keys=None
            )
            return DescribeConfigsRequest(resources=[resource])

        def attempt() -> list[ConfigEntry]:
            _, resp = self.any_broker().call(DESCRIBE_CONFIGS, build)
            result = next((r for r in resp.results if r.resource_name == topic), None)
            if result is None:
                raise KafkaError(
                    ErrorCode.UNKNOWN_SERVER_ERROR,
                    f"topic {_q(topic)}",
                    "no DescribeConfigs result",
                )
            check(result.error_code, f"topic {_q(topic)}", result.error_message)
            return [
                ConfigEntry(c.name, c.value, c.config_source, c.read_only, c.is_sensitive)
                for c in result.configs
            ]

        return self.retrying(attempt)

    def alter_topic_configs(
        self, topic: str, ops: Sequence[tuple[str, int, str | None]], *, validate_only: bool
    ) -> None:
        """IncrementalAlterConfigs of one topic: ``ops`` are (name, operation, value), the
        operation 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT."""
        resource = AlterConfigsResource(
            resource_type=RESOURCE_TOPIC,
            resource_name=topic,
            configs=[AlterableConfig(name=n, config_operation=o, value=v) for n, o, v in ops],
        )

        def attempt() -> None:
            _, resp = self.any_broker().call(
                INCREMENTAL_ALTER_CONFIGS,
                lambda v: IncrementalAlterConfigsRequest(
                    resources=[resource], validate_only=validate_only
                ),
            )
            for r in resp.responses:
                check(r.error_code, f"topic {_q(topic)}", r.error_message)

        self.retrying(attempt)

    # --- offsets ---

    def list_offsets(
        self, requests: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], OffsetAnswer]:
        """ListOffsets for each (topic, partition) -> timestamp (:data:`EARLIEST`,
        :data:`LATEST` or milliseconds), sent to each partition's leader."""
        done: dict[tuple[str, int], OffsetAnswer] = {}

        def attempt() -> dict[tuple[str, int], OffsetAnswer]:
            pending = {tp: ts for tp, ts in requests.items() if tp not in done}
            by_leader = self._by_leader(pending)
            retry: KafkaError | None = None
            for leader, tps in by_leader.items():
                topics: dict[str, list[ListOffsetsPartition]] = {}
                for topic, p in tps:
                    topics.setdefault(topic, []).append(
                        ListOffsetsPartition(partition_index=p, timestamp=pending[topic, p])
                    )
                body = ListOffsetsRequest(
                    replica_id=-1,
                    isolation_level=0,
                    topics=[ListOffsetsTopic(name=t, partitions=ps) for t, ps in topics.items()],
                )
                _, resp = self.node(leader).call(LIST_OFFSETS, _fixed(body))
                for t in resp.topics:
                    for p in t.partitions:
                        where = f"topic {_q(t.name)} partition {p.partition_index}"
                        try:
                            check(p.error_code, where)
                        except KafkaError as error:
                            if not error.retriable:
                                raise
                            retry = error
                            continue
                        done[t.name, p.partition_index] = OffsetAnswer(p.offset, p.timestamp)
            if retry is not None:
                raise retry
            return done

        return self.retrying(attempt)

    def _by_leader(self, tps: Iterable[tuple[str, int]]) -> dict[int, list[tuple[str, int]]]:
        """Partitions grouped by their leader (fresh Metadata); LEADER_NOT_AVAILABLE when one
        has none, UNKNOWN_TOPIC_OR_PARTITION when it does not exist."""
        wanted = list(tps)
        topics = sorted({t for t, _ in wanted})
        cluster = self.metadata(topics) if topics else None
        out: dict[int, list[tuple[str, int]]] = {}
        for topic, p in wanted:
            assert cluster is not None
            info = cluster.topics.get(topic)
            if info is None:
                raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {_q(topic)}")
            check(info.error_code, f"topic {_q(topic)}")
            part = info.partitions.get(p)
            if part is None:
                raise KafkaError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {_q(topic)} partition {p}"
                )
            if part.leader < 0:
                raise KafkaError(ErrorCode.LEADER_NOT_AVAILABLE, f"topic {_q(topic)} partition {p}")
            out.setdefault(part.leader, []).append((topic, p))
        return out

    # --- produce and fetch ---

    def produce(self, topic: str, batches: dict[int, bytes], acks: int = -1) -> dict[int, int]:
        """Produce one record batch per partition; each partition's base offset (-1 with
        acks=0). Retried only on errors that say nothing was written."""
        base: dict[int, int] = {}

        def attempt() -> dict[int, int]:
            pending = [p for p in batches if p not in base]
            retry: KafkaError | None = None
            for leader, tps in self._by_leader((topic, p) for p in pending).items():
                body = ProduceRequest(
                    acks=acks,
                    timeout_ms=BROKER_TIMEOUT_MS,
                    topic_data=[
                        TopicProduceData(
                            name=topic,
                            partition_data=[
                                PartitionProduceData(index=p, records=batches[p]) for _, p in tps
                            ],
                        )
                    ],
                )
                conn = self.node(leader)
                if acks == 0:
                    conn.send_only(PRODUCE, conn.version(PRODUCE), body)
                    base.update({p: -1 for _, p in tps})
                    continue
                _, resp = conn.call(PRODUCE, _fixed(body))
                for t in resp.responses:
                    for p in t.partition_responses:
                        where = f"topic {_q(topic)} partition {p.index}"
                        try:
                            check(p.error_code, where, p.error_message)
                        except KafkaError as error:
                            if error.code not in _NOT_WRITTEN:
                                raise
                            retry = error
                            continue
                        base[p.index] = p.base_offset
            if retry is not None:
                raise retry
            return base

        return self.retrying(attempt)

    def fetch(
        self,
        leader: int,
        positions: dict[tuple[str, int], int],
        topic_ids: dict[str, uuid.UUID],
        *,
        max_wait_ms: int,
        partition_max_bytes: int = 1 << 20,
    ) -> list[FetchedPartition]:
        """One Fetch (no session, read_uncommitted) to ``leader`` for ``positions``
        ((topic, partition) -> fetch offset). Errors are left in each partition's answer."""
        conn = self.node(leader)
        version = conn.version(FETCH)
        if version >= 13 and any(topic_ids.get(t, _ZERO_UUID) == _ZERO_UUID for t, _ in positions):
            version = 12  # v13+ names topics by id only: this broker gave us none
        if version < CLIENT_VERSIONS[FETCH][0]:
            raise UnsupportedApi(f"the broker at {conn.address} serves no usable Fetch version")
        topics: dict[str, list[FetchPartition]] = {}
        for (topic, p), offset in positions.items():
            topics.setdefault(topic, []).append(
                FetchPartition(
                    partition=p, fetch_offset=offset, partition_max_bytes=partition_max_bytes
                )
            )
        body = FetchRequest(
            replica_id=-1,
            max_wait_ms=max_wait_ms,
            min_bytes=1,
            max_bytes=64 << 20,
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=[
                FetchTopic(topic=t, topic_id=topic_ids.get(t, _ZERO_UUID), partitions=ps)
                for t, ps in topics.items()
            ],
        )
        _, resp = conn.call(FETCH, _fixed(body), version=version)
        check(resp.error_code, f"Fetch from broker {leader}")
        names = {i: t for t, i in topic_ids.items()}
        out = []
        for t in resp.responses:
            name = names.get(t.topic_id, "") if version >= 13 else t.topic
            for p in t.partitions:
                out.append(
                    FetchedPartition(
                        name,
                        p.partition_index,
                        p.error_code,
                        p.high_watermark,
                        p.log_start_offset,
                        bytes(p.records) if p.records is not None else b"",
                    )
                )
        return out

    # --- groups ---

    def coordinator(self, group: str) -> Connection:
        """A connection to ``group``'s coordinator (FindCoordinator; cached)."""
        node_id = self._coordinators.get(group)
        if node_id is not None:
            return self.node(node_id)

        def build(v: int) -> FindCoordinatorRequest:
            if v >= 4:
                return FindCoordinatorRequest(key_type=0, coordinator_keys=[group])
            return FindCoordinatorRequest(key=group, key_type=0)

        def attempt() -> Connection:
            v, resp = self.any_broker().call(FIND_COORDINATOR, build)
            if v >= 4:
                found = next((c for c in resp.coordinators if c.key == group), None)
                if found is None:
                    raise KafkaError(
                        ErrorCode.COORDINATOR_NOT_AVAILABLE,
                        f"group {_q(group)}",
                        "no coordinator in the answer",
                    )
                code, message = found.error_code, found.error_message
                node, host, port = found.node_id, found.host, found.port
            else:
                code, message = resp.error_code, resp.error_message
                node, host, port = resp.node_id, resp.host, resp.port
            check(code, f"group {_q(group)}", message)
            self._brokers.setdefault(node, BrokerInfo(node, host, port, None))
            self._coordinators[group] = node
            return self.node(node)

        return self.retrying(attempt)

    def list_groups(self) -> list[ListedGroup]:
        """Every group of every broker (ListGroups goes to each broker: each lists the groups
        it coordinates)."""
        brokers = sorted(self.metadata([]).brokers)
        seen: dict[str, ListedGroup] = {}
        for node_id in brokers:

            def attempt(node_id: int = node_id) -> list[Any]:
                _, resp = self.node(node_id).call(LIST_GROUPS, lambda v: ListGroupsRequest())
                check(resp.error_code, f"ListGroups on broker {node_id}")
                return list(resp.groups)

            for g in self.retrying(attempt):
                seen.setdefault(
                    g.group_id, ListedGroup(g.group_id, g.protocol_type, g.group_state, node_id)
                )
        return sorted(seen.values(), key=lambda g: g.group_id)

    def describe_group(self, group: str) -> GroupDescription:
        """DescribeGroups of one group (its members' assignments decoded for consumer groups).
        A group nobody knows is described as state Dead with no members, as Kafka does."""

        def attempt() -> GroupDescription:
            _, resp = self.coordinator(group).call(
                DESCRIBE_GROUPS, lambda v: DescribeGroupsRequest(groups=[group])
            )
            g = next((g for g in resp.groups if g.group_id == group), None)
            if g is None:
                raise KafkaError(
                    ErrorCode.UNKNOWN_SERVER_ERROR,
                    f"group {_q(group)}",
                    "not in the DescribeGroups answer",
                )
            check(g.error_code, f"group {_q(group)}")
            members = [
                GroupMember(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.client_host,
                    _assignment(m.member_assignment) if g.protocol_type == "consumer" else {},
                )
                for m in g.members
            ]
            return GroupDescription(
                g.group_id, g.group_state, g.protocol_type, g.protocol_data, members
            )

        return self.retrying(attempt)

    def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """Every committed offset of ``group`` (OffsetFetch of all its partitions)."""

        def build(v: int) -> OffsetFetchRequest:
            if v >= 8:
                return OffsetFetchRequest(
                    groups=[OffsetFetchRequestGroup(group_id=group, topics=None)]
                )
            return OffsetFetchRequest(group_id=group, topics=None)

        def attempt() -> dict[tuple[str, int], int]:
            v, resp = self.coordinator(group).call(OFFSET_FETCH, build)
            if v >= 8:
                g = next((g for g in resp.groups if g.group_id == group), None)
                if g is None:
                    raise KafkaError(
                        ErrorCode.UNKNOWN_SERVER_ERROR,
                        f"group {_q(group)}",
                        "not in the OffsetFetch answer",
                    )
                check(g.error_code, f"group {_q(group)}")
                topics = g.topics
            else:
                check(resp.error_code, f"group {_q(group)}")
                topics = resp.topics
            out = {}
            for t in topics:
                for p in t.partitions:
                    check(p.error_code, f"group {_q(group)} topic {_q(t.name)}")
                    if p.committed_offset >= 0:
                        out[t.name, p.partition_index] = p.committed_offset
            return out

        return self.retrying(attempt)

    def commit_offsets(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        """OffsetCommit as a standalone consumer (generation -1, no member id): what Kafka
        accepts only while the group has no active members."""
        topics: dict[str, list[OffsetCommitRequestPartition]] = {}
        for (topic, p), offset in sorted(offsets.items()):
            topics.setdefault(topic, []).append(
                OffsetCommitRequestPartition(partition_index=p, committed_offset=offset)
            )
        body = OffsetCommitRequest(
            group_id=group,
            generation_id_or_member_epoch=-1,
            member_id="",
            topics=[OffsetCommitRequestTopic(name=t, partitions=ps) for t, ps in topics.items()],
        )

        def attempt() -> None:
            _, resp = self.coordinator(group).call(OFFSET_COMMIT, _fixed(body))
            for t in resp.topics:
                for p in t.partitions:
                    where = f"group {_q(group)} topic {_q(t.name)} partition {p.partition_index}"
                    check(p.error_code, where)

        self.retrying(attempt)

    def delete_groups(self, groups: Sequence[str]) -> dict[str, int]:
        """DeleteGroups, each group at its coordinator; per group its error code."""
        out: dict[str, int] = {}
        for group in groups:

            def attempt(group: str = group) -> int:
                _, resp = self.coordinator(group).call(
                    DELETE_GROUPS, lambda v: DeleteGroupsRequest(groups_names=[group])
                )
                r = next((r for r in resp.results if r.group_id == group), None)
                code = ErrorCode.UNKNOWN_SERVER_ERROR if r is None else r.error_code
                if code in _COORDINATOR_MOVED:
                    raise KafkaError(code, f"group {_q(group)}")
                return code

            out[group] = self.retrying(attempt)
        return out


def _controller_answered(results: dict[str, R]) -> dict[str, R]:
    """``results`` of a controller request (per topic: error code, error message, ...);
    :class:`KafkaError` NOT_CONTROLLER (retriable: ``retrying`` asks the new controller) when
    the controller moved."""
    for name, (code, message, *_) in results.items():
        if code == ErrorCode.NOT_CONTROLLER:
            raise KafkaError(code, f"topic {_q(name)}", message)
    return results


def _fixed(body: Message) -> Callable[[int], Message]:
    """A request builder for a body that is the same in every version it is sent at."""
    return lambda _version: body


def _assignment(data: bytes) -> dict[str, list[int]]:
    """A consumer protocol assignment (version int16, then the body), as topic -> partitions;
    empty when it cannot be read (a member mid-rebalance has none)."""
    from generated.consumer_protocol_assignment import ConsumerProtocolAssignment

    if len(data) < 2:
        return {}
    version = min(_INT16.unpack_from(data, 0)[0], ConsumerProtocolAssignment.VALID_VERSIONS[1])
    try:
        # Read, not decode: a newer version may carry fields we do not know after ours.
        assignment, _ = ConsumerProtocolAssignment.read(data[2:], 0, max(version, 0))
    except ProtocolError:
        return {}
    return {t.topic: sorted(t.partitions) for t in assignment.assigned_partitions}


def _q(name: str) -> str:
    """A topic or group name quoted for an error line."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
