# AlterConfigs (key 33), versions 0-2 (the legacy, non-incremental API).
# - TOPIC resources: the given configs replace the topic's whole override set (a config not
#   named goes back to its default). Unknown topic -> UNKNOWN_TOPIC_OR_PARTITION (3); unknown
#   config or bad value -> INVALID_CONFIG (40) with Kafka's message (the whole new override set
#   is validated as Kafka 3.9 does: kafscale/broker/topic_configs.py); a null value or a config
#   named twice -> INVALID_REQUEST (42), as Kafka's ConfigAdminManager answers.
# - BROKER (4) and BROKER_LOGGER (8) resources: dynamic broker configs are not supported ->
#   INVALID_REQUEST with a message; other resource types -> INVALID_REQUEST. A resource named
#   twice in one request -> INVALID_REQUEST for the later ones.
# - ValidateOnly checks everything without storing.
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from generated.alter_configs_request import AlterConfigsRequest, AlterConfigsResource
from generated.alter_configs_response import AlterConfigsResourceResponse, AlterConfigsResponse
from generated.errors import ErrorCode
from kafscale.broker.handlers import RequestContext
from kafscale.broker.topics import TopicError

log = logging.getLogger("kafscale.broker")

TOPIC, BROKER, BROKER_LOGGER = 2, 4, 8


async def handle(ctx: RequestContext, request: AlterConfigsRequest) -> AlterConfigsResponse:
    def replacement(resource: AlterConfigsResource) -> dict[str, str]:
        nulls = [c.name for c in resource.configs if c.value is None]
        if nulls:
            raise TopicError(
                ErrorCode.INVALID_REQUEST, "Null value not supported for : " + ", ".join(nulls)
            )
        return {c.name: c.value for c in resource.configs if c.value is not None}

    results = await alter_topic_configs(
        ctx, request.resources, AlterConfigsResourceResponse, replacement, request.validate_only
    )
    return AlterConfigsResponse(throttle_time_ms=0, responses=results)


R = TypeVar("R")


async def alter_topic_configs(
    ctx: RequestContext,
    resources: Sequence[Any],
    result_type: Callable[..., R],
    new_configs: Callable[[Any], dict[str, str]],
    validate_only: bool,
) -> list[R]:
    """The loop both config-altering APIs share: per resource, check it, compute the topic's
    new override set with ``new_configs`` and store it (unless ``validate_only``); a refusal
    becomes that resource's error code and message."""
    results: list[R] = []
    seen: set[tuple[int, str]] = set()
    for resource in resources:
        result = result_type(
            resource_type=resource.resource_type,
            resource_name=resource.resource_name,
            error_code=0,
            error_message=None,
        )
        results.append(result)
        try:
            check_resource(ctx, resource.resource_type, resource.resource_name, seen)
            check_names([c.name for c in resource.configs])
            configs = new_configs(resource)
            await ctx.broker.topics.set_configs(resource.resource_name, configs, validate_only)
        except TopicError as e:
            result.error_code, result.error_message = e.code, e.message  # type: ignore[attr-defined]
            continue
        if not validate_only:
            log.info("topic %s configs set to %s", resource.resource_name, configs)
    return results


def check_resource(ctx: RequestContext, kind: int, name: str, seen: set[tuple[int, str]]) -> None:
    """Refuse (TopicError) what the config-altering APIs cannot change: all but topics."""
    if (kind, name) in seen:
        raise TopicError(
            ErrorCode.INVALID_REQUEST, f"resource {name!r} (type {kind}) appears twice"
        )
    seen.add((kind, name))
    if kind in (BROKER, BROKER_LOGGER):
        raise TopicError(
            ErrorCode.INVALID_REQUEST,
            "KafScale does not support dynamic broker configs: set them in the broker's "
            "configuration and restart it",
        )
    if kind != TOPIC:
        raise TopicError(ErrorCode.INVALID_REQUEST, f"resource type {kind} is not supported")
    if ctx.broker.topics.get(name) is None:
        raise TopicError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist")


def check_names(names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TopicError(
            ErrorCode.INVALID_REQUEST, f"duplicate config keys: {', '.join(duplicates)}"
        )
