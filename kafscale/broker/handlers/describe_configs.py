# DescribeConfigs (key 32), versions 1-4.
# - TOPIC resources (type 2): every Kafka 3.9 topic config (protocol_specs/topic-configs.yaml,
#   in name order), or only the ConfigurationKeys asked for (null or empty: all; unknown keys
#   are left out, as Kafka does). An override reports DYNAMIC_TOPIC_CONFIG (1), written as
#   Kafka writes the parsed value; otherwise the default: the first broker synonym this broker
#   sets (log.retention.ms, log.segment.bytes, message.max.bytes, ...: STATIC_BROKER_CONFIG, 4),
#   else KafScale's or Kafka's default (DEFAULT_CONFIG, 5) (kafscale/broker/topic_configs.py).
#   Unknown topic -> UNKNOWN_TOPIC_OR_PARTITION (3); illegal name -> INVALID_TOPIC_EXCEPTION (17).
# - BROKER resources (type 4) named with this broker's id: Kafka's main broker configs and every
#   broker synonym of a topic config (protocol_specs/broker-configs.yaml) with this broker's
#   values, read-only (dynamic broker configs are not supported). An empty name (the
#   cluster-wide dynamic defaults) has no entries; another id or a non-integer ->
#   INVALID_REQUEST (42), as Kafka answers. Other resource types (BROKER_LOGGER included) ->
#   INVALID_REQUEST.
# - Synonyms (v1+) only when IncludeSynonyms, as Kafka's ConfigHelper lists them: the topic
#   override, then the broker synonyms this broker sets, then their defaults (from the entry for
#   the first synonym on). ConfigType and Documentation (Kafka's) in v3+; documentation only
#   when IncludeDocumentation.
# - IsDefault exists only in v0, which is not served. A described resource's error message is
#   null.
from __future__ import annotations

from generated.broker_configs import BROKER_CONFIGS
from generated.describe_configs_request import DescribeConfigsRequest, DescribeConfigsResource
from generated.describe_configs_response import (
    DescribeConfigsResourceResult,
    DescribeConfigsResponse,
    DescribeConfigsResult,
    DescribeConfigsSynonym,
)
from generated.errors import ErrorCode
from generated.topic_configs import TOPIC_CONFIGS
from kafscale.broker.handlers import RequestContext
from kafscale.broker.topic_configs import Described, describe_broker_config, describe_topic_config
from kafscale.broker.topics import TopicError, validate_topic_name

TOPIC, BROKER = 2, 4


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
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                f"topic {resource.resource_name!r} does not exist",
            )
        for name in sorted(TOPIC_CONFIGS):
            if keys is None or name in keys:
                described = describe_topic_config(config, name, topic.configs)
                out.append(_entry(described, False, synonyms, docs))
    elif resource.resource_type == BROKER:
        if resource.resource_name == "":
            return out  # the cluster-wide dynamic defaults: none are set
        try:
            broker_id = int(resource.resource_name)
        except ValueError:
            raise TopicError(
                ErrorCode.INVALID_REQUEST,
                f"broker id must be an integer, got {resource.resource_name!r}",
            ) from None
        if broker_id != config.broker_id:
            raise TopicError(
                ErrorCode.INVALID_REQUEST,
                f"unexpected broker id, expected {config.broker_id} or empty string, "
                f"but received {resource.resource_name}",
            )
        for name in sorted(BROKER_CONFIGS):
            if keys is None or name in keys:
                out.append(_entry(describe_broker_config(config, name), True, synonyms, docs))
    else:
        raise TopicError(
            ErrorCode.INVALID_REQUEST, f"resource type {resource.resource_type} is not supported"
        )
    return out


def _entry(
    d: Described, read_only: bool, synonyms: bool, docs: bool
) -> DescribeConfigsResourceResult:
    # Synonyms, ConfigType and Documentation are ignorable (dropped where a version lacks them).
    return DescribeConfigsResourceResult(
        name=d.name,
        value=d.value,
        read_only=read_only,
        config_source=d.source,
        is_sensitive=False,
        synonyms=[
            DescribeConfigsSynonym(name=n, value=v, source=source) for n, v, source in d.synonyms
        ]
        if synonyms
        else [],
        config_type=d.type,
        documentation=d.doc if docs else None,
    )
