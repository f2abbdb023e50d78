"""Broker settings: command-line options, ``KAFSCALE_*`` environment variables, a YAML file.

Precedence: command line > environment > ``--config`` file > defaults. Kafka-named settings
keep Kafka's names in the YAML file and environment (``message.max.bytes`` is
``KAFSCALE_MESSAGE_MAX_BYTES``) so users find what they know.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kafscale.broker.security.listeners import Listener


@dataclass
class BrokerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 9092
    advertised_host: str = ""
    """Host clients are told to connect to (Metadata); empty: the listen host."""
    advertised_port: int = 0
    """Port clients are told (0: the listen port, or the bound port when listening on 0)."""
    data_dir: Path = Path("./kafscale-data")
    s3_bucket: str = ""
    """Keep the log in this S3 bucket (S3ObjectStore); empty: in ``data_dir/objects``."""
    s3_endpoint: str = ""
    """URL of an S3-compatible server (MinIO, Ceph, moto...); empty: AWS."""
    s3_region: str = ""
    """Empty: from the AWS configuration (AWS_REGION, the profile)."""
    s3_path_style: bool = False
    """Path-style addressing (``endpoint/bucket/key``), which most non-AWS servers need."""
    broker_id: int = 0
    namespace: str = "kafscale"
    cluster_id: str = "kafscale-local-cluster"
    etcd_endpoints: str = ""
    """etcd ``host:port,...`` for the metadata store (a cluster of brokers); empty: sqlite
    in ``data_dir``."""
    segment_bytes: int = 64 * 1024 * 1024
    """segment.bytes: the largest segment object one flush writes per partition."""
    segment_ms: int = 604800000
    """segment.ms: a segment is not rewritten (merged) any more this long after its first
    record, so retention can drop it whole."""
    log_retention_check_interval_ms: int = 15000
    """How often the owner applies retention (Kafka's default is 5 minutes; ours is shorter,
    so an expired segment is gone within a minute of its deadline)."""
    log_initial_task_delay_ms: int = 30000
    """Retention is first applied this long after the broker starts (Kafka's default)."""
    log_segment_delete_delay_ms: int = 30000
    """Grace period before an object nothing references any more is deleted: longer than any
    Fetch that may still read it (Kafka's file.delete.delay.ms default is 60 s)."""
    flush_interval_ms: int = 50
    """How long produced data may wait before the flusher uploads and commits it."""
    flush_bytes: int = 4 * 1024 * 1024
    """Flush early once this many bytes wait, across all partitions."""
    auto_create_topics_enable: bool = True
    num_partitions: int = 1
    default_replication_factor: int = 1
    message_max_bytes: int = 1048588
    socket_request_max_bytes: int = 104857600
    retention_ms: int = 604800000
    retention_bytes: int = -1
    fetch_max_bytes: int = 55 * 1024 * 1024
    """Server-side cap on one Fetch response, whatever the request asks for."""
    in_flight_bytes: int = 256 * 1024 * 1024
    """Global budget of request bytes being processed; sockets stop being read when full."""
    idle_timeout_ms: int = 600000
    """connections.max.idle.ms."""
    segment_cache_bytes: int = 256 * 1024 * 1024
    index_interval_bytes: int = 4096
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1800000
    group_initial_rebalance_delay_ms: int = 3000
    """An Empty group's first rebalance waits this long for more members to join."""
    group_max_size: int = 2**31 - 1
    offsets_retention_minutes: int = 10080
    """Committed offsets of a group empty this long (or of a simple consumer, since the last
    commit) are deleted."""
    offsets_retention_check_interval_ms: int = 600000
    producer_id_expiration_ms: int = 86400000
    """producer.id.expiration.ms: an idempotent producer idle this long is forgotten."""
    transaction_max_timeout_ms: int = 900000
    """transaction.max.timeout.ms: the longest transaction timeout a producer may ask for."""
    transaction_cleanup_interval_ms: int = 10000
    """transaction.abort.timed.out.transaction.cleanup.interval.ms: how often the coordinator
    aborts transactions past their timeout (and finishes decided ones it took over)."""
    lease_ttl_ms: int = 9000
    """How long a broker that stopped renewing its lease (killed, hung, cut off) keeps its
    partitions and groups before others take them (Kafka's broker.session.timeout.ms)."""
    max_partitions_per_topic: int = 100000
    """The most partitions one topic may have (CreateTopics, CreatePartitions answer
    INVALID_PARTITIONS beyond it). A topic of any size is one metadata key; the bound is what
    one Metadata answer and one broker's claim loop should carry."""
    log_level: str = "INFO"
    log_format: str = "text"
    """Log lines as text, or ``json``: one JSON object per line (time, broker id, logger,
    level, message, exception)."""
    http_listen: str = ""
    """``host:port`` of the HTTP port (``/healthz``, ``/readyz``, ``/metrics``, ``/api/...``);
    empty: no HTTP port. Port 0 picks a free port (``Broker.http_port`` has it). The setting
    (``load``: ``kafscale serve``, the environment, a YAML file) defaults to
    :data:`DEFAULT_HTTP_LISTEN`; a broker built in code (tests, tools: often several in one
    process) has none unless it is given one."""
    object_store_health_window_ms: int = 60000
    """Object-store health is judged from the requests of this sliding window."""
    object_store_latency_degraded_ms: int = 1000
    """Median request latency in the window at which the object store counts as degraded."""
    object_store_latency_unavailable_ms: int = 5000
    """Median request latency in the window at which it counts as unavailable."""
    object_store_error_rate_degraded: float = 0.01
    """Share of failed requests in the window at which it counts as degraded."""
    object_store_error_rate_unavailable: float = 0.05
    """Share of failed requests in the window at which it counts as unavailable (the broker
    is then not ready)."""
    listeners: str = ""
    """Kafka's ``listeners``: ``NAME://host:port,...`` (docs/security.md); empty: one
    PLAINTEXT listener on ``listen_host:listen_port`` (``--listen``)."""
    advertised_listeners: str = ""
    """Kafka's ``advertised.listeners``: the address clients are told per listener."""
    listener_security_protocol_map: str = ""
    """``NAME:PROTOCOL,...`` for listener names that are not protocol names."""
    ssl_keystore_location: str = ""
    """PEM file with the server's certificate chain and PKCS#8 private key."""
    ssl_keystore_certificate_chain: str = ""
    ssl_keystore_key: str = ""
    ssl_key_password: str = ""
    ssl_truststore_location: str = ""
    """PEM file of the CAs whose client certificates are accepted (mTLS)."""
    ssl_truststore_certificates: str = ""
    ssl_client_auth: str = "none"
    """none, requested or required (SSL listeners; SASL_SSL ones ask for no certificate)."""
    ssl_principal_mapping_rules: str = "DEFAULT"
    sasl_enabled_mechanisms: str = "SCRAM-SHA-256,SCRAM-SHA-512"
    """Offered on SASL listeners: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512."""
    connections_max_reauth_ms: int = 0
    """KIP-368: a SASL session lasts this long, then the client re-authenticates (0: forever)."""
    connection_failed_authentication_delay_ms: int = 100
    """A failed authentication is answered this late (doubled per repeated failure)."""
    sasl_server_max_receive_size: int = 524288
    """The largest frame read before authentication."""
    authorizer_class_name: str = ""
    """Any non-empty value turns the ACL authorizer on (Kafka's setting)."""
    super_users: str = ""
    """``User:a;User:b``: allowed everything."""
    allow_everyone_if_no_acl_found: bool = False
    etcd_cacert: str = ""
    """CA (PEM) to verify etcd's server certificate; set: etcd over TLS."""
    etcd_cert: str = ""
    """Client certificate (PEM) for etcd (with etcd_key)."""
    etcd_key: str = ""
    etcd_user: str = ""
    """etcd username (with etcd_password): authenticated requests."""
    etcd_password: str = ""
    s3_sse: str = ""
    """Server-side encryption of every object written: ``AES256`` (SSE-S3) or ``aws:kms``."""
    s3_sse_kms_key_id: str = ""
    """The KMS key of ``aws:kms`` (empty: the bucket's default key)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def log_dir(self) -> str:
        """The one log dir (DescribeLogDirs, log.dirs): where this cluster's log lives."""
        if self.s3_bucket:
            return f"s3://{self.s3_bucket}/{self.namespace}"
        return os.path.abspath(Path(self.data_dir) / "objects" / self.namespace)

    @property
    def advertised(self) -> tuple[str, int]:
        return (self.advertised_host or self.listen_host, self.advertised_port or self.listen_port)

    def listener_list(self) -> list[Listener]:
        """The listeners: ``listeners`` when set, else PLAINTEXT on ``listen_host:port``."""
        from kafscale.broker.security.listeners import (
            Listener,
            parse_advertised,
            parse_listeners,
            parse_protocol_map,
        )

        protocols = parse_protocol_map(self.listener_security_protocol_map)
        if not self.listeners:
            return [Listener("PLAINTEXT", "PLAINTEXT", self.listen_host, self.listen_port)]
        listeners = parse_listeners(self.listeners, protocols)
        if not listeners:
            raise ValueError("listeners: no listener given")
        parse_advertised(self.advertised_listeners, listeners, protocols)
        return listeners

    def advertised_listener_map(self) -> dict[str, tuple[str, int]]:
        """``advertised.listeners`` as {listener name: (host, port)}."""
        from kafscale.broker.security.listeners import parse_advertised, parse_protocol_map

        protocols = parse_protocol_map(self.listener_security_protocol_map)
        return parse_advertised(self.advertised_listeners, self.listener_list(), protocols)

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of the HTTP port, None when disabled (``http_listen`` empty)."""
        if not self.http_listen:
            return None
        host, port = _split_host_port("http-listen", self.http_listen)
        return host.removeprefix("[").removesuffix("]"), port  # [::]:9093 is host ::


# Option name (as in YAML/Kafka) -> dataclass field. The environment variable is
# KAFSCALE_ + the name upper-cased with '.' and '-' as '_'.
_OPTIONS: dict[str, str] = {
    "listen-host": "listen_host",
    "listen-port": "listen_port",
    "advertised-host": "advertised_host",
    "advertised-port": "advertised_port",
    "data-dir": "data_dir",
    "s3-bucket": "s3_bucket",
    "s3-endpoint": "s3_endpoint",
    "s3-region": "s3_region",
    "s3-path-style": "s3_path_style",
    "broker-id": "broker_id",
    "namespace": "namespace",
    "cluster-id": "cluster_id",
    "etcd": "etcd_endpoints",
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "log.retention.check.interval.ms": "log_retention_check_interval_ms",
    "log.segment.delete.delay.ms": "log_segment_delete_delay_ms",
    "log.initial.task.delay.ms": "log_initial_task_delay_ms",
    "flush.interval.ms": "flush_interval_ms",
    "flush.bytes": "flush_bytes",
    "auto.create.topics.enable": "auto_create_topics_enable",
    "num.partitions": "num_partitions",
    "default.replication.factor": "default_replication_factor",
    "message.max.bytes": "message_max_bytes",
    "socket.request.max.bytes": "socket_request_max_bytes",
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "fetch.max.bytes": "fetch_max_bytes",
    "in-flight-bytes": "in_flight_bytes",
    "connections.max.idle.ms": "idle_timeout_ms",
    "segment-cache-bytes": "segment_cache_bytes",
    "index.interval.bytes": "index_interval_bytes",
    "group.min.session.timeout.ms": "group_min_session_timeout_ms",
    "group.max.session.timeout.ms": "group_max_session_timeout_ms",
    "group.initial.rebalance.delay.ms": "group_initial_rebalance_delay_ms",
    "group.max.size": "group_max_size",
    "offsets.retention.minutes": "offsets_retention_minutes",
    "offsets.retention.check.interval.ms": "offsets_retention_check_interval_ms",
    "lease.ttl.ms": "lease_ttl_ms",
    "max.partitions.per.topic": "max_partitions_per_topic",
    "producer.id.expiration.ms": "producer_id_expiration_ms",
    "transaction.max.timeout.ms": "transaction_max_timeout_ms",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": (
        "transaction_cleanup_interval_ms"
    ),
    "log-level": "log_level",
    "log-format": "log_format",
    "http-listen": "http_listen",
    "object-store.health.window.ms": "object_store_health_window_ms",
    "object-store.latency.degraded.ms": "object_store_latency_degraded_ms",
    "object-store.latency.unavailable.ms": "object_store_latency_unavailable_ms",
    "object-store.error-rate.degraded": "object_store_error_rate_degraded",
    "object-store.error-rate.unavailable": "object_store_error_rate_unavailable",
    "listeners": "listeners",
    "advertised.listeners": "advertised_listeners",
    "listener.security.protocol.map": "listener_security_protocol_map",
    "ssl.keystore.location": "ssl_keystore_location",
    "ssl.keystore.certificate.chain": "ssl_keystore_certificate_chain",
    "ssl.keystore.key": "ssl_keystore_key",
    "ssl.key.password": "ssl_key_password",
    "ssl.truststore.location": "ssl_truststore_location",
    "ssl.truststore.certificates": "ssl_truststore_certificates",
    "ssl.client.auth": "ssl_client_auth",
    "ssl.principal.mapping.rules": "ssl_principal_mapping_rules",
    "sasl.enabled.mechanisms": "sasl_enabled_mechanisms",
    "connections.max.reauth.ms": "connections_max_reauth_ms",
    "connection.failed.authentication.delay.ms": "connection_failed_authentication_delay_ms",
    "sasl.server.max.receive.size": "sasl_server_max_receive_size",
    "authorizer.class.name": "authorizer_class_name",
    "super.users": "super_users",
    "allow.everyone.if.no.acl.found": "allow_everyone_if_no_acl_found",
    "etcd.cacert": "etcd_cacert",
    "etcd.cert": "etcd_cert",
    "etcd.key": "etcd_key",
    "etcd.user": "etcd_user",
    "etcd.password": "etcd_password",
    "s3.sse": "s3_sse",
    "s3.sse.kms.key.id": "s3_sse_kms_key_id",
}
SETTINGS: tuple[str, ...] = tuple(_OPTIONS)
"""Every setting's name as ``kafscale serve`` and a YAML file spell it (``KAFSCALE_<NAME>`` in
the environment): the operator checks a KafscaleCluster's ``spec.config`` against it."""
LOG_FORMATS = ("text", "json")
DEFAULT_HTTP_LISTEN = "127.0.0.1:9093"
"""KafScale's HTTP port: the one after the Kafka port."""
_LOAD_DEFAULTS: dict[str, Any] = {"http_listen": DEFAULT_HTTP_LISTEN}
"""Defaults of :func:`load` that a ``BrokerConfig()`` built in code does not have."""


