# IncrementalAlterConfigs (key 44), versions 0-1.
# - TOPIC resources: each config names an operation on the topic's overrides: SET (0) stores
#   the value, DELETE (1) removes the override (back to the default), APPEND (2) / SUBTRACT (3)
#   add or remove comma-separated items of a list config (cleanup.policy), starting from the
#   current value (override or default). APPEND/SUBTRACT on a non-list config, an unknown
#   operation, a null value (other than for DELETE) or a config named twice -> INVALID_REQUEST
#   (42); unknown config or bad resulting value -> INVALID_CONFIG (40); unknown topic ->
#   UNKNOWN_TOPIC_OR_PARTITION (3).
# - BROKER / BROKER_LOGGER resources -> INVALID_REQUEST (dynamic broker configs are not
#   supported), as in AlterConfigs. ValidateOnly checks without storing.
from __future__ import annotations

from generated.incremental_alter_configs_request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)
from generated.incremental_alter_configs_response import (
    AlterConfigsResourceResponse,
    IncrementalAlterConfigsResponse,
)
from kafscale.broker.config import BrokerConfig
from kafscale.broker.handlers import RequestContext
from kafscale.broker.handlers.alter_configs import alter_topic_configs
from kafscale.broker.handlers.describe_configs import is_list_config, topic_default
from kafscale.broker.topics import TOPIC_CONFIG_DEFAULTS, TopicError

SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
INVALID_CONFIG = 40
INVALID_REQUEST = 42


async def handle(
    ctx: RequestContext, request: IncrementalAlterConfigsRequest
) -> IncrementalAlterConfigsResponse:
    broker = ctx.broker

    def updated(resource: AlterConfigsResource) -> dict[str, str]:
        topic = broker.topics.get(resource.resource_name)
        assert topic is not None  # check_resource checked it
        configs = dict(topic.configs)
        for op in resource.configs:
            _apply(configs, op, broker.config)
        return configs

    results = await alter_topic_configs(
        ctx, request.resources, AlterConfigsResourceResponse, updated, request.validate_only
    )
    return IncrementalAlterConfigsResponse(throttle_time_ms=0, responses=results)


def _apply(configs: dict[str, str], op: AlterableConfig, broker_config: BrokerConfig) -> None:
    name, value = op.name, op.value
    if op.config_operation not in (SET, DELETE, APPEND, SUBTRACT):
        raise TopicError(INVALID_REQUEST, f"unknown config operation {op.config_operation}")
    if name not in TOPIC_CONFIG_DEFAULTS:
        raise TopicError(INVALID_CONFIG, f"unknown topic config {name!r}")
    if op.config_operation == DELETE:
        configs.pop(name, None)
        return
    if value is None:
        raise TopicError(INVALID_REQUEST, f"null value not supported for {name}")
    if op.config_operation == SET:
        configs[name] = value
        return
    if not is_list_config(name):
        verb = "append" if op.config_operation == APPEND else "subtract"
        raise TopicError(INVALID_REQUEST, f"config value {verb} is not allowed for {name}")
    current = configs.get(name)
    if current is None:
        current = topic_default(broker_config, name)[0]
    items = [i.strip() for i in current.split(",") if i.strip()]
    given = [i.strip() for i in value.split(",") if i.strip()]
    if op.config_operation == APPEND:
        items += [i for n, i in enumerate(given) if i not in items and i not in given[:n]]
    else:
        items = [i for i in items if i not in given]
    configs[name] = ",".join(items)
