# DescribeConfigs (key 32), versions 1-4.
# - TOPIC resources (type 2): every topic config KafScale knows (topics.TOPIC_CONFIG_DEFAULTS),
#   or only the ConfigurationKeys asked for (null or empty: all; unknown keys are left out, as
#   Kafka does). An override reports DYNAMIC_TOPIC_CONFIG (1); otherwise the default, which for
#   configs with a broker counterpart (max.message.bytes <- message.max.bytes, retention.ms <-
#   log.retention.ms, ...) is the broker's effective value: STATIC_BROKER_CONFIG (4) when the
#   broker was configured with something else than Kafka's default, else DEFAULT_CONFIG (5).
#   Unknown topic -> UNKNOWN_TOPIC_OR_PARTITION (3); illegal name -> INVALID_TOPIC_EXCEPTION (17).
# - BROKER resources (type 4) named with this broker's id: a few of its settings, read-only
#   (dynamic broker configs are not supported). An empty name (the cluster-wide dynamic
#   defaults) has no entries; another id or a non-integer -> INVALID_REQUEST (42), as Kafka
#   answers. Other resource types (BROKER_LOGGER included) -> INVALID_REQUEST.
# - Synonyms (v1+) only when IncludeSynonyms: the override, then the broker-level default.
#   ConfigType and Documentation (v3+; documentation only when IncludeDocumentation).
# - IsDefault exists only in v0, which is not served.
from __future__ import annotations

from generated.describe_configs_request import DescribeConfigsRequest, DescribeConfigsResource
from generated.describe_configs_response import (
    DescribeConfigsResourceResult,
    DescribeConfigsResponse,
    DescribeConfigsResult,
    DescribeConfigsSynonym,
)
from kafscale.broker.config import BrokerConfig
from kafscale.broker.handlers import RequestContext
from kafscale.broker.topics import TOPIC_CONFIG_DEFAULTS, TopicError, validate_topic_name

TOPIC, BROKER = 2, 4
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REQUEST = 42

# ConfigSource
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5
# ConfigType
BOOLEAN, STRING, INT, LONG, LIST = 1, 2, 3, 5, 7

# Topic config -> (type, broker synonym, documentation).
TOPIC_CONFIGS: dict[str, tuple[int, str, str]] = {
    "cleanup.policy": (
        LIST,
        "log.cleanup.policy",
        "Retention policy for old log segments: delete, compact, or both.",
    ),
    "compression.type": (
        STRING,
        "compression.type",
        "Final compression of the topic's data; 'producer' keeps what the producer sent.",
    ),
    "max.message.bytes": (
        INT,
        "message.max.bytes",
        "Largest record batch size allowed for this topic.",
    ),
    "message.timestamp.type": (
        STRING,
        "log.message.timestamp.type",
        "Whether record timestamps are CreateTime or LogAppendTime.",
    ),
    "retention.bytes": (
        LONG,
        "log.retention.bytes",
        "Largest size a partition may grow to before old segments are discarded (-1: none).",
    ),
    "retention.ms": (
        LONG,
        "log.retention.ms",
        "Longest time a segment is kept before it is discarded (-1: forever).",
    ),
    "segment.bytes": (
        INT,
        "log.segment.bytes",
        "Segment file size for the log.",
    ),
    "min.insync.replicas": (
        INT,
        "min.insync.replicas",
        "Replicas that must acknowledge a write with acks=all (one broker: 1).",
    ),
}

# Broker config name -> (BrokerConfig field, type, documentation).
BROKER_CONFIGS: dict[str, tuple[str, int, str]] = {
    "message.max.bytes": ("message_max_bytes", INT, "Largest record batch size allowed."),
    "num.partitions": ("num_partitions", INT, "Default number of partitions of a new topic."),
    "default.replication.factor": (
        "default_replication_factor",
        INT,
        "Default replication factor of a new topic.",
    ),
    "auto.create.topics.enable": (
        "auto_create_topics_enable",
        BOOLEAN,
        "Whether Metadata requests may create unknown topics.",
    ),
    "log.retention.ms": ("retention_ms", LONG, "Default retention.ms of topics."),
    "log.retention.bytes": ("retention_bytes", LONG, "Default retention.bytes of topics."),
    "log.segment.bytes": ("segment_bytes", INT, "Largest segment object one flush writes."),
    "socket.request.max.bytes": (
        "socket_request_max_bytes",
        INT,
        "Largest request the broker accepts.",
    ),
    "fetch.max.bytes": ("fetch_max_bytes", INT, "Largest Fetch response the broker returns."),
}

_BROKER_DEFAULTS = BrokerConfig()