def env_name(option: str) -> str:
    return "KAFSCALE_" + option.upper().replace(".", "_").replace("-", "_")


def _convert(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(BrokerConfig)}[name]
    if kind in ("bool", bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {value!r}")
        return text in ("true", "1", "yes")
    if kind in ("int", int):
        return int(value)
    if kind in ("float", float):
        return float(value)
    if kind in ("Path", Path):
        return Path(value)
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``kafscale serve`` options (all default to None: unset means "not given")."""
    parser.add_argument("--config", type=Path, help="YAML file of settings (Kafka names)")
    parser.add_argument("--listen", help="host:port to listen on (default 127.0.0.1:9092)")
    parser.add_argument("--advertised", help="host:port clients are told to connect to")
    for option in _OPTIONS:
        if option in ("listen-host", "listen-port", "advertised-host", "advertised-port"):
            continue
        parser.add_argument(
            f"--{option}",
            dest=_OPTIONS[option],
            default=None,
            help=f"{option} (env {env_name(option)})",
        )


def load(
    args: argparse.Namespace | None = None, environ: dict[str, str] | None = None
) -> BrokerConfig:
    """Build the configuration; raises ValueError naming the bad setting."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = dict(_LOAD_DEFAULTS)
    config_file = getattr(args, "config", None) or environ.get("KAFSCALE_CONFIG")
    if config_file:
        data = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings")
        for key, value in data.items():
            if key in ("listen", "advertised"):
                values.update(_host_port(key, str(value)))
            elif key in _OPTIONS:
                values[_OPTIONS[key]] = value
            else:
                raise ValueError(f"{config_file}: unknown setting {key!r}")
    for option, name in _OPTIONS.items():
        if env_name(option) in environ:
            values[name] = environ[env_name(option)]
    for key in ("listen", "advertised"):
        if env_name(key) in environ:
            values.update(_host_port(key, environ[env_name(key)]))
    if args is not None:
        for key in ("listen", "advertised"):
            if getattr(args, key, None):
                values.update(_host_port(key, getattr(args, key)))
        for name in _OPTIONS.values():
            if getattr(args, name, None) is not None:
                values[name] = getattr(args, name)
    if str(values.get("broker_id", "")).strip().lower() == BROKER_ID_ORDINAL:
        values["broker_id"] = broker_id_from_hostname(environ)
    config = BrokerConfig()
    for name, value in values.items():
        try:
            setattr(config, name, _convert(name, value))
        except ValueError as e:
            raise ValueError(f"setting {name}: {e}") from None
    if config.log_format not in LOG_FORMATS:
        raise ValueError(f"setting log_format: expected text or json, got {config.log_format!r}")
    if config.http_listen:
        _split_host_port("http-listen", config.http_listen)
    if config.s3_sse not in ("", "AES256", "aws:kms"):
        raise ValueError(f"setting s3.sse: expected AES256 or aws:kms, got {config.s3_sse!r}")
    config.listener_list()  # raises ValueError naming what is wrong
    return config


BROKER_ID_ORDINAL = "ordinal"
"""``--broker-id ordinal`` (``KAFSCALE_BROKER_ID=ordinal``): the id is the trailing number of
the host name, the pod ordinal of a StatefulSet (``kfs-broker-2`` is broker 2): every pod of a
Kubernetes StatefulSet gets the same settings, and its name is the one thing that differs."""


def broker_id_from_hostname(environ: dict[str, str]) -> int:
    """The trailing ``-N`` of ``$HOSTNAME`` (else the kernel's host name, which Kubernetes
    sets to the pod name); ValueError naming the host name when it has none."""
    host = environ.get("HOSTNAME") or socket.gethostname()
    match = re.search(r"-([0-9]+)$", host.split(".", 1)[0])
    if match is None:
        raise ValueError(
            f"setting broker_id: {BROKER_ID_ORDINAL!r} takes the number after the last '-' of"
            f" the host name (a StatefulSet pod's ordinal), and {host!r} has none"
        )
    return int(match.group(1))


def _split_host_port(key: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{key}: expected host:port, got {text!r}")
    return host, int(port)


def _host_port(key: str, text: str) -> dict[str, Any]:
    host, port = _split_host_port(key, text)
    return {
        f"{key}_host" if key == "listen" else "advertised_host": host,
        f"{key}_port" if key == "listen" else "advertised_port": port,
    }