def broker_value(config: BrokerConfig, name: str) -> tuple[str, int]:
    """A broker config's value as Kafka writes it, and its source (static or default)."""
    attr = BROKER_CONFIGS[name][0]
    value, default = getattr(config, attr), getattr(_BROKER_DEFAULTS, attr)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text, STATIC_BROKER_CONFIG if value != default else DEFAULT_CONFIG


def topic_default(config: BrokerConfig, name: str) -> tuple[str, str | None, int]:
    """The default of a topic config for this broker: (value, broker synonym, source)."""
    synonym = TOPIC_CONFIGS[name][1] if name in TOPIC_CONFIGS else None
    if synonym in BROKER_CONFIGS:
        value, source = broker_value(config, synonym)
        return value, synonym, source
    return TOPIC_CONFIG_DEFAULTS[name], synonym, DEFAULT_CONFIG


def is_list_config(name: str) -> bool:
    return name in TOPIC_CONFIGS and TOPIC_CONFIGS[name][0] == LIST


async def handle(ctx: RequestContext, request: DescribeConfigsRequest) -> DescribeConfigsResponse:
    results: list[DescribeConfigsResult] = []
    for resource in request.resources:
        result = DescribeConfigsResult(
            resource_type=resource.resource_type,
            resource_name=resource.resource_name,
            error_code=0,
            error_message=None,
        )
        results.append(result)
        try:
            result.configs = _describe(ctx, request, resource)
        except TopicError as e:
            result.error_code, result.error_message = e.code, e.message
    return DescribeConfigsResponse(throttle_time_ms=0, results=results)


def _describe(
    ctx: RequestContext, request: DescribeConfigsRequest, resource: DescribeConfigsResource
) -> list[DescribeConfigsResourceResult]:
    config = ctx.broker.config
    keys = resource.configuration_keys or None  # null or empty: every config (as Kafka)
    synonyms = request.include_synonyms
    docs = request.include_documentation
    out: list[DescribeConfigsResourceResult] = []
    if resource.resource_type == TOPIC:
        validate_topic_name(resource.resource_name)
        topic = ctx.broker.topics.get(resource.resource_name)
        if topic is None:
            raise TopicError(
                UNKNOWN_TOPIC_OR_PARTITION, f"topic {resource.resource_name!r} does not exist"
            )
        for name in sorted(TOPIC_CONFIG_DEFAULTS):
            if keys is not None and name not in keys:
                continue
            default, synonym, default_source = topic_default(config, name)
            entry = DescribeConfigsResourceResult(name=name, read_only=False, is_sensitive=False)
            chain: list[DescribeConfigsSynonym] = []
            if name in topic.configs:
                entry.value, entry.config_source = topic.configs[name], DYNAMIC_TOPIC_CONFIG
                chain.append(_synonym(name, topic.configs[name], DYNAMIC_TOPIC_CONFIG))
            else:
                entry.value, entry.config_source = default, default_source
            chain.append(_synonym(synonym or name, default, default_source))
            kind, _, doc = TOPIC_CONFIGS.get(name, (STRING, name, ""))
            _finish(entry, chain if synonyms else [], kind, doc if docs else None)
            out.append(entry)
    elif resource.resource_type == BROKER:
        if resource.resource_name == "":
            return out  # the cluster-wide dynamic defaults: none are set
        try:
            broker_id = int(resource.resource_name)
        except ValueError:
            raise TopicError(
                INVALID_REQUEST, f"broker id must be an integer, got {resource.resource_name!r}"
            ) from None
        if broker_id != config.broker_id:
            raise TopicError(
                INVALID_REQUEST,
                f"unexpected broker id, expected {config.broker_id} or empty string, "
                f"but received {resource.resource_name}",
            )
        for name in sorted(BROKER_CONFIGS):
            if keys is not None and name not in keys:
                continue
            value, source = broker_value(config, name)
            entry = DescribeConfigsResourceResult(
                name=name, value=value, read_only=True, is_sensitive=False, config_source=source
            )
            _, kind, doc = BROKER_CONFIGS[name]
            chain = [_synonym(name, value, source)]
            _finish(entry, chain if synonyms else [], kind, doc if docs else None)
            out.append(entry)
    else:
        raise TopicError(
            INVALID_REQUEST, f"resource type {resource.resource_type} is not supported"
        )
    return out


def _finish(
    entry: DescribeConfigsResourceResult,
    synonyms: list[DescribeConfigsSynonym],
    kind: int,
    doc: str | None,
) -> None:
    # All ignorable (dropped where they do not exist), so set whatever the version.
    entry.synonyms = synonyms
    entry.config_type = kind
    entry.documentation = doc


def _synonym(name: str, value: str, source: int) -> DescribeConfigsSynonym:
    return DescribeConfigsSynonym(name=name, value=value, source=source)
